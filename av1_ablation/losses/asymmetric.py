"""Asymmetric loss, adapted to single-label softmax as one-vs-rest terms.

Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021,
https://arxiv.org/abs/2009.14119. The original is a multi-label (sigmoid)
loss; here p_k is the softmax probability of class k, the target class is the
positive and the others are negatives. This is not the official single-label
``ASLSingleLabel`` of Alibaba-MIIL/ASL, which is a different loss.
"""
from __future__ import annotations

import math

import torch

from av1_ablation.losses.focal import _check_nonnegative
from av1_ablation.losses.weights import WeightedMeanLoss, one_minus_exp


class AsymmetricLoss(WeightedMeanLoss):
    """l_i = -sum_k [y_k (1-p_k)^gamma_pos log p_k + (1-y_k) p_k^gamma_neg log(1-p_k)].

    y is the one-hot target and both log arguments are clamped at ``clip``
    (1e-8), so a confident wrong class contributes a bounded term.
    L = mean_i w_{y_i} l_i.

    Args:
        weight: per-class weights (C,); None means 1.
        gamma_pos: focusing exponent of the target-class term.
        gamma_neg: focusing exponent of the other classes' terms; larger values
            ignore easy negatives (small p_k) more.
        clip: lower clamp of p_k and 1 - p_k inside the logs.
    """

    def __init__(self, weight: torch.Tensor | None = None, gamma_pos: float = 2.0,
                 gamma_neg: float = 4.0, clip: float = 1e-8):
        super().__init__(weight)
        self.gamma_pos = _check_nonnegative("gamma_pos", gamma_pos)
        self.gamma_neg = _check_nonnegative("gamma_neg", gamma_neg)
        if not 0 < _check_nonnegative("clip", clip) < 1:
            raise ValueError(f"clip must be in (0, 1); got {clip!r}")
        self.clip = float(clip)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (batch_size, num_classes), target (batch_size,) class ids -> scalar."""
        log_p = self._log_probs(logits, target)  # (N, C)
        p, q = log_p.exp(), one_minus_exp(log_p)  # q = 1 - p, accurate near p = 1
        # log(max(p, clip)) taken on log_softmax, which is exact where p is tiny.
        log_p_clamped = log_p.clamp_min(math.log(self.clip))
        log_q_clamped = q.clamp_min(self.clip).log()
        positive = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, target[:, None], True)
        terms = torch.where(positive, q.pow(self.gamma_pos) * log_p_clamped,
                            p.pow(self.gamma_neg) * log_q_clamped)
        return self._reduce(-terms.sum(dim=1), target)
