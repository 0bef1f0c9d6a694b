"""The shared feature extractor: ResNet-18 with squeeze-and-excitation and spatial attention.

The topology and state-dict keys are those of the original research
repository chiarorosa/cnn-av1-research (``ImprovedBackbone``), which builds on
torchvision's ``resnet18`` with a 1-channel stem, so its Stage-1 checkpoints
load into :class:`Backbone` with strict key matching. No weights are
downloaded: ImageNet initialisation does not apply to 16x16 luma blocks
scaled to [0, 1], and the Stage-2 ablation starts from a Stage-1 checkpoint.

References: He et al., "Deep Residual Learning for Image Recognition", CVPR
2016; Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018; Woo et al.,
"CBAM: Convolutional Block Attention Module", ECCV 2018.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from av1_ablation.models.fastconv import FastConv2d

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
BASE_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)


def scaled_channels(width: float) -> tuple[int, ...]:
    """Channels of layer1..layer4 for a width multiplier (1.0 gives 64, 128, 256, 512).

    Raises ``ValueError`` unless ``0 < width <= 4``.
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise ValueError(f"width must be a number in (0, 4]; got {width!r}")
    return tuple(max(1, int(round(c * width))) for c in BASE_CHANNELS)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), keys as torchvision's ``BasicBlock``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = FastConv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = FastConv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                FastConv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average -> C/r -> ReLU -> C -> sigmoid -> channel scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)  # narrow widths keep one channel
        self.excitation = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.excitation(x.mean(dim=(2, 3)))  # (B, C)
        return x * scale[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel mean and max -> kxk conv -> sigmoid -> multiply."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = FastConv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))  # (B, C, H, W)


def _make_layer(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels)
    )


class Backbone(nn.Module):
    """ResNet-18 + SE after each stage + spatial attention, pooled to a feature vector.

    Parameters
    ----------
    width : float, default=1.0
        Channel multiplier. 1.0 is the original model (512-d features,
        11,213,858 parameters); smaller values keep the topology for CPU runs.

    Notes
    -----
    Input: float (B, 1, H, W) in [0, 1]. For 16x16 inputs the maps are
    stem 8x8 -> max-pool 4x4 -> layer1 4x4 -> layer2 2x2 -> layer3 1x1 ->
    layer4 1x1, so layer3, layer4 and the spatial attention use the exact
    1x1 fast path of :class:`FastConv2d`.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        channels = scaled_channels(width)
        self.width = float(width)
        self.out_features = channels[-1]
        self.conv1 = FastConv2d(1, channels[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        previous = channels[0]
        for i, (name, c) in enumerate(zip(STAGES, channels)):
            setattr(self, name, _make_layer(previous, c, 1 if i == 0 else 2))
            previous = c
        for i, c in enumerate(channels, start=1):
            setattr(self, f"se{i}", SEBlock(c))
        self.spatial_attn = SpatialAttention(7)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's resnet initialisation, so an untrained backbone behaves like one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """One stage: ``layerK`` then ``seK`` (and the spatial attention after layer4)."""
        k = STAGES.index(name) + 1
        h = getattr(self, f"se{k}")(getattr(self, name)(h))
        return self.spatial_attn(h) if name == "layer4" else h

    def forward_prefix(self, x: torch.Tensor, stop: str | None = "layer3") -> torch.Tensor:
        """Everything before stage ``stop``: the stem and the stages before it (with their SE).

        With the default, stem..layer2+se2, the part a Stage-2 model with
        adapters on layer3/layer4 never changes. ``stop=None`` runs all stages
        and returns the last feature map before pooling.
        """
        h = self.stem(x)
        for name in STAGES[: _stage_index(stop)]:
            h = self.run_stage(name, h)
        return h

    def forward_suffix(self, h: torch.Tensor, start: str | None = "layer3", adapters=None) -> torch.Tensor:
        """Stages from ``start`` on, each followed by ``adapters[name]`` if present; pooled (B, C).

        ``start=None`` runs no stage, only the pooling (the inverse of
        ``forward_prefix(x, None)``).
        """
        adapters = {} if adapters is None else adapters
        for name in STAGES[_stage_index(start):]:
            h = self.run_stage(name, h)
            if name in adapters:
                h = adapters[name](h)
        return h.mean(dim=(2, 3))  # global average pool -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_suffix(self.forward_prefix(x, "layer1"), "layer1")


def _stage_index(name: str | None) -> int:
    if name is None:
        return len(STAGES)
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
    return STAGES.index(name)
