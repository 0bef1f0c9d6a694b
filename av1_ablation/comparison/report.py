"""Summarise comparable Stage-2 runs: tables, significance, verdict, markdown.

:func:`summarise` turns the runs of one comparable group into a
:class:`Comparison`; :func:`render_markdown` and :func:`render_text` print it.
The notebook uses the same functions, so the report and the notebook agree.

The evidence, in the order a reviewer should weigh it:

1. paired across seeds (the arms of one seed share initialisation, batch
   order, augmentation and dropout): per-seed differences against the
   reference, paired t-test with its interval, exact sign-flip test,
   Wilcoxon signed-rank, TOST equivalence, seeds needed for 80% power;
   Friedman's test over all arms first;
2. unpaired across seeds (Welch, Mann-Whitney): secondary;
3. on the test blocks (paired bootstrap resampling test pictures, McNemar
   per seed): test-set sampling noise only, never a verdict on its own.

The verdict rests on the winner-versus-reference pair: the winner is picked
on validation macro-F1, judged on test, with the pair's own seeds; only its
Holm-adjusted p also depends on the other arms (the verdict says when that decides it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from av1_ablation.comparison.runs import RunRecord
from av1_ablation.comparison.statistics import (MAX_SEEDS_FOR_POWER, BootstrapResult, FriedmanResult,
                                                PairedSeedResult, SeedTestResult, across_seed_tests,
                                                friedman_test, holm, mcnemar_test, paired_bootstrap,
                                                paired_seed_tests, seeds_for_power)
from av1_ablation.dataset.partitions import STAGE2_NAMES
from av1_ablation.errors import UserError
from av1_ablation.record.contract import (ACCURACY, BEST_EPOCH, BEST_VAL_MACRO_F1, BRIER, CLASS_KEYS, CLUSTER,
                                          ECE, EPOCHS_RUN, F1, MACRO_PRECISION, MACRO_RECALL, MEAN_THROUGHPUT, NLL,
                                          PROBA_COLUMNS, TEST, TEST_F1_AB, TEST_MACRO_F1, THROUGHPUT,
                                          TRAINABLE_PARAMS, TRAIN_SECONDS, Y_PRED, Y_TRUE, per_class)
from av1_ablation.record.metrics import calibration_metrics, classification_metrics

PRIMARY_METRIC = TEST_MACRO_F1
SELECTION_METRIC = BEST_VAL_MACRO_F1
PRIMARY_TESTS = ("paired_t", "sign_flip", "wilcoxon", "welch", "mannwhitney")
UNPAIRED_TESTS = ("welch", "mannwhitney")  # across every seed of each arm, not the shared ones
RESAMPLE_UNITS = ("clusters", "blocks")
# The seed protocol's thresholds, in percentage points of macro-F1 over the reference.
SUCCESS_PP, PARTIAL_PP, FAILURE_PP, AB_F1_SUCCESS = 2.0, 1.0, 0.5, 0.20
# A lead under the protocol's failure threshold is no practical win, so the same 0.5 pp
# is the margin within which two arms count as equivalent.
EQUIVALENCE_PP = FAILURE_PP
# Fewer shared seeds than this cannot show retraining noise, whatever --min-seeds says.
VERDICT_MIN_SEEDS = 3
TIE_PP = 0.01  # validation means closer than this (the printed precision) are a tie
POWER = 0.8
TRAINING_METRICS = (BEST_EPOCH, EPOCHS_RUN, TRAINABLE_PARAMS, TRAIN_SECONDS, MEAN_THROUGHPUT)
CALIBRATION_METRICS = (TEST + ECE, TEST + NLL, TEST + BRIER)


@dataclass
class ArmTests:
    """One arm against the reference."""

    paired: PairedSeedResult  # main evidence: on the seeds both arms share
    seeds: SeedTestResult  # unpaired across seeds (Welch, Mann-Whitney): secondary
    bootstrap_pooled: BootstrapResult | None  # over the shared seeds; clusters only, else None
    shared_seeds: list[int] = field(default_factory=list)
    per_seed: list[dict] = field(default_factory=list)  # seed, McNemarResult, BootstrapResult
    holm_p: dict[str, float | None] = field(default_factory=dict)  # family -> adjusted p
    seeds_for_power: int | None = None
    criterion: str = ""


@dataclass
class Comparison:
    """Everything the report shows for one group of comparable runs."""

    group: str
    reference: str
    arms: list[str]  # reference first, then by mean validation macro-F1, best first
    records: dict[str, list[RunRecord]]
    per_seed: pd.DataFrame  # one row per run: loss_type, seed, run_id, metrics
    tests: dict[str, ArmTests]
    winner: str
    primary_test: str
    alpha: float
    verdict: str
    friedman: FriedmanResult | None = None
    ties: list[str] = field(default_factory=list)
    winner_basis: str = "validation"  # "test" only when no run logged validation macro-F1
    resample: str = "clusters"  # the unit the test-side bootstrap resampled
    resample_note: str = ""
    holm_family: int = 0  # comparisons in every Holm family (untestable ones count as p = 1)
    friedman_line: str = ""
    power_line: str = ""
    equivalence_line: str = ""

    def summary(self) -> pd.DataFrame:
        """One row per arm with every number of the report (for summary.csv)."""
        g = self.per_seed.drop(columns=["run_id"]).groupby("loss_type")
        mean, sd = g.mean(numeric_only=True), g.std(numeric_only=True, ddof=1)
        out = mean.drop(columns=["seed"]).add_suffix("_mean").join(
            sd.drop(columns=["seed"]).add_suffix("_sd"))
        out.insert(0, "n_seeds", g.size())
        out = out.loc[self.arms].astype(object)
        for arm, t in self.tests.items():
            for key, value in _summary_row(t, self.alpha).items():
                out.loc[arm, key] = value
        out.insert(0, "is_winner", [a == self.winner for a in self.arms])
        out.insert(0, "group", self.group)
        return out.reset_index().rename(columns={"index": "loss_type"})


def _summary_row(t: ArmTests, alpha: float) -> dict:
    p, s, b = t.paired, t.seeds, t.bootstrap_pooled
    row = {
        "shared_seeds": p.n, "paired_delta": p.mean_diff, "paired_sd": p.sd_diff,
        "paired_ci_low": p.ci_low, "paired_ci_high": p.ci_high, "effect_size_dz": p.effect_size,
        "paired_t": p.t, "paired_t_p": p.t_p, "sign_flip_p": p.sign_flip_p,
        "sign_flip_min_p": p.sign_flip_min_p, "wilcoxon_p": p.wilcoxon_p, "tost_p": p.tost_p,
        "equivalent": None if p.tost_p is None else p.tost_p < alpha,
        "seeds_for_power": t.seeds_for_power, "paired_note": p.note,
        "welch_p": s.welch_p, "mannwhitney_p": s.mannwhitney_p, "p_superiority": s.p_superiority,
        "seed_tests_note": s.note, "bootstrap_unit": b.unit if b else None,
        "bootstrap_delta": b.delta if b else None, "bootstrap_ci_low": b.ci_low if b else None,
        "bootstrap_ci_high": b.ci_high if b else None, "bootstrap_p": b.pvalue if b else None,
        "seed_criterion": t.criterion,
    }
    row.update({f"{k}_holm": v for k, v in t.holm_p.items()})
    return row


# --------------------------------------------------------------------------- per-seed metrics
def _per_seed_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {"loss_type": r.loss_type, "seed": r.seed, "run_id": r.run_id}
        # Recompute from the predictions when a metric was not logged, so the tables never
        # mix checkpoints: the predictions are those of the reported checkpoint.
        pred = r.predictions
        derived = {}
        if pred is not None:
            derived = classification_metrics(pred[Y_TRUE], pred[Y_PRED], prefix=TEST)
            derived.update(calibration_metrics(pred[Y_TRUE], pred[list(PROBA_COLUMNS)], prefix=TEST))
        for key in (*derived, SELECTION_METRIC, *TRAINING_METRICS):
            row[key] = r.metrics.get(key, derived.get(key, np.nan))
        if MEAN_THROUGHPUT not in r.metrics:  # a run logged before the mean had a name: its last epoch
            row[MEAN_THROUGHPUT] = r.metrics.get(THROUGHPUT, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _criterion(delta_pp: float, ab_f1: float) -> str:
    if delta_pp > SUCCESS_PP and ab_f1 > AB_F1_SUCCESS:
        return "success"
    if delta_pp > PARTIAL_PP:
        return "partial"
    if delta_pp < FAILURE_PP:
        return "failure"
    return "none (between +0.5 and +1.0 pp)"


def _scores(per_seed: pd.DataFrame, arm: str, metric: str = PRIMARY_METRIC) -> pd.Series:
    d = per_seed[per_seed.loss_type == arm]
    return pd.Series(d[metric].to_numpy(dtype=float), index=d["seed"].to_numpy()).sort_index()


def _resample_units(records: list[RunRecord], resample: str) -> tuple[np.ndarray | None, str, str]:
    """Cluster label of every test block (None: blocks), the unit, and a sentence on it."""
    blocks = "test blocks resampled one by one, as if independent (this understates the variance)"
    if resample == "blocks":
        return None, "blocks", f"{blocks}, as asked (--resample blocks); no pooled test across seeds"
    lacking = [r for r in records if CLUSTER not in r.predictions.columns
               or r.predictions[CLUSTER].isna().any()]
    if lacking:
        names = ", ".join(f"{r.loss_type}/seed {r.seed}" for r in lacking[:3])
        return None, "blocks", (f"{len(lacking)} run(s) ({names}{' ...' if len(lacking) > 3 else ''}) "
                                f"have predictions without a cluster column (written before clusters were "
                                f"recorded): {blocks}; no pooled test across seeds")
    clusters = records[0].predictions[CLUSTER].to_numpy()
    for r in records:
        if not np.array_equal(r.predictions[CLUSTER].to_numpy(), clusters):
            raise UserError(f"run {r.run_id} ({r.loss_type}, seed {r.seed}) puts the same test blocks in "
                            "other clusters than the rest; compare runs of the same data set")
    n = len(np.unique(clusters))
    if n < 2:
        return None, "blocks", f"all test blocks come from one picture: {blocks}; no pooled test across seeds"
    return clusters, "clusters", f"test pictures resampled as clusters ({n} pictures, every QP of a picture together)"


def _pick_winner(per_seed: pd.DataFrame, reference: str, arms: list[str]) -> tuple[str, list[str], str]:
    """The arm with the best mean validation macro-F1, the arms tied with it, and the basis.

    A tie (closer than TIE_PP) goes to the reference, so no lead is claimed from a tie;
    otherwise to the higher mean. Test macro-F1 is used only when no validation score exists.
    """
    basis = "validation"
    means = per_seed.groupby("loss_type")[SELECTION_METRIC].mean()
    if means.reindex(arms).isna().all():
        basis, means = "test", per_seed.groupby("loss_type")[PRIMARY_METRIC].mean()
    means = means.reindex(arms).dropna()
    tied = [a for a in arms if a in means and means.max() - means[a] < TIE_PP / 100]
    winner = reference if reference in tied else max(tied, key=lambda a: (means[a], -arms.index(a)))
    return winner, [a for a in tied if a != winner], basis


# --------------------------------------------------------------------------- summarise
@dataclass(frozen=True)
class _Inputs:
    reference: str
    by_arm: dict[str, list[RunRecord]]
    per_seed: pd.DataFrame
    y_true: np.ndarray
    clusters: np.ndarray | None
    min_seeds: int
    n_resamples: int
    random_state: int


def _arm_tests(arm: str, x: _Inputs) -> ArmTests:
    """Paired and unpaired seed tests, per-seed test-block tests and the pooled cluster bootstrap."""
    s_arm, s_ref = _scores(x.per_seed, arm), _scores(x.per_seed, x.reference)
    shared = sorted(set(s_arm.index) & set(s_ref.index))
    paired = paired_seed_tests(s_arm[shared].to_numpy(), s_ref[shared].to_numpy(), min_seeds=x.min_seeds,
                               margin=EQUIVALENCE_PP / 100)
    runs = {r.seed: r.predictions[Y_PRED].to_numpy() for r in x.by_arm[arm]}
    ref_runs = {r.seed: r.predictions[Y_PRED].to_numpy() for r in x.by_arm[x.reference]}
    boot = dict(clusters=x.clusters, n_resamples=x.n_resamples, random_state=x.random_state)
    per = [{"seed": s, "mcnemar": mcnemar_test(x.y_true, runs[s], ref_runs[s]),
            "bootstrap": paired_bootstrap(x.y_true, runs[s], ref_runs[s], **boot)} for s in shared]
    # Seeds are pooled only when whole pictures are resampled: a block-level pool would look
    # tighter still while treating a picture's blocks (and its copies at every QP) as independent.
    pooled = None
    if x.clusters is not None and shared:
        pooled = paired_bootstrap(x.y_true, np.vstack([runs[s] for s in shared]),
                                  np.vstack([ref_runs[s] for s in shared]), **boot)
    ab = x.per_seed.loc[x.per_seed.loss_type == arm, TEST_F1_AB].mean()
    delta = paired.mean_diff if shared else s_arm.mean() - s_ref.mean()
    return ArmTests(paired=paired, seeds=across_seed_tests(s_arm, s_ref, min_seeds=x.min_seeds),
                    bootstrap_pooled=pooled, shared_seeds=shared, per_seed=per,
                    criterion=_criterion(100 * delta, ab))


_FAMILIES = {
    "paired_t": lambda t: t.paired.t_p, "sign_flip": lambda t: t.paired.sign_flip_p,
    "wilcoxon": lambda t: t.paired.wilcoxon_p, "welch": lambda t: t.seeds.welch_p,
    "mannwhitney": lambda t: t.seeds.mannwhitney_p,
    "bootstrap": lambda t: t.bootstrap_pooled.pvalue if t.bootstrap_pooled else None,
}


def _apply_holm(tests: dict[str, ArmTests], others: list[str], alpha: float) -> int:
    """Holm over every arm against the reference, per test; returns the family size.

    The family is fixed by design (every non-reference arm); an arm that cannot be tested
    stays in it as p = 1, so a missing run of one arm never loosens the correction of another.
    """
    for family, get in _FAMILIES.items():
        _, adjusted = holm([get(tests[a]) for a in others], alpha=alpha, missing="one")
        for arm, q in zip(others, adjusted):
            tests[arm].holm_p[family] = q
    m = max(len(others), 1)
    for arm in others:
        p = tests[arm].paired
        tests[arm].seeds_for_power = seeds_for_power(p.mean_diff, p.sd_diff, alpha=alpha / m, power=POWER)
    return len(others)


def _friedman(per_seed: pd.DataFrame, arms: list[str], min_seeds: int, random_state: int) -> FriedmanResult:
    """Friedman's test on the test macro-F1 of the seeds every arm has."""
    scores = {a: _scores(per_seed, a) for a in arms}
    common = sorted(set.intersection(*(set(s.index) for s in scores.values())))
    table = np.array([[scores[a][s] for a in arms] for s in common], dtype=float).reshape(len(common), len(arms))
    return friedman_test(table, min_seeds=min_seeds, random_state=random_state)


def _check_options(primary_test: str, resample: str) -> None:
    if primary_test not in PRIMARY_TESTS:
        raise UserError(f"unknown primary test {primary_test!r}; choose one of {', '.join(PRIMARY_TESTS)}")
    if resample not in RESAMPLE_UNITS:
        raise UserError(f"unknown resampling unit {resample!r}; choose one of {', '.join(RESAMPLE_UNITS)}")


def summarise(records: list[RunRecord], *, reference: str = "baseline", group: str = "all runs",
              alpha: float = 0.05, min_seeds: int = 3, n_resamples: int = 10_000,
              random_state: int = 0, primary_test: str = "paired_t",
              resample: str = "clusters") -> Comparison:
    """Compare each arm (``loss_type``) with the reference arm.

    Parameters
    ----------
    records : list of RunRecord
        Comparable runs (see :func:`av1_ablation.comparison.runs.check_comparable`) with
        test predictions on the same blocks.
    reference : str, default="baseline"
        The ``loss_type`` every other arm is compared with.
    group : str, default="all runs"
        Label of this group of runs in the report.
    alpha : float, default=0.05
        Family-wise error rate of Holm's correction over the arms.
    min_seeds : int, default=3
        Seeds (shared with the reference, for the paired tests) below which
        across-seed tests are "not enough seeds". The verdict needs at
        least 3 shared seeds whatever this says.
    n_resamples : int, default=10000
        Paired-bootstrap resamples.
    random_state : int, default=0
        Seed of the bootstrap and of Friedman's permutation draw, so reports are reproducible.
    primary_test : {"paired_t", "sign_flip", "wilcoxon", "welch", "mannwhitney"}, default="paired_t"
        Across-seed test whose Holm-adjusted p decides the verdict. Its raw p is the
        winner-reference pair's; Holm's step-down adjusts it by its rank among the other
        arms' p-values, and the verdict says so when that decides it.
    resample : {"clusters", "blocks"}, default="clusters"
        Unit of the test-side paired bootstrap: test pictures (the
        ``cluster`` column of the predictions), or single blocks. Predictions
        without clusters fall back to blocks, and the report says so.

    Returns
    -------
    comparison : Comparison
    """
    _check_options(primary_test, resample)
    by_arm: dict[str, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: r.seed):
        by_arm.setdefault(r.loss_type, []).append(r)
    if reference not in by_arm:
        raise UserError(f"reference arm {reference!r} has no finished run in {group} (arms found: "
                        f"{', '.join(sorted(by_arm))}); pass --reference with one of them")
    if any(r.predictions is None for r in records):
        raise UserError("every run needs its test predictions to be compared")
    per_seed = _per_seed_frame(records)
    val = per_seed.groupby("loss_type")[SELECTION_METRIC].mean()
    others = sorted((a for a in by_arm if a != reference), key=lambda a: (-np.nan_to_num(val[a], nan=-1), a))
    arms = [reference, *others]
    clusters, unit, unit_note = _resample_units(records, resample)
    x = _Inputs(reference, by_arm, per_seed, records[0].predictions[Y_TRUE].to_numpy(), clusters,
                min_seeds, n_resamples, random_state)
    tests = {arm: _arm_tests(arm, x) for arm in others}
    family = _apply_holm(tests, others, alpha)
    winner, ties, basis = _pick_winner(per_seed, reference, arms)
    c = Comparison(group, reference, arms, by_arm, per_seed, tests, winner, primary_test, alpha, verdict="",
                   friedman=_friedman(per_seed, arms, min_seeds, random_state), ties=ties,
                   winner_basis=basis, resample=unit, resample_note=unit_note, holm_family=family)
    c.verdict, c.friedman_line, c.power_line = _verdict(c), friedman_line(c), power_line(c)
    c.equivalence_line = equivalence_line(c)
    return c


# --------------------------------------------------------------------------- sentences
_TEST_NAMES = {
    "paired_t": "paired t-test on the per-seed differences",
    "sign_flip": "exact sign-flip test on the per-seed differences",
    "wilcoxon": "Wilcoxon signed-rank test on the per-seed differences",
    "welch": "Welch's t-test across seeds (unpaired)",
    "mannwhitney": "exact Mann-Whitney U across seeds (unpaired)",
}


def _pp(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:+.{digits}f}"


def _primary_p(t: ArmTests, test: str) -> tuple[float | None, str]:
    if test in UNPAIRED_TESTS:
        return getattr(t.seeds, f"{test}_p"), t.seeds.note
    return {"paired_t": t.paired.t_p, "sign_flip": t.paired.sign_flip_p,
            "wilcoxon": t.paired.wilcoxon_p}[test], t.paired.note


def _winner_sentence(c: Comparison) -> str:
    w = c.winner
    d = c.per_seed[c.per_seed.loss_type == w]
    metric = SELECTION_METRIC if c.winner_basis == "validation" else PRIMARY_METRIC
    s = f"Best mean {c.winner_basis} macro-F1: {w} ({100 * d[metric].mean():.2f}% over {len(d)} seed(s)"
    if c.winner_basis == "validation":
        s += f"; its test macro-F1: {100 * d[PRIMARY_METRIC].mean():.2f}%)."
    else:
        s += ("). No run logged validation macro-F1, so the winner is picked on the test split, "
              "which then also judges it (optimistic).")
    if c.ties:
        why = "the reference wins a tie" if w == c.reference else "it has the higher mean"
        s += (f" Tied with {', '.join(c.ties)} (means within {TIE_PP} pp); {w} is reported because {why}.")
    return s


