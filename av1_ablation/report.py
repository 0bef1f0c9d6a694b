"""Summarise comparable Stage-2 runs: tables, significance, verdict, markdown.

:func:`summarise` turns the runs of one comparable group into a
:class:`Comparison`; :func:`render_markdown` and :func:`render_text` print it.
The notebook uses the same functions, so the report and the notebook agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from av1_ablation.errors import UserError
from av1_ablation.metrics import CLASS_KEYS, calibration_metrics, classification_metrics
from av1_ablation.partitions import STAGE2_NAMES
from av1_ablation.runs import RunRecord
from av1_ablation.statistics import (
    BootstrapResult,
    McNemarResult,
    SeedTestResult,
    across_seed_tests,
    holm,
    mcnemar_from_counts,
    mcnemar_test,
    paired_bootstrap,
)

PRIMARY_METRIC = "test_macro_f1"
PRIMARY_TESTS = ("auto", "welch", "mannwhitney", "bootstrap", "mcnemar")
# The seed protocol's thresholds, in percentage points of macro-F1 over the reference.
SUCCESS_PP, PARTIAL_PP, FAILURE_PP, AB_F1_SUCCESS = 2.0, 1.0, 0.5, 0.20
TRAINING_METRICS = ("best_epoch", "epochs_run", "trainable_params", "train_seconds", "train_blocks_per_s")
CALIBRATION_METRICS = ("test_ece", "test_nll", "test_brier")


@dataclass
class ArmTests:
    """One arm against the reference."""

    seeds: SeedTestResult
    mcnemar_pooled: McNemarResult
    bootstrap_pooled: BootstrapResult
    per_seed: list[dict] = field(default_factory=list)  # seed, McNemarResult, BootstrapResult
    holm_p: dict[str, float | None] = field(default_factory=dict)  # family -> adjusted p
    criterion: str = ""


@dataclass
class Comparison:
    """Everything the report shows for one group of comparable runs."""

    group: str
    reference: str
    arms: list[str]  # reference first, then by mean test macro-F1, best first
    records: dict[str, list[RunRecord]]
    per_seed: pd.DataFrame  # one row per run: loss_type, seed, run_id, metrics
    tests: dict[str, ArmTests]
    winner: str
    primary_test: str
    alpha: float
    verdict: str

    def summary(self) -> pd.DataFrame:
        """One row per arm with every number of the report (for summary.csv)."""
        g = self.per_seed.drop(columns=["run_id"]).groupby("loss_type")
        mean, sd = g.mean(numeric_only=True), g.std(numeric_only=True, ddof=1)
        out = mean.drop(columns=["seed"]).add_suffix("_mean").join(
            sd.drop(columns=["seed"]).add_suffix("_sd"))
        out.insert(0, "n_seeds", g.size())
        out = out.loc[self.arms]
        for arm, t in self.tests.items():
            row = {
                "delta_macro_f1": t.bootstrap_pooled.delta, "delta_ci_low": t.bootstrap_pooled.ci_low,
                "delta_ci_high": t.bootstrap_pooled.ci_high, "bootstrap_p": t.bootstrap_pooled.pvalue,
                "mcnemar_b": t.mcnemar_pooled.b, "mcnemar_c": t.mcnemar_pooled.c,
                "mcnemar_p": t.mcnemar_pooled.pvalue, "welch_p": t.seeds.welch_p,
                "mannwhitney_p": t.seeds.mannwhitney_p, "p_superiority": t.seeds.p_superiority,
                "seed_tests_note": t.seeds.note, "seed_criterion": t.criterion,
            }
            row.update({f"{k}_holm": v for k, v in t.holm_p.items()})
            for key, value in row.items():
                out.loc[arm, key] = value
        out.insert(0, "group", self.group)
        return out.reset_index().rename(columns={"index": "loss_type"})


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
            derived = classification_metrics(pred["y_true"], pred["y_pred"], prefix="test_")
            derived.update(calibration_metrics(pred["y_true"], pred[["p_split", "p_rect", "p_ab"]],
                                               prefix="test_"))
        for key in (*derived, "best_val_macro_f1", *TRAINING_METRICS):
            row[key] = r.metrics.get(key, derived.get(key, np.nan))
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


def _stack(records: list[RunRecord]) -> np.ndarray:
    return np.vstack([r.predictions["y_pred"].to_numpy() for r in records])


# --------------------------------------------------------------------------- summarise
def summarise(records: list[RunRecord], *, reference: str = "baseline", group: str = "all runs",
              alpha: float = 0.05, min_seeds: int = 3, n_resamples: int = 10_000,
              random_state: int = 0, primary_test: str = "auto") -> Comparison:
    """Compare each arm (``loss_type``) with the reference arm.

    Parameters
    ----------
    records : list of RunRecord
        Comparable runs (see :func:`av1_ablation.runs.check_comparable`) with
        test predictions on the same blocks.
    reference : str, default="baseline"
        The ``loss_type`` every other arm is compared with.
    group : str, default="all runs"
        Label of this group of runs in the report.
    alpha : float, default=0.05
        Family-wise error rate of Holm's correction over the arms.
    min_seeds : int, default=3
        Seeds per arm below which across-seed tests are "not enough seeds".
    n_resamples : int, default=10000
        Paired-bootstrap resamples.
    random_state : int, default=0
        Seed of the bootstrap, so reports are reproducible.
    primary_test : {"auto", "welch", "mannwhitney", "bootstrap", "mcnemar"}, default="auto"
        Test whose Holm-adjusted p decides the verdict. ``"auto"``: Welch's
        t across seeds when every arm has ``min_seeds`` seeds, else the
        pooled paired bootstrap on the test blocks.

    Returns
    -------
    comparison : Comparison
    """
    if primary_test not in PRIMARY_TESTS:
        raise UserError(f"unknown primary test {primary_test!r}; choose one of {', '.join(PRIMARY_TESTS)}")
    by_arm: dict[str, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: r.seed):
        by_arm.setdefault(r.loss_type, []).append(r)
    if reference not in by_arm:
        raise UserError(f"reference arm {reference!r} has no finished run in {group} (arms found: "
                        f"{', '.join(sorted(by_arm))}); pass --reference with one of them")
    if any(r.predictions is None for r in records):
        raise UserError("every run needs its test predictions to be compared")
    per_seed = _per_seed_frame(records)
    means = per_seed.groupby("loss_type")[PRIMARY_METRIC].mean()
    others = sorted((a for a in by_arm if a != reference), key=lambda a: -means[a])
    arms = [reference, *others]

    y_true = records[0].predictions["y_true"].to_numpy()
    ref_runs = {r.seed: r for r in by_arm[reference]}
    ref_scores = per_seed.loc[per_seed.loss_type == reference, PRIMARY_METRIC].to_numpy()
    ab_means = per_seed.groupby("loss_type")["test_f1_ab"].mean()
    tests: dict[str, ArmTests] = {}
    for arm in others:
        scores = per_seed.loc[per_seed.loss_type == arm, PRIMARY_METRIC].to_numpy()
        per = []
        b_sum = c_sum = 0
        for r in by_arm[arm]:  # paired by seed: same seed of the reference
            if r.seed not in ref_runs:
                continue
            ref_pred = ref_runs[r.seed].predictions["y_pred"].to_numpy()
            mc = mcnemar_test(y_true, r.predictions["y_pred"].to_numpy(), ref_pred)
            bs = paired_bootstrap(y_true, r.predictions["y_pred"].to_numpy(), ref_pred,
                                  n_resamples=n_resamples, random_state=random_state)
            b_sum, c_sum = b_sum + mc.b, c_sum + mc.c
            per.append({"seed": r.seed, "mcnemar": mc, "bootstrap": bs})
        pooled_bs = paired_bootstrap(y_true, _stack(by_arm[arm]), _stack(by_arm[reference]),
                                     n_resamples=n_resamples, random_state=random_state)
        delta_pp = 100 * (means[arm] - means[reference])
        tests[arm] = ArmTests(
            seeds=across_seed_tests(scores, ref_scores, min_seeds=min_seeds),
            mcnemar_pooled=mcnemar_from_counts(b_sum, c_sum), bootstrap_pooled=pooled_bs,
            per_seed=per, criterion=_criterion(delta_pp, ab_means[arm]))

    families = {
        "welch": lambda t: t.seeds.welch_p, "mannwhitney": lambda t: t.seeds.mannwhitney_p,
        "mcnemar": lambda t: t.mcnemar_pooled.pvalue, "bootstrap": lambda t: t.bootstrap_pooled.pvalue,
    }
    for family, get in families.items():
        _, adjusted = holm([get(tests[a]) for a in others], alpha=alpha)
        for arm, q in zip(others, adjusted):
            tests[arm].holm_p[family] = q
    if primary_test == "auto":
        enough = all(len(v) >= min_seeds for v in by_arm.values())
        primary_test = "welch" if enough else "bootstrap"
    winner = max(arms, key=lambda a: means[a])
    comparison = Comparison(group, reference, arms, by_arm, per_seed, tests, winner, primary_test,
                            alpha, verdict="")
    comparison.verdict = _verdict(comparison, means)
    return comparison


_TEST_NAMES = {
    "welch": "Welch's t-test across seeds", "mannwhitney": "exact Mann-Whitney U across seeds",
    "bootstrap": "paired bootstrap of macro-F1 on the test blocks, pooled over seeds",
    "mcnemar": "McNemar's test on the test blocks, pooled over seeds",
}


def _verdict(c: Comparison, means: pd.Series) -> str:
    w, ref = c.winner, c.reference
    n = {a: len(v) for a, v in c.records.items()}
    head = f"Best mean test macro-F1: {w} ({100 * means[w]:.2f}%, {n[w]} seed{'s' * (n[w] != 1)})."
    if w == ref:
        return head + f" No arm beats the reference {ref}, so there is no lead to test."
    delta = 100 * (means[w] - means[ref])
    q = c.tests[w].holm_p.get(c.primary_test)
    how = f"{_TEST_NAMES[c.primary_test]}, Holm over {len(c.arms) - 1} arm(s)"
    if q is None:
        return head + (f" Its lead of {delta:+.2f} pp over {ref} cannot be tested with {how}: "
                       f"{c.tests[w].seeds.note or 'no p-value'}.")
    word = "survives" if q < c.alpha else "does not survive"
    return head + (f" Its lead of {delta:+.2f} pp over {ref} {word} Holm's correction at "
                   f"alpha = {c.alpha:g} ({how}: adjusted p = {q:.3g}).")


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


def tables(c: Comparison) -> dict[str, pd.DataFrame]:
    """The report's tables as strings, keyed by title (values in % unless named)."""
    g = {a: c.per_seed[c.per_seed.loss_type == a] for a in c.arms}
    t1, t2, t3, t4, t5, t6 = [], [], [], [], [], []
    for a in c.arms:
        d = g[a]
        t = c.tests.get(a)
        bs = t.bootstrap_pooled if t else None
        t1.append({"loss": a, "seeds": len(d), "test macro-F1": _pm(d["test_macro_f1"]),
                   "val macro-F1": _pm(d["best_val_macro_f1"]),
                   "Δ vs ref (pp)": "reference" if t is None else f"{100 * bs.delta:+.2f}",
                   "95% CI (pp)": "" if t is None else f"[{100 * bs.ci_low:+.2f}, {100 * bs.ci_high:+.2f}]",
                   "macro precision": _pm(d["test_macro_precision"]), "macro recall": _pm(d["test_macro_recall"]),
                   "accuracy": _pm(d["test_accuracy"])})
        t2.append({"loss": a, **{name: _pm(d[f"test_f1_{k}"]) for name, k in zip(STAGE2_NAMES, CLASS_KEYS)}})
        t3.append({"loss": a, "best epoch": _pm(d["best_epoch"], 1, 1), "epochs run": _pm(d["epochs_run"], 1, 1),
                   "trainable params": _pm(d["trainable_params"], 1, 0),
                   "wall time (s)": _pm(d["train_seconds"], 1, 1), "blocks/s": _pm(d["train_blocks_per_s"], 1, 0)})
        t4.append({"loss": a, "ECE (%)": _pm(d["test_ece"]), "NLL": _pm(d["test_nll"], 1, 4),
                   "Brier": _pm(d["test_brier"], 1, 4)})
        if t is None:
            continue
        s, m, h = t.seeds, t.mcnemar_pooled, t.holm_p
        t5.append({"loss": a, "Δ mean (pp)": f"{100 * s.mean_diff:+.2f}",
                   "Welch p (Holm)": s.note or f"{_p(s.welch_p)} ({_p(h['welch'])})",
                   "Mann-Whitney p (Holm)": s.note or f"{_p(s.mannwhitney_p)} ({_p(h['mannwhitney'])})",
                   "P(A>B)": _p(s.p_superiority),
                   "McNemar b/c p (Holm)": f"{m.b}/{m.c} {_p(m.pvalue)} ({_p(h['mcnemar'])})",
                   "bootstrap p (Holm)": f"{_p(bs.pvalue)} ({_p(h['bootstrap'])})",
                   "seed criterion": t.criterion})
        for row in t.per_seed:
            mc, b = row["mcnemar"], row["bootstrap"]
            t6.append({"loss": a, "seed": row["seed"], "McNemar b/c": f"{mc.b}/{mc.c}",
                       "McNemar p": f"{_p(mc.pvalue)} ({mc.method})", "Δ macro-F1 (pp)": f"{100 * b.delta:+.2f}",
                       "95% CI (pp)": f"[{100 * b.ci_low:+.2f}, {100 * b.ci_high:+.2f}]",
                       "bootstrap p": _p(b.pvalue)})
    return {
        "Table 1: overall (test set; mean ± sd over seeds)": pd.DataFrame(t1),
        "Table 2: per-class test F1 (%)": pd.DataFrame(t2),
        "Table 3: training details": pd.DataFrame(t3),
        "Table 4: calibration (test set, 15-bin ECE)": pd.DataFrame(t4),
        f"Table 5: significance against {c.reference}": pd.DataFrame(t5),
        "Table 6: paired tests per seed": pd.DataFrame(t6),
    }


