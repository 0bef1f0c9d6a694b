"""``train`` (and ``main``): Stage-2 training of one loss arm, recorded in MLflow.

    av1-ablation train --loss-type asymmetric --seed 43
    mlflow run . -P loss_type=asymmetric

The run ends FINISHED with test metrics, predictions, figures and the selected
checkpoint; FAILED with the reason (non-finite loss, bad input); or KILLED
with a resume point (``--resume RUN_ID`` continues it to the same result).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import torch

from av1_ablation.dataset.partitions import STAGE2_NAMES, to_stage2
from av1_ablation.errors import UserError
from av1_ablation.losses import build_loss
from av1_ablation.models import ADAPTER_GROUP, BACKBONE_GROUP, HEAD_GROUP, Stage2Model, count_parameters
from av1_ablation.record.artifacts import log_figure, log_predictions, log_torch
from av1_ablation.record.contract import (BEST_VAL, CLASS_KEYS, ECE, F1, FAILURE_EPOCH_TAG, FAILURE_STEP_TAG,
                                          KIND_STAGE2, KIND_TAG, LOSS, LOSS_TYPE_PARAM, LOSS_TYPE_TAG,
                                          MACRO_F1, MEAN_THROUGHPUT, PER_QP_FIGURE, PREFIX_CACHE_SECONDS,
                                          RESUME_CHECKPOINT, SEED_PARAM, STAGE1_RUN_TAG, STAGE1_SOURCE_TAG,
                                          STAGE2_SCORE, STOPPED_EARLY, TEST, THROUGHPUT, VAL, VAL_LOSS, arm_run_name,
                                          confusion_figure_file, parameter_count_metric, per_class)
from av1_ablation.record.figures import confusion_figure, per_qp_figure
from av1_ablation.record.metrics import classification_metrics, per_qp_metrics, split_metrics
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import STAGE2_PRESETS, Stage2Config
from av1_ablation.training.data import SplitData, load_split_data, log_dataset_input, resolve_device
from av1_ablation.training.lifecycle import (environment_tags, fails_pending_run, log_new_params,
                                             record_resume, resume_launch, run_lease, tracked_run)
from av1_ablation.training.loop import (History, NonFiniteLoss, Optimisation, fit, log_selected_checkpoint,
                                        set_determinism)
from av1_ablation.training.prefix import logit_source
from av1_ablation.training.stage1 import resolve_stage1


def configure(parser) -> None:
    config_mod.add_config_arguments(parser, Stage2Config, STAGE2_PRESETS)
    parser.add_argument("--resume", metavar="RUN_ID", default=None,
                        help="continue a KILLED or FAILED run from its last completed epoch")


def run(args) -> int:
    with contextlib.ExitStack() as held:
        with fails_pending_run():
            if args.resume:
                # held until training ends: a second resume of this run is refused meanwhile
                held.enter_context(run_lease(args.resume, label=f"resume={args.resume}"))
                held.enter_context(resume_launch(args.resume))
                cfg, resume_state = load_resume_point(args.resume)
                record_resume(args.resume, resume_state["history"]["epoch"])
            else:
                cfg, resume_state = config_mod.from_args(Stage2Config, args, STAGE2_PRESETS), None
        run_id = train_stage2(cfg, resume=(args.resume, resume_state) if args.resume else None)
    print(f"Stage-2 run {run_id} finished ({cfg.loss_type}, seed {cfg.seed})")
    return 0


@dataclass(frozen=True)
class RunLabels:
    """How a Stage-2 run is labelled: a loss arm by default; the ``finetune`` reference
    gives its own kind, name and tags, so the comparison does not take it for an arm."""

    kind: str = KIND_STAGE2
    name: str | None = None  # None: the arm's name, "<loss_type>-seed<seed>"
    tags: dict[str, str] = field(default_factory=dict)


def train_stage2(cfg: Stage2Config, *, run_id: str | None = None, labels: RunLabels = RunLabels(),
                 resume: tuple[str, dict] | None = None, stage1_run_id: str | None = None,
                 data: SplitData | None = None) -> str:
    """Train one arm and record it; returns the run id. ``stage1_run_id`` and ``data`` (the
    loaded Stage-2 :class:`~av1_ablation.training.data.SplitData` of ``cfg``) skip the
    Stage-1 lookup and the data loading: the ablation does both once for all its children."""
    # Take the run `mlflow run` created now: ending a Stage-1 run below clears MLFLOW_RUN_ID.
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    with fails_pending_run(run_id):
        device = resolve_device(cfg.device)
        data = data or load_split_data(cfg, to_stage2)
        stage1 = resolve_stage1(stage1_run_id or cfg.stage1, data=data, width=cfg.width,
                                device=cfg.device, preset=cfg.preset, qp_input=cfg.qp_input)
        backbone = stage1.backbone(cfg.width)
        # log what was used: "auto" becomes the Stage-1 run id, so equal runs have equal params
        cfg = dataclasses.replace(cfg, stage1=stage1.run_id or stage1.source)
    tags = {**data.tags(), **environment_tags(device), STAGE1_RUN_TAG: stage1.run_id or "",
            STAGE1_SOURCE_TAG: stage1.source, LOSS_TYPE_TAG: cfg.loss_type, **labels.tags}
    resume_points = ResumePoints()
    with tracked_run(kind=labels.kind, run_id=resume[0] if resume else run_id,
                     run_name=labels.name or arm_run_name(cfg.loss_type, cfg.seed, cfg.folds, cfg.fold), tags=tags,
                     on_interrupt=resume_points.log) as run:
        if resume is None:
            log_new_params({LOSS_TYPE_PARAM: cfg.loss_type, SEED_PARAM: str(cfg.seed),
                            **config_mod.to_params(cfg), **data.params()})
            log_dataset_input(data)
        set_determinism(cfg.seed)
        opt = build_training(cfg, backbone, data.targets["train"], device)
        history = restore(resume[1], opt) if resume else None
        if resume is None:
            mlflow.log_metrics({parameter_count_metric(k): v for k, v in count_parameters(opt.model).items()})
        task = Stage2Task(cfg, data, opt, device, resume_points)
        try:
            history = fit(opt, task, cfg, history=history)
        except NonFiniteLoss as exc:
            mlflow.set_tags({FAILURE_EPOCH_TAG: str(exc.epoch), FAILURE_STEP_TAG: str(exc.step)})
            raise
        log_selected_checkpoint(opt.model, history, cfg, task)
        return run.info.run_id


def build_training(cfg: Stage2Config, backbone, train_targets: np.ndarray, device) -> Optimisation:
    """Model, loss, optimiser and schedule of one arm: everything but the loss is shared."""
    model = Stage2Model(backbone, width=cfg.width, adapter_layers=cfg.adapter_layers,
                        adapter_reduction=cfg.adapter_reduction, qp_input=cfg.qp_input,
                        frozen=not cfg.finetune).to(device)
    counts = np.bincount(train_targets, minlength=len(STAGE2_NAMES)).tolist()
    criterion = build_loss(cfg.loss_type, counts, beta=cfg.cb_beta).to(device)
    lrs = {ADAPTER_GROUP: cfg.lr_adapter, HEAD_GROUP: cfg.lr_head, BACKBONE_GROUP: cfg.lr_adapter}
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lrs[name], "name": name}
         for name, params in model.parameter_groups().items()],
        weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return Optimisation(model, criterion, optimizer, scheduler)


class ResumePoints:
    """The state after the last completed epoch, logged as ``checkpoint/last.pt`` if the run
    is interrupted (Ctrl-C, SIGTERM), so ``--resume`` continues from there."""

    def __init__(self):
        self.latest: dict | None = None

    def keep(self, cfg: Stage2Config, opt: Optimisation, history: History) -> None:
        self.latest = {"config": dataclasses.asdict(cfg), "model": copy.deepcopy(opt.model.state_dict()),
                       "optimizer": copy.deepcopy(opt.optimizer.state_dict()),
                       "scheduler": opt.scheduler.state_dict(), "history": dataclasses.asdict(history)}

    def log(self) -> None:
        if self.latest is not None:
            log_torch(self.latest, RESUME_CHECKPOINT)


class Stage2Task:
    """Stage 2 as the loop sees it (see :class:`~av1_ablation.training.loop.Stage`): logits
    from the cached frozen prefix, validation on macro-F1, the arms' metric contract."""

    score_key = STAGE2_SCORE

    def __init__(self, cfg: Stage2Config, data: SplitData, opt: Optimisation, device,
                 resume_points: ResumePoints):
        self.cfg, self.data, self.opt, self.device = cfg, data, opt, device
        self.resume_points = resume_points
        self.title = f"{cfg.loss_type}, seed {cfg.seed}"
        splits = data.on_device(device)
        self.train_targets = splits["train"].targets
        self.targets = {name: blocks.targets.cpu() for name, blocks in splits.items()}
        t0 = time.perf_counter()
        self.cache = logit_source(opt.model, splits, augment=cfg.augment, batch_size=cfg.eval_batch_size)
        mlflow.log_metric(PREFIX_CACHE_SECONDS, time.perf_counter() - t0)

    def train_logits(self, idx, variants):
        return self.cache.train_logits(idx, variants)

    def evaluate_split(self, name: str) -> tuple[torch.Tensor, np.ndarray, float]:
        """Logits (CPU), targets and mean loss of the model on split ``name``."""
        logits, y = self.cache.logits(name), self.targets[name]
        loss = float(self.opt.criterion(logits.to(self.device), y.to(self.device)))
        return logits, y.numpy(), loss

    def validate(self) -> dict[str, float]:
        logits, y, loss = self.evaluate_split("val")
        return {VAL_LOSS: loss, **classification_metrics(y, logits.argmax(1).numpy(), prefix=VAL)}

    def record_epoch(self, history: History, metrics: dict[str, float]) -> None:
        # resume point first: a signal may arrive while the metrics are being logged
        self.resume_points.keep(self.cfg, self.opt, history)
        mlflow.log_metrics(metrics, step=history.epoch)

    def evaluate_selected(self, history: History) -> dict[str, float]:
        """Validation figures of the selected checkpoint go under ``best_val_*`` (``val_*``
        is the per-epoch history); test figures exist only for it."""
        # the mean has a name of its own: logged as THROUGHPUT without a step it would be
        # step 0 of the per-epoch series, and the run's value would stay the last epoch's
        final = {STOPPED_EARLY: int(history.stopped_early),
                 MEAN_THROUGHPUT: float(np.mean([m[THROUGHPUT] for m in history.metrics]))}
        for name, prefix in (("val", BEST_VAL), ("test", TEST)):
            if len(self.data.index[name]) == 0:
                continue
            logits, y, loss = self.evaluate_split(name)
            proba = torch.softmax(logits.double(), 1).numpy()
            final[prefix + LOSS] = loss
            final.update(log_evaluation(self.data, name, prefix, y, proba,
                                        title=f"{name}, epoch {history.best_epoch}"))
        return final

    def describe_selected(self, history: History, final: dict[str, float]) -> str:
        test = "" if TEST + MACRO_F1 not in final else (
            f", test macro-F1 {final[TEST + MACRO_F1]:.4f} ("
            + ", ".join(f"{name} {final[TEST + per_class(F1, k)]:.4f}"
                        for name, k in zip(STAGE2_NAMES, CLASS_KEYS))
            + f"), test ECE {final[TEST + ECE]:.4f}")
        return (f"selected epoch {history.best_epoch} of {history.epoch}: val macro-F1 "
                f"{final[BEST_VAL + MACRO_F1]:.4f}{test}")

    def checkpoint(self, history: History) -> dict:
        return {"kind": KIND_STAGE2, "state_dict": history.best_state,
                "class_names": list(STAGE2_NAMES), "dataset_fingerprint": self.data.store.fingerprint,
                "split_fingerprint": self.data.split.fingerprint}


def log_evaluation(data: SplitData, split_name: str, prefix: str, y: np.ndarray, proba: np.ndarray, *,
                   title: str) -> dict[str, float]:
    """The Stage-2 metric contract of one split: classification, calibration and per-QP
    metrics, the predictions file and the figures. Shared by the loss arms and the
    reference models, so ``compare`` reads both alike."""
    pred = proba.argmax(1)
    idx = data.index[split_name]
    qindex = data.store.qindex[idx]
    metrics = split_metrics(y, proba, qindex, prefix=prefix)
    log_predictions(split_name, idx, y, proba, qindex=qindex, cluster=data.store.source[idx])
    log_figure(confusion_figure(y, pred, title=title), confusion_figure_file(split_name))
    if split_name == "test":
        log_figure(per_qp_figure(per_qp_metrics(y, pred, qindex), title=f"{title}: per QP"), PER_QP_FIGURE)
    return metrics


def restore(point: dict, opt: Optimisation) -> History:
    """Load a resume point into the model, optimiser and schedule; its history."""
    opt.model.load_state_dict(point["model"])
    opt.optimizer.load_state_dict(point["optimizer"])
    opt.scheduler.load_state_dict(point["scheduler"])
    return History(**point["history"])


def load_model(path) -> tuple[Stage2Model, Stage2Config]:
    """The selected model of a Stage-2 run from its ``checkpoint/model.pt``, in eval mode.

    Example: ``load_model(mlflow.artifacts.download_artifacts(run_id=..., artifact_path=
    "checkpoint/model.pt"))``; the model takes (B, 1, 16, 16) blocks divided by 1023 and,
    when ``cfg.qp_input != "none"``, the blocks' ``standardise_qindex(qindex)``.
    """
    point = torch.load(path, map_location="cpu", weights_only=False)
    if point.get("kind") != KIND_STAGE2:
        raise UserError(f"{path} is not a Stage-2 checkpoint of this project")
    cfg = config_mod.from_dict(Stage2Config, point["config"])
    model = Stage2Model(width=cfg.width, adapter_layers=cfg.adapter_layers,
                        adapter_reduction=cfg.adapter_reduction, qp_input=cfg.qp_input,
                        frozen=not cfg.finetune)
    model.load_state_dict(point["state_dict"])
    return model.eval(), cfg


def load_resume_point(run_id: str) -> tuple[Stage2Config, dict]:
    """The configuration and last completed epoch of a KILLED or FAILED Stage-2 run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"resume={run_id}: no such run in {mlflow.get_tracking_uri()}") from None
    if run.data.tags.get(KIND_TAG) != KIND_STAGE2:
        raise UserError(f"resume={run_id} is not a Stage-2 training run")
    if run.info.status == "FINISHED":
        raise UserError(f"resume={run_id} already FINISHED; nothing to resume")
    if run.info.status not in ("KILLED", "FAILED"):
        # RUNNING without a resume lease: its first training is still going, or its process
        # died without closing it, which leaves no resume point either
        raise UserError(f"resume={run_id} is {run.info.status}: another process is still training "
                        "it; only a KILLED or FAILED run can be resumed")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RESUME_CHECKPOINT)
    except Exception:
        raise UserError(f"resume={run_id} has no {RESUME_CHECKPOINT} (it stopped before its first "
                        "epoch ended); start a new run instead") from None
    point = torch.load(path, map_location="cpu", weights_only=False)
    return config_mod.from_dict(Stage2Config, point["config"]), point
