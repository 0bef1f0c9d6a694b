"""Training the children of an ablation in processes of their own.

Each child is the ``train`` command of one loss, seed and fold, started with the
run id the parent created for it (``MLFLOW_RUN_ID``). Children that write at once
need a store that serialises writes: a local SQLite file is put behind one
``mlflow server`` on the loopback address for as long as they run. The local
executor runs ``--jobs`` of them at a time on this machine; the Ray executor
(:mod:`av1_ablation.training.ray_executor`) submits the same commands to a cluster.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from av1_ablation.errors import UserError
from av1_ablation.record.contract import KIND_STAGE2, KIND_TAG, PARENT_RUN_TAG, arm_run_name
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import Stage2Config
from av1_ablation.training.lifecycle import (end_reason, experiment_id, fail_pending_run,
                                             release_interrupted_frames, signals_held)

# workers import the same code as this process, installed or not
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def child_name(cfg: Stage2Config) -> str:
    return arm_run_name(cfg.loss_type, cfg.seed, cfg.folds, cfg.fold)


def child_command(cfg: Stage2Config, threads: int) -> list[str]:
    """The ``train`` command line of one child trained in a process of its own."""
    args = [sys.executable, "-m", "av1_ablation", "train", "--threads", str(threads)]
    return args + config_mod.to_arguments(cfg)


def child_env(run_id: str, tracking_uri: str) -> dict[str, str]:
    """What a child's environment adds to this one: its run, the experiment, the tracking
    store the children write to (from :func:`tracking_server_for_workers`) and the package."""
    return {"MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id(),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}


def new_child_run(cfg: Stage2Config, parent_id: str) -> str:
    """Create the run of one child under the ablation parent (it starts when the child does)."""
    return MlflowClient().create_run(experiment_id(), run_name=child_name(cfg),
                                     tags={PARENT_RUN_TAG: parent_id, KIND_TAG: KIND_STAGE2}).info.run_id


def end_failed_child(run_id: str, reason: str, status: str = "FAILED") -> None:
    """A child that ended without closing its run (killed, or dead before it started) is
    ``status`` with ``reason``; one that closed its run keeps its own status and reason."""
    if MlflowClient().get_run(run_id).info.status == "RUNNING":
        fail_pending_run(reason, run_id, status=status)


def exit_reason(code: int) -> str:
    """Why a child process ended, from its exit status."""
    if code < 0:
        return f"the child process was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"the child process exited with status {code}"


# exit statuses of a child stopped by Ctrl-C or SIGTERM: its run is KILLED, not FAILED
STOPPED = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}
STOP_GRACE_SECONDS = 120  # for the stopped children to close their runs, all together


def train_in_subprocesses(child_ids: dict, jobs: int, threads: int) -> list[str]:
    """Train ``jobs`` children at a time on this machine; returns the names of the failed ones.

    Ctrl-C, SIGTERM or an error in the parent starts no further child, ends the runs of the
    children never started KILLED at once, and sends SIGTERM to the running ones, which end
    their runs KILLED themselves (SIGKILL after a grace period)."""
    import torch

    n_gpus = torch.cuda.device_count()
    stopping, lock = threading.Event(), threading.Lock()
    running, started = [], set()

    def launch(item):
        i, (cfg, run_id) = item
        try:
            device = f"cuda:{i % n_gpus}" if n_gpus and cfg.device in ("auto", "cuda") else cfg.device
            args = child_command(dataclasses.replace(cfg, device=device), threads)
            with lock:
                if stopping.is_set():
                    return None
                proc = subprocess.Popen(args, env={**os.environ, **child_env(run_id, uri)})
                running.append(proc)
                started.add(run_id)
            code = proc.wait()
            if code != 0:
                stopped = stopping.is_set() or code in STOPPED
                end_failed_child(run_id, exit_reason(code), status="KILLED" if stopped else "FAILED")
            return None if code == 0 else child_name(cfg)
        except Exception as exc:  # noqa: BLE001 - one child's trouble is that child's failure
            with contextlib.suppress(Exception):
                end_failed_child(run_id, f"could not train the child: {type(exc).__name__}: {exc}")
            return child_name(cfg)

    with tracking_server_for_workers() as uri:
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [pool.submit(launch, item) for item in enumerate(child_ids.items())]
            results = [f.result() for f in futures]
        except BaseException as exc:
            with signals_held():
                release_interrupted_frames(exc)
                with lock:
                    stopping.set()
                pool.shutdown(wait=False, cancel_futures=True)
                for run_id in set(child_ids.values()) - started:
                    with contextlib.suppress(Exception):
                        end_failed_child(run_id, f"the ablation stopped: {end_reason(exc)}", status="KILLED")
                _stop_all(running)
            raise
        finally:
            pool.shutdown(wait=True)
    return [r for r in results if r]


def _stop_all(procs: list) -> None:
    """SIGTERM to every running child, SIGKILL to those still running after the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def tracking_server_for_workers():
    """Route the workers' writes through one local ``mlflow server`` when the store is a
    local database file; remote (http) stores already serialise writes."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:"):
        yield uri
        return
    with local_tracking_server(uri) as url:
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved


@contextmanager
def local_tracking_server(backend_uri: str, *, artifacts_destination: str | None = None, timeout: float = 120):
    """An ``mlflow server`` for ``backend_uri`` on a free port of the loopback address, up
    (``/health`` answers) before its URL is yielded, and stopped afterwards.
    ``artifacts_destination``: serve artifacts from there (else clients write them directly)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = ["--artifacts-destination", str(artifacts_destination)] if artifacts_destination else []
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, *served,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
            except OSError:
                pass
            else:
                if server.poll() is None:  # ours answered, not another process that took the port
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"could not start a local tracking server (mlflow server on {url}); "
                                "use --jobs 1, or start `mlflow server` and set "
                                "MLFLOW_TRACKING_URI=http://HOST:PORT")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(server)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a process group leader's group (a server and its workers), SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue
