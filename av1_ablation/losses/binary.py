"""Binary focal loss for Stage 1 (NONE vs partitioned).

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002. Defaults (alpha 0.25, gamma 2.5) are the
original research pipeline's Stage-1 recipe.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BinaryFocalLoss(nn.Module):
    """l_i = alpha_t (1 - p_t)^gamma * BCE(z_i, y_i); L = mean_i l_i.

    p = sigmoid(z); p_t = p if y = 1 else 1 - p; alpha_t = alpha if y = 1
    else 1 - alpha (alpha weights the positive class, "partitioned").

    Args:
        alpha: weight of the positive class in [0, 1]; the negative gets 1 - alpha.
        gamma: focusing parameter >= 0; 0 gives alpha-weighted BCE.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.5):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma must be a number >= 0; got {gamma!r}")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (batch_size,), target (batch_size,) in {0, 1} -> scalar."""
        assert logits.shape == target.shape, (logits.shape, target.shape)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # = -log p_t
        one_minus_pt = -torch.expm1(-bce)  # 1 - p_t, accurate near p_t = 1
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return (alpha_t * one_minus_pt.pow(self.gamma) * bce).mean()
