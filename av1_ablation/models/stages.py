"""Stage models: the Stage-1 binary classifier and the adapter-tuned Stage-2 classifier.

Stage 1 (NONE vs partitioned) trains the whole backbone. Stage 2 (SPLIT /
RECT / AB) keeps the Stage-1 backbone frozen and trains Conv-Adapters plus a
new head: Chen et al., "Conv-Adapter: Exploring Parameter Efficient Transfer
Learning for ConvNets", CVPR Workshops 2024, https://arxiv.org/abs/2208.07463.
The adapters sit where the original research repository
chiarorosa/cnn-av1-research (branch pesquisa_v7) put them: after a stage's SE
block, and for layer4 after the spatial attention.

State-dict keys follow the original pipeline (``backbone.*``, ``head.head.<i>.*``,
``head.temperature``) so one loader handles its checkpoints and ours.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from av1_ablation.models.backbone import STAGES, Backbone, scaled_channels
from av1_ablation.models.fastconv import FastConv2d
from av1_ablation.models.qp import QPHead

# the Stage-2 optimiser's parameter groups, each with its learning rate (logged as lr_<group>)
ADAPTER_GROUP, HEAD_GROUP, BACKBONE_GROUP = "adapter", "head", "backbone"


class Stage1Head(QPHead):
    """512 -> 256 -> 1 with ReLU and dropout 0.3 (keys ``head.{0,3}``), QP input optional.

    ``temperature`` (1.5 at init) is kept for checkpoint-key and parameter-count
    parity with the original ``Stage1BinaryHead``. It is frozen
    (``requires_grad=False``) and never applied in ``forward``: the model
    returns raw logits and calibration, if any, is done outside the model.
    """

    def __init__(self, in_features: int = 512, dropout: float = 0.3, qp_input: str = "none"):
        super().__init__([in_features, 256, 1], dropout, qp_input)
        self.temperature = nn.Parameter(torch.tensor(1.5), requires_grad=False)

    def forward(self, features: torch.Tensor, qp: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(features, qp).squeeze(-1)  # (B,)


class Stage2Head(QPHead):
    """512 -> 256 -> 128 -> 3 with ReLU and dropout 0.4 (keys ``head.{0,3,6}``), QP input optional."""

    def __init__(self, in_features: int = 512, num_classes: int = 3, dropout: float = 0.4,
                 qp_input: str = "none"):
        super().__init__([in_features, 256, 128, num_classes], dropout, qp_input)


class Stage1Model(nn.Module):
    """Backbone + binary head; ``forward`` returns (B,) logits of P(partitioned).

    Parameters
    ----------
    width : float, default=1.0
        Backbone channel multiplier; 1.0 has 11,345,444 parameters, as in the
        original (11,345,443 of them trainable: ``temperature`` is frozen).
    qp_input : {"none", "concat", "film"}, default="none"
        How the head reads the QP (:mod:`av1_ablation.models.qp`); ``none`` is
        the original model.
    """

    def __init__(self, width: float = 1.0, qp_input: str = "none"):
        super().__init__()
        self.backbone = Backbone(width)
        self.head = Stage1Head(self.backbone.out_features, qp_input=qp_input)

    def forward(self, x: torch.Tensor, qp: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(x), qp)


class ConvAdapter(nn.Module):
    """Conv-Adapter: ``h + alpha * up(ReLU(dw3x3(ReLU(BN(down(h))))))``.

    Parameters
    ----------
    channels : int
        Channels of the adapted feature map.
    reduction : int, default=4
        Bottleneck factor gamma: the hidden width is ``max(1, channels // reduction)``.

    Notes
    -----
    The up-projection starts at zero, so an untrained adapter is the identity
    and Stage 2 starts exactly from the Stage-1 features; ``alpha`` (one scale
    per channel) starts at one.
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down = FastConv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.dw = FastConv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.up = FastConv2d(hidden, channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.alpha = nn.Parameter(torch.ones(channels))
        nn.init.kaiming_normal_(self.down.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.dw.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        delta = self.relu(self.bn(self.down(h)))
        delta = self.up(self.relu(self.dw(delta)))
        return h + self.alpha[:, None, None] * delta  # (B, C, H, W)


class Stage2Model(nn.Module):
    """Frozen Stage-1 backbone + Conv-Adapters + three-way head (SPLIT, RECT, AB).

    Parameters
    ----------
    backbone : Backbone or None, default=None
        The (Stage-1) backbone, frozen in place. None builds a fresh one of
        ``width``; see :meth:`from_stage1` to start from a trained model.
    width : float or None, default=None
        Channel multiplier of a fresh backbone (None means 1.0). With a given
        backbone it must be None or give the backbone's channels.
    adapter_layers : tuple of str, default=("layer3", "layer4")
        Stages followed by an adapter; an empty tuple trains the head only.
    adapter_reduction : int, default=4
        The adapters' bottleneck factor gamma.
    qp_input : {"none", "concat", "film"}, default="none"
        How the head reads the QP (:mod:`av1_ablation.models.qp`).
    frozen : bool, default=True
        False trains the backbone too, BatchNorm included (the ``finetune``
        reference: are the frozen Stage-1 features the bottleneck?); nothing
        is then a frozen prefix.

    Notes
    -----
    The backbone has ``requires_grad=False`` and stays in eval mode even after
    ``model.train()``: its BatchNorm layers keep the Stage-1 running
    statistics (updating them under a frozen backbone was the collapse the
    original research traced to BatchNorm). Nothing before the first adapted
    stage depends on trained parameters, so :meth:`frozen_prefix` of a block
    is deterministic and can be cached; :meth:`forward_from_prefix` finishes
    the forward pass from it.
    """

    def __init__(self, backbone: Backbone | None = None, *, width: float | None = None,
                 adapter_layers: Iterable[str] = ("layer3", "layer4"),
                 adapter_reduction: int = 4, qp_input: str = "none", frozen: bool = True):
        super().__init__()
        if backbone is None:
            backbone = Backbone(1.0 if width is None else width)
        elif not isinstance(backbone, Backbone):
            raise ValueError(f"backbone must be a Backbone or None; got {type(backbone).__name__}")
        elif width is not None and scaled_channels(width) != scaled_channels(backbone.width):
            raise ValueError(f"width={width} does not match the given backbone's width {backbone.width}")
        layers = tuple(adapter_layers)
        if (isinstance(adapter_layers, str) or not set(layers) <= set(STAGES)
                or len(set(layers)) != len(layers)):
            raise ValueError(
                f"adapter_layers must be distinct names among {STAGES}; got {adapter_layers!r}"
            )
        if (isinstance(adapter_reduction, bool) or not isinstance(adapter_reduction, int)
                or adapter_reduction < 1):
            raise ValueError(f"adapter_reduction must be an int >= 1; got {adapter_reduction!r}")
        self.adapter_layers = tuple(s for s in STAGES if s in layers)
        self.frozen = bool(frozen)
        self.backbone = backbone.requires_grad_(not self.frozen)
        channels = dict(zip(STAGES, scaled_channels(backbone.width)))
        self.adapters = nn.ModuleDict(
            {name: ConvAdapter(channels[name], adapter_reduction) for name in self.adapter_layers}
        )
        self.head = Stage2Head(backbone.out_features, qp_input=qp_input)
        # The first adapted stage; None (head only) means the whole backbone is frozen prefix.
        self._start = self.adapter_layers[0] if self.adapter_layers else None
        self.train(self.training)

    def train(self, mode: bool = True) -> "Stage2Model":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen BatchNorm statistics, always
        return self

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before the first adapted stage: (B, C, h, w) feature map.
        A model that trains its backbone has no frozen prefix."""
        if not self.frozen:
            raise RuntimeError("a Stage2Model with frozen=False trains its backbone: it has no frozen prefix")
        return self.backbone.forward_prefix(x, self._start)

    def forward_from_prefix(self, h: torch.Tensor, qp: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, 3) from the output of :meth:`frozen_prefix` (and the standardised
        qindex when the head reads the QP)."""
        return self.head(self.backbone.forward_suffix(h, self._start, self.adapters), qp)

    def forward(self, x: torch.Tensor, qp: torch.Tensor | None = None) -> torch.Tensor:
        if not self.frozen:
            return self.head(self.backbone.forward_suffix(self.backbone.stem(x), STAGES[0], self.adapters), qp)
        return self.forward_from_prefix(self.frozen_prefix(x), qp)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group, for separate AdamW learning rates (``backbone``
        only when it trains)."""
        groups = {ADAPTER_GROUP: list(self.adapters.parameters()), HEAD_GROUP: list(self.head.parameters())}
        if not self.frozen:
            groups[BACKBONE_GROUP] = list(self.backbone.parameters())
        return groups

    @classmethod
    def from_stage1(cls, source: "Stage1Model | Backbone", *,
                    adapter_layers: Iterable[str] = ("layer3", "layer4"),
                    adapter_reduction: int = 4) -> "Stage2Model":
        """Build on a copy of a Stage-1 backbone.

        ``source`` is a :class:`Stage1Model` or a :class:`Backbone`; for a Stage-1
        checkpoint file (the original pipeline's or ours) pass
        :func:`av1_ablation.models.checkpoints.load_stage1_backbone` of it.
        """
        if isinstance(source, Stage1Model):
            backbone = copy.deepcopy(source.backbone)
        elif isinstance(source, Backbone):
            backbone = copy.deepcopy(source)
        else:
            raise TypeError(f"source must be a Stage1Model or a Backbone; got {type(source).__name__} "
                            "(load a checkpoint file with load_stage1_backbone first)")
        return cls(backbone, adapter_layers=adapter_layers, adapter_reduction=adapter_reduction)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` parameter counts of ``model``."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }
