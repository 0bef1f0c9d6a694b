"""Training loops of Stage 1 and Stage 2, readable in one sitting.

Both stages share ``train_one_epoch`` and ``predict``. Stage 2 trains only
adapters and head on a frozen backbone whose BatchNorm stays in eval mode, so
the frozen prefix of the network is a fixed function of the block: its output
is computed once per dihedral variant and reused every epoch (an exact
reformulation, tested against the plain forward pass).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from av1_ablation.tensors import N_DIHEDRAL, DeviceBlocks, epoch_generator, epoch_order


class NonFiniteLoss(RuntimeError):
    """Raised the moment a training loss is NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"non-finite training loss {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class History:
    """What the loop has done so far; with the model and optimiser state it is a resume point."""

    epoch: int = 0  # last completed epoch (1-based)
    best_epoch: int = 0
    best_score: float = -math.inf
    best_state: dict | None = None
    epochs_without_gain: int = 0
    stopped_early: bool = False
    metrics: list[dict] = field(default_factory=list)


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_one_epoch(forward, data: DeviceBlocks, inputs, criterion, optimizer, *,
                    epoch: int, seed: int, sampler: str, augment: bool, batch_size: int) -> dict:
    """One pass of len(data) sampled blocks; returns train loss and throughput.

    ``inputs(idx, variants)`` returns the tuple of ``forward``'s arguments for those blocks
    (each transformed by its dihedral variant; ``variants`` is None without augmentation).
    """
    torch.manual_seed(seed * 100_003 + epoch)  # dropout: same draws after a resume
    gen = epoch_generator(seed, epoch)
    order = epoch_order(data.targets, sampler, gen)
    variants = (torch.randint(0, N_DIHEDRAL, (len(order),), generator=gen).to(order.device)
                if augment else None)
    check_every = 1 if order.device.type == "cpu" else 25  # .item() stalls a GPU stream
    loss_sum = torch.zeros((), device=order.device)
    start = time.perf_counter()
    steps = range(0, len(order), batch_size)
    for step, i in enumerate(tqdm(steps, desc=f"epoch {epoch}", leave=False, unit="batch",
                                          disable=None)):
        idx = order[i:i + batch_size]
        args = inputs(idx, None if variants is None else variants[i:i + batch_size])
        loss = criterion(forward(*args), data.targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        if step % check_every == 0 or i + batch_size >= len(order):
            if not torch.isfinite(loss_sum):
                raise NonFiniteLoss(epoch, step, float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"train_loss": float(loss_sum) / len(order), "epoch_seconds": seconds,
            "train_blocks_per_s": len(order) / seconds}


@torch.no_grad()
def predict(forward, inputs, n: int, batch_size: int) -> torch.Tensor:
    """Logits for blocks 0..n-1 of a split, in order, as float32 on the CPU.

    ``inputs(idx)`` returns the tuple of ``forward``'s arguments for those blocks.
    """
    chunks = [forward(*inputs(torch.arange(i, min(i + batch_size, n)))).float().cpu()
              for i in range(0, n, batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def fit(model, forward, train: DeviceBlocks, train_inputs, evaluate: Callable[[], dict],
        criterion, optimizer, scheduler, cfg, *, score_key: str, history: History | None = None,
        on_epoch: Callable[[History, dict], None] = lambda h, m: None) -> History:
    """Epoch loop with model selection on ``score_key`` (higher is better) and early stopping.

    ``evaluate()`` returns validation metrics; ``on_epoch`` receives each epoch's metrics
    (logging, resume points). ``cfg.patience == 0`` disables early stopping.
    """
    history = history or History()
    for epoch in range(history.epoch + 1, cfg.epochs + 1):
        model.train()
        metrics = train_one_epoch(forward, train, train_inputs, criterion, optimizer, epoch=epoch,
                                  seed=cfg.seed, sampler=cfg.sampler, augment=cfg.augment,
                                  batch_size=cfg.batch_size)
        model.eval()
        metrics.update(evaluate())
        for i, group in enumerate(optimizer.param_groups):
            metrics[f"lr_{group.get('name', i)}"] = group["lr"]
        score = metrics[score_key]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(score)
        else:
            scheduler.step()
        history.epoch = epoch
        history.metrics.append(metrics)
        if score > history.best_score:
            history.best_score, history.best_epoch = score, epoch
            history.best_state = copy.deepcopy(model.state_dict())
            history.epochs_without_gain = 0
        else:
            history.epochs_without_gain += 1
        on_epoch(history, metrics)
        tqdm.write(f"epoch {epoch}/{cfg.epochs}: train_loss {metrics['train_loss']:.4f} "
                   f"val_loss {metrics['val_loss']:.4f} {score_key} {score:.4f}"
                   f"{'  (best)' if history.best_epoch == epoch else ''}")
        if cfg.patience and history.epochs_without_gain >= cfg.patience:
            history.stopped_early = epoch < cfg.epochs
            break
    return history
