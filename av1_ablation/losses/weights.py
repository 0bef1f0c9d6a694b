"""Class-balanced weights and the weighting convention shared by every Stage-2 loss.

Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019, https://arxiv.org/abs/1901.05555.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn


def class_balanced_weights(class_counts, beta: float = 0.9999) -> torch.Tensor:
    """Per-class weights w_c = (1 - beta) / (1 - beta^n_c), rescaled so sum_c w_c = C.

    Parameters
    ----------
    class_counts : array-like of shape (C,)
        Training samples per class (non-negative integers).
    beta : float, default=0.9999
        In [0, 1). 0 gives equal weights; towards 1 the weights approach
        inverse class frequency.

    Returns
    -------
    weights : torch.Tensor of shape (C,), float32

    Notes
    -----
    A class with count 0 would get an infinite weight. It gets weight 0
    instead (with a ``UserWarning``): it has no training sample, so its weight
    never reaches a training gradient, and an infinite-or-huge weight would,
    after the rescaling, shrink every other class's weight towards 0. The
    remaining weights are rescaled so that the sum is still C.
    """
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"class_counts must be a non-empty 1-D sequence of counts; got {class_counts!r}")
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError(f"class_counts must be non-negative integers; got {counts.tolist()}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a number in [0, 1); got {beta!r}")
    present = counts > 0
    if not present.any():
        raise ValueError("class_counts are all 0: there is no training sample to weight")
    if not present.all():
        warnings.warn(f"classes {np.flatnonzero(~present).tolist()} have no training samples; "
                      "they get class-balanced weight 0", UserWarning, stacklevel=2)
    n = counts[present].astype(np.float64)
    # (1 - beta) / (1 - beta^n) via expm1 keeps precision for beta close to 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_beta = np.log(beta) if beta > 0 else -np.inf
        effective = np.where(beta > 0, -np.expm1(n * log_beta), 1.0)
    raw = np.zeros(counts.size)
    raw[present] = (1.0 - beta) / effective
    return torch.as_tensor(raw * counts.size / raw.sum(), dtype=torch.float32)


class WeightedMeanLoss(nn.Module):
    """Base of the Stage-2 losses: L = (1/N) sum_i w_{y_i} l_i.

    This is the plain batch mean of the weighted per-sample losses, not
    torch's ``weight=`` mean (which divides by sum_i w_{y_i}), so the class
    balancing is the same for every loss and only l_i changes.

    Args:
        weight: per-class weights (C,), stored as a buffer; None means all 1.
    """

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.dim() != 1 or not torch.isfinite(weight).all() or (weight < 0).any():
                raise ValueError("weight must be a 1-D tensor of finite, non-negative class weights")
        self.register_buffer("weight", weight)

    @staticmethod
    def _log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert logits.dim() == 2 and target.shape == logits.shape[:1], (logits.shape, target.shape)
        # Low-precision (fp16/bf16) probabilities underflow; compute in float32 at least.
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.log_softmax(logits, dim=1)  # (N, C)

    def _reduce(self, per_sample: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            per_sample = per_sample * self.weight.to(per_sample.dtype)[target]
        return per_sample.mean()


def one_minus_exp(log_p: torch.Tensor) -> torch.Tensor:
    """1 - exp(log_p), accurate when p is close to 1."""
    return -torch.expm1(log_p)
