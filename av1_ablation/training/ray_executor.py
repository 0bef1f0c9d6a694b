"""The ablation's children as Ray tasks: ``ablation --executor ray``.

Each child is the same ``train`` command the local executor starts, run by a Ray
task that asks for the child's share of a machine (``num_cpus`` = its threads, and
one GPU where the cluster has GPUs), so Ray's scheduling and torch's threads agree.
The children log to the tracking store of ``MLFLOW_TRACKING_URI``: a local SQLite
file is put behind a local ``mlflow server`` (a single-machine Ray instance); a
cluster needs a tracking server every machine can reach.

A task whose worker dies (the process killed, the machine lost) cannot close its
run, and Ray alone would re-run it inside the same run. Instead the child process
dies with its worker (``PR_SET_PDEATHSIG``), its run is ended FAILED with the
reason, and the child is trained once more as a new run under the same parent;
a second loss is final.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from av1_ablation.errors import UserError
from av1_ablation.record.contract import KIND_STAGE2, KIND_TAG, PARENT_RUN_TAG
from av1_ablation.training.children import (child_command, child_env, child_name, end_failed_child,
                                            tracking_server_for_workers)
from av1_ablation.training.lifecycle import experiment_id

EXECUTORS = ("local", "ray")
RETRIES = 1  # new runs after a worker died


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray), or use "
                        "--executor local") from None
    return ray


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the Ray worker that started it dies,
    so a lost worker never leaves a training running beside its retry."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_child(args: list[str], env: dict[str, str], cwd: str) -> int:
    """What a Ray task does: run one child's ``train`` command; returns its exit status."""
    return subprocess.run(args, env={**os.environ, **env}, cwd=cwd if Path(cwd).is_dir() else None,
                          preexec_fn=_die_with_parent).returncode


def train_on_ray(child_ids: dict, threads: int, address: str | None,
                 parent_id: str) -> tuple[list[str], list[str]]:
    """Train the children as Ray tasks on the cluster at ``address`` (None: a local Ray
    instance for this run); returns the names of the children that failed and the run ids
    of the retries."""
    ray = _import_ray()
    with tracking_server_for_workers() as uri:
        if address and not uri.startswith(("http://", "https://")):
            raise UserError(f"Ray workers on other machines cannot write to the tracking store {uri}; start "
                            "`mlflow server` and set MLFLOW_TRACKING_URI=http://HOST:PORT (docs/scale-out.md)")
        started = not ray.is_initialized()
        if started:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
                     configure_logging=False)
        try:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
            task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_child)
            return _wait_for_children(ray, task, child_ids, threads, parent_id)
        finally:
            if started:
                ray.shutdown()


def _submit(task, cfg, run_id: str, threads: int):
    return task.remote(child_command(cfg, threads), child_env(run_id), os.getcwd())


def _wait_for_children(ray, task, child_ids: dict, threads: int,
                       parent_id: str) -> tuple[list[str], list[str]]:
    pending = {_submit(task, cfg, rid, threads): (cfg, rid, 0) for cfg, rid in child_ids.items()}
    failed, retries = [], []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        cfg, run_id, attempt = pending.pop(ref)
        try:
            code, lost = ray.get(ref), None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.TaskUnschedulableError, ray.exceptions.RayTaskError) as exc:
            code, lost = None, type(exc).__name__
        if code == 0:
            continue
        if lost and attempt < RETRIES:
            retry = MlflowClient().create_run(experiment_id(), run_name=child_name(cfg),
                                              tags={PARENT_RUN_TAG: parent_id, KIND_TAG: KIND_STAGE2}).info.run_id
            end_failed_child(run_id, f"its Ray worker died ({lost}); trained again as run {retry}")
            print(f"child {child_name(cfg)}: its Ray worker died ({lost}); training it again as run {retry}")
            pending[_submit(task, cfg, retry, threads)] = (cfg, retry, attempt + 1)
            retries.append(retry)
            continue
        end_failed_child(run_id, f"its Ray worker died ({lost}), after {attempt} retry" if lost
                         else f"the child process exited with status {code}")
        failed.append(child_name(cfg))
    return failed, retries
