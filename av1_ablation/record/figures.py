"""The figures of one run: confusion matrix, per-QP scores and learning curves.

Figures are drawn on the Agg canvas directly, without pyplot: nothing opens a
display, nothing stays registered in pyplot, and the caller's backend is
untouched. The comparison's figures (several runs at once) are in
:mod:`av1_ablation.comparison.figures`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from av1_ablation.dataset.partitions import STAGE2_NAMES
from av1_ablation.record.contract import CLASS_KEYS, COUNT, F1, MACRO_F1, TRAIN_LOSS, VAL_LOSS, per_class
from av1_ablation.record.metrics import check_labels, check_pair


def new_figure(size) -> Figure:
    """An empty figure of ``size`` inches on its own Agg canvas, with constrained layout."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(y_true, y_pred, *, title: str, class_names=None) -> Figure:
    """Confusion matrix as counts and row-normalised (recall per true class).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted class ids.
    title : str
        Figure title (e.g. the loss and the split).
    class_names : sequence of str, default=None
        Class names in id order; ``STAGE2_NAMES`` by default, use
        ``STAGE1_NAMES`` for Stage 1.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Two panels, rows = true class, columns = predicted class. The figure
        is not registered with pyplot, so it needs no ``plt.close``.
    """
    names = tuple(STAGE2_NAMES if class_names is None else class_names)
    y_true = check_labels(y_true, "y_true", n_classes=len(names))
    y_pred = check_labels(y_pred, "y_pred", n_classes=len(names))
    check_pair(y_true, y_pred, "y_pred")
    counts = confusion_matrix(y_true, y_pred, labels=list(range(len(names))))
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = counts / counts.sum(axis=1, keepdims=True)
    rows = np.nan_to_num(rows)  # an absent true class gives an all-zero row

    fig = new_figure((9.5, 4.2))
    panels = fig.subplots(1, 2)
    for ax, matrix, fmt, label in (
        (panels[0], counts, "{:d}", "counts"),
        (panels[1], rows, "{:.2f}", "row-normalised (recall)"),
    ):
        scaled = matrix / max(matrix.max(), 1)
        ax.imshow(scaled, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center",
                        color="white" if scaled[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
    fig.suptitle(title)
    return fig




def per_qp_figure(per_qp: dict[int, dict[str, float]], *, title: str) -> Figure:
    """Macro-F1 and per-class F1 for each qindex, as grouped bars (from
    :func:`~av1_ablation.record.metrics.per_qp_metrics`)."""
    qps = sorted(per_qp)
    keys = (MACRO_F1, *(per_class(F1, k) for k in CLASS_KEYS))
    labels = ("macro-F1", *STAGE2_NAMES)
    fig = new_figure((8, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(keys)
    x = np.arange(len(qps))
    for i, (key, label) in enumerate(zip(keys, labels)):
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, [per_qp[q][key] for q in qps], width,
               label=label)
    ax.set_xticks(x, [f"qindex {q}\n({int(per_qp[q][COUNT])} blocks)" for q in qps])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test F1")
    ax.legend(ncols=4, fontsize="small", loc="upper right")
    ax.set_title(title)
    return fig


def learning_curves_figure(history: list[dict], *, score_key: str, title: str) -> Figure:
    """Train/val loss and the validation selection score per epoch of one run."""
    epochs = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_score = fig.subplots(1, 2)
    ax_loss.plot(epochs, [m[TRAIN_LOSS] for m in history], marker="o", label="train")
    ax_loss.plot(epochs, [m[VAL_LOSS] for m in history], marker="o", label="val")
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
