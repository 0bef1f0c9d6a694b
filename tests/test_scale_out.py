"""``ablation --executor ray`` on a real Ray head and a real ``mlflow server``, both on the
loopback address, with one Ray worker killed while it trains."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Both ends must agree on Ray's token authentication, whatever an earlier local Ray left in
# ~/.ray; a head on the loopback address needs none.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tracking_server(tmp_path):
    from av1_ablation.training.children import local_tracking_server

    with local_tracking_server(f"sqlite:///{tmp_path}/server.db", artifacts_destination=tmp_path / "served") as url:
        yield url


@pytest.fixture
def ray_head():
    if os.environ.get("CI") == "true":
        import ray  # noqa: F401  # CI installs the extra; a broken install must fail there, not skip
    else:
        pytest.importorskip("ray", reason="the Ray executor's test needs Ray: pip install '.[ray]' (make test does)")
    port = _free_port()
    subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=RAY_ENV)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=RAY_ENV)


def _train_processes() -> list[int]:
    """The children training in a Ray worker (whose command line reads ``ray::...``)."""
    out = subprocess.run(["pgrep", "-f", "av1_ablation train"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if _command_line(_parent_of(int(pid))).startswith("ray::")]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@pytest.mark.slow
def test_ray_executor_trains_every_child_and_retries_one_whose_worker_died(
        tiny_dataset_two_qps, tracking_server, ray_head, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_server)
    exp = client.create_experiment("ray")
    env = {**RAY_ENV, "MLFLOW_TRACKING_URI": tracking_server, "MLFLOW_EXPERIMENT_ID": exp}
    env.pop("MLFLOW_RUN_ID", None)
    ablation = subprocess.Popen(
        [sys.executable, "-m", "av1_ablation", "ablation", "--executor", "ray", "--ray-address", ray_head,
         "--losses", "baseline,poly", "--seeds", "1,2", "--threads", "1", "--data", str(tiny_dataset_two_qps),
         "--preset", "smoke", "--batch-size", "16", "--epochs", "3"],
        cwd=REPO, env=env, stdout=open(tmp_path / "ablation.log", "w"), stderr=subprocess.STDOUT)
    try:
        found = _wait(lambda: _train_processes() or ablation.poll() is not None, 300,
                      "a child training on a Ray worker")
        assert found is not True, (tmp_path / "ablation.log").read_text()[-3000:]  # it ended first
        first = found[0]
        time.sleep(1.0)
        os.kill(_parent_of(first), signal.SIGKILL)  # the Ray worker running it
        assert ablation.wait(timeout=600) == 0, (tmp_path / "ablation.log").read_text()[-3000:]
    finally:
        if ablation.poll() is None:
            ablation.kill()
    log = (tmp_path / "ablation.log").read_text()
    (parent,) = client.search_runs([exp], "tags.`av1.kind` = 'ablation'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.info.run_name for c in finished) == sorted(
        f"{loss}-seed{seed}" for loss in ("baseline", "poly") for seed in (1, 2)), log[-3000:]
    (lost,) = [c for c in children if c.info.status != "FINISHED"]
    assert lost.info.status == "FAILED" and "Ray worker died" in lost.data.tags["av1.failure_reason"]
    assert "training it again as run" in log
    assert client.list_artifacts(finished[0].info.run_id, "predictions")

    # SIGTERM to the parent while children train: every run ends, none is left RUNNING
    exp2 = client.create_experiment("ray-stopped")
    stopped = subprocess.Popen(
        [sys.executable, "-m", "av1_ablation", "ablation", "--executor", "ray", "--ray-address", ray_head,
         "--losses", "baseline,poly", "--seeds", "3,4", "--threads", "1", "--data", str(tiny_dataset_two_qps),
         "--preset", "smoke", "--batch-size", "16", "--epochs", "3"],
        cwd=REPO, env={**env, "MLFLOW_EXPERIMENT_ID": exp2}, stdout=open(tmp_path / "stopped.log", "w"),
        stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _train_processes() or stopped.poll() is not None, 300, "a child of the second ablation")
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=120) == 143, (tmp_path / "stopped.log").read_text()[-3000:]
    finally:
        if stopped.poll() is None:
            stopped.kill()
    runs = client.search_runs([exp2], "")
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} <= {"KILLED", "FINISHED"}
