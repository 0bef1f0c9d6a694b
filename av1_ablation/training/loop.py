"""The epoch loop of both stages, readable in one sitting.

:func:`fit` trains an :class:`Optimisation` on a :class:`Stage` with model
selection on the stage's validation score and early stopping;
:func:`log_selected_checkpoint` then records the selected epoch the same way for
both stages. A stage (``stage1.Stage1Task``, ``stage2.Stage2Task``) says how
its training blocks become logits, how it is validated and what its selected
checkpoint records; the loop knows nothing else about it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import mlflow
import numpy as np
import torch
from tqdm.auto import tqdm

from av1_ablation.errors import UserError
from av1_ablation.record.artifacts import log_figure, log_json, log_torch
from av1_ablation.record.contract import (BEST_EPOCH, EPOCHS_RUN, EPOCH_SECONDS, LEARNING_CURVES_FIGURE,
                                          METRICS_FILE, MODEL_CHECKPOINT, THROUGHPUT, TRAIN_LOSS,
                                          TRAIN_SECONDS, VAL_LOSS, lr_metric)
from av1_ablation.record.figures import learning_curves_figure
from av1_ablation.training.tensors import N_DIHEDRAL, epoch_generator, epoch_order


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

    def record(self, epoch: int, metrics: dict, score: float, model: torch.nn.Module) -> None:
        """Append one epoch; keep a copy of the weights when ``score`` is the best so far."""
        self.epoch = epoch
        self.metrics.append(metrics)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.epochs_without_gain = 0
        else:
            self.epochs_without_gain += 1


@dataclass(frozen=True)
class Optimisation:
    """What training changes, and how: the model, its loss, optimiser and schedule."""

    model: torch.nn.Module  # switched between train() and eval() by the loop
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> loss
    optimizer: torch.optim.Optimizer
    scheduler: object  # stepped after each epoch: on the score for ReduceLROnPlateau


class Stage(Protocol):
    """One stage as the loop sees it."""

    score_key: str  # validation metric the checkpoint is selected on (higher is better)
    title: str  # of the learning-curve figure
    train_targets: torch.Tensor  # (N,) class targets of the training blocks, on the device

    def train_logits(self, idx: torch.Tensor, variants: torch.Tensor | None) -> torch.Tensor:
        """Logits of training blocks ``idx``, each transformed by its dihedral variant (None:
        no augmentation)."""

    def validate(self) -> dict[str, float]:
        """Validation metrics of the model as it is, with ``val_loss`` and ``score_key``."""

    def record_epoch(self, history: History, metrics: dict[str, float]) -> None:
        """Log an epoch's metrics (and keep what an interruption needs)."""

    def evaluate_selected(self, history: History) -> dict[str, float]:
        """Metrics of the selected checkpoint (validation under ``best_val_*``, test), and
        the files that go with them."""

    def describe_selected(self, history: History, final: dict[str, float]) -> str:
        """The line printed about the selected checkpoint."""

    def checkpoint(self, history: History) -> dict:
        """What ``checkpoint/model.pt`` holds besides the config and the epoch."""


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_one_epoch(opt: Optimisation, stage: Stage, cfg, epoch: int) -> dict:
    """One pass over len(train) sampled blocks (less the last one when it would be a batch
    of its own, see :func:`trained_blocks`); returns train loss and throughput.

    The block order, the augmentation and the dropout draws depend only on (seed, epoch),
    so a resumed run draws what an uninterrupted one would have drawn.
    """
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout: same draws after a resume
    gen = epoch_generator(cfg.seed, epoch)
    order = epoch_order(stage.train_targets, cfg.sampler, gen)
    variants = (torch.randint(0, N_DIHEDRAL, (len(order),), generator=gen).to(order.device)
                if cfg.augment else None)
    check_every = 1 if order.device.type == "cpu" else 25  # .item() stalls a GPU stream
    loss_sum = torch.zeros((), device=order.device)
    start = time.perf_counter()
    n = trained_blocks(len(order), cfg.batch_size)
    steps = range(0, n, cfg.batch_size)
    # disable=None: a bar on a terminal only; logs get the line per epoch of fit()
    for step, i in enumerate(tqdm(steps, desc=f"epoch {epoch}", leave=False, unit="batch",
                                  disable=None)):
        idx = order[i:i + cfg.batch_size]
        logits = stage.train_logits(idx, None if variants is None else variants[i:i + cfg.batch_size])
        loss = opt.criterion(logits, stage.train_targets[idx])
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        loss_sum += loss.detach() * len(idx)
        if step % check_every == 0 or i + cfg.batch_size >= n:
            if not torch.isfinite(loss_sum):
                raise NonFiniteLoss(epoch, step, float(loss.detach()))
    seconds = time.perf_counter() - start
    return {TRAIN_LOSS: float(loss_sum) / n, EPOCH_SECONDS: seconds, THROUGHPUT: n / seconds}


def trained_blocks(n_blocks: int, batch_size: int) -> int:
    """How many of an epoch's ``n_blocks`` sampled blocks are trained on in batches of
    ``batch_size``: all of them, unless the last batch would hold exactly one.

    In train mode BatchNorm normalises each channel over the batch and the spatial
    positions, and layer3, layer4 and the adapter see 1x1 maps of 16x16 blocks: a batch
    of one block gives one value per channel, which BatchNorm refuses ("Expected more
    than 1 value per channel"), and whose variance would be meaningless anyway. Dropping
    that one block (the next epoch's order draws it again with the others) leaves every
    other batch, and so every run whose last batch holds two or more blocks, unchanged.

    Raises :class:`UserError` when no batch of two or more blocks remains.
    """
    n = n_blocks - 1 if n_blocks % batch_size == 1 else n_blocks
    if n < 2:  # batch_size >= 2 is the configuration's own check
        raise UserError(f"training needs batches of two or more blocks (BatchNorm), but there are "
                        f"{n_blocks} training block(s) for this stage; use a data set with more "
                        "training pictures")
    return n


@torch.no_grad()
def predict(forward, inputs, n: int, batch_size: int) -> torch.Tensor:
    """Logits for blocks 0..n-1 of a split, in order, as float32 on the CPU.

    ``inputs(idx)`` returns the tuple of ``forward``'s arguments for those blocks.
    """
    chunks = [forward(*inputs(torch.arange(i, min(i + batch_size, n)))).float().cpu()
              for i in range(0, n, batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def fit(opt: Optimisation, stage: Stage, cfg, *, history: History | None = None) -> History:
    """Epoch loop with model selection on ``stage.score_key`` and early stopping.

    Continues ``history`` (a resumed run) or starts a new one. ``cfg.patience == 0``
    disables early stopping. Prints one line per epoch.
    """
    history = history or History()
    # the resume point of an epoch is kept before its patience check, so a run that was
    # interrupted after stopping early resumes here: it must stop again, not train on
    if history.epoch and _patience_ran_out(history, cfg):
        return history
    for epoch in range(history.epoch + 1, cfg.epochs + 1):
        opt.model.train()
        metrics = train_one_epoch(opt, stage, cfg, epoch)
        opt.model.eval()
        metrics.update(stage.validate())
        for i, group in enumerate(opt.optimizer.param_groups):
            metrics[lr_metric(group.get("name", i))] = group["lr"]
        score = metrics[stage.score_key]
        if isinstance(opt.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            opt.scheduler.step(score)
        else:
            opt.scheduler.step()
        history.record(epoch, metrics, score, opt.model)
        stage.record_epoch(history, metrics)
        tqdm.write(f"epoch {epoch}/{cfg.epochs}: {TRAIN_LOSS} {metrics[TRAIN_LOSS]:.4f} "
                   f"{VAL_LOSS} {metrics[VAL_LOSS]:.4f} {stage.score_key} {score:.4f}"
                   f"{'  (best)' if history.best_epoch == epoch else ''}")
        if _patience_ran_out(history, cfg):
            break
    return history


def _patience_ran_out(history: History, cfg) -> bool:
    """Whether early stopping ends the run here (and if so, marks ``history`` stopped early
    unless its last epoch was the last one anyway)."""
    if not cfg.patience or history.epochs_without_gain < cfg.patience:
        return False
    history.stopped_early = history.epoch < cfg.epochs
    return True


def log_selected_checkpoint(model: torch.nn.Module, history: History, cfg, stage: Stage) -> dict:
    """Restore the epoch selected on validation and record it, for either stage: the final
    metrics (never the last epoch's), a printed line, the learning curves, ``metrics.json``
    and ``checkpoint/model.pt``. Returns the final metrics."""
    model.load_state_dict(history.best_state)
    model.eval()
    final = {BEST_EPOCH: history.best_epoch, EPOCHS_RUN: history.epoch,
             TRAIN_SECONDS: sum(m[EPOCH_SECONDS] for m in history.metrics)}
    final.update(stage.evaluate_selected(history))
    mlflow.log_metrics(final)
    print(stage.describe_selected(history, final))
    log_figure(learning_curves_figure(history.metrics, score_key=stage.score_key, title=stage.title),
               LEARNING_CURVES_FIGURE)
    config = dataclasses.asdict(cfg)
    log_json({"config": config, "final": final, "epochs": history.metrics}, METRICS_FILE)
    log_torch({**stage.checkpoint(history), "config": config, "epoch": history.best_epoch},
              MODEL_CHECKPOINT)
    return final