def md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cells = [[str(v) for v in frame.columns]] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines) + "\n"


NOTES = (
    "Δ and its 95% CI: paired bootstrap of the macro-F1 difference on the same test blocks, "
    "pooled over seeds (percentile interval). Welch and Mann-Whitney p-values are two-sided, across "
    "seeds; the bootstrap p is one-sided (arm better than the reference); McNemar is two-sided "
    "(b: arm right, reference wrong). Holm's step-down correction runs over the arms within each test. "
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
        for name, frame in tables(c).items():
            out.append(f"### {name}\n\n{md_table(frame)}")
    out.append(f"### Notes\n\n{NOTES}\n")
    if left_out:
        out.append("### Runs left out\n\n" + md_table(pd.DataFrame(list(left_out))))
    if figures:
        out.append("### Figures\n\n" + "\n".join(f"![{f}]({f})" for f in figures) + "\n")
    return "\n".join(out)


def render_text(c: Comparison) -> str:
    """Terminal version of the tables and the verdict."""
    parts = [f"== {c.group} (reference: {c.reference}) =="]
    for name, frame in tables(c).items():
        parts.append(f"\n{name}\n{frame.to_string(index=False) if not frame.empty else '(none)'}")
    parts.append(f"\n{c.verdict}")
    return "\n".join(parts)
