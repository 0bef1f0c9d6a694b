"""Where the loss arms stand: the reference models beside them, and per-QP scores.

The runs of ``av1-ablation reference`` (``av1.kind = reference``) for the same
data set, split and QP input as the compared arms are read like arms. The
context table gives each model's mean test macro-F1 over its runs with a 95%
interval from resampling test *pictures* (a cluster bootstrap: the blocks of
one picture, at every QP, are resampled together, because they are not
independent), per-class F1 and ECE; a sentence says whether the arms fall
below the ``prior`` floor, between it and ``gbm``, or above ``gbm``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from av1_ablation.metrics import CLASS_KEYS
from av1_ablation.partitions import STAGE2_NAMES
from av1_ablation.runs import RunRecord
from av1_ablation.statistics import macro_f1_from_confusion

REFERENCE_ORDER = ("prior", "gbm", "finetune")
MATCH_TAGS = ("av1.dataset_fingerprint", "av1.split_fingerprint")
MATCH_PARAMS = ("cfg.qp_input",)


def load_references(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """FINISHED reference runs with the arms' data set, split and QP input: name -> runs
    (newest per seed), each with its test predictions."""
    import tempfile
    from pathlib import Path

    from av1_ablation.runs import _client, _read_predictions, _search

    if not records:
        return {}
    client = _client()
    exp_id = client.get_run(records[0].run_id).info.experiment_id
    first = records[0]
    clauses = ["tags.`av1.kind` = 'reference'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{t}` = '{first.tags.get(t, '')}'" for t in MATCH_TAGS]
    clauses += [f"params.`{p}` = '{first.params.get(p, 'none')}'" for p in MATCH_PARAMS]
    found: dict[str, list[RunRecord]] = {}
    seen = set()
    with tempfile.TemporaryDirectory(prefix="av1-context-") as tmp:
        for run in _search(client, exp_id, " and ".join(clauses)):  # newest first
            name, seed = run.data.tags.get("av1.reference", "?"), run.data.params.get("seed", "?")
            if (name, seed) in seen:
                continue
            predictions = _read_predictions(client, run.info.run_id, Path(tmp) / run.info.run_id)
            if predictions is None:
                continue
            seen.add((name, seed))
            found.setdefault(name, []).append(RunRecord(
                run_id=run.info.run_id, run_name=run.info.run_name or name, loss_type=name,
                seed=int(float(seed)), params=dict(run.data.params), tags=dict(run.data.tags),
                metrics=dict(run.data.metrics), predictions=predictions))
    return {n: found[n] for n in (*REFERENCE_ORDER, *sorted(set(found) - set(REFERENCE_ORDER))) if n in found}


def _macro_f1(y: np.ndarray, pred: np.ndarray, n: int = len(STAGE2_NAMES)) -> float:
    """Macro-F1 from a bincount confusion matrix: the bootstrap calls it thousands of times."""
    return float(macro_f1_from_confusion(np.bincount(y * n + pred, minlength=n * n).reshape(n, n)))


def cluster_bootstrap_ci(runs: list[RunRecord], *, n_resamples: int = 2000, random_state: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean test macro-F1 of ``runs`` when test pictures
    (``cluster``) are resampled with replacement; NaN where predictions carry no cluster."""
    frames = [r.predictions for r in runs]
    if any(f is None or "cluster" not in f.columns for f in frames):
        return float("nan"), float("nan")
    clusters = frames[0]["cluster"].to_numpy()
    members = [np.flatnonzero(clusters == c) for c in np.unique(clusters)]
    ys = [f["y_true"].to_numpy() for f in frames]
    preds = [f["y_pred"].to_numpy() for f in frames]
    rng = np.random.default_rng(random_state)
    stats = np.empty(n_resamples)
    for b in range(n_resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        stats[b] = np.mean([_macro_f1(y[rows], p[rows]) for y, p in zip(ys, preds)])
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def context_table(arms: dict[str, list[RunRecord]], references: dict[str, list[RunRecord]], *,
                  n_resamples: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """One row per reference model and per loss arm (values are fractions, not %)."""
    rows = []
    for kind, group in (("reference", references), ("loss arm", arms)):
        for name, runs in group.items():
            lo, hi = cluster_bootstrap_ci(runs, n_resamples=n_resamples, random_state=random_state)
            mean = lambda key: float(np.mean([r.metrics.get(key, np.nan) for r in runs]))  # noqa: E731
            rows.append({"model": name, "kind": kind, "runs": len(runs),
                         "test_macro_f1": mean("test_macro_f1"), "ci_low": lo, "ci_high": hi,
                         **{f"test_f1_{k}": mean(f"test_f1_{k}") for k in CLASS_KEYS},
                         "test_ece": mean("test_ece")})
    return pd.DataFrame(rows)


def context_sentence(table: pd.DataFrame, reference_arm: str) -> str:
    """Where the arms stand against ``prior`` and ``gbm`` (and what ``finetune`` says)."""
    if table.empty or not (table["kind"] == "reference").any():
        return ("No reference runs for this data set, split and QP input: run "
                "`mlflow run . -e reference` (or `av1-ablation reference`) to place the arms.")
    score = dict(zip(table["model"], table["test_macro_f1"]))
    arms = table[table["kind"] == "loss arm"]
    parts = []
    prior, gbm = score.get("prior"), score.get("gbm")
    if prior is not None and gbm is not None:
        below = arms[arms["test_macro_f1"] < prior]["model"].tolist()
        above = arms[arms["test_macro_f1"] > gbm]["model"].tolist()
        between = [m for m in arms["model"] if m not in below and m not in above]
        words = []
        if below:
            words.append(f"below the prior floor ({100 * prior:.2f}%): {', '.join(below)}")
        if between:
            words.append(f"between the prior ({100 * prior:.2f}%) and gbm ({100 * gbm:.2f}%): "
                         f"{', '.join(between)}")
        if above:
            words.append(f"above gbm ({100 * gbm:.2f}%): {', '.join(above)}")
        parts.append("Test macro-F1 of the loss arms: " + "; ".join(words) + ".")
    if "finetune" in score and reference_arm in score:
        gap = 100 * (score["finetune"] - score[reference_arm])
        parts.append(f"Training the backbone too (finetune) changes test macro-F1 by {gap:+.2f} pp "
                     f"against the frozen-backbone {reference_arm} arm"
                     + (": the frozen Stage-1 features are a bottleneck." if gap >= 2 else "."))
    return " ".join(parts)


def render_context(table: pd.DataFrame) -> pd.DataFrame:
    """The context table as printed (percentages)."""
    pct = lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.2f}"  # noqa: E731
    return pd.DataFrame({
        "model": table["model"], "kind": table["kind"], "runs": table["runs"],
        "test macro-F1": table["test_macro_f1"].map(pct),
        "95% CI (pictures)": [f"[{pct(a)}, {pct(b)}]" for a, b in zip(table["ci_low"], table["ci_high"])],
        **{name: table[f"test_f1_{k}"].map(pct) for name, k in zip(STAGE2_NAMES, CLASS_KEYS)},
        "ECE": table["test_ece"].map(pct),
    })


def per_qp_scores(runs: list[RunRecord]) -> pd.DataFrame:
    """Mean over runs of the per-qindex test metrics ``test_q<q>_<metric>``: rows = qindex."""
    rows: dict[int, dict[str, list[float]]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            if key.startswith("test_q") and "_" in key[6:]:
                q, metric = key[6:].split("_", 1)
                if q.isdigit():
                    rows.setdefault(int(q), {}).setdefault(metric, []).append(value)
    return pd.DataFrame({q: {m: float(np.mean(v)) for m, v in ms.items()} for q, ms in sorted(rows.items())}).T


def per_qp_figure(models: dict[str, list[RunRecord]]) -> Figure:
    """Per-qindex test macro-F1 and per-class F1 of a few models (mean over their runs)."""
    keys = ("macro_f1", *(f"f1_{k}" for k in CLASS_KEYS))
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), sharey=True)
    for (name, runs) in models.items():
        scores = per_qp_scores(runs)
        if scores.empty:
            continue
        for ax, key in zip(axes, keys):
            ax.plot(scores.index, scores[key], marker="o", label=name)
    for ax, title in zip(axes, ("macro-F1", *STAGE2_NAMES)):
        ax.set(title=title, xlabel="qindex", ylim=(0, 1))
    axes[0].set_ylabel("test F1 (mean over runs)")
    axes[0].legend(fontsize="small")
    fig.suptitle("test F1 per QP")
    return fig
