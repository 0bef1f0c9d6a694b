"""What a run leaves behind besides metrics: predictions, figures, checkpoints, JSON.

The prediction files are written by :func:`log_predictions` and read back by
:func:`read_predictions`, so the writers (training) and the readers (the
comparison) share one format: the columns of
:data:`~av1_ablation.record.contract.PREDICTION_COLUMNS`, then
:data:`~av1_ablation.record.contract.CONTEXT_COLUMNS`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from av1_ablation.errors import UserError
from av1_ablation.record.contract import (BLOCK_INDEX, CONTEXT_COLUMNS, PREDICTIONS_DIR, PREDICTION_COLUMNS,
                                          predictions_file)


def log_predictions(split_name: str, block_index: np.ndarray, y_true: np.ndarray,
                    proba: np.ndarray, *, qindex: np.ndarray, cluster: np.ndarray) -> None:
    """``predictions/<split>.csv``: one row per block, sorted by its index in the data set;
    ``qindex`` is the block's encode, ``cluster`` its source picture (or clip)."""
    order = np.argsort(block_index, kind="stable")
    table = np.column_stack([block_index[order], y_true[order], proba[order].argmax(1),
                             proba[order], qindex[order], cluster[order]])
    fmt = ["%d", "%d", "%d"] + ["%.6f"] * proba.shape[1] + ["%d", "%d"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(predictions_file(split_name)).name
        np.savetxt(path, table, fmt=fmt, delimiter=",",
                   header=",".join(PREDICTION_COLUMNS + CONTEXT_COLUMNS), comments="")
        mlflow.log_artifact(str(path), artifact_path=PREDICTIONS_DIR)


def read_predictions(client, run_id: str, split_name: str, dst: Path):
    """The ``predictions/<split>.csv`` of a run as a DataFrame sorted by block index, or None
    when the run has none. Raises :class:`UserError` when its columns are not the contract's."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    artifact = predictions_file(split_name)
    try:
        local = client.download_artifacts(run_id, artifact, str(dst))
    except (MlflowException, OSError):
        return None
    frame = pd.read_csv(local)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"run {run_id}: {artifact} lacks the columns {missing}; "
                        "re-run its evaluation with the current training code")
    return frame.sort_values(BLOCK_INDEX, kind="stable").reset_index(drop=True)


def log_torch(obj, artifact_path: str) -> None:
    """``torch.save`` ``obj`` as the artifact ``artifact_path`` of the active run."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_path).name
        torch.save(obj, path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_path).parent))


def log_json(obj, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=float), artifact_file)


def log_figure(fig, artifact_file: str) -> None:
    mlflow.log_figure(fig, artifact_file)
