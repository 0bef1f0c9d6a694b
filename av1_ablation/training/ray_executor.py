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

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from av1_ablation.errors import Terminated, UserError
from av1_ablation.training.children import (child_command, child_env, child_name, end_failed_child, exit_reason,
                                            new_child_run, tracking_server_for_workers)
from av1_ablation.training.lifecycle import end_reason, install_stop_handlers, release_interrupted_frames

RETRIES = 1  # new runs after a worker died
# Ray's ways of saying that the process or machine running a task is gone (retried), as
# opposed to an error raised by the task itself (RayTaskError: final)
WORKER_LOST = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
# looked up once at import, in the worker, not between fork and exec
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray), or use "
                        "--executor local") from None
    return ray


def _die_with(parent: int) -> None:
    """In the child, before exec: receive SIGKILL when the Ray worker that started it dies,
    so a lost worker never leaves a training running beside its retry."""
    if _LIBC is not None and _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        os._exit(120)
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(121)


def run_child(args: list[str], env: dict[str, str], cwd: str) -> int:
    """What a Ray task does: run one child's ``train`` command; returns its exit status."""
    return subprocess.run(args, env={**os.environ, **env}, cwd=cwd if Path(cwd).is_dir() else None,
                          preexec_fn=functools.partial(_die_with, os.getpid())).returncode


def train_on_ray(child_ids: dict, threads: int, address: str | None,
                 parent_id: str) -> tuple[list[str], list[str]]:
    """Train the children as Ray tasks on the cluster at ``address`` (None: a local Ray
    instance for this run); returns the names of the children that failed and the run ids
    of the retries."""
    ray = _import_ray()
    uri = mlflow.get_tracking_uri()
    if address and not uri.startswith(("http://", "https://")):
        raise UserError(f"Ray workers on other machines cannot write to the tracking store {uri}; start "
                        "`mlflow server` and set MLFLOW_TRACKING_URI=http://HOST:PORT (docs/scale-out.md)")
    with tracking_server_for_workers() as uri:
        started = not ray.is_initialized()
        if started:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
                     configure_logging=False)
            install_stop_handlers()  # ray.init replaces SIGTERM's with one that exits without unwinding
        try:
            _check_fits(ray, threads)
            run = _Children(ray, uri, threads, parent_id)
            return run.wait(child_ids)
        finally:
            if started:
                ray.shutdown()


def _check_fits(ray, threads: int) -> None:
    """Refuse a thread budget no machine of the cluster has: Ray would wait for it forever."""
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if threads > largest:
        raise UserError(f"each child asks for {threads} CPU(s) (--threads, by default this machine's cores "
                        f"divided by --jobs), but the largest machine of the Ray cluster has {largest:g}; "
                        f"pass --threads {max(1, int(largest))} or less")


class _Children:
    """Submit, wait for, retry and end the children's tasks."""

    def __init__(self, ray, uri: str, threads: int, parent_id: str):
        self.ray, self.uri, self.threads, self.parent_id = ray, uri, threads, parent_id
        self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.task = ray.remote(max_retries=0)(run_child)
        self.pending: dict = {}
        self.lost = ""  # why the last retried child's worker was lost

    def submit(self, cfg, run_id: str, attempt: int) -> None:
        gpus = 1 if self.has_gpus and cfg.device in ("auto", "cuda") else 0
        ref = self.task.options(num_cpus=self.threads, num_gpus=gpus).remote(
            child_command(cfg, self.threads), child_env(run_id, self.uri), os.getcwd())
        self.pending[ref] = (cfg, run_id, attempt)

    def wait(self, child_ids: dict) -> tuple[list[str], list[str]]:
        for cfg, run_id in child_ids.items():
            self.submit(cfg, run_id, 0)
        failed, retries = [], []
        try:
            while self.pending:
                # a bounded wait: Python runs the SIGTERM and Ctrl-C handlers only between calls
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                if not ready:
                    continue
                cfg, run_id, attempt = self.pending.pop(ready[0])
                ref = ready[0]
                outcome = self.outcome(ref, run_id, attempt)
                if outcome == "retry":
                    retry = new_child_run(cfg, self.parent_id)
                    end_failed_child(run_id, f"{self.lost}; trained again as run {retry}")
                    print(f"child {child_name(cfg)}: {self.lost}; training it again as run {retry}")
                    self.submit(cfg, retry, attempt + 1)
                    retries.append(retry)
                elif outcome is not None:
                    end_failed_child(run_id, outcome)
                    failed.append(child_name(cfg))
        except BaseException as exc:
            # a signal handled inside Ray's compiled wait comes out wrapped in a SystemError
            signalled = isinstance(exc, SystemError) and isinstance(exc.__cause__, (Terminated, KeyboardInterrupt))
            self.stop(exc.__cause__ if signalled else exc)
            if signalled:
                raise exc.__cause__ from None
            raise
        return failed, retries

    def outcome(self, ref, run_id: str, attempt: int) -> str | None:
        """None (the child finished), "retry", or the reason the child failed."""
        try:
            code = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # raised by run_child itself: final
            return f"the Ray task failed: {exc.cause!r}"
        except self.ray.exceptions.RayError as exc:
            if type(exc).__name__ not in WORKER_LOST:
                return f"Ray could not run the child: {type(exc).__name__}"
            if MlflowClient().get_run(run_id).info.status == "FINISHED":
                return None  # the worker died after its child had finished
            self.lost = f"its Ray worker died ({type(exc).__name__})"
            return "retry" if attempt < RETRIES else f"{self.lost}, after {attempt} retry"
        return None if code == 0 else exit_reason(code)

    def stop(self, exc: BaseException) -> None:
        """Ctrl-C, SIGTERM or an error in the parent: cancel every task and end its run."""
        release_interrupted_frames(exc)
        interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
        for ref, (_, run_id, _) in self.pending.items():
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                end_failed_child(run_id, f"the ablation stopped: {end_reason(exc)}",
                                 status="KILLED" if interrupted else "FAILED")
