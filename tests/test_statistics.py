"""Statistics against scipy/statsmodels and the design's oracle numbers, on small fixed inputs."""
import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import confusion_matrix, f1_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from av1_ablation.comparison.statistics import (
    across_seed_tests,
    friedman_test,
    holm,
    macro_f1_from_confusion,
    mann_whitney_test,
    mcnemar_from_counts,
    mcnemar_test,
    paired_bootstrap,
    paired_seed_tests,
    paired_t_power,
    probability_of_superiority,
    MANN_WHITNEY_MAX_SPLITS,
    MAX_SEEDS_FOR_POWER,
    seeds_for_power,
    sign_flip_test,
)


def _outcomes(b, c, both_right=10, both_wrong=5):
    """Predictions with exactly b (A right, B wrong) and c (B right, A wrong) blocks."""
    y = np.zeros(b + c + both_right + both_wrong, dtype=int)
    a = np.concatenate([np.zeros(b), np.ones(c), np.zeros(both_right), np.ones(both_wrong)]).astype(int)
    bb = np.concatenate([np.ones(b), np.zeros(c), np.zeros(both_right), np.full(both_wrong, 2)]).astype(int)
    return y, a, bb


def _sm_table(b, c, both_right=10, both_wrong=5):
    return [[both_right, b], [c, both_wrong]]


@pytest.mark.parametrize("b, c", [(7, 2), (3, 0), (10, 10), (1, 12)])
def test_mcnemar_exact_matches_scipy_and_statsmodels(b, c):
    y, a, bb = _outcomes(b, c)
    r = mcnemar_test(y, a, bb)
    assert (r.b, r.c, r.method) == (b, c, "exact")
    assert r.pvalue == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    assert r.pvalue == pytest.approx(sm_mcnemar(_sm_table(b, c), exact=True).pvalue)


@pytest.mark.parametrize("b, c", [(40, 20), (30, 31), (100, 60)])
def test_mcnemar_chi2_with_continuity_matches_statsmodels(b, c):
    y, a, bb = _outcomes(b, c)
    r = mcnemar_test(y, a, bb)
    ref = sm_mcnemar(_sm_table(b, c), exact=False, correction=True)
    assert r.method == "chi2"
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.pvalue == pytest.approx(ref.pvalue)
    assert r.statistic == pytest.approx((abs(b - c) - 1) ** 2 / (b + c))


def test_mcnemar_no_discordant_blocks_gives_p_one():
    r = mcnemar_from_counts(0, 0)
    assert r.pvalue == 1.0


def test_mcnemar_threshold_switches_method():
    assert mcnemar_from_counts(20, 4).method == "exact"
    assert mcnemar_from_counts(20, 5).method == "chi2"
    assert mcnemar_from_counts(20, 5, exact_below=100).method == "exact"


def test_macro_f1_from_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    p = np.where(rng.random(100) < 0.5, y, 2)
    cm = confusion_matrix(y, p, labels=[0, 1, 2])
    assert macro_f1_from_confusion(cm) == pytest.approx(
        f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))
    # An absent class (no true, no predicted block) scores 0, as zero_division=0.
    assert macro_f1_from_confusion([[2, 0, 0], [0, 2, 0], [0, 0, 0]]) == pytest.approx(2 / 3)


def _two_models(seed=0, n=3000, acc_a=0.7, acc_b=0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < acc_a, y, rng.integers(0, 3, n))
    b = np.where(rng.random(n) < acc_b, y, rng.integers(0, 3, n))
    return y, a, b


def test_bootstrap_ci_covers_known_difference_and_is_reproducible():
    y, a, b = _two_models()
    true_delta = (f1_score(y, a, average="macro") - f1_score(y, b, average="macro"))
    r1 = paired_bootstrap(y, a, b, n_resamples=2000, random_state=42)
    r2 = paired_bootstrap(y, a, b, n_resamples=2000, random_state=42)
    assert r1 == r2
    assert r1.delta == pytest.approx(true_delta)
    assert r1.ci_low < true_delta < r1.ci_high
    assert r1.ci_low > 0  # a 10-point accuracy gap on 3000 blocks is clear
    assert r1.pvalue < 0.01
    r3 = paired_bootstrap(y, a, b, n_resamples=2000, random_state=7)
    assert r3.ci_low != r1.ci_low


