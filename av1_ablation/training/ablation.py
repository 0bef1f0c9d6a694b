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

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from av1_ablation.dataset.partitions import to_stage2
from av1_ablation.errors import UserError
from av1_ablation.losses import LOSS_TYPES
from av1_ablation.record.contract import (ABLATION_RUN_NAME, ALL_FOLDS, BEST_LOSS_TAG, BEST_RUN_TAG, CHILDREN_TAG,
                                          FAILED_CHILDREN_TAG, FOLD_PARAM, JOBS_PARAM, KIND_ABLATION, KIND_STAGE2,
                                          KIND_TAG, LOSSES_PARAM, PARENT_RUN_TAG, REUSED_CHILDREN_TAG,
                                          SEEDS_PARAM, STAGE1_RUN_TAG, TEST_MACRO_F1, ablation_mean_metric,
                                          arm_run_name, cfg_param, param_value)
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import STAGE2_PRESETS, Stage2Config
from av1_ablation.training.data import cross_validation_tags, load_split_data
from av1_ablation.training.lifecycle import (experiment_id, fails_pending_run, finished_runs, log_new_params,
                                             tracked_run)
from av1_ablation.training.stage1 import resolve_stage1
from av1_ablation.training.stage2 import train_stage2
from av1_ablation.training.threads import default_threads

# workers import the same code as this process, installed or not
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# The ablation's own variables: every child gets one of each (--losses x --seeds x folds).
ARM_FIELDS = ("loss_type", "seed", "fold")


def configure(parser) -> None:
    parser.add_argument("--losses", default=",".join(LOSS_TYPES),
                        help="comma-separated loss types (default: all five)")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds (default: 42,43,44)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="children trained at once, each in a process of its own (default 1); "
                             "with GPUs, child i runs on GPU i mod the GPU count")
    config_mod.add_config_arguments(parser, Stage2Config, exclude=ARM_FIELDS)


def run(args) -> int:
    with fails_pending_run():
        losses, seeds = parse_arms(args.losses, args.seeds)
        if args.jobs < 1:
            raise UserError(f"jobs={args.jobs} must be >= 1")
        base = config_mod.from_args(Stage2Config, args, STAGE2_PRESETS, **dict.fromkeys(ARM_FIELDS))
    parent_id, failed = run_ablation(base, losses, seeds, jobs=args.jobs,
                                     threads=getattr(args, "threads", None))
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
                 threads: int | None = None):
    """Train the missing children under one parent; returns (parent run id, failed child names).

    With ``base.folds = K > 1`` every loss and seed is trained once per fold, each fold on
    a Stage-1 backbone of its own (trained on that fold's training pictures only).
    ``threads``: CPU threads of each child trained in a process of its own (default: the
    cores divided by ``jobs``)."""
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
        child_ids = {cfg: MlflowClient().create_run(
            experiment_id(), run_name=arm_run_name(cfg.loss_type, cfg.seed, cfg.folds, cfg.fold),
            tags={PARENT_RUN_TAG: parent.info.run_id, KIND_TAG: KIND_STAGE2}).info.run_id for cfg in todo}
        mlflow.set_tags({CHILDREN_TAG: ",".join([*done.values(), *child_ids.values()]),
                         REUSED_CHILDREN_TAG: ",".join(done.values())})
        if jobs == 1:
            failed = [name for cfg, rid in child_ids.items()
                      if (name := _train_in_process(cfg, rid, data[cfg.fold]))]
        else:
            failed = _train_in_subprocesses(child_ids, jobs, threads or default_threads(jobs))
        log_parent_summary([*done.values(), *child_ids.values()])
        if failed:
            mlflow.set_tag(FAILED_CHILDREN_TAG, ",".join(failed))
        return parent.info.run_id, failed


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
    name = arm_run_name(cfg.loss_type, cfg.seed, cfg.folds, cfg.fold)
    try:
        train_stage2(cfg, run_id=run_id, stage1_run_id=cfg.stage1, data=data)
    except Exception as exc:  # the child is already marked FAILED with the reason
        print(f"child {name} failed: {exc}", file=sys.stderr)
        return name
    return None


def child_command(cfg: Stage2Config, threads: int) -> list[str]:
    """The ``train`` command line of one child trained in a process of its own."""
    args = [sys.executable, "-m", "av1_ablation", "train", "--threads", str(threads)]
    return args + config_mod.to_arguments(cfg)


def _train_in_subprocesses(child_ids: dict, jobs: int, threads: int) -> list[str]:
    n_gpus = torch.cuda.device_count()

    def launch(item):
        i, (cfg, run_id) = item
        device = f"cuda:{i % n_gpus}" if n_gpus and cfg.device in ("auto", "cuda") else cfg.device
        args = child_command(dataclasses.replace(cfg, device=device), threads)
        env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id(),
               "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        ok = subprocess.run(args, env=env).returncode == 0
        if not ok and MlflowClient().get_run(run_id).info.status == "RUNNING":
            MlflowClient().set_terminated(run_id, "FAILED")
        return None if ok else arm_run_name(cfg.loss_type, cfg.seed, cfg.folds, cfg.fold)

    with tracking_server_for_workers():
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(launch, enumerate(child_ids.items())))
    return [r for r in results if r]


@contextmanager
def tracking_server_for_workers():
    """Route the workers' writes through one local ``mlflow server`` when the store is a
    local database file; remote (http) stores already serialise writes."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:"):
        yield uri
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise UserError(f"could not start a local tracking server for --jobs "
                                    f"(mlflow server on {url}); use --jobs 1") from None
                time.sleep(0.5)
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
    finally:
        server.terminate()
        server.wait(timeout=30)


def log_parent_summary(child_ids: list[str]) -> None:
    """Log each loss's mean test macro-F1 on the parent (the active run) and tag the best
    child run."""
    client = MlflowClient()
    by_loss: dict[str, list[tuple[float, str]]] = {}
    for rid in child_ids:
        run = client.get_run(rid)
        if run.info.status == "FINISHED" and TEST_MACRO_F1 in run.data.metrics:
            by_loss.setdefault(run.data.params[cfg_param("loss_type")], []).append(
                (run.data.metrics[TEST_MACRO_F1], rid))
    if not by_loss:
        return
    means = {loss: float(np.mean([s for s, _ in v])) for loss, v in by_loss.items()}
    mlflow.log_metrics({ablation_mean_metric(loss): m for loss, m in means.items()})
    best_loss = max(means, key=means.get)
    mlflow.set_tags({BEST_LOSS_TAG: best_loss, BEST_RUN_TAG: max(by_loss[best_loss])[1]})
