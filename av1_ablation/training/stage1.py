"""``stage1``: the Stage-1 model (NONE vs partitioned) whose backbone Stage 2 freezes.

    av1-ablation stage1 --preset cpu
    mlflow run . -e stage1

Also resolves the ``stage1`` parameter of Stage-2 training: a run id, a
checkpoint path (ours or the original pipeline's), or ``auto`` (the newest
FINISHED Stage-1 run for the same data set, split and width; one is trained
first if there is none).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from av1_ablation.dataset.partitions import to_stage1
from av1_ablation.errors import Terminated, UserError
from av1_ablation.losses import BinaryFocalLoss
from av1_ablation.models import Backbone, Stage1Model, count_parameters, load_stage1_backbone, scaled_channels
from av1_ablation.record.contract import (BEST_VAL, DATASET_FINGERPRINT_TAG, DATASET_PATH_TAG,
                                          DECISION_THRESHOLD, F1, KIND_STAGE1, KIND_TAG,
                                          MODEL_CHECKPOINT, ROC_AUC, SPLIT_FINGERPRINT_TAG, STAGE1_RUN_NAME,
                                          STAGE1_SCORE, TEST, TRAINED_FOR_AUTO, TRAINED_FOR_TAG, VAL, VAL_LOSS,
                                          cfg_param, parameter_count_metric)
from av1_ablation.record.metrics import binary_metrics, f1_threshold
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import STAGE1_PRESETS, Stage1Config, option_name
from av1_ablation.training.data import SplitData, load_split_data, log_dataset_input, resolve_device, select
from av1_ablation.training.lifecycle import (end_reason, environment_tags, experiment_id, fail_pending_run,
                                             fails_pending_run, finished_runs, log_new_params,
                                             release_interrupted_frames, signals_deferred, signals_held,
                                             store_refusal_reported, tracked_run)
from av1_ablation.training.loop import (History, Optimisation, fit, log_selected_checkpoint, predict,
                                        set_determinism)
from av1_ablation.training.tensors import DeviceBlocks

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def configure(parser) -> None:
    config_mod.add_config_arguments(parser, Stage1Config, STAGE1_PRESETS)


def run(args) -> int:
    with fails_pending_run():
        cfg = config_mod.from_args(Stage1Config, args, STAGE1_PRESETS)
        data = load_split_data(cfg, to_stage1)
    run_id = train_stage1(cfg, data)
    print(f"Stage-1 run {run_id} finished")
    return 0


def train_stage1(cfg: Stage1Config, data: SplitData, *, run_id: str | None = None,
                 tags: dict | None = None) -> str:
    device = resolve_device(cfg.device)
    tags = {**data.tags(), **environment_tags(device), **(tags or {})}
    nested = mlflow.active_run() is not None
    with tracked_run(kind=KIND_STAGE1, run_id=run_id, run_name=STAGE1_RUN_NAME, tags=tags,
                     nested=nested) as run:
        log_new_params({**config_mod.to_params(cfg), **data.params()})
        log_dataset_input(data)
        set_determinism(cfg.seed)
        model = Stage1Model(cfg.width, qp_input=cfg.qp_input).to(device)
        mlflow.log_metrics({parameter_count_metric(k): v for k, v in count_parameters(model).items()})
        focal = BinaryFocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)

        def criterion(logits, y):  # the focal loss takes float targets
            return focal(logits, y.float())

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs,
                                                               eta_min=cfg.lr_min)
        opt = Optimisation(model, criterion, optimizer, scheduler)
        task = Stage1Task(cfg, opt, data.on_device(device))
        history = fit(opt, task, cfg)
        log_selected_checkpoint(model, history, cfg, task)
        return run.info.run_id


class Stage1Task:
    """Stage 1 as the loop sees it (see :class:`~av1_ablation.training.loop.Stage`): the whole
    network on each block, selection on validation ROC AUC, a decision threshold chosen on
    validation and applied to test."""

    score_key = STAGE1_SCORE
    title = "Stage 1"

    def __init__(self, cfg: Stage1Config, opt: Optimisation, splits: dict[str, DeviceBlocks]):
        self.cfg, self.opt, self.splits = cfg, opt, splits
        self.train_targets = splits["train"].targets

    def train_logits(self, idx, variants):
        blocks = self.splits["train"]
        return self.opt.model(blocks.inputs(idx, variants), blocks.qp[idx])

    def evaluate_split(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """P(partitioned), targets and mean loss of the model on split ``name``."""
        blocks = self.splits[name]
        logits = predict(self.opt.model, lambda idx: (blocks.inputs(idx), blocks.qp[idx]), len(blocks),
                         self.cfg.eval_batch_size)
        y = blocks.targets.cpu()
        return torch.sigmoid(logits).numpy(), y.numpy(), float(self.opt.criterion(logits, y))

    def validate(self) -> dict[str, float]:
        score, y, loss = self.evaluate_split("val")
        return {VAL_LOSS: loss, **binary_metrics(y, score, prefix=VAL)}

    def record_epoch(self, history: History, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=history.epoch)

    def evaluate_selected(self, history: History) -> dict[str, float]:
        """The selected checkpoint's validation figures as ``best_val_*`` (``val_*`` is the
        per-epoch history); the decision threshold is chosen on validation, applied to test."""
        val_score, val_y, _ = self.evaluate_split("val")
        threshold = f1_threshold(val_y, val_score)
        final = {DECISION_THRESHOLD: threshold}
        final.update(binary_metrics(val_y, val_score, threshold=threshold, prefix=BEST_VAL))
        if len(self.splits["test"]):
            test_score, test_y, _ = self.evaluate_split("test")
            final.update(binary_metrics(test_y, test_score, threshold=threshold, prefix=TEST))
        return final

    def describe_selected(self, history: History, final: dict[str, float]) -> str:
        test = (f", test ROC AUC {final[TEST + ROC_AUC]:.4f}, test F1 {final[TEST + F1]:.4f}"
                if TEST + F1 in final else "")
        return (f"Stage 1: selected epoch {history.best_epoch}: val ROC AUC "
                f"{final[BEST_VAL + ROC_AUC]:.4f}, threshold {final[DECISION_THRESHOLD]:.3f} "
                f"(val F1 {final[BEST_VAL + F1]:.4f}){test}")

    def checkpoint(self, history: History) -> dict:
        # log_selected_checkpoint adds the config, whose width the loader reads: rounded
        # channel counts do not always give it back (0.2 and 0.3)
        return {"kind": KIND_STAGE1, "model_state_dict": history.best_state}


@dataclass(frozen=True)
class Stage1Ref:
    """Where a Stage-2 run's frozen backbone comes from."""

    run_id: str | None
    source: str
    checkpoint: Path

    def backbone(self, width: float) -> Backbone:
        backbone = load_stage1_backbone(self.checkpoint)
        if scaled_channels(backbone.width) != scaled_channels(float(width)):
            raise UserError(f"stage1={self.source} has width {backbone.width}, but this run uses "
                            f"width {width}; pass a Stage-1 checkpoint of the same width or stage1=auto")
        return backbone