def test_bootstrap_matches_a_plain_resampling_loop():
    # Same indices, sklearn macro-F1 on each resample: the vectorised version must agree.
    y, a, b = _two_models(seed=1, n=300)
    n_res = 200
    r = paired_bootstrap(y, a, b, n_resamples=n_res, random_state=3, chunk_elements=300 * 7)
    rng = np.random.default_rng(3)
    deltas = []
    for _ in range(n_res):
        idx = rng.integers(0, len(y), size=(1, len(y)))[0]
        deltas.append(f1_score(y[idx], a[idx], average="macro", labels=[0, 1, 2], zero_division=0)
                      - f1_score(y[idx], b[idx], average="macro", labels=[0, 1, 2], zero_division=0))
    # The chunked draw of (r, n) indices consumes the stream row by row, like the loop.
    assert r.ci_low == pytest.approx(np.quantile(deltas, 0.025))
    assert r.ci_high == pytest.approx(np.quantile(deltas, 0.975))
    # Berg-Kirkpatrick et al.'s p: the bootstrap distribution shifted to the null
    deltas = np.array(deltas)
    assert r.pvalue == pytest.approx((1 + np.sum(deltas - r.delta >= r.delta)) / (1 + n_res))


def test_bootstrap_p_of_a_worse_arm_is_at_least_about_half():
    """The p is one-sided ("A is not better than B"): swapping a clearly better arm to B must
    give a large p, not the same small one."""
    y, a, b = _two_models(seed=1, n=300)
    better = paired_bootstrap(y, a, b, n_resamples=500, random_state=3)
    worse = paired_bootstrap(y, b, a, n_resamples=500, random_state=3)
    assert worse.delta == pytest.approx(-better.delta) and better.delta > 0
    assert better.pvalue < 0.05 and worse.pvalue > 0.5


def test_bootstrap_identical_models_are_not_significant():
    y, a, _ = _two_models(seed=2, n=500)
    r = paired_bootstrap(y, a, a, n_resamples=500, random_state=0)
    assert r.delta == 0 and r.ci_low == 0 and r.ci_high == 0
    assert r.pvalue == 1.0


def test_bootstrap_pooled_over_seeds_uses_mean_f1():
    y, a, b = _two_models(seed=3, n=400)
    _, a2, b2 = _two_models(seed=4, n=400)
    r = paired_bootstrap(y, np.vstack([a, a2]), np.vstack([b, b2]), n_resamples=300, random_state=0)
    f = lambda p: f1_score(y, p, average="macro")  # noqa: E731
    assert r.delta == pytest.approx((f(a) + f(a2)) / 2 - (f(b) + f(b2)) / 2)


def test_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="n_samples"):
        paired_bootstrap([0, 1, 2], [0, 1], [0, 1, 2])


A = [0.581, 0.574, 0.590, 0.586, 0.579]
B = [0.570, 0.566, 0.573, 0.561, 0.572]


def test_across_seed_tests_match_scipy():
    r = across_seed_tests(A, B)
    welch = stats.ttest_ind(A, B, equal_var=False)
    mw = stats.mannwhitneyu(A, B, alternative="two-sided", method="exact")
    assert r.welch_t == pytest.approx(welch.statistic)
    assert r.welch_p == pytest.approx(welch.pvalue)
    assert r.mannwhitney_u == pytest.approx(mw.statistic)
    assert r.mannwhitney_p == pytest.approx(mw.pvalue)
    assert r.mannwhitney_p == pytest.approx(2 / 252)  # complete separation, 5 vs 5
    assert r.p_superiority == 1.0
    assert r.welch_ci_low < r.mean_diff < r.welch_ci_high
    assert r.note == ""


def test_across_seed_tests_not_enough_seeds_gives_no_pvalue():
    r = across_seed_tests(A[:2], B)
    assert r.welch_p is None and r.mannwhitney_p is None and r.p_superiority is None
    assert "not enough seeds" in r.note
    assert r.mean_diff == pytest.approx(np.mean(A[:2]) - np.mean(B))


def test_probability_of_superiority_counts_ties_half():
    assert probability_of_superiority([1, 2], [2, 0]) == pytest.approx((0 + 1 + 0.5 + 1) / 4)


def test_holm_matches_statsmodels_holm():
    p = [0.01, 0.04, 0.03, 0.2]
    reject, adj = holm(p, alpha=0.05)
    ref_reject, ref_adj, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert reject == list(ref_reject)
    np.testing.assert_allclose(adj, ref_adj)
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_holm_skips_missing_values():
    reject, adj = holm([None, 0.01, float("nan"), 0.04])
    assert reject == [None, True, None, True]
    assert adj[1] == pytest.approx(0.02) and adj[3] == pytest.approx(0.04)
    assert adj[0] is None and adj[2] is None


