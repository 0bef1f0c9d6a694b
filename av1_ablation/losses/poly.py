"""Poly-1 loss.

Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification
Loss Functions", ICLR 2022, https://arxiv.org/abs/2204.12511. Poly-1 adds one
term to cross-entropy, epsilon * (1 - p_t), which raises the gradient for
samples the model already fits (p_t near 1) relative to CE; the paper
recommends epsilon = 1 for ImageNet-style classification.
"""
from __future__ import annotations

import torch

from av1_ablation.losses.weights import WeightedMeanLoss, one_minus_exp


class PolyLoss(WeightedMeanLoss):
    """l_i = -log p_t + epsilon * (1 - p_t); L = mean_i w_{y_i} l_i.

    p_t is the model's softmax probability of the target class (not
    exp(-weighted CE), which is not a probability when w_y != 1).

    Args:
        weight: per-class weights (C,); None means 1.
        epsilon: weight of the first polynomial term; 0 turns the loss into
            class-balanced cross-entropy. Negative values are allowed
            (the paper explores them) as long as epsilon >= -1 keeps l_i >= 0.
    """

    def __init__(self, weight: torch.Tensor | None = None, epsilon: float = 1.0):
        super().__init__(weight)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= -1:
            raise ValueError(f"epsilon must be a number >= -1; got {epsilon!r}")
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (batch_size, num_classes), target (batch_size,) class ids -> scalar."""
        log_pt = self._log_probs(logits, target).gather(1, target[:, None]).squeeze(1)
        per_sample = -log_pt + self.epsilon * one_minus_exp(log_pt)
        return self._reduce(per_sample, target)