def resolve_stage1(spec: str, *, data: SplitData, width: float, device: str,
                   preset: str = "auto", qp_input: str = "none") -> Stage1Ref:
    """Turn the ``stage1`` parameter into a checkpoint (training one for ``auto`` if needed,
    with the same QP input as the Stage-2 run)."""
    spec = str(spec).strip()
    if spec == "auto":
        run_id = (find_stage1_run(data, width, preset, qp_input)
                  or train_stage1_for(data, width, device, preset, qp_input))
        return _from_run(run_id, data)
    fold = data.split.params.get("fold") if data.split.params.get("folds", 1) > 1 else None
    if RUN_ID.match(spec) and not Path(spec).exists():
        return _from_run(spec, data)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"stage1={spec!r} is neither 'auto', an MLflow run id, nor an existing "
                        "checkpoint file")
    if fold is not None:
        raise UserError(f"stage1={spec}: a checkpoint file cannot be checked against fold {fold}'s split, and a "
                        "backbone trained on other folds' test pictures would leak them; with folds > 1 use "
                        "stage1=auto (or the run id of this fold's Stage-1 run)")
    return Stage1Ref(None, str(path.resolve()), path)


def find_stage1_run(data: SplitData, width: float, preset: str, qp_input: str = "none") -> str | None:
    """The newest FINISHED Stage-1 run for this data set, split, width, preset and QP input (a
    one-epoch ``smoke`` backbone must never stand in for a real one)."""
    preset = _stage1_preset(preset, width)
    runs = finished_runs(KIND_STAGE1, tags=data.fingerprints(),
                         params={cfg_param("width"): str(float(width)), cfg_param("preset"): preset,
                                 cfg_param("qp_input"): qp_input}, max_results=1)
    return runs[0].info.run_id if runs else None


def train_stage1_for(data: SplitData, width: float, device: str, preset: str,
                     qp_input: str = "none") -> str:
    """Train the Stage-1 model that ``stage1=auto`` asked for, as a run of its own, with
    the Stage-1 preset of the same name as the Stage-2 run's."""
    preset = _stage1_preset(preset, width)
    cfg = config_mod.resolve(Stage1Config, {"preset": preset, "width": width, "device": device,
                                            "qp_input": qp_input,
                                            "data": str(data.store.path),
                                            "split_mode": data.split.params.get("mode", "source"),
                                            "split_seed": data.split.params.get("seed", 0),
                                            "folds": data.split.params.get("folds", 1),
                                            "fold": data.split.params.get("fold", 0)},
                             STAGE1_PRESETS)
    print(f"stage1=auto: no Stage-1 run for this data set, split, width {width} and qp_input "
          f"{qp_input}; training one "
          f"(preset {preset}, {cfg.epochs} epochs)")
    # the run `mlflow run` made for the Stage-2 command: ending the Stage-1 run clears the variable
    pending = os.environ.get("MLFLOW_RUN_ID")
    run_id = None
    try:
        run_id = MlflowClient().create_run(experiment_id(), run_name=STAGE1_RUN_NAME).info.run_id
        stage1_data = select(data.store, data.split, to_stage1)
        return train_stage1(cfg, stage1_data, run_id=run_id, tags={TRAINED_FOR_TAG: TRAINED_FOR_AUTO})
    except BaseException as exc:
        _end_runs_of_interrupted_auto(exc, run_id, pending)
        raise


def _end_runs_of_interrupted_auto(exc: BaseException, stage1_run_id: str | None,
                                  pending: str | None) -> None:
    """Leave no run RUNNING, and no run without a reason, when ``stage1=auto`` training stops.

    The Stage-1 run is open before its own bookkeeping starts (a signal may land in
    between), and the Stage-2 run ``mlflow run`` created has not started yet, so neither
    would otherwise be closed: both end KILLED (Ctrl-C, SIGTERM) or FAILED with the reason.
    """
    interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
    status = "KILLED" if interrupted else "FAILED"
    # a second stop signal must not cut these writes short; one during an error's clean-up acts after it
    with signals_held() if interrupted else signals_deferred():
        release_interrupted_frames(exc)
        reason = end_reason(exc)
        client = MlflowClient()
        if stage1_run_id:
            with store_refusal_reported(stage1_run_id, status):
                if client.get_run(stage1_run_id).info.status == "RUNNING":
                    fail_pending_run(reason, stage1_run_id, status=status)
        active = mlflow.active_run()
        # an ablation parent started by `mlflow run` is the active run: its own bookkeeping ends it
        if pending and pending != stage1_run_id and not (active and active.info.run_id == pending):
            with store_refusal_reported(pending, status):
                if client.get_run(pending).info.status == "RUNNING":
                    what = f"Stage-1 run {stage1_run_id}" if stage1_run_id else "the Stage-1 run"
                    fail_pending_run(f"{reason} (while training {what} for stage1=auto)", pending,
                                     status=status)


def _stage1_preset(preset: str, width: float) -> str:
    if preset in STAGE1_PRESETS:
        return preset
    return "paper" if float(width) == 1.0 else "cpu"


def _from_run(run_id: str, data: SplitData) -> Stage1Ref:
    """The checkpoint of a FINISHED Stage-1 run trained on ``data``'s data set and split."""
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"stage1={run_id}: no such run in {mlflow.get_tracking_uri()}") from None
    kind = run.data.tags.get(KIND_TAG)
    if kind != KIND_STAGE1 or run.info.status != "FINISHED":
        raise UserError(f"stage1={run_id} is not a FINISHED Stage-1 run (kind "
                        f"{kind}, status {run.info.status})")
    _check_same_data(run, data)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_CHECKPOINT)
    return Stage1Ref(run_id, f"run {run_id}", Path(path))


def _check_same_data(run, data: SplitData) -> None:
    """Refuse a Stage-1 run trained on another data set or split: its training pictures may
    be pictures this run validates or tests on, which would leak them into the backbone."""
    run_id, tags, wanted = run.info.run_id, run.data.tags, data.fingerprints()
    if tags.get(DATASET_FINGERPRINT_TAG) != wanted[DATASET_FINGERPRINT_TAG]:
        raise UserError(f"stage1={run_id} was trained on another data set ({tags.get(DATASET_PATH_TAG)}) "
                        f"than this run's ({data.store.path}), so its training pictures may include "
                        "pictures this run tests; use stage1=auto, or train Stage 1 on this data set")
    if tags.get(SPLIT_FINGERPRINT_TAG) == wanted[SPLIT_FINGERPRINT_TAG]:
        return
    where = ("this cross-validation fold" if data.split.params.get("folds", 1) > 1 else "this run")
    theirs = ", ".join(f"{option_name(name)} {run.data.params[cfg_param(name)]}"
                       for name in ("split_mode", "split_seed", "folds", "fold")
                       if cfg_param(name) in run.data.params)
    raise UserError(f"stage1={run_id} was trained on another split than {where}, so its training "
                    "pictures may include pictures this run tests; use stage1=auto to train Stage 1 on "
                    f"this split, or run on the Stage-1 run's split ({theirs or 'its split options'})")


__all__ = ["Stage1Ref", "resolve_stage1", "train_stage1", "find_stage1_run"]
