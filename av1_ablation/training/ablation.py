"""``ablation``: every loss x every seed as child runs of one parent run.

    av1-ablation ablation --losses baseline,poly --seeds 42,43,44 --jobs 2
    mlflow run . -e ablation

Everything but ``loss_type`` and ``seed`` is shared by the children, including
one Stage-1 backbone, resolved once. ``--folds K`` runs every loss and seed on
each of K folds by picture (one backbone per fold), so every picture is tested
once. A second invocation skips children that already FINISHED with identical
parameters (they are linked to the new parent through its ``av1.children`` tag).
With ``--jobs N > 1`` children run in parallel processes that write through a
local tracking server, because SQLite is not safe for many writers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from av1_ablation.dataset.partitions import to_stage2
from av1_ablation.errors import Terminated, UserError
from av1_ablation.losses import LOSS_TYPES
from av1_ablation.record.contract import (ABLATION_RUN_NAME, ALL_FOLDS, BEST_LOSS_TAG, BEST_RUN_TAG,
                                          BEST_VAL_MACRO_F1, CHILDREN_TAG, FAILED_CHILDREN_TAG, FOLD_PARAM,
                                          JOBS_PARAM, KIND_ABLATION, KIND_STAGE2, LOSSES_PARAM,
                                          REUSED_CHILDREN_TAG, SEEDS_PARAM, STAGE1_RUN_TAG, TEST_MACRO_F1,
                                          ablation_mean_metric,
                                          cfg_param, param_value)
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import STAGE2_PRESETS, Stage2Config
from av1_ablation.training.children import child_name, end_failed_child, new_child_run, train_in_subprocesses
from av1_ablation.training.data import cross_validation_tags, load_split_data
from av1_ablation.training.lifecycle import (end_reason, fails_pending_run, finished_runs, log_new_params,
                                             release_interrupted_frames, signals_held, tracked_run)
from av1_ablation.training.stage1 import resolve_stage1
from av1_ablation.training.stage2 import train_stage2
from av1_ablation.training.threads import default_threads

# The ablation's own variables: every child gets one of each (--losses x --seeds x folds).
ARM_FIELDS = ("loss_type", "seed", "fold")
EXECUTORS = ("local", "ray")  # ray: av1_ablation.training.ray_executor, imported only when chosen


def configure(parser) -> None:
    parser.add_argument("--losses", default=",".join(LOSS_TYPES),
                        help="comma-separated loss types (default: all five)")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds (default: 42,43,44)")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="where children train: processes on this machine (local, default) or Ray "
                             "tasks (ray; pip install '.[ray]')")
    parser.add_argument("--ray-address", default="", metavar="HOST:PORT",
                        help="the Ray cluster of --executor ray (default: a local Ray instance for this run)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="children trained at once, each in a process of its own (default 1); "
                             "with GPUs, child i runs on GPU i mod the GPU count")
    config_mod.add_config_arguments(parser, Stage2Config, STAGE2_PRESETS, exclude=ARM_FIELDS)


def run(args) -> int:
    with fails_pending_run():
        losses, seeds = parse_arms(args.losses, args.seeds)
        if args.jobs < 1:
            raise UserError(f"jobs={args.jobs} must be >= 1")
        if args.ray_address and args.executor != "ray":
            raise UserError(f"--ray-address {args.ray_address} needs --executor ray")
        base = config_mod.from_args(Stage2Config, args, STAGE2_PRESETS, **dict.fromkeys(ARM_FIELDS))
    parent_id, failed = run_ablation(base, losses, seeds, jobs=args.jobs,
                                     threads=getattr(args, "threads", None), executor=args.executor,
                                     ray_address=args.ray_address or None)
    print(f"ablation run {parent_id}: {len(losses) * len(seeds) * base.folds - len(failed)} children finished"
          + (f", {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def parse_arms(losses: str, seeds: str) -> tuple[list[str], list[int]]:
    names = [s for s in losses.replace(" ", ",").split(",") if s]
    unknown = [n for n in names if n not in LOSS_TYPES]
    if unknown or not names:
        raise UserError(f"losses={losses!r}: unknown {unknown or '(none given)'}; "
                        f"choose from {', '.join(LOSS_TYPES)}")
    try:
        seed_list = [int(s) for s in seeds.replace(" ", ",").split(",") if s]
    except ValueError:
        raise UserError(f"seeds={seeds!r} must be comma-separated integers") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise UserError(f"seeds={seeds!r} must be one or more distinct integers")
    return list(dict.fromkeys(names)), seed_list


def run_ablation(base: Stage2Config, losses: list[str], seeds: list[int], *, jobs: int = 1,
                 threads: int | None = None, executor: str = "local", ray_address: str | None = None):
    """Train the missing children under one parent; returns (parent run id, failed child names).

    With ``base.folds = K > 1`` every loss and seed is trained once per fold, each fold on
    a Stage-1 backbone of its own (trained on that fold's training pictures only).
    ``threads``: CPU threads of each child trained in a process of its own (default: the
    cores divided by ``jobs``). ``executor="ray"`` submits the children to the Ray cluster
    at ``ray_address`` (:mod:`~av1_ablation.training.ray_executor`)."""
    with fails_pending_run():  # a refused data set or split ends the run `mlflow run` created
        data = dict(enumerate(load_split_data(base, to_stage2, every_fold=True)))
    with tracked_run(kind=KIND_ABLATION, run_name=ABLATION_RUN_NAME,
                     tags=cross_validation_tags(list(data.values()))) as parent:
        log_new_params({LOSSES_PARAM: ",".join(losses), SEEDS_PARAM: ",".join(map(str, seeds)),
                        JOBS_PARAM: str(jobs), **config_mod.to_params(base),
                        **({FOLD_PARAM: ALL_FOLDS} if base.folds > 1 else {})})
        stage1 = {k: resolve_stage1(base.stage1, data=d, width=base.width, device=base.device,
                                    preset=base.preset, qp_input=base.qp_input) for k, d in data.items()}
        mlflow.set_tag(STAGE1_RUN_TAG, ",".join(s.run_id or "" for s in stage1.values()))
        arms = [dataclasses.replace(base, loss_type=loss, seed=seed, fold=k,
                                    stage1=stage1[k].run_id or stage1[k].source)
                for k in data for loss in losses for seed in seeds]
        done = {i: run_id for i, cfg in enumerate(arms) if (run_id := finished_twin(cfg, data[cfg.fold]))}
        todo = [cfg for i, cfg in enumerate(arms) if i not in done]
        print(f"ablation: {len(arms)} children, {len(done)} already finished, {len(todo)} to train")
        child_ids = {cfg: new_child_run(cfg, parent.info.run_id) for cfg in todo}
        mlflow.set_tags({CHILDREN_TAG: ",".join([*done.values(), *child_ids.values()]),
                         REUSED_CHILDREN_TAG: ",".join(done.values())})
        try:
            failed, retries = _train_children(child_ids, data, jobs, threads, executor, ray_address,
                                              parent.info.run_id)
        except BaseException as exc:
            # the children that never started (and any a dead process left open) are not left RUNNING
            interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
            with signals_held():
                release_interrupted_frames(exc)
                for run_id in child_ids.values():
                    with contextlib.suppress(Exception):
                        end_failed_child(run_id, f"the ablation stopped: {end_reason(exc)}",
                                         status="KILLED" if interrupted else "FAILED")
            raise
        if retries:
            mlflow.set_tag(CHILDREN_TAG, ",".join([*done.values(), *child_ids.values(), *retries]))
        log_parent_summary([*done.values(), *child_ids.values(), *retries])
        if failed:
            mlflow.set_tag(FAILED_CHILDREN_TAG, ",".join(failed))
        return parent.info.run_id, failed


def _train_children(child_ids: dict, data: dict, jobs: int, threads: int | None, executor: str,
                    ray_address: str | None, parent_id: str) -> tuple[list[str], list[str]]:
    """Train the children where ``executor`` says; returns the failed names and retry run ids."""
    if executor == "ray":
        from av1_ablation.training.ray_executor import train_on_ray

        return train_on_ray(child_ids, threads or default_threads(jobs), ray_address, parent_id)
    if jobs == 1:
        return [name for cfg, rid in child_ids.items()
                if (name := _train_in_process(cfg, rid, data[cfg.fold]))], []
    return train_in_subprocesses(child_ids, jobs, threads or default_threads(jobs)), []


def finished_twin(cfg: Stage2Config, data) -> str | None:
    """A FINISHED Stage-2 run of this experiment with exactly these parameters and data."""
    wanted = config_mod.to_params(cfg)
    # the split fingerprint tag already fixes the fold; a run older than the fold params has none
    runs = finished_runs(KIND_STAGE2, tags=data.fingerprints(),
                         params={k: wanted[k] for k in map(cfg_param, ("loss_type", "seed"))})
    for run in runs:
        if all(param_value(run.data.params, k) == v for k, v in wanted.items()):
            return run.info.run_id
    return None


def _train_in_process(cfg: Stage2Config, run_id: str, data) -> str | None:
    name = child_name(cfg)
    try:
        train_stage2(cfg, run_id=run_id, stage1_run_id=cfg.stage1, data=data)
    except Exception as exc:
        # a child that failed before its run started (an error other than a UserError while
        # resolving its input) left that run RUNNING: it ends FAILED with the reason, as the
        # parallel children do; a child whose run ended keeps its own status and reason
        with contextlib.suppress(Exception):  # keep going with the other children
            end_failed_child(run_id, end_reason(exc))
        print(f"child {name} failed: {exc}", file=sys.stderr)
        return name
    return None


def log_parent_summary(child_ids: list[str]) -> None:
    """Log each loss's mean validation and test macro-F1 over its runs (seeds, and folds) on
    the parent (the active run), and tag the loss and the child that validation prefers:
    the choice is made on validation, and test only reports it (``compare`` gives the
    statistics, and pools the folds of a cross-validation)."""
    client = MlflowClient()
    by_loss: dict[str, list[tuple[float, float, str]]] = {}
    for rid in child_ids:
        run = client.get_run(rid)
        metrics = run.data.metrics
        if run.info.status == "FINISHED" and TEST_MACRO_F1 in metrics and BEST_VAL_MACRO_F1 in metrics:
            by_loss.setdefault(run.data.params[cfg_param("loss_type")], []).append(
                (metrics[BEST_VAL_MACRO_F1], metrics[TEST_MACRO_F1], rid))
    if not by_loss:
        return
    val = {loss: float(np.mean([v for v, _, _ in runs])) for loss, runs in by_loss.items()}
    mlflow.log_metrics({
        **{ablation_mean_metric(BEST_VAL_MACRO_F1, loss): m for loss, m in val.items()},
        **{ablation_mean_metric(TEST_MACRO_F1, loss): float(np.mean([t for _, t, _ in runs]))
           for loss, runs in by_loss.items()}})
    best_loss = max(val, key=val.get)
    # the child validation prefers; a tie goes to the smallest run id, never to test
    best_run = min(by_loss[best_loss], key=lambda r: (-r[0], r[2]))[2]
    mlflow.set_tags({BEST_LOSS_TAG: best_loss, BEST_RUN_TAG: best_run})
