"""Build a Stage-2 ablation loss by name.

Every arm gets the same class-balanced weights (Cui et al. 2019) from the
training class counts; only the per-sample loss changes.
"""
from __future__ import annotations

import torch.nn as nn

from av1_ablation.losses.asymmetric import AsymmetricLoss
from av1_ablation.losses.focal import ClassBalancedFocalLoss, FocalLabelSmoothingLoss
from av1_ablation.losses.poly import PolyLoss
from av1_ablation.losses.weights import class_balanced_weights

# name -> (loss class, default hyper-parameters). The order is the ablation's.
_ARMS: dict[str, tuple[type, dict[str, float]]] = {
    "baseline": (ClassBalancedFocalLoss, {"gamma": 2.0}),
    "focal_gamma3": (ClassBalancedFocalLoss, {"gamma": 3.0}),
    "poly": (PolyLoss, {"epsilon": 1.0}),
    "asymmetric": (AsymmetricLoss, {"gamma_pos": 2.0, "gamma_neg": 4.0}),
    "focal_smoothing": (FocalLabelSmoothingLoss, {"gamma": 2.0, "smoothing": 0.1}),
}
LOSS_TYPES: tuple[str, ...] = tuple(_ARMS)
DEFAULT_BETA = 0.9999


def loss_hyperparameters(name: str) -> dict[str, float]:
    """Default hyper-parameters of a loss, including the class-balancing ``beta``."""
    _check_name(name)
    return {**_ARMS[name][1], "beta": DEFAULT_BETA}


def _check_name(name: str) -> None:
    if name not in _ARMS:
        raise ValueError(f"Unknown loss {name!r}, expected one of {LOSS_TYPES}")


def build_loss(name: str, class_counts, **hyperparams) -> nn.Module:
    """The loss module of an ablation arm.

    Parameters
    ----------
    name : str
        One of :data:`LOSS_TYPES`.
    class_counts : array-like of shape (C,)
        Training samples per class, for :func:`class_balanced_weights`.
    **hyperparams
        Overrides of :func:`loss_hyperparameters` (``beta`` and the loss's own).

    Returns
    -------
    loss : nn.Module
        ``loss(logits (N, C), target (N,)) -> scalar``.

    Raises
    ------
    ValueError
        Unknown name or hyper-parameter (the message lists the valid ones), or a bad value.
    """
    defaults = loss_hyperparameters(name)
    unknown = sorted(set(hyperparams) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown hyper-parameter(s) {unknown} for loss {name!r}, "
                         f"expected a subset of {sorted(defaults)}")
    params = {**defaults, **hyperparams}
    beta = params.pop("beta")
    loss_class = _ARMS[name][0]
    return loss_class(class_balanced_weights(class_counts, beta), **params)