def test_holm_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        holm([0.1], alpha=1.5)


def test_holm_can_keep_untestable_hypotheses_in_the_family():
    # missing="one": the family stays at 3 (the untestable one counts as p = 1, never rejected).
    reject, adj = holm([0.01, None, 0.03], missing="one")
    ref_reject, ref_adj, _, _ = multipletests([0.01, 1.0, 0.03], method="holm")
    assert adj[0] == pytest.approx(ref_adj[0]) == pytest.approx(0.03)
    assert adj[2] == pytest.approx(ref_adj[2]) == pytest.approx(0.06)
    assert adj[1] is None and reject[1] is None
    assert holm([0.01, None, 0.03])[1] == [0.02, None, 0.03]  # the default still drops it
    with pytest.raises(ValueError, match="missing"):
        holm([0.1], missing="zero")


# --------------------------------------------------------------------------- cluster bootstrap
def test_cluster_bootstrap_with_singleton_clusters_is_the_block_bootstrap():
    y, a, b = _two_models(seed=5, n=400)
    blocks = paired_bootstrap(y, a, b, n_resamples=300, random_state=1)
    same = paired_bootstrap(y, a, b, clusters=np.arange(400), n_resamples=300, random_state=1)
    assert (blocks.unit, same.unit) == ("blocks", "clusters")
    assert same.n_units == blocks.n_units == 400
    assert (same.delta, same.ci_low, same.ci_high, same.pvalue) == (
        blocks.delta, blocks.ci_low, blocks.ci_high, blocks.pvalue)


def test_cluster_bootstrap_matches_a_plain_loop_over_clusters():
    y, a, b = _two_models(seed=6, n=240)
    clusters = np.repeat(np.array([7, 3, 9, 1, 5, 2]), 40)  # 6 clusters, labels in any order
    r = paired_bootstrap(y, a, b, clusters=clusters, n_resamples=200, random_state=4)
    labels = np.unique(clusters)
    rng = np.random.default_rng(4)
    deltas = []
    for _ in range(200):
        draw = labels[rng.integers(0, len(labels), size=(1, len(labels)))[0]]
        idx = np.concatenate([np.flatnonzero(clusters == g) for g in draw])
        f = lambda p: f1_score(y[idx], p[idx], average="macro", labels=[0, 1, 2], zero_division=0)  # noqa: E731
        deltas.append(f(a) - f(b))
    assert r.n_units == 6
    assert r.ci_low == pytest.approx(np.quantile(deltas, 0.025))
    assert r.ci_high == pytest.approx(np.quantile(deltas, 0.975))


def test_cluster_bootstrap_is_wider_than_block_bootstrap_on_duplicated_blocks():
    # 300 distinct blocks, each present 4 times with the same prediction (the same pixels at
    # four QPs). Resampling single rows treats the copies as independent evidence.
    y0, a0, b0 = _two_models(seed=7, n=300, acc_a=0.65, acc_b=0.6)
    y, a, b = (np.tile(v, 4) for v in (y0, a0, b0))
    groups = np.tile(np.arange(300), 4)
    blocks = paired_bootstrap(y, a, b, n_resamples=2000, random_state=0)
    clustered = paired_bootstrap(y, a, b, clusters=groups, n_resamples=2000, random_state=0)
    assert clustered.delta == pytest.approx(blocks.delta)
    width = lambda r: r.ci_high - r.ci_low  # noqa: E731
    assert width(clustered) > 1.6 * width(blocks)  # about 2x: sqrt(4) copies
    assert clustered.pvalue > blocks.pvalue


def test_cluster_bootstrap_needs_two_clusters():
    y, a, b = _two_models(seed=8, n=50)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        paired_bootstrap(y, a, b, clusters=np.zeros(50))
    with pytest.raises(ValueError, match="one entry per block"):
        paired_bootstrap(y, a, b, clusters=np.arange(49))


# --------------------------------------------------------------------------- paired across seeds
BASE = np.array([0.40, 0.41, 0.39])
D_ORACLE = np.array([1.08, 0.23, 0.98]) / 100  # pp -> fraction


