"""Focal loss, class-balanced, and its label-smoothed variant.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002. Label smoothing: Szegedy et al.,
"Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
https://arxiv.org/abs/1512.00567; Mueller et al., "When Does Label Smoothing
Help?", NeurIPS 2019, https://arxiv.org/abs/1906.02629.
"""
from __future__ import annotations

import torch

from av1_ablation.losses.weights import WeightedMeanLoss, one_minus_exp


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0; got {value!r}")
    return float(value)


class ClassBalancedFocalLoss(WeightedMeanLoss):
    """l_i = (1 - p_t)^gamma * (-log p_t); L = mean_i w_{y_i} l_i.

    The ``baseline`` (gamma 2) and ``focal_gamma3`` (gamma 3) arms.

    Args:
        weight: per-class weights (C,), e.g. :func:`class_balanced_weights`; None means 1.
        gamma: focusing parameter; 0 turns the loss into class-balanced cross-entropy.
            Below 1 the gradient is unbounded as p_t -> 1.
    """

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 2.0):
        super().__init__(weight)
        self.gamma = _check_nonnegative("gamma", gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (batch_size, num_classes), target (batch_size,) class ids -> scalar."""
        log_pt = self._log_probs(logits, target).gather(1, target[:, None]).squeeze(1)
        per_sample = one_minus_exp(log_pt).pow(self.gamma) * -log_pt
        return self._reduce(per_sample, target)


class FocalLabelSmoothingLoss(WeightedMeanLoss):
    """l_i = -sum_k q_k (1 - p_k)^gamma log p_k, q = (1 - eps) onehot(y) + eps / C.

    The ``focal_smoothing`` arm; L = mean_i w_{y_i} l_i.

    Args:
        weight: per-class weights (C,); None means 1.
        gamma: focusing parameter, applied to every class term.
        smoothing: eps in [0, 1); 0 turns the loss into :class:`ClassBalancedFocalLoss`.
    """

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 2.0,
                 smoothing: float = 0.1):
        super().__init__(weight)
        self.gamma = _check_nonnegative("gamma", gamma)
        if _check_nonnegative("smoothing", smoothing) >= 1:
            raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}")
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (batch_size, num_classes), target (batch_size,) class ids -> scalar."""
        log_p = self._log_probs(logits, target)  # (N, C)
        num_classes = log_p.shape[1]
        q = torch.full_like(log_p, self.smoothing / num_classes)
        q.scatter_add_(1, target[:, None], torch.full_like(log_p[:, :1], 1.0 - self.smoothing))
        per_sample = -(q * one_minus_exp(log_p).pow(self.gamma) * log_p).sum(dim=1)
        return self._reduce(per_sample, target)
