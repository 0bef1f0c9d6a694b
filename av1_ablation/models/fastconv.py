"""A Conv2d that applies itself as a matrix product when its output is 1x1.

For a 16x16 block, layer3 and layer4 of the backbone run on 1x1 feature maps
(layer3's first block maps 2x2 to 1x1 with stride 2), and so do the adapters'
depthwise convolutions and the 7x7 spatial-attention convolution. When a
convolution (zero padding, dilation 1) produces a single output position, only
the kernel taps that land on the input contribute; every other tap multiplies
zero padding. With input H x W and padding p, the taps used are
``weight[:, :, p:p+h, p:p+w]`` against ``x[:, :, :h, :w]`` with
``h = min(H, k - p)``. Hence:

- 3x3, padding 1, on 1x1: the centre tap ``weight[:, :, 1, 1]``;
- 3x3, stride 2, padding 1, from 2x2 to 1x1: ``weight[:, :, 1:3, 1:3]``;
- 1x1, stride 2, from 2x2 to 1x1: ``x[:, :, 0, 0]``;
- 7x7, padding 3, on 1x1: ``weight[:, :, 3, 3]``.

This is an exact reformulation (same parameters, same state-dict keys, same
gradients), not an approximation: a dense conv2d on a (128, 512, 1, 1) tensor
costs about eight times the matrix product on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` with an exact matrix-product path for 1x1 outputs.

    The fast path is taken when the output is 1x1, the padding is zeros, the
    dilation is 1 and the convolution is dense (``groups=1``) or depthwise
    (``groups == in_channels == out_channels``); otherwise the module is a plain
    ``nn.Conv2d``. Set ``fast_path = False`` (or use :func:`set_fast_paths`) to
    force the plain convolution, e.g. to compare the two.
    """

    fast_path: bool = True

    def _taps(self, height: int, width: int) -> tuple[int, int] | None:
        """Number of input rows/columns the single output position reads, or None."""
        if not self.fast_path or self.padding_mode != "zeros" or self.dilation != (1, 1):
            return None
        if isinstance(self.padding, str):  # "same"/"valid": leave to conv2d
            return None
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        if (height + 2 * ph - kh) // sh + 1 != 1 or (width + 2 * pw - kw) // sw + 1 != 1:
            return None
        depthwise = self.groups == self.in_channels == self.out_channels
        if self.groups != 1 and not depthwise:
            return None
        return min(height, kh - ph), min(width, kw - pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self._taps(x.shape[-2], x.shape[-1]) if x.dim() == 4 else None
        if taps is None:
            return super().forward(x)
        h, w = taps
        ph, pw = self.padding
        weight = self.weight[:, :, ph:ph + h, pw:pw + w]  # (O, I/groups, h, w)
        x = x[:, :, :h, :w]
        if self.groups == 1:
            out = F.linear(x.flatten(1), weight.flatten(1), self.bias)  # (B, O)
        else:  # depthwise: one filter per channel
            out = (x * weight.squeeze(1)).sum(dim=(2, 3))  # (B, C)
            if self.bias is not None:
                out = out + self.bias
        return out[:, :, None, None]


def set_fast_paths(module: nn.Module, enabled: bool) -> nn.Module:
    """Turn the 1x1-output fast path of every :class:`FastConv2d` in ``module`` on or off.

    Returns ``module`` so the call can be chained.
    """
    for m in module.modules():
        if isinstance(m, FastConv2d):
            m.fast_path = bool(enabled)
    return module
