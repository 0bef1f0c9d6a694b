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

import mlflow
import numpy as np
import torch

from av1_ablation import config as config_mod
from av1_ablation.config import STAGE2_PRESETS, Stage2Config
from av1_ablation.errors import UserError
from av1_ablation.experiment import load_split_data, log_dataset_input, resolve_device
from av1_ablation.losses import build_loss
from av1_ablation.metrics import (calibration_metrics, classification_metrics, confusion_figure,
                                  flatten_per_qp, per_qp_figure, per_qp_metrics)
from av1_ablation.models import Stage2Model, count_parameters
from av1_ablation.partitions import STAGE2_NAMES, to_stage2
from av1_ablation.run_artifacts import (learning_curve_figure, log_figure, log_json,
                                        log_predictions, log_torch)
from av1_ablation.tensors import N_DIHEDRAL, DeviceBlocks, dihedral
from av1_ablation.tracking import (environment_tags, fail_pending_run, log_new_params,
                                   record_resume, run_lease, tracked_run)
from av1_ablation.training import History, NonFiniteLoss, fit, predict, set_determinism

SCORE = "val_macro_f1"
LAST_CHECKPOINT = "checkpoint/last.pt"
BEST_CHECKPOINT = "checkpoint/model.pt"


def configure(parser) -> None:
    add_config_arguments(parser, Stage2Config)
    parser.add_argument("--resume", metavar="RUN_ID", default=None,
                        help="continue a KILLED run from its last completed epoch")


def add_config_arguments(parser, cls) -> None:
    """One ``--field-name`` option per configuration field (default: the preset's value)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"default: the preset's value ({f.default if not isinstance(f.default, tuple) else ','.join(f.default)} in 'paper')")


def run(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Stage2Config)}
    with contextlib.ExitStack() as held:
        try:
            if args.resume:
                # held until training ends: a second resume of this run is refused meanwhile
                held.enter_context(run_lease(args.resume, label=f"resume={args.resume}"))
                cfg, resume_state = load_resume_point(args.resume)
                record_resume(args.resume, resume_state["history"]["epoch"])
            else:
                cfg, resume_state = config_mod.resolve(Stage2Config, overrides, STAGE2_PRESETS), None
        except UserError as exc:
            fail_pending_run(str(exc))
            raise
        run_id = train_stage2(cfg, resume=(args.resume, resume_state) if args.resume else None)
    print(f"Stage-2 run {run_id} finished ({cfg.loss_type}, seed {cfg.seed})")
    return 0


def train_stage2(cfg: Stage2Config, *, run_id: str | None = None, run_name: str | None = None,
                 resume: tuple[str, dict] | None = None, stage1_run_id: str | None = None,
                 data=None, kind: str = "stage2", extra_tags: dict | None = None) -> str:
    """Train one arm and record it; returns the run id. ``stage1_run_id`` and ``data`` (the
    loaded Stage-2 :class:`~av1_ablation.experiment.SplitData` of ``cfg``) skip the Stage-1
    lookup and the data loading: the ablation does both once for all its children.
    ``kind`` and ``extra_tags`` mark a run that is not a loss arm (the ``finetune``
    reference), so the comparison does not take it for one."""
    from av1_ablation.stage1 import resolve_stage1

    # Take the run `mlflow run` created now: ending a Stage-1 run below clears MLFLOW_RUN_ID.
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    try:
        device = resolve_device(cfg.device)
        data = data or load_split_data(cfg, to_stage2)
        data.check_qp_input(cfg.qp_input)
        stage1 = resolve_stage1(stage1_run_id or cfg.stage1, data=data, width=cfg.width,
                                device=cfg.device, preset=cfg.preset, qp_input=cfg.qp_input)
        backbone = stage1.backbone(cfg.width)
        # log what was used: "auto" becomes the Stage-1 run id, so equal runs have equal params
        cfg = dataclasses.replace(cfg, stage1=stage1.run_id or stage1.source)
    except UserError as exc:
        fail_pending_run(str(exc), run_id)
        raise
    if resume is not None:
        run_id = resume[0]
    state = {"resume_point": None}  # filled after every epoch, logged if interrupted

    def log_resume_point():
        if state["resume_point"] is not None:
            log_torch(state["resume_point"], LAST_CHECKPOINT)

    tags = {**data.tags(), **environment_tags(device), "av1.stage1_run_id": stage1.run_id or "",
            "av1.stage1_source": stage1.source, "av1.loss_type": cfg.loss_type, **(extra_tags or {})}
    name = run_name or f"{cfg.loss_type}-seed{cfg.seed}"
    with tracked_run(kind=kind, run_id=run_id, run_name=name, tags=tags,
                     on_interrupt=log_resume_point) as run:
        if resume is None:
            log_new_params({"loss_type": cfg.loss_type, "seed": str(cfg.seed),
                            **config_mod.to_params(cfg), **data.params()})
            log_dataset_input(data)
        set_determinism(cfg.seed)
        model, criterion, optimizer, scheduler = build_training(cfg, backbone, data.targets["train"],
                                                                device)
        history = None
        if resume is not None:
            history = restore(resume[1], model, optimizer, scheduler)
        else:
            mlflow.log_metrics({f"{k}_params": v for k, v in count_parameters(model).items()})

        splits = data.on_device(device)
        t0 = time.perf_counter()
        features = {k: prefix_features(model, s, cfg.augment and k == "train", cfg.eval_batch_size)
                    for k, s in splits.items()}
        mlflow.log_metric("prefix_cache_seconds", time.perf_counter() - t0)

        def train_inputs(idx, variants):
            cache, qp = features["train"], splits["train"].qp[idx]
            return (cache[0][idx], qp) if variants is None else (cache[variants, idx], qp)

        def evaluate_split(name):
            logits = predict(model.forward_from_prefix,
                             lambda i: (features[name][0][i], splits[name].qp[i]),
                             len(splits[name]), cfg.eval_batch_size)
            y = splits[name].targets.cpu()
            loss = float(criterion(logits.to(device), y.to(device)))
            return logits, y.numpy(), loss

        def evaluate():
            logits, y, loss = evaluate_split("val")
            return {"val_loss": loss, **classification_metrics(y, logits.argmax(1).numpy(), prefix="val_")}

        def on_epoch(hist: History, metrics: dict):
            # resume point first: a signal may arrive while the metrics are being logged
            state["resume_point"] = resume_point(cfg, model, optimizer, scheduler, hist)
            mlflow.log_metrics(metrics, step=hist.epoch)

        try:
            history = fit(model, model.forward_from_prefix, splits["train"], train_inputs, evaluate,
                          criterion, optimizer, scheduler, cfg, score_key=SCORE, history=history,
                          on_epoch=on_epoch)
        except NonFiniteLoss as exc:
            mlflow.set_tags({"av1.failure_epoch": str(exc.epoch), "av1.failure_step": str(exc.step)})
            raise
        model.load_state_dict(history.best_state)
        model.eval()
        log_selected_checkpoint(cfg, data, history, evaluate_split)
        return run.info.run_id


def build_training(cfg: Stage2Config, backbone, train_targets: np.ndarray, device):
    """Model, loss, optimiser and schedule of one arm: everything but the loss is shared."""
    model = Stage2Model(backbone, width=cfg.width, adapter_layers=cfg.adapter_layers,
                        adapter_reduction=cfg.adapter_reduction, qp_input=cfg.qp_input,
                        frozen=not cfg.finetune).to(device)
    counts = np.bincount(train_targets, minlength=len(STAGE2_NAMES)).tolist()
    criterion = build_loss(cfg.loss_type, counts, beta=cfg.cb_beta).to(device)
    lrs = {"adapter": cfg.lr_adapter, "head": cfg.lr_head, "backbone": cfg.lr_adapter}
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lrs[name], "name": name}
         for name, params in model.parameter_groups().items()],
        weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return model, criterion, optimizer, scheduler


def log_selected_checkpoint(cfg: Stage2Config, data, history: History, evaluate_split) -> None:
    """Final metrics, predictions, figures and checkpoint of the selected epoch.

    Validation figures of the selected checkpoint go under ``best_val_*`` (``val_*`` is
    the per-epoch history); test figures exist only for it.
    """
    final = {"best_epoch": history.best_epoch, "epochs_run": history.epoch,
             "stopped_early": int(history.stopped_early),
             "train_seconds": sum(m["epoch_seconds"] for m in history.metrics),
             "train_blocks_per_s": float(np.mean([m["train_blocks_per_s"] for m in history.metrics]))}
    for name, prefix in (("val", "best_val_"), ("test", "test_")):
        if len(data.index[name]) == 0:
            continue
        logits, y, loss = evaluate_split(name)
        proba = torch.softmax(logits.double(), 1).numpy()
        final[f"{prefix}loss"] = loss
        final.update(log_evaluation(data, name, prefix, y, proba,
                                    title=f"{name}, epoch {history.best_epoch}"))
    mlflow.log_metrics(final)
    print(f"selected epoch {history.best_epoch} of {history.epoch}: val macro-F1 "
          f"{final['best_val_macro_f1']:.4f}" + ("" if "test_macro_f1" not in final else
          f", test macro-F1 {final['test_macro_f1']:.4f} (SPLIT {final['test_f1_split']:.4f}, "
          f"RECT {final['test_f1_rect']:.4f}, AB {final['test_f1_ab']:.4f}), test ECE {final['test_ece']:.4f}"))
    log_figure(learning_curve_figure(history.metrics, score_key=SCORE,
                                     title=f"{cfg.loss_type}, seed {cfg.seed}"),
               "figures/learning_curves.png")
    log_json({"config": dataclasses.asdict(cfg), "final": final, "epochs": history.metrics},
             "metrics.json")
    log_torch({"kind": "stage2", "config": dataclasses.asdict(cfg), "epoch": history.best_epoch,
               "state_dict": history.best_state, "class_names": list(STAGE2_NAMES),
               "dataset_fingerprint": data.store.fingerprint,
               "split_fingerprint": data.split.fingerprint}, BEST_CHECKPOINT)


def log_evaluation(data, split_name: str, prefix: str, y: np.ndarray, proba: np.ndarray, *,
                   title: str) -> dict[str, float]:
    """The Stage-2 metric contract of one split: classification, calibration and per-QP
    metrics, the predictions file and the figures. Shared by the loss arms and the
    reference models, so ``compare`` reads both alike."""
    pred = proba.argmax(1)
    idx = data.index[split_name]
    qindex = data.store.qindex[idx]
    metrics = {**classification_metrics(y, pred, prefix=prefix),
               **calibration_metrics(y, proba, prefix=prefix)}
    per_qp = per_qp_metrics(y, pred, qindex)
    metrics.update({f"{prefix}{key}": v for key, v in flatten_per_qp(per_qp).items()})
    log_predictions(split_name, idx, y, proba, qindex=qindex, cluster=data.store.source[idx])
    log_figure(confusion_figure(y, pred, title=title), f"figures/confusion_{split_name}.png")
    if split_name == "test":
        log_figure(per_qp_figure(per_qp, title=f"{title}: per QP"), "figures/per_qp_test.png")
    return metrics


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


def resume_point(cfg, model, optimizer, scheduler, history: History) -> dict:
    return {"config": dataclasses.asdict(cfg), "model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()), "scheduler": scheduler.state_dict(),
            "history": dataclasses.asdict(history)}


def restore(point: dict, model, optimizer, scheduler) -> History:
    model.load_state_dict(point["model"])
    optimizer.load_state_dict(point["optimizer"])
    scheduler.load_state_dict(point["scheduler"])
    return History(**point["history"])


def load_model(path) -> tuple[Stage2Model, Stage2Config]:
    """The selected model of a Stage-2 run from its ``checkpoint/model.pt``, in eval mode.

    Example: ``load_model(mlflow.artifacts.download_artifacts(run_id=..., artifact_path=
    "checkpoint/model.pt"))``; the model takes (B, 1, 16, 16) blocks divided by 1023 and,
    when ``cfg.qp_input != "none"``, the blocks' ``standardise_qindex(qindex)``.
    """
    point = torch.load(path, map_location="cpu", weights_only=False)
    if point.get("kind") != "stage2":
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
    if run.data.tags.get("av1.kind") != "stage2":
        raise UserError(f"resume={run_id} is not a Stage-2 training run")
    if run.info.status == "FINISHED":
        raise UserError(f"resume={run_id} already FINISHED; nothing to resume")
    if run.info.status not in ("KILLED", "FAILED"):
        # RUNNING without a resume lease: its first training is still going, or its process
        # died without closing it, which leaves no resume point either
        raise UserError(f"resume={run_id} is {run.info.status}: another process is still training "
                        "it; only a KILLED or FAILED run can be resumed")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=LAST_CHECKPOINT)
    except Exception:
        raise UserError(f"resume={run_id} has no {LAST_CHECKPOINT} (it stopped before its first "
                        "epoch ended); start a new run instead") from None
    point = torch.load(path, map_location="cpu", weights_only=False)
    return config_mod.from_dict(Stage2Config, point["config"]), point
