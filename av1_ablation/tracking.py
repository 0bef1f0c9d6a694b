"""MLflow run lifecycle shared by every command that records runs.

A run is never left RUNNING: errors end it FAILED with the reason as a tag,
Ctrl-C and SIGTERM end it KILLED.
"""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from av1_ablation.errors import Terminated

KIND_TAG = "av1.kind"
FAILURE_TAG = "av1.failure_reason"


def _raise_terminated(signum, frame):
    raise Terminated(f"received signal {signum}")


def install_sigterm_handler() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_tags(device) -> dict[str, str]:
    import numpy
    import sklearn
    import torch

    tags = {
        "av1.device": str(device),
        "av1.python": platform.python_version(),
        "av1.torch": torch.__version__,
        "av1.mlflow": mlflow.__version__,
        "av1.numpy": numpy.__version__,
        "av1.sklearn": sklearn.__version__,
    }
    if torch.device(device).type == "cuda":
        tags["av1.gpu"] = torch.cuda.get_device_name(torch.device(device))
    commit = git_commit()
    if commit:
        tags["av1.git_commit"] = commit
    return tags


def log_new_params(params: dict[str, str]) -> None:
    """Log params not yet on the active run; ``mlflow run`` has already logged its own
    parameters as strings, and MLflow refuses to change a logged value."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: str(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


@contextlib.contextmanager
def tracked_run(*, kind: str, run_id: str | None = None, run_name: str | None = None,
                tags: dict | None = None, nested: bool = False, on_interrupt=None):
    """Start (or resume) a run and end it FINISHED, FAILED or KILLED.

    ``run_id=None`` picks up the run that ``mlflow run`` created (``MLFLOW_RUN_ID``) or
    starts a new one. ``on_interrupt()`` runs before a run is marked KILLED (the
    training commands log their last resume point there).
    """
    install_sigterm_handler()
    nested = nested or mlflow.active_run() is not None
    run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested)
    mlflow.set_tags({KIND_TAG: kind, **(tags or {})})
    try:
        yield run
    except (KeyboardInterrupt, Terminated) as exc:
        reason = "interrupted by the user" if isinstance(exc, KeyboardInterrupt) else str(exc)
        with contextlib.suppress(BaseException):
            if on_interrupt is not None:
                on_interrupt()
        mlflow.set_tag(FAILURE_TAG, reason)
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        mlflow.set_tag(FAILURE_TAG, f"{type(exc).__name__}: {exc}"[:4000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def fail_pending_run(message: str, run_id: str | None = None) -> None:
    """Record a rejected invocation on the run ``mlflow run`` created for it (``run_id`` or
    ``MLFLOW_RUN_ID``), so it is not left RUNNING."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    client.set_tag(run_id, FAILURE_TAG, message[:4000])
    client.set_terminated(run_id, "FAILED")


def finished_runs(kind: str, *, tags: dict[str, str], params: dict[str, str], max_results: int = 1000):
    """FINISHED runs of the current experiment of ``kind`` with exactly these tag and param
    values, newest first."""
    clauses = [f"tags.`{KIND_TAG}` = '{kind}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    clauses += [f"params.`{k}` = '{v}'" for k, v in params.items()]
    return MlflowClient().search_runs([experiment_id()], " and ".join(clauses),
                                      order_by=["attributes.start_time DESC"], max_results=max_results)


def experiment_id() -> str:
    """The experiment commands log into: ``MLFLOW_EXPERIMENT_ID``/``_NAME`` or the default."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


__all__ = [
    "KIND_TAG", "FAILURE_TAG", "Terminated", "tracked_run", "log_new_params", "finished_runs",
    "environment_tags", "fail_pending_run", "experiment_id", "git_commit",
]
