"""Cross-validated runs: the K fold runs of one arm and seed, pooled into one record.

Each fold tests other pictures, so the K test-prediction files of one seed
together hold exactly one prediction per block of the data set. The pooled
record is then compared like the run of a single split, with the seed as the
unit of retraining noise and the picture as the unit of test-side resampling:
test metrics are recomputed from the pooled predictions (a macro-F1 over all
pictures, not a mean of K per-fold scores), validation and training figures
are averaged over the folds (training seconds summed), and the split
fingerprint becomes that of the K splits. A seed with a fold missing is left
out whole: its pooled score would cover other pictures than the rest.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from av1_ablation.comparison.runs import RunRecord, Selection
from av1_ablation.dataset import pooled_fingerprint
from av1_ablation.errors import UserError
from av1_ablation.record.contract import (ALL_FOLDS, BLOCK_INDEX, FOLD_PARAM, FOLDS_PARAM, PROBA_COLUMNS, QINDEX,
                                          SPLIT_FINGERPRINT_TAG, STAGE1_RUN_TAG, TEST, TRAIN_SECONDS, Y_TRUE,
                                          cfg_param, param_value, tagged)
from av1_ablation.record.metrics import split_metrics

STAGE1_PARAM = cfg_param("stage1")
# What differs between the fold runs of one cross-validation, and only that.
PER_FOLD = frozenset({FOLD_PARAM, STAGE1_PARAM, tagged(SPLIT_FINGERPRINT_TAG), tagged(STAGE1_RUN_TAG)})


def folds_of(record: RunRecord) -> tuple[int, int]:
    """(K, fold) of a run; runs logged before cross-validation existed are (1, 0)."""
    return int(param_value(record.params, FOLDS_PARAM)), int(param_value(record.params, FOLD_PARAM))


def pool_folds(records: list[RunRecord]) -> tuple[list[RunRecord], list[dict[str, str]]]:
    """Replace the fold runs of every (arm, seed) by one pooled record.

    Fold runs pool only when they share every setting but the fold itself (its split and
    Stage-1 backbone), so one seed is never assembled from two cross-validations. Returns
    the records (single-split runs unchanged) and the runs left out with the reason.
    """
    out, left_out = [], []
    groups: dict[tuple, dict[int, RunRecord]] = defaultdict(dict)
    for r in records:
        k, fold = folds_of(r)
        if k == 1:
            out.append(r)
            continue
        shared = frozenset((key, v) for key, v in r.identity().items() if key not in PER_FOLD)
        groups[(r.loss_type, r.seed, k, shared)][fold] = r
    for (name, seed, k, _), by_fold in groups.items():
        missing = sorted(set(range(k)) - set(by_fold))
        if missing:
            reason = (f"fold(s) {', '.join(map(str, missing))} of {k} not finished with the same settings: "
                      "a seed is compared on all its folds or not at all")
            left_out += [{"run_id": r.run_id, "loss_type": name, "seed": str(seed), "reason": reason}
                         for r in by_fold.values()]
            continue
        out.append(pooled_record([by_fold[i] for i in range(k)]))
    return out, left_out


def pool_selection(selection: Selection) -> Selection:
    """:func:`pool_folds` applied to what :func:`~av1_ablation.comparison.runs.load_runs` found."""
    records, left_out = pool_folds(selection.records)
    if not records:
        raise UserError(f"no arm has every fold of a seed finished ({selection.description}); finish "
                        "the cross-validation (`mlflow run . -e ablation -P folds=K` again resumes it)")
    records.sort(key=lambda r: (r.loss_type, r.seed))
    return Selection(selection.experiment_id, selection.description, records,
                     [*selection.left_out, *left_out])


def pooled_record(runs: list[RunRecord]) -> RunRecord:
    """One record from the fold runs of one arm and seed, in fold order."""
    first = runs[0]
    predictions = _pooled_predictions(runs)
    params = {**first.params, FOLD_PARAM: ALL_FOLDS,
              STAGE1_PARAM: ",".join(r.params.get(STAGE1_PARAM, "") for r in runs)}
    tags = {**first.tags, SPLIT_FINGERPRINT_TAG: pooled_fingerprint([r.tags.get(SPLIT_FINGERPRINT_TAG, "")
                                                                     for r in runs]),
            STAGE1_RUN_TAG: ",".join(r.tags.get(STAGE1_RUN_TAG, "") for r in runs)}
    return RunRecord(run_id=",".join(r.run_id for r in runs), run_name=first.run_name.rsplit("-fold", 1)[0],
                     loss_type=first.loss_type, seed=first.seed, params=params, tags=tags,
                     metrics=_pooled_metrics(runs, predictions), val_curve=_mean_curve(runs),
                     predictions=predictions)


def _pooled_predictions(runs: list[RunRecord]) -> pd.DataFrame | None:
    if any(r.predictions is None for r in runs):
        return None
    pooled = pd.concat([r.predictions for r in runs], ignore_index=True)
    if pooled[BLOCK_INDEX].duplicated().any():
        raise UserError(f"the fold runs {', '.join(r.run_id for r in runs)} ({runs[0].loss_type}, seed "
                        f"{runs[0].seed}) test some blocks twice, although their settings agree: the "
                        "data set's sources changed between them; compare the runs of one data set")
    return pooled.sort_values(BLOCK_INDEX, ignore_index=True)


def _pooled_metrics(runs: list[RunRecord], predictions: pd.DataFrame | None) -> dict[str, float]:
    """Non-test metrics averaged over the folds (seconds summed); test metrics recomputed from
    the pooled predictions."""
    keys = sorted({k for r in runs for k in r.metrics if not k.startswith(TEST)})
    metrics = {k: float(np.nanmean([r.metrics.get(k, np.nan) for r in runs])) for k in keys}
    if TRAIN_SECONDS in metrics:
        metrics[TRAIN_SECONDS] = float(sum(r.metrics.get(TRAIN_SECONDS, 0.0) for r in runs))
    if predictions is not None and QINDEX in predictions.columns:
        metrics.update(split_metrics(predictions[Y_TRUE].to_numpy(), predictions[list(PROBA_COLUMNS)].to_numpy(),
                                     predictions[QINDEX].to_numpy(), prefix=TEST))
    return metrics


def _mean_curve(runs: list[RunRecord]) -> list[tuple[int, float]]:
    """The validation curve averaged over the folds that reached each epoch."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for step, value in r.val_curve:
            by_step[step].append(value)
    return [(step, float(np.mean(values))) for step, values in sorted(by_step.items())]
