"""Statistics against scipy/statsmodels on small fixed inputs."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, f1_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from av1_ablation.statistics import (
    across_seed_tests,
    holm,
    macro_f1_from_confusion,
    mcnemar_from_counts,
    mcnemar_test,
    paired_bootstrap,
    probability_of_superiority,
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
