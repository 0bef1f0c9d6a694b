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

from av1_ablation.comparison.folds import pool_folds
from av1_ablation.comparison.runs import RunRecord, _client, _search, read_records
from av1_ablation.comparison.statistics import bootstrap_macro_f1
from av1_ablation.dataset.partitions import STAGE2_NAMES
from av1_ablation.record.contract import (CLASS_KEYS, CLUSTER, DATASET_FINGERPRINT_TAG, ECE, F1,
                                          FINETUNE, FOLDS_PARAM, GBM, KIND_REFERENCE, PRIOR,
                                          REFERENCE_MODELS, REFERENCE_TAG,
                                          VALUE_WHEN_ABSENT, param_value,
                                          SPLIT_FINGERPRINT_TAG, TEST, TEST_MACRO_F1, Y_PRED, Y_TRUE,
                                          cfg_param, kind_clause, param_clause, parse_per_qp, per_class,
                                          tag_clause)

SPLIT_PARAMS = tuple(map(cfg_param, ("split_mode", "split_seed")))


def load_references(records: list[RunRecord], experiment_id: str) -> dict[str, list[RunRecord]]:
    """FINISHED reference runs with the arms' data set, split (or cross-validation) and QP
    input: name -> runs (newest per seed, folds pooled), each with its test predictions."""
    if not records:
        return {}
    client = _client()
    first = records[0]
    clauses = [kind_clause(KIND_REFERENCE), "attributes.status = 'FINISHED'",
               tag_clause(DATASET_FINGERPRINT_TAG, first.tags.get(DATASET_FINGERPRINT_TAG, "")),
               param_clause(cfg_param("qp_input"), first.params.get(cfg_param("qp_input"), "none"))]
    folds = param_value(first.params, FOLDS_PARAM)
    if folds == VALUE_WHEN_ABSENT[FOLDS_PARAM]:
        clauses.append(tag_clause(SPLIT_FINGERPRINT_TAG, first.tags.get(SPLIT_FINGERPRINT_TAG, "")))
    else:  # the fold runs' own splits differ; the pooled fingerprint is checked below
        clauses += [param_clause(p, first.params.get(p, "")) for p in (FOLDS_PARAM, *SPLIT_PARAMS)]
    runs = _search(client, experiment_id, " and ".join(clauses))  # newest first
    found, _ = read_records(client, runs, True, name_of=lambda run: run.data.tags.get(REFERENCE_TAG),
                            skip_without_predictions=True)
    pooled, _ = pool_folds(found)
    by_name: dict[str, list[RunRecord]] = {}
    for r in pooled:
        if r.tags.get(SPLIT_FINGERPRINT_TAG) == first.tags.get(SPLIT_FINGERPRINT_TAG):
            by_name.setdefault(r.loss_type, []).append(r)
    order = (*REFERENCE_MODELS, *sorted(set(by_name) - set(REFERENCE_MODELS)))
    return {n: by_name[n] for n in order if n in by_name}


def cluster_bootstrap_ci(runs: list[RunRecord], *, n_resamples: int = 2000, random_state: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean test macro-F1 of ``runs`` when test pictures
    (``cluster``) are resampled with replacement; NaN where predictions carry no cluster or
    all test blocks come from one picture."""
    frames = [r.predictions for r in runs]
    if any(f is None or CLUSTER not in f.columns for f in frames) or frames[0][CLUSTER].nunique() < 2:
        return float("nan"), float("nan")
    return bootstrap_macro_f1(frames[0][Y_TRUE].to_numpy(), np.vstack([f[Y_PRED].to_numpy() for f in frames]),
                              clusters=frames[0][CLUSTER].to_numpy(), n_resamples=n_resamples,
                              confidence_level=level, random_state=random_state)


def context_table(arms: dict[str, list[RunRecord]], references: dict[str, list[RunRecord]], *,
                  n_resamples: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """One row per reference model and per loss arm (values are fractions, not %)."""
    rows = []
    for kind, group in (("reference", references), ("loss arm", arms)):
        for name, runs in group.items():
            lo, hi = cluster_bootstrap_ci(runs, n_resamples=n_resamples, random_state=random_state)
            mean = lambda key: float(np.mean([r.metrics.get(key, np.nan) for r in runs]))  # noqa: E731
            rows.append({"model": name, "kind": kind, "runs": len(runs),
                         TEST_MACRO_F1: mean(TEST_MACRO_F1), "ci_low": lo, "ci_high": hi,
                         **{TEST + per_class(F1, k): mean(TEST + per_class(F1, k)) for k in CLASS_KEYS},
                         TEST + ECE: mean(TEST + ECE)})
    return pd.DataFrame(rows)


def context_sentence(table: pd.DataFrame, reference_arm: str) -> str:
    """Where the arms stand against ``prior`` and ``gbm`` (and what ``finetune`` says)."""
    if table.empty or not (table["kind"] == "reference").any():
        return ("No reference runs for this data set, split and QP input: run "
                "`mlflow run . -e reference` (or `av1-ablation reference`) to place the arms.")
    score = dict(zip(table["model"], table[TEST_MACRO_F1]))
    arms = table[table["kind"] == "loss arm"]
    parts = []
    prior, gbm = score.get(PRIOR), score.get(GBM)
    if prior is not None and gbm is not None:
        below = arms[arms[TEST_MACRO_F1] < prior]["model"].tolist()
        above = arms[arms[TEST_MACRO_F1] > gbm]["model"].tolist()
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
    if FINETUNE in score and reference_arm in score:
        gap = 100 * (score[FINETUNE] - score[reference_arm])
        parts.append(f"Training the backbone too (finetune) changes test macro-F1 by {gap:+.2f} pp "
                     f"against the frozen-backbone {reference_arm} arm"
                     + (": the frozen Stage-1 features are a bottleneck." if gap >= 2 else "."))
    return " ".join(parts)


def render_context(table: pd.DataFrame) -> pd.DataFrame:
    """The context table as printed (percentages)."""
    pct = lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.2f}"  # noqa: E731
    return pd.DataFrame({
        "model": table["model"], "kind": table["kind"], "runs": table["runs"],
        "test macro-F1": table[TEST_MACRO_F1].map(pct),
        "95% CI (pictures)": [f"[{pct(a)}, {pct(b)}]" for a, b in zip(table["ci_low"], table["ci_high"])],
        **{name: table[TEST + per_class(F1, k)].map(pct) for name, k in zip(STAGE2_NAMES, CLASS_KEYS)},
        "ECE": table[TEST + ECE].map(pct),
    })


def per_qp_scores(runs: list[RunRecord]) -> pd.DataFrame:
    """Mean over runs of the per-qindex test metrics ``test_q<q>_<metric>``: rows = qindex."""
    rows: dict[int, dict[str, list[float]]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            parsed = parse_per_qp(key, TEST)
            if parsed is not None:
                rows.setdefault(parsed[0], {}).setdefault(parsed[1], []).append(value)
    return pd.DataFrame({q: {m: float(np.mean(v)) for m, v in ms.items()} for q, ms in sorted(rows.items())}).T
