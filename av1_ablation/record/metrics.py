"""Classification and calibration metrics of the Stage-1 and Stage-2 models.

Every function returns a flat ``dict[str, float]`` whose keys are the metric
names of :mod:`av1_ablation.record.contract`, after an optional ``prefix``
(``contract.VAL``, ``contract.TEST``), so the training loop can pass the result
straight to ``mlflow.log_metrics`` and the comparison can read the same names back.

Stage 2 has three classes, in the order of
:data:`av1_ablation.dataset.partitions.STAGE2_NAMES` (SPLIT=0, RECT=1, AB=2); the
lower-case suffixes of the per-class keys are :data:`~av1_ablation.record.contract.CLASS_KEYS`.

Higher is better for ``*f1*``, ``*precision*``, ``*recall*``, ``*accuracy*``
and ``*roc_auc``; lower is better for ``*ece``, ``*nll`` and ``*brier``.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from av1_ablation.dataset.partitions import STAGE2_NAMES
from av1_ablation.record.contract import (ACCURACY, AVERAGE_PRECISION, BRIER, CLASS_KEYS, COUNT, ECE, F1,
                                          MACRO_F1, MACRO_PRECISION, MACRO_RECALL, NLL, PRECISION, RECALL,
                                          ROC_AUC, per_class, per_qp)

N_CLASSES = len(STAGE2_NAMES)
LABELS: list[int] = list(range(N_CLASSES))

__all__ = [
    "N_CLASSES",
    "split_metrics",
    "binary_metrics",
    "check_labels",
    "check_pair",
    "f1_threshold",
    "flatten_per_qp",
    "per_qp_metrics",
    "calibration_metrics",
    "classification_metrics",
    "reliability_curve",
]


# --------------------------------------------------------------------------- checks
def check_labels(y, name: str, n_classes: int = N_CLASSES) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one block")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{name} must hold integer class ids; got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{name} must hold class ids in 0..{n_classes - 1}; got values {y.min()}..{y.max()}"
        )
    return y.astype(np.int64, copy=False)


def check_pair(y_true, y_other, other_name: str) -> None:
    if len(y_true) != len(y_other):
        raise ValueError(
            f"y_true and {other_name} have different lengths ({len(y_true)} and {len(y_other)})"
        )


def _check_proba(proba, n_samples: int) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (n_samples, N_CLASSES):
        raise ValueError(
            f"proba must have shape (n_samples, {N_CLASSES}) = ({n_samples}, {N_CLASSES}); "
            f"got {proba.shape}"
        )
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise ValueError("proba must hold finite probabilities in [0, 1]")
    # Softmax outputs saved as float32 text sum to 1 only up to rounding.
    if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of proba must sum to 1 (softmax probabilities, not logits)")
    # ... so remove that rounding (scikit-learn's log_loss warns about it otherwise)
    return proba / proba.sum(axis=1, keepdims=True)


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------- Stage 2
def classification_metrics(y_true, y_pred, *, prefix: str = "") -> dict[str, float]:
    """Macro-F1, accuracy and per-class precision/recall/F1 of Stage 2.

    All values come from one confusion matrix over the labels SPLIT=0, RECT=1,
    AB=2 (scikit-learn ``precision_recall_fscore_support(labels=[0, 1, 2],
    zero_division=0)``), so the per-class columns and the headline macro-F1
    always describe the same predictions.

    .. math:: F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), \\quad
              \\text{macro-F1} = \\frac{1}{3} \\sum_c F1_c

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True Stage-2 class ids (0, 1, 2).
    y_pred : array-like of shape (n_samples,)
        Predicted Stage-2 class ids.
    prefix : str, default=""
        Put before every key, e.g. ``"test_"``.

    Returns
    -------
    metrics : dict of str to float
        ``macro_f1``, ``accuracy``, ``macro_precision``, ``macro_recall`` and, for
        each class key ``c`` in ``CLASS_KEYS`` (``split``, ``rect``, ``ab``),
        ``f1_c``, ``precision_c``, ``recall_c``; all prefixed.

    Notes
    -----
    A class that is never predicted (or never present) has an undefined
    precision (recall); it counts as 0, which lowers the macro average.
    This is scikit-learn's ``zero_division=0`` and the convention of the
    original research repository chiarorosa/cnn-av1-research.

    Examples
    --------
    >>> m = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], prefix="val_")
    >>> round(m["val_macro_f1"], 4), m["val_accuracy"]
    (0.7778, 0.75)
    """
    y_true = check_labels(y_true, "y_true")
    y_pred = check_labels(y_pred, "y_pred")
    check_pair(y_true, y_pred, "y_pred")
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0
    )
    out = {
        prefix + MACRO_F1: float(np.mean(f1)),
        prefix + ACCURACY: float(accuracy_score(y_true, y_pred)),
        prefix + MACRO_PRECISION: float(np.mean(precision)),
        prefix + MACRO_RECALL: float(np.mean(recall)),
    }
    for key, p, r, f in zip(CLASS_KEYS, precision, recall, f1):
        out[prefix + per_class(F1, key)] = float(f)
        out[prefix + per_class(PRECISION, key)] = float(p)
        out[prefix + per_class(RECALL, key)] = float(r)
    return out


def reliability_curve(y_true, proba, *, n_bins: int = 15):
    """Accuracy against confidence in equal-width confidence bins.

    The confidence of a block is its largest class probability and its
    prediction the arg-max. Bin ``m`` holds the blocks whose confidence lies
    in ``((m - 1) / n_bins, m / n_bins]`` (Guo et al. 2017); a confidence of
    exactly 0 falls in the first bin.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True Stage-2 class ids.
    proba : array-like of shape (n_samples, 3)
        Predicted class probabilities (softmax outputs); rows sum to 1.
    n_bins : int, default=15
        Number of equal-width bins on [0, 1].

    Returns
    -------
    bin_confidence : ndarray of shape (n_bins,)
        Mean confidence in each bin, NaN for an empty bin.
    bin_accuracy : ndarray of shape (n_bins,)
        Fraction of correct arg-max predictions in each bin, NaN when empty.
    bin_count : ndarray of shape (n_bins,)
        Number of blocks in each bin.

    References
    ----------
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern
    Neural Networks", ICML 2017.

    Examples
    --------
    >>> conf, acc, count = reliability_curve([0, 1], [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]], n_bins=2)
    >>> count.tolist(), acc.tolist()
    ([0, 2], [nan, 0.5])
    """
    y_true = check_labels(y_true, "y_true")
    proba = _check_proba(proba, len(y_true))
    n_bins = _check_n_bins(n_bins)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    # Right-closed bins on np.linspace edges, as in the reference implementations
    # (conf > lower and conf <= upper); conf = 1.0 lands in the last bin.
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        bin_accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return bin_confidence, bin_accuracy, count


def calibration_metrics(y_true, proba, *, n_bins: int = 15, prefix: str = "") -> dict[str, float]:
    """Expected calibration error, negative log-likelihood and Brier score.

    .. math::
        \\text{ECE} = \\sum_m \\frac{|B_m|}{n} |\\text{acc}(B_m) - \\text{conf}(B_m)|

        \\text{NLL} = -\\frac{1}{n} \\sum_i \\log p_{i, y_i}

        \\text{Brier} = \\frac{1}{n} \\sum_i \\sum_k (p_{ik} - [y_i = k])^2

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True Stage-2 class ids.
    proba : array-like of shape (n_samples, 3)
        Predicted class probabilities (softmax outputs); rows sum to 1.
    n_bins : int, default=15
        Equal-width confidence bins of the ECE (see :func:`reliability_curve`).
    prefix : str, default=""
        Put before every key.

    Returns
    -------
    metrics : dict of str to float
        ``ece``, ``nll`` and ``brier``, prefixed. All are lower-is-better.

    Notes
    -----
    The Brier score is the original multi-class definition (Brier 1950): the
    squared error summed over the 3 classes, then averaged over blocks; it
    lies in [0, 2]. (scikit-learn's ``brier_score_loss`` for multi-class
    inputs uses the same sum.) The NLL is scikit-learn's ``log_loss`` with
    ``labels=[0, 1, 2]``, which clips probabilities away from 0.

    References
    ----------
    C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    G. W. Brier, "Verification of forecasts expressed in terms of
    probability", Monthly Weather Review 78(1), 1950.

    Examples
    --------
    >>> m = calibration_metrics([0, 1], [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    >>> round(m["brier"], 4), round(m["nll"], 4)
    (0.25, 0.3466)
    """
    y_true = check_labels(y_true, "y_true")
    proba = _check_proba(proba, len(y_true))
    bin_confidence, bin_accuracy, count = reliability_curve(y_true, proba, n_bins=n_bins)
    filled = count > 0
    ece = np.sum(count[filled] / len(y_true) * np.abs(bin_accuracy[filled] - bin_confidence[filled]))
    onehot = np.eye(N_CLASSES)[y_true]
    brier = np.mean(np.sum((proba - onehot) ** 2, axis=1))
    nll = log_loss(y_true, proba, labels=LABELS)
    return {prefix + ECE: float(ece), prefix + NLL: float(nll), prefix + BRIER: float(brier)}


# --------------------------------------------------------------------------- Stage 1
def binary_metrics(y_true, y_score, *, threshold: float = 0.5, prefix: str = "") -> dict[str, float]:
    """Stage-1 metrics: the positive class is PARTITIONED (1), NONE is 0.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True Stage-1 labels (0 = NONE, 1 = partitioned).
    y_score : array-like of shape (n_samples,)
        Predicted probability of the partitioned class.
    threshold : float, default=0.5
        A block is predicted partitioned when ``y_score >= threshold``.
    prefix : str, default=""
        Put before every key.

    Returns
    -------
    metrics : dict of str to float
        ``f1``, ``precision``, ``recall`` (of the partitioned class),
        ``accuracy``, and the threshold-free ``roc_auc`` and
        ``average_precision``, prefixed.

    Notes
    -----
    Precision (recall) is 0 when nothing is predicted (present) positive
    (``zero_division=0``). ROC AUC is undefined when ``y_true`` holds a
    single class: it is then NaN and a ``UserWarning`` says so; so is
    average precision.

    Examples
    --------
    >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    >>> m["accuracy"], m["roc_auc"]
    (0.75, 1.0)
    """
    y_true = check_labels(y_true, "y_true", n_classes=2)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim != 1:
        raise ValueError(f"y_score must be 1-D (probability of the partitioned class); got {y_score.shape}")
    check_pair(y_true, y_score, "y_score")
    if not np.all(np.isfinite(y_score)) or y_score.min() < 0 or y_score.max() > 1:
        raise ValueError("y_score must hold probabilities in [0, 1]")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1]; got {threshold!r}")
    y_pred = (y_score >= threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[1], zero_division=0
    )
    if np.unique(y_true).size < 2:
        warnings.warn("ROC AUC is undefined when y_true holds one class; reporting NaN", UserWarning)
        auc = ap = float("nan")
    else:
        auc = float(roc_auc_score(y_true, y_score))
        ap = float(average_precision_score(y_true, y_score))
    return {
        prefix + F1: float(f1[0]),
        prefix + PRECISION: float(precision[0]),
        prefix + RECALL: float(recall[0]),
        prefix + ACCURACY: float(accuracy_score(y_true, y_pred)),
        prefix + ROC_AUC: auc,
        prefix + AVERAGE_PRECISION: ap,
    }


def f1_threshold(y_true, y_score) -> float:
    """The decision threshold on ``y_score`` that maximises F1 of the partitioned class.

    Chosen on validation and applied unchanged to test: a focal loss with
    alpha = 0.25 and a balanced sampler leave P(partitioned) far from
    calibrated, so 0.5 is an arbitrary cut.

    Examples
    --------
    >>> f1_threshold([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    0.7
    """
    y_true = check_labels(y_true, "y_true", n_classes=2)
    y_score = np.asarray(y_score, dtype=np.float64)
    check_pair(y_true, y_score, "y_score")
    if not y_true.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


# --------------------------------------------------------------------------- per QP
def per_qp_metrics(y_true, y_pred, qindex) -> dict[int, dict[str, float]]:
    """:func:`classification_metrics` of the blocks of each qindex, plus their count ``n``.

    Examples
    --------
    >>> m = per_qp_metrics([0, 1, 2, 0], [0, 1, 2, 1], [80, 80, 220, 220])
    >>> sorted(m), m[80]["n"], m[80]["accuracy"]
    ([80, 220], 2.0, 1.0)
    """
    y_true = check_labels(y_true, "y_true")
    y_pred = check_labels(y_pred, "y_pred")
    qindex = np.asarray(qindex)
    check_pair(y_true, y_pred, "y_pred")
    check_pair(y_true, qindex, "qindex")
    out = {}
    for q in np.unique(qindex):
        sel = qindex == q
        out[int(q)] = {COUNT: float(sel.sum()), **classification_metrics(y_true[sel], y_pred[sel])}
    return out


def flatten_per_qp(per_qp_values: dict[int, dict[str, float]]) -> dict[str, float]:
    """MLflow metric keys ``q<qindex>_macro_f1`` and ``q<qindex>_f1_<class>``."""
    keys = (COUNT, MACRO_F1, *(per_class(F1, k) for k in CLASS_KEYS))
    return {per_qp(q, k): m[k] for q, m in per_qp_values.items() for k in keys}


def split_metrics(y_true, proba, qindex, *, prefix: str = "") -> dict[str, float]:
    """The Stage-2 metric contract of one split: :func:`classification_metrics` of the
    arg-max class, :func:`calibration_metrics` and the flattened :func:`per_qp_metrics`,
    every key prefixed. Training runs log it; the comparison recomputes it for pooled folds."""
    proba = np.asarray(proba)
    pred = proba.argmax(1)
    per_qp = flatten_per_qp(per_qp_metrics(y_true, pred, qindex))
    return {**classification_metrics(y_true, pred, prefix=prefix),
            **calibration_metrics(y_true, proba, prefix=prefix),
            **{prefix + key: v for key, v in per_qp.items()}}
