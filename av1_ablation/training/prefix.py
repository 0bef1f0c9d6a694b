"""The frozen prefix of the Stage-2 network, computed once per run.

Stage 2 trains only adapters and head on a frozen backbone whose BatchNorm stays
in eval mode, so the network's frozen prefix is a fixed function of the block:
its output is computed once per dihedral variant and reused every epoch (an
exact reformulation, tested against the plain forward pass). The ``finetune``
reference trains the backbone too, so it has no frozen prefix: :class:`WholeNetwork`
runs every block through the whole network instead, with the same interface.
"""
from __future__ import annotations

import torch

from av1_ablation.models import Stage2Model
from av1_ablation.training.loop import predict
from av1_ablation.training.tensors import N_DIHEDRAL, DeviceBlocks, dihedral


@torch.no_grad()
def prefix_features(model: Stage2Model, blocks: DeviceBlocks, all_variants: bool,
                    batch_size: int) -> torch.Tensor:
    """The frozen prefix's output for every block, (variants, N, C, H, W).

    Exact: the prefix has frozen weights and BatchNorm in eval mode, so its output
    depends on the block alone.
    """
    model.eval()
    variants = range(N_DIHEDRAL) if all_variants else range(1)
    out = []
    for v in variants:
        chunks = [model.frozen_prefix(dihedral(blocks.inputs(torch.arange(i, min(i + batch_size, len(blocks)),
                                                                          device=blocks.device)), v))
                  for i in range(0, len(blocks), batch_size)]
        out.append(torch.cat(chunks) if chunks else torch.empty(0, device=blocks.device))
    return torch.stack(out)


class PrefixCache:
    """The prefix's output for every block of every split, and the logits computed from it.

    The training split holds all 8 dihedral variants when ``augment`` is on (training
    draws one per block and epoch); the other splits hold the identity only.
    """

    def __init__(self, model: Stage2Model, splits: dict[str, DeviceBlocks], *, augment: bool,
                 batch_size: int):
        self.model, self.splits, self.batch_size = model, splits, batch_size
        self.features = {name: prefix_features(model, blocks, augment and name == "train", batch_size)
                         for name, blocks in splits.items()}

    def train_logits(self, idx: torch.Tensor, variants: torch.Tensor | None) -> torch.Tensor:
        """Logits of training blocks ``idx``, each under its dihedral variant (None: identity)."""
        cache = self.features["train"]
        features = cache[0][idx] if variants is None else cache[variants, idx]
        return self.model.forward_from_prefix(features, self.splits["train"].qp[idx])

    def logits(self, name: str) -> torch.Tensor:
        """Logits of every block of split ``name``, in order, as float32 on the CPU."""
        features, qp = self.features[name][0], self.splits[name].qp
        return predict(self.model.forward_from_prefix, lambda i: (features[i], qp[i]),
                       len(self.splits[name]), self.batch_size)


class WholeNetwork:
    """Logits from the whole network on every call: the model trains its backbone, so
    nothing can be cached (the blocks stay as stored; the dihedral variant is applied per
    batch)."""

    def __init__(self, model: Stage2Model, splits: dict[str, DeviceBlocks], *, batch_size: int):
        self.model, self.splits, self.batch_size = model, splits, batch_size

    def train_logits(self, idx: torch.Tensor, variants: torch.Tensor | None) -> torch.Tensor:
        blocks = self.splits["train"]
        return self.model(blocks.inputs(idx, variants), blocks.qp[idx])

    def logits(self, name: str) -> torch.Tensor:
        blocks = self.splits[name]
        return predict(self.model, lambda i: (blocks.inputs(i), blocks.qp[i]), len(blocks), self.batch_size)


def logit_source(model: Stage2Model, splits: dict[str, DeviceBlocks], *, augment: bool,
                 batch_size: int) -> PrefixCache | WholeNetwork:
    """The cached prefix for a frozen backbone, the whole network for a trained one."""
    if model.frozen:
        return PrefixCache(model, splits, augment=augment, batch_size=batch_size)
    return WholeNetwork(model, splits, batch_size=batch_size)