def _test_set_evidence(c: Comparison, arm: str) -> str:
    """The test-block bootstrap of ``arm``, labelled as what it is."""
    t = c.tests[arm]
    label = ("Test-set evidence only (it measures which test pictures happened to be drawn, not "
             "retraining noise, so it is no verdict)")
    if t.bootstrap_pooled is not None:
        b = t.bootstrap_pooled
        return (f"{label}: paired bootstrap resampling {b.n_units} test pictures, pooled over the shared "
                f"seeds: Δ = {_pp(b.delta)} pp, 95% CI [{_pp(b.ci_low)}, {_pp(b.ci_high)}] pp, "
                f"one-sided p = {b.pvalue:.3g}.")
    if t.per_seed:
        items = "; ".join(f"seed {p['seed']}: Δ = {_pp(p['bootstrap'].delta)} pp, 95% CI "
                          f"[{_pp(p['bootstrap'].ci_low)}, {_pp(p['bootstrap'].ci_high)}]" for p in t.per_seed)
        return f"{label}: paired bootstrap per seed, resampling single test blocks as if independent: {items}."
    return ""


def _holm_dependence(c: Comparison, raw: float, q: float) -> str:
    """A clause when the verdict hangs on the other arms' p-values, else "".

    Holm's step-down adjusts the winner's p by its rank among all arms' p-values, so
    another arm's runs can move it across alpha (one lost run of a clearly worse arm can
    turn "survives" into "does not survive"). That happens exactly when the
    Holm-adjusted p and the Bonferroni bound ``min(1, m * p)``, which depends on the pair
    alone, fall on different sides of alpha; in the ordinary case the sentence is unchanged.
    """
    bound = min(1.0, c.holm_family * raw)
    if (q < c.alpha) == (bound < c.alpha):
        return ""
    return (f"; this depends on the other arms' p-values: Holm's step-down passes it only because "
            f"smaller p-values of other arms were rejected first, and the Bonferroni bound "
            f"{c.holm_family} × p = {bound:.3g} alone would not")


