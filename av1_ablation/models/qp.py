"""How a model sees the quantiser: ``qp_input`` = ``none``, ``concat`` or ``film``.

The partition libaom picks for the same pixels depends on the QP (SPLIT is
42% of Stage-2 blocks at cq 20 and 5% at cq 55), so a QP-blind model cannot
tell those blocks apart. The QP enters only the head, after the backbone's
pooling, so every frozen part of the network stays a function of the pixels
alone and its cached output stays exact.

- ``none``: the original model; no QP.
- ``concat``: late fusion as in the original research code's unused v5
  ``QPEmbedding`` (``Linear(1 -> 16) + SiLU``) and ETH-CNN (Xu et al., IEEE
  TIP 2018): the embedding is concatenated to the pooled features.
- ``film``: FiLM (Perez et al., AAAI 2018): a per-channel scale and shift of
  the head's first hidden layer, computed from the QP; it starts as the
  identity (scale 1, shift 0).

The input is :func:`standardise_qindex` of the encode's base qindex.
"""
from __future__ import annotations

import torch
import torch.nn as nn

QP_INPUTS = ("none", "concat", "film")
QP_EMBEDDING = 16  # the original v5 QPEmbedding's width
MAX_QINDEX = 255.0


def standardise_qindex(qindex) -> torch.Tensor:
    """qindex 0..255 -> float32 in [0, 1].

    libaom's own CNN partition pruner feeds log1p(dc_q^2 / 256). Over the
    qindex range used here (about 40..255) libaom's dc_q grows close to
    exponentially with qindex, so that feature is close to an affine function
    of qindex, which the first linear layer absorbs; qindex / 255 keeps every
    possible qindex, seen in training or not, inside [0, 1].
    """
    return torch.as_tensor(qindex).to(torch.float32) / MAX_QINDEX


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout between consecutive sizes, a plain Linear last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def check_qp_input(qp_input: str) -> str:
    if qp_input not in QP_INPUTS:
        raise ValueError(f"qp_input must be one of {', '.join(QP_INPUTS)}; got {qp_input!r}")
    return qp_input


class QPHead(nn.Module):
    """An MLP head (``head.<i>`` keys, as the original) that may read the QP.

    Parameters
    ----------
    sizes : list of int
        Layer sizes from the pooled features to the output, e.g. [512, 256, 1].
    dropout : float
        Dropout after each hidden layer.
    qp_input : {"none", "concat", "film"}
        See the module docstring. ``none`` builds exactly the original head.
    """

    def __init__(self, sizes: list[int], dropout: float, qp_input: str = "none"):
        super().__init__()
        self.qp_input = check_qp_input(qp_input)
        first = sizes[0] + (QP_EMBEDDING if qp_input == "concat" else 0)
        self.head = mlp([first, *sizes[1:]], dropout)
        if qp_input == "concat":
            self.qp = nn.Sequential(nn.Linear(1, QP_EMBEDDING), nn.SiLU())
        elif qp_input == "film":
            self.qp = nn.Sequential(nn.Linear(1, QP_EMBEDDING), nn.SiLU(),
                                    nn.Linear(QP_EMBEDDING, 2 * sizes[1]))
            nn.init.zeros_(self.qp[2].weight)  # scale 1 + 0, shift 0: starts as the plain head
            nn.init.zeros_(self.qp[2].bias)

    def forward(self, features: torch.Tensor, qp: torch.Tensor | None = None) -> torch.Tensor:
        if self.qp_input == "none":
            return self.head(features)
        if qp is None:
            raise ValueError(f"this head has qp_input={self.qp_input!r}: pass the standardised "
                             "qindex of every block (standardise_qindex)")
        q = qp.reshape(-1, 1).to(features.dtype)
        if self.qp_input == "concat":
            return self.head(torch.cat([features, self.qp(q)], dim=1))
        scale, shift = self.qp(q).chunk(2, dim=1)
        h = self.head[0](features) * (1 + scale) + shift
        for layer in self.head[1:]:
            h = layer(h)
        return h
