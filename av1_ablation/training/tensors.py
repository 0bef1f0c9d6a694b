"""Blocks and targets held as tensors on the training device.

The 10-bit samples travel as int16 (half the bytes of float32) and are
normalised to [0, 1] on the device, in exactly one place: ``normalise``.
Sampling and augmentation work on whole index batches, so the hot loop has
no per-sample Python.
"""
from __future__ import annotations

import numpy as np
import torch

from av1_ablation.models.qp import standardise_qindex

MAX_SAMPLE = 1023.0  # 10-bit luma
N_DIHEDRAL = 8  # rotations by 0/90/180/270 degrees, each optionally transposed


def normalise(blocks: torch.Tensor) -> torch.Tensor:
    """(B, 16, 16) integer 10-bit samples -> (B, 1, 16, 16) float32 in [0, 1]."""
    return blocks.unsqueeze(1).to(torch.float32) / MAX_SAMPLE


def dihedral(x: torch.Tensor, variant: int) -> torch.Tensor:
    """One of the 8 symmetries of the square, applied to the last two dims.

    Variants 4..7 add a transpose, which maps HORZ <-> VERT and HORZ_A <-> VERT_A:
    every Stage-2 group (SPLIT, RECT, AB) and the Stage-1 classes are invariant.
    """
    if variant >= 4:
        x = x.transpose(-1, -2)
    return torch.rot90(x, variant % 4, dims=(-2, -1))


class DeviceBlocks:
    """The blocks of one split, their class targets and standardised qindex (``qp``),
    resident on ``device``."""

    def __init__(self, blocks: np.ndarray, targets: np.ndarray, device: torch.device,
                 qindex: np.ndarray | None = None):
        if len(blocks) != len(targets):
            raise ValueError(f"{len(blocks)} blocks but {len(targets)} targets")
        if blocks.size and int(blocks.max()) > MAX_SAMPLE:
            raise ValueError(f"samples above {MAX_SAMPLE:.0f}: blocks must be 10-bit")
        if qindex is None:
            qindex = np.zeros(len(targets), dtype=np.int64)
        elif len(qindex) != len(targets):
            raise ValueError(f"{len(targets)} targets but {len(qindex)} qindex values")
        self.blocks = torch.from_numpy(np.ascontiguousarray(blocks).astype(np.int16)).to(device)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(device)
        self.qp = standardise_qindex(np.asarray(qindex, dtype=np.int64)).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.targets)

    def inputs(self, idx: torch.Tensor, variants: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised (B, 1, 16, 16) inputs, each transformed by its dihedral variant."""
        x = normalise(self.blocks[idx])
        if variants is None:
            return x
        out = torch.empty_like(x)
        for v in range(N_DIHEDRAL):
            sel = (variants == v).nonzero(as_tuple=True)[0]
            if len(sel):
                out[sel] = dihedral(x[sel], v)
        return out


def epoch_order(targets: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """The block order of one epoch: len(targets) draws.

    ``balanced`` draws with replacement with probability 1 / count(class), so each
    class is equally likely in expectation (the original WeightedRandomSampler);
    ``none`` is a plain permutation.
    """
    n = len(targets)
    cpu_targets = targets.cpu()
    if sampler == "balanced":
        counts = torch.bincount(cpu_targets).to(torch.float64)
        weights = 1.0 / counts[cpu_targets]
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    return order.to(targets.device)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch), so a resumed run draws what
    an uninterrupted one would have drawn."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)