def _lead_sentence(c: Comparison) -> str:
    w, ref, t = c.winner, c.reference, c.tests[c.winner]
    p = t.paired
    lead = (f"On the test split, paired over the {p.n} seed(s) {w} and {ref} share, "
            f"its lead is {_pp(p.mean_diff)} pp")
    if p.n < VERDICT_MIN_SEEDS:
        return (f"{lead}. Not enough seeds to judge retraining noise ({p.n} shared; need at least "
                f"{VERDICT_MIN_SEEDS}). {_test_set_evidence(c, w)}").rstrip()
    raw, note = _primary_p(t, c.primary_test)
    q = t.holm_p.get(c.primary_test)
    if raw is None or q is None:
        return f"{lead}; the {_TEST_NAMES[c.primary_test]} cannot judge it: {note or 'no p-value'}."
    ci = f" (95% CI [{_pp(p.ci_low)}, {_pp(p.ci_high)}] pp)" if p.ci_low is not None else ""
    if c.primary_test in UNPAIRED_TESTS:
        ci += (f"; over every seed of each ({t.seeds.n_a} of {w}, {t.seeds.n_b} of {ref}) the "
               f"means differ by {_pp(t.seeds.mean_diff)} pp")
        if c.primary_test == "welch":  # its p exists (checked above), so does its CI
            ci += f" (Welch 95% CI [{_pp(t.seeds.welch_ci_low)}, {_pp(t.seeds.welch_ci_high)}] pp)"
        else:  # Mann-Whitney: its p exists, so does P(A>B)
            ci += (f" and a seed of {w} beats one of {ref} with probability "
                   f"{t.seeds.p_superiority:.2f} (ties count 1/2)")
    name = _TEST_NAMES[c.primary_test]
    if c.primary_test == "mannwhitney" and not t.seeds.mannwhitney_exact:
        name = "Mann-Whitney U across seeds (unpaired; ties, so the tie-corrected normal approximation)"
    test = (f"({name}, Holm over {c.holm_family} comparison(s) with {ref}: "
            f"adjusted p = {q:.3g}{_holm_dependence(c, raw, q)})")
    # The two-sided test is also significant when the arm chosen on validation is worse on
    # test, and that must not read as a lead that survives. The direction is the tested one:
    # Mann-Whitney compares ranks, so one diverged seed can pull the means the other way.
    tested_diff = t.seeds.mean_diff if c.primary_test in UNPAIRED_TESTS else p.mean_diff
    ahead = t.seeds.p_superiority > 0.5 if c.primary_test == "mannwhitney" else tested_diff > 0
    disagree = c.primary_test == "mannwhitney" and ahead != (tested_diff > 0)
    if q < c.alpha and not ahead:
        s = (f"{lead}{ci}; {w}, the arm chosen on validation, is significantly worse than {ref} on "
             f"test: the difference survives Holm's correction at alpha = {c.alpha:g} {test}.")
        if disagree:
            s += (" Its mean is ahead, though: the ranks and the means disagree, as one seed far "
                  "from the rest makes them.")
    else:
        word = "survives" if q < c.alpha else "does not survive"
        s = f"{lead}{ci}; it {word} Holm's correction at alpha = {c.alpha:g} {test}."
    if c.primary_test in ("sign_flip", "wilcoxon"):
        s += f" With {p.n} seeds this test cannot go below p = {p.sign_flip_min_p:.3g}."
    if q < c.alpha and ahead and disagree:
        level = "behind" if tested_diff < 0 else "level with"
        s = (f"{lead}{ci}; the ranks favour {w}, and that survives Holm's correction at alpha = "
             f"{c.alpha:g} {test}, but its mean is {level} {ref}'s: the ranks and the means "
             "disagree, as one seed far from the rest (a diverged one) makes them, so this is not "
             "a practical win.")
    elif q < c.alpha and ahead and 100 * tested_diff < FAILURE_PP:
        s += f" The lead is under the protocol's {FAILURE_PP} pp threshold: not a practical win."
    elif q >= c.alpha and p.tost_p is not None:
        if p.tost_p < c.alpha:
            s += (f" It is within ±{EQUIVALENCE_PP} pp of {ref} (paired TOST p = {p.tost_p:.3g}): "
                  "equivalent in practice.")
        else:
            s += (f" Equivalence within ±{EQUIVALENCE_PP} pp is not shown either (paired TOST "
                  f"p = {p.tost_p:.3g}): these seeds cannot tell a practical lead from none.")
    return s


def equivalence_line(c: Comparison) -> str:
    """Which arms are shown equivalent to the reference within the margin (paired TOST).

    Claiming that *every* arm is equivalent needs each TOST to pass at alpha, with no
    multiplicity correction (an intersection-union test, Berger 1982).
    """
    others, ref = c.arms[1:], c.reference
    tested = [a for a in others if c.tests[a].paired.tost_p is not None]
    equivalent = [a for a in tested if c.tests[a].paired.tost_p < c.alpha]
    margin = f"±{EQUIVALENCE_PP} pp"
    if others and len(equivalent) == len(others):
        return (f"Every arm is within {margin} of {ref} on test (paired TOST, each p < {c.alpha:g}): "
                "no loss changes macro-F1 by a practical amount.")
    if equivalent:
        return (f"Within {margin} of {ref} on test (paired TOST, p < {c.alpha:g}): {', '.join(equivalent)}; "
                "equivalence is not shown for the other arms.")
    if tested:
        return (f"No arm is shown to be within {margin} of {ref} (paired TOST), so 'no difference' "
                "is not established either.")
    if not others:
        return f"Equivalence within {margin} of {ref}: no other arm to compare."
    return f"Equivalence within {margin} of {ref}: not computed (no arm has enough shared seeds with spread)."


def _verdict(c: Comparison) -> str:
    """The winner sentence and its lead over the reference.

    The numbers are the winner-reference pair's; only the Holm-adjusted p also depends on the
    other arms' p-values, and the sentence says so when that decides it (:func:`_holm_dependence`).
    """
    if len(c.arms) == 1:
        lead = f"Only the reference arm {c.reference} has runs: there is nothing to compare."
    elif c.winner == c.reference:
        # "No loss beats the reference" is a statement about every arm: the equivalence line
        # says whether the data also support "no loss differs by a practical amount".
        lead = (f"No arm beats the reference {c.reference} on validation, so there is no lead to test. "
                f"{equivalence_line(c)}")
    else:
        lead = _lead_sentence(c)
    return f"{_winner_sentence(c)} {lead}"


def friedman_line(c: Comparison) -> str:
    """One sentence on Friedman's test over all arms."""
    f = c.friedman
    if f is None or f.note:
        return f"Friedman test over all {len(c.arms)} arms: not computed ({f.note if f else 'no arms'})."
    how = "exact" if f.exact else f"{f.n_resamples} random within-seed shuffles"
    return (f"Friedman test over all {f.n_arms} arms on the {f.n_seeds} seeds they all share (test macro-F1): "
            f"chi² = {f.statistic:.2f}, permutation p = {f.permutation_p:.3g} ({how}; the chi-square "
            f"approximation gives {f.pvalue:.3g}, unreliable with few seeds).")