def test_paired_t_oracle():
    r = paired_seed_tests(BASE + D_ORACLE, BASE)
    assert r.n == 3 and r.df == 2
    assert r.t == pytest.approx(2.846, abs=5e-4)
    assert r.t_p == pytest.approx(0.1045, abs=5e-5)
    assert 100 * r.ci_low == pytest.approx(-0.39, abs=5e-3)
    assert 100 * r.ci_high == pytest.approx(1.92, abs=5e-3)
    assert r.mean_diff == pytest.approx(D_ORACLE.mean())
    rel = stats.ttest_rel(BASE + D_ORACLE, BASE)
    assert r.t_p == pytest.approx(rel.pvalue) and r.t == pytest.approx(rel.statistic)
    assert r.effect_size == pytest.approx(D_ORACLE.mean() / D_ORACLE.std(ddof=1))
    # With 3 seeds the exact sign-flip and Wilcoxon tests cannot go below 0.25.
    assert r.sign_flip_p == 0.25 and r.sign_flip_min_p == 0.25
    assert r.wilcoxon_p == pytest.approx(stats.wilcoxon(D_ORACLE).pvalue) == pytest.approx(0.25)
    assert r.note == ""


def test_sign_flip_oracle_and_enumeration():
    d = [.9, 1.4, -.6, 2.1, .3, 1.1, -.2, 1.7]
    assert sign_flip_test(d) == pytest.approx(0.046875, abs=1e-12)
    # Brute force over all 2^8 sign patterns.
    observed = abs(np.mean(d))
    means = [abs(np.mean(np.array(s) * d)) for s in itertools.product([-1, 1], repeat=len(d))]
    assert sign_flip_test(d) == pytest.approx(np.mean(np.array(means) >= observed - 1e-12))
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_test([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(2 / 64)


def test_constant_arms_give_no_variance_and_no_tiny_p():
    a, b = [.41] * 3, [.40] * 3
    unpaired = across_seed_tests(a, b)
    paired = paired_seed_tests(a, b)
    assert unpaired.welch_p is None and "no variance" in unpaired.note
    assert paired.t_p is None and paired.ci_low is None and paired.tost_p is None
    assert "no variance" in paired.note and "+1.00 pp" in paired.note
    ps = [unpaired.mannwhitney_p, paired.sign_flip_p, paired.wilcoxon_p]
    assert all(p is not None and p >= 1e-6 for p in ps)
    # Differences that are equal up to the scores' rounding ((.43 - .40) vs (.44 - .41)) are
    # no variance either: a t-test on them would give p = 4e-31.
    shifted = paired_seed_tests(BASE + 0.03, BASE)
    assert np.ptp((BASE + 0.03) - BASE) > 0
    assert shifted.t_p is None and "no variance" in shifted.note
    # One constant arm against a varying one: Welch is defined and matches scipy.
    r = across_seed_tests([.41] * 3, [.40, .42, .39])
    assert r.welch_p == pytest.approx(stats.ttest_ind([.41] * 3, [.40, .42, .39], equal_var=False).pvalue)


def test_identical_arms_have_no_wilcoxon_and_sign_flip_one():
    r = paired_seed_tests([.4, .5, .6], [.4, .5, .6])
    assert r.sign_flip_p == 1.0 and r.wilcoxon_p is None and r.t_p is None
    assert "every difference is zero" in r.note


def test_paired_tests_need_enough_shared_seeds():
    r = paired_seed_tests([.41, .42], [.40, .40])
    assert r.t_p is None and r.sign_flip_p is None and "not enough seeds" in r.note
    assert r.mean_diff == pytest.approx(0.015)
    assert paired_seed_tests([.41, .42], [.40, .40], min_seeds=2).t_p is not None
    with pytest.raises(ValueError, match="same seeds"):
        paired_seed_tests([.4, .5, .6], [.4, .5])


def test_tost_is_two_one_sided_paired_t_tests():
    d = np.array([0.1, -0.15, 0.05, 0.12, -0.02]) / 100  # tight around 0
    r = paired_seed_tests(BASE[[0, 1, 2, 0, 1]] + d, BASE[[0, 1, 2, 0, 1]], margin=0.005)
    lower = stats.ttest_1samp(d, -0.005, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.005, alternative="less").pvalue
    assert r.tost_p == pytest.approx(max(lower, upper))
    assert r.tost_p < 0.05  # within +-0.5 pp: equivalence is shown
    # The oracle differences (mean +0.76 pp, wide CI) are not shown equivalent.
    assert paired_seed_tests(BASE + D_ORACLE, BASE).tost_p > 0.5


def test_seeds_for_power_reaches_the_power_and_no_fewer_would():
    mean, sd = D_ORACLE.mean(), D_ORACLE.std(ddof=1)
    alpha = 0.05 / 4
    n = seeds_for_power(mean, sd, alpha=alpha)
    assert n == math.ceil(TTestPower().solve_power(effect_size=mean / sd, alpha=alpha, power=0.8))
    power = lambda k: TTestPower().power(effect_size=mean / sd, nobs=k, alpha=alpha)  # noqa: E731
    assert power(n) >= 0.8 > power(n - 1)
    assert seeds_for_power(-mean, sd, alpha=alpha) == n  # two-sided: the sign does not matter
    assert seeds_for_power(0.0, sd, alpha=alpha) is None
    assert seeds_for_power(mean, 0.0, alpha=alpha) is None
    assert seeds_for_power(mean, None, alpha=alpha) is None


def _power_by_integration(d_z, n, alpha):
    """Two-sided paired t power, P(|T| > c), integrating the normal tails over the chi-square
    of the variance: independent of scipy's noncentral t."""
    df, nc = n - 1, d_z * math.sqrt(n)
    c = stats.t.isf(alpha / 2, df)
    f = lambda v: stats.chi2.pdf(v, df) * (stats.norm.sf(c * math.sqrt(v / df) - nc)  # noqa: E731
                                           + stats.norm.cdf(-c * math.sqrt(v / df) - nc))
    # Bounds around the chi-square's mass: over [0, inf) quad misses it for large df.
    lo, hi = stats.chi2.ppf(1e-14, df), stats.chi2.isf(1e-14, df)
    return integrate.quad(f, lo, hi, limit=400, epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("alpha", [0.05, 0.0125])
@pytest.mark.parametrize("d_z", [0.2, 0.5, 1.0, 1.64, 2.5, 4, 6, 10, 20, 40])
def test_seeds_for_power_is_exact_for_large_effects_too(d_z, alpha):
    # statsmodels' power is NaN once scipy's nct.cdf underflows to NaN in the far lower tail
    # (d_z >= 6 gave None, d_z = 10 gave 2 seeds instead of 3).
    n = seeds_for_power(d_z * 0.01, 0.01, alpha=alpha)
    assert n is not None
    assert _power_by_integration(d_z, n, alpha) >= 0.8
    assert n == 2 or _power_by_integration(d_z, n - 1, alpha) < 0.8
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solved = float(np.squeeze(TTestPower().solve_power(effect_size=d_z, alpha=alpha, power=0.8)))
    if math.isfinite(solved) and d_z < 6:  # where statsmodels was right, the answer is unchanged
        assert n == max(2, math.ceil(solved))


@pytest.mark.parametrize("n", [2, 40, 79, 80, 10_000])
def test_power_of_an_enormous_effect_is_one_without_warnings(n):
    # d_z = 7071: scipy's nct.sf is NaN at n = 79 (its series does not converge), which made
    # the bisection answer 80 seeds instead of 2.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_t_power(7071.0, n, alpha=0.05 / 3) == pytest.approx(1.0)
        assert seeds_for_power(70.71, 0.01, alpha=0.05 / 3) == 2


def test_seeds_for_power_gives_up_beyond_the_cap():
    assert seeds_for_power(0.0001, 0.01, alpha=0.05) is None  # d_z = 0.01: ~78,000 seeds
    assert seeds_for_power(0.001, 0.01, alpha=0.05) < MAX_SEEDS_FOR_POWER  # d_z = 0.1: ~800


# --------------------------------------------------------------------------- Friedman
def test_friedman_matches_scipy_and_an_exact_enumeration():
    table = np.array([[.40, .41, .39], [.42, .44, .41], [.38, .40, .385]])  # 3 seeds x 3 arms
    r = friedman_test(table)
    ref = stats.friedmanchisquare(*table.T)
    assert r.statistic == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue)
    assert r.exact and r.n_resamples == 6 ** 3
    # Every within-seed shuffle of the arms: (3!)^3 = 216 tables.
    perms = list(itertools.permutations(range(3)))
    chi2 = lambda t: stats.friedmanchisquare(*np.asarray(t).T).statistic  # noqa: E731
    null = [chi2([table[i][list(p)] for i, p in enumerate(ps)])
            for ps in itertools.product(perms, repeat=3)]
    assert r.permutation_p == pytest.approx(np.mean(np.array(null) >= ref.statistic - 1e-9))
    assert r.permutation_p > r.pvalue  # the chi-square approximation is too optimistic here


def test_friedman_undefined_cases_say_why():
    assert "at least 3 arms" in friedman_test(np.ones((3, 2))).note
    assert "not enough seeds" in friedman_test(np.arange(6.0).reshape(2, 3)).note
    r = friedman_test(np.array([[.4, .4, .4], [.5, .5, .5], [.3, .3, .3]]))
    assert r.pvalue is None and "no variance" in r.note
    big = friedman_test(np.random.default_rng(0).random((3, 5)), n_resamples=999)
    assert not big.exact and big.n_resamples == 999


def _brute_force_mann_whitney(a, b):
    """U and its two-sided p over every split of the pooled scores (ties count 1/2)."""
    pool = np.concatenate([a, b])

    def u(x, y):
        return sum((xi > yi) + 0.5 * (xi == yi) for xi in x for yi in y)

    null = []
    for idx in itertools.combinations(range(pool.size), len(a)):
        mask = np.zeros(pool.size, bool)
        mask[list(idx)] = True
        null.append(u(pool[mask], pool[~mask]))
    null, observed = np.array(null), u(a, b)
    return observed, min(1.0, 2 * min((null >= observed).mean(), (null <= observed).mean()))


@pytest.mark.parametrize("a, b", [
    ([.5, .5, .6, .7, .7], [.5, .4, .4, .5, .3]),
    ([.6, .6, .6, .7], [.5, .5, .5, .6]),
    ([.41, .42, .42], [.40, .42, .40, .41, .40, .42, .39, .40, .41]),
    ([.581, .574, .590], [.570, .566, .573, .561, .592]),  # no ties: scipy's exact null
    ([.3, .3, .3], [.3, .3, .3, .3]),
])
def test_mann_whitney_is_exact_with_and_without_ties(a, b):
    u, p = _brute_force_mann_whitney(np.array(a), np.array(b))
    r = across_seed_tests(a, b)
    assert r.mannwhitney_u == pytest.approx(u)
    assert r.mannwhitney_p == pytest.approx(p)
    assert r.mannwhitney_exact is True
    assert mann_whitney_test(a, b) == pytest.approx((u, p, True))


def test_mann_whitney_with_ties_is_not_scipys_distinct_score_null():
    # scipy's exact null assumes distinct scores: with these ties it says 0.032, U's own is 0.048.
    a, b = [.5, .5, .6, .7, .7], [.5, .4, .4, .5, .3]
    assert stats.mannwhitneyu(a, b, method="exact").pvalue == pytest.approx(2 / 63)
    assert mann_whitney_test(a, b)[1] == pytest.approx(0.047619, abs=1e-6)


def test_mann_whitney_with_ties_and_many_seeds_is_scipys_tie_corrected_normal():
    a, b = [.5] * 6 + [.6] * 6, [.4] * 6 + [.5] * 6  # C(24, 12) splits: past the limit
    assert math.comb(24, 12) > MANN_WHITNEY_MAX_SPLITS
    mw = stats.mannwhitneyu(a, b, method="asymptotic")
    assert mann_whitney_test(a, b) == pytest.approx((mw.statistic, mw.pvalue, False))
    assert across_seed_tests(a, b).mannwhitney_exact is False
    # The approximation stays near U's own null, estimated from random splits of the pool.
    pool, rng = np.array(a + b), np.random.default_rng(0)
    u = mw.statistic
    null = []
    for _ in range(4000):
        perm = rng.permutation(pool)
        x, y = perm[:12], perm[12:]
        null.append(((x[:, None] > y) + 0.5 * (x[:, None] == y)).sum())
    null = np.array(null)
    assert mw.pvalue == pytest.approx(2 * min((null >= u).mean(), (null <= u).mean()), abs=0.01)


@pytest.mark.parametrize("a, b, problem", [
    ([.5, np.nan, .6], [.5, .4, .4], "finite"),
    ([.5], [.5, .4, .4], "at least two scores per arm"),
])
def test_mann_whitney_refuses_what_it_cannot_test(a, b, problem):
    with pytest.raises(ValueError, match=problem):
        mann_whitney_test(a, b)


def test_across_seed_tests_need_two_seeds_per_arm_whatever_min_seeds_says():
    r = across_seed_tests([.5], [.5, .4, .4], min_seeds=1)
    assert r.mannwhitney_p is None and r.welch_p is None and "need >= 2 per arm" in r.note
