"""What a training run leaves behind besides metrics: predictions, figures, checkpoints."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

from av1_ablation.metrics import CLASS_KEYS

PREDICTION_COLUMNS = ("block_index", "y_true", "y_pred", *(f"p_{k}" for k in CLASS_KEYS))
# Written since QP input and cluster statistics; not required of older runs.
CONTEXT_COLUMNS = ("qindex", "cluster")


def log_predictions(split_name: str, block_index: np.ndarray, y_true: np.ndarray,
                    proba: np.ndarray, *, qindex: np.ndarray, cluster: np.ndarray) -> None:
    """``predictions/<split>.csv``: one row per block, sorted by its index in the data set;
    ``qindex`` is the block's encode, ``cluster`` its source picture (or clip)."""
    order = np.argsort(block_index, kind="stable")
    table = np.column_stack([block_index[order], y_true[order], proba[order].argmax(1),
                             proba[order], qindex[order], cluster[order]])
    fmt = ["%d", "%d", "%d"] + ["%.6f"] * proba.shape[1] + ["%d", "%d"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{split_name}.csv"
        np.savetxt(path, table, fmt=fmt, delimiter=",",
                   header=",".join(PREDICTION_COLUMNS + CONTEXT_COLUMNS), comments="")
        mlflow.log_artifact(str(path), artifact_path="predictions")


def log_torch(obj, artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_path).name
        torch.save(obj, path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_path).parent))


def log_json(obj, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=float), artifact_file)


def log_figure(fig, artifact_file: str) -> None:
    mlflow.log_figure(fig, artifact_file)


def learning_curve_figure(history: list[dict], *, score_key: str, title: str):
    """Train/val loss and the validation selection score per epoch."""
    epochs = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_score = fig.subplots(1, 2)
    ax_loss.plot(epochs, [m["train_loss"] for m in history], marker="o", label="train")
    ax_loss.plot(epochs, [m["val_loss"] for m in history], marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_score.plot(epochs, [m[score_key] for m in history], marker="o", color="tab:green")
    best = int(np.argmax([m[score_key] for m in history]))
    ax_score.axvline(best + 1, color="grey", linestyle=":", label=f"selected epoch {best + 1}")
    ax_score.set(xlabel="epoch", ylabel=score_key, title=score_key)
    ax_score.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