def power_line(c: Comparison) -> str:
    """Seeds the winner-reference pair (or the best other arm) would need for 80% power."""
    if len(c.arms) < 2:
        return "Power: no arm to compare with the reference."
    arm = c.winner if c.winner != c.reference else c.arms[1]
    t, ref = c.tests[arm], c.reference
    p, m = t.paired, c.holm_family
    if t.seeds_for_power is None:
        if p.note or p.mean_diff == 0 or not p.sd_diff:
            why = p.note or ("no effect to detect" if p.mean_diff == 0 else "no spread to estimate it from")
        else:  # seeds_for_power gives up beyond its cap rather than print a meaningless count
            why = (f"an effect this small (d_z = {p.effect_size:.2g}) would need more than "
                   f"{MAX_SEEDS_FOR_POWER} seeds")
        return f"Power ({arm} vs {ref}): not computed: {why}."
    return (f"Power ({arm} vs {ref}): observed paired effect {_pp(p.mean_diff)} pp, sd {100 * p.sd_diff:.2f} pp "
            f"over {p.n} seeds (d_z = {p.effect_size:.2f}); a two-sided paired t-test at the first Holm level "
            f"alpha/{m} = {c.alpha / m:.3g} needs {t.seeds_for_power} seeds for {100 * POWER:.0f}% power to "
            "detect an effect this size (a planning figure from the observed effect, not evidence).")


# --------------------------------------------------------------------------- tables
def _pm(values: pd.Series, scale: float = 100.0, digits: int = 2) -> str:
    v = values.dropna().to_numpy(dtype=float) * scale
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _p(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3g}"


def _ph(raw, adjusted) -> str:
    return "n/a" if raw is None else f"{_p(raw)} ({_p(adjusted)})"


def _ci(low, high) -> str:
    return "n/a" if low is None else f"[{_pp(low)}, {_pp(high)}]"


def _unit_label(c: Comparison) -> str:
    return "pictures" if c.resample == "clusters" else "blocks"


def _overall_row(c: Comparison, a: str, d: pd.DataFrame) -> dict:
    t = c.tests.get(a)
    return {"loss": a, "seeds": len(d), "test macro-F1": _pm(d[TEST_MACRO_F1]),
            "val macro-F1": _pm(d[SELECTION_METRIC]),
            "Δ vs ref, paired (pp)": "reference" if t is None else _pp(t.paired.mean_diff),
            "95% CI over seeds (pp)": "" if t is None else _ci(t.paired.ci_low, t.paired.ci_high),
            "macro precision": _pm(d[TEST + MACRO_PRECISION]), "macro recall": _pm(d[TEST + MACRO_RECALL]),
            "accuracy": _pm(d[TEST + ACCURACY])}


def _paired_row(c: Comparison, a: str) -> dict:
    t = c.tests[a]
    p, h = t.paired, t.holm_p
    tost = "n/a" if p.tost_p is None else f"{_p(p.tost_p)}{' (equivalent)' if p.tost_p < c.alpha else ''}"
    return {"loss": a, "shared seeds": p.n, "Δ mean (pp)": _pp(p.mean_diff),
            "sd of Δ (pp)": "n/a" if p.sd_diff is None else f"{100 * p.sd_diff:.2f}",
            "95% CI (pp)": _ci(p.ci_low, p.ci_high), "d_z": _p(p.effect_size),
            "paired t p (Holm)": _ph(p.t_p, h["paired_t"]),
            "sign-flip p (Holm) [min]": "n/a" if p.sign_flip_p is None else
            f"{_ph(p.sign_flip_p, h['sign_flip'])} [{_p(p.sign_flip_min_p)}]",
            "Wilcoxon p (Holm)": _ph(p.wilcoxon_p, h["wilcoxon"]),
            f"TOST ±{EQUIVALENCE_PP} pp p": tost,
            f"seeds for {100 * POWER:.0f}% power": "n/a" if t.seeds_for_power is None else t.seeds_for_power,
            "note": p.note}


def _secondary_row(c: Comparison, a: str) -> dict:
    t = c.tests[a]
    s, b, h = t.seeds, t.bootstrap_pooled, t.holm_p
    return {"loss": a,
            "Δ pooled (pp)": "n/a" if b is None else _pp(b.delta),
            f"95% CI ({_unit_label(c)}, pp)": "per seed only" if b is None else _ci(b.ci_low, b.ci_high),
            "bootstrap p (Holm)": "n/a" if b is None else _ph(b.pvalue, h["bootstrap"]),
            "Welch p (Holm)": s.note or _ph(s.welch_p, h["welch"]),
            "Mann-Whitney p (Holm)": _ph(s.mannwhitney_p, h["mannwhitney"]) if s.mannwhitney_p is not None
            else s.note, "P(A>B)": _p(s.p_superiority), "seed criterion": t.criterion}


def tables(c: Comparison) -> dict[str, pd.DataFrame]:
    """The report's tables as strings, keyed by title (values in % unless named)."""
    t1, t2, t3, t4, t5, t6, t7 = [], [], [], [], [], [], []
    for a in c.arms:
        d = c.per_seed[c.per_seed.loss_type == a]
        t1.append(_overall_row(c, a, d))
        t2.append({"loss": a, **{name: _pm(d[TEST + per_class(F1, k)]) for name, k in zip(STAGE2_NAMES, CLASS_KEYS)}})
        t3.append({"loss": a, "best epoch": _pm(d[BEST_EPOCH], 1, 1), "epochs run": _pm(d[EPOCHS_RUN], 1, 1),
                   "trainable params": _pm(d[TRAINABLE_PARAMS], 1, 0),
                   "wall time (s)": _pm(d[TRAIN_SECONDS], 1, 1), "blocks/s": _pm(d[MEAN_THROUGHPUT], 1, 0)})
        t4.append({"loss": a, "ECE (%)": _pm(d[TEST + ECE]), "NLL": _pm(d[TEST + NLL], 1, 4),
                   "Brier": _pm(d[TEST + BRIER], 1, 4)})
        if a not in c.tests:
            continue
        t5.append(_paired_row(c, a))
        t6.append(_secondary_row(c, a))
        for row in c.tests[a].per_seed:
            mc, b = row["mcnemar"], row["bootstrap"]
            t7.append({"loss": a, "seed": row["seed"], "Δ macro-F1 (pp)": _pp(b.delta),
                       f"95% CI ({_unit_label(c)}, pp)": _ci(b.ci_low, b.ci_high), "bootstrap p": _p(b.pvalue),
                       "McNemar b/c": f"{mc.b}/{mc.c}", "McNemar p": f"{_p(mc.pvalue)} ({mc.method})"})
    return {
        "Table 1: overall (test set; mean ± sd over seeds)": pd.DataFrame(t1),
        "Table 2: per-class test F1 (%)": pd.DataFrame(t2),
        "Table 3: training details": pd.DataFrame(t3),
        "Table 4: calibration (test set, 15-bin ECE)": pd.DataFrame(t4),
        f"Table 5: paired across seeds against {c.reference} (main evidence; test macro-F1)": pd.DataFrame(t5),
        f"Table 6: test-set bootstrap and unpaired seed tests against {c.reference} (secondary)": pd.DataFrame(t6),
        "Table 7: paired tests on the test blocks, per seed": pd.DataFrame(t7),
    }


def md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cells = [[str(v) for v in frame.columns]] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines) + "\n"


NOTES = (
    "Δ is arm minus reference in percentage points of test macro-F1. Table 5 is the main evidence: "
    "per-seed differences on the seeds both arms share (a seed fixes initialisation, batch order, "
    "augmentation and dropout in every arm, so the arms of one seed are paired); its CI is the paired "
    "t-interval of the mean difference, i.e. the uncertainty of the lead under retraining. All its p-values "
    "are two-sided. The exact sign-flip test cannot go below 2 / 2^k with k seeds (0.25 with 3, 0.031 with 6); "
    f"neither can Wilcoxon's. TOST tests equivalence within ±{EQUIVALENCE_PP} pp (p < alpha: equivalent). "
    "Seeds for 80% power: a two-sided paired t-test at the first Holm level (alpha divided by the family size), "
    "for the observed effect: a planning figure, not evidence. Holm's step-down correction runs over all arms "
    "compared with the reference, within each test; an arm that cannot be tested counts as p = 1. "
    "Table 6 and 7 measure test-set sampling noise only: the paired bootstrap (macro-F1 recomputed on each "
    "resample, one-sided p) resamples test pictures, or single blocks where named; McNemar is two-sided "
    "(b: arm right, reference wrong), per seed only. Welch and Mann-Whitney treat seeds as unpaired. "
    f"Seed criteria (reported beside the statistics, not instead of them): success = Δ > +{SUCCESS_PP} pp "
    f"and AB F1 > {100 * AB_F1_SUCCESS:.0f}%; partial = Δ > +{PARTIAL_PP} pp; failure = Δ < +{FAILURE_PP} pp."
)


def render_markdown(comparisons: list[Comparison], *, title: str = "Stage-2 loss ablation",
                    selection: str = "", left_out=(), figures=()) -> str:
    """The whole report as markdown (``figures``: relative paths of the saved figures)."""
    out = [f"# {title}\n"]
    if selection:
        out.append(f"Runs: {selection}.\n")
    for c in comparisons:
        if len(comparisons) > 1:
            out.append(f"## Group {c.group}\n")
        out.append(f"**Verdict.** {c.verdict}\n")
        out.append(f"**Friedman.** {c.friedman_line}\n")
        out.append(f"**Power.** {c.power_line}\n")
        out.append(f"**Equivalence.** {c.equivalence_line}\n")
        out.append(f"**Test-side resampling.** {c.resample_note}.\n")
        for name, frame in tables(c).items():
            out.append(f"### {name}\n\n{md_table(frame)}")
    out.append(f"### Notes\n\n{NOTES}\n")
    if left_out:
        out.append("### Runs left out\n\n" + md_table(pd.DataFrame(list(left_out))))
    if figures:
        out.append("### Figures\n\n" + "\n".join(f"![{f}]({f})" for f in figures) + "\n")
    return "\n".join(out)


def render_text(c: Comparison) -> str:
    """Terminal version of the tables, the Friedman and power lines and the verdict."""
    parts = [f"== {c.group} (reference: {c.reference}) =="]
    for name, frame in tables(c).items():
        parts.append(f"\n{name}\n{frame.to_string(index=False) if not frame.empty else '(none)'}")
    parts.append(f"\nTest-side resampling: {c.resample_note}.")
    parts.append(f"\n{c.friedman_line}\n{c.power_line}\nEquivalence: {c.equivalence_line}\n\n"
                 f"Verdict: {c.verdict}")
    return "\n".join(parts)
