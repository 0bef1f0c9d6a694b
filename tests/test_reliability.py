"""Bad inputs and faults: what the user sees and what is left behind.

Signals are real signals sent to real processes (``python -m av1_ablation ...``
started here), and child processes are looked up by pid in ``/proc``.
docs/reliability.md lists every case with the user-visible outcome.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from av1_ablation.cli import main
from av1_ablation.errors import Terminated
from av1_ablation.training.lifecycle import _sql_store_file

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--batch-size", "16"]
# Full-size photos at a low cq-level: encodes of a second or more, so a signal finds them running
SLOW_ENCODES = ["--source", "embedded:astronaut", "--source", "embedded:coffee",
                "--source", "embedded:chelsea", "--qp", "20", "32", "--jobs", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def stop_handling_restored():
    """What a test here sets for Ctrl-C and SIGTERM (handlers, the hook that sends a dropped
    stop again) does not outlive it: a later test in this process must not find it."""
    from av1_ablation.training.lifecycle import forget_pending_stops

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    yield
    forget_pending_stops()  # a stop a test left waiting is not sent to the next
    sys.unraisablehook = hook
    for s, handler in handlers.items():
        signal.signal(s, handler)


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def stage2_runs(experiment_id, status=None):
    flt = "tags.`av1.kind` = 'stage2'" + (f" and attributes.status = '{status}'" if status else "")
    return client().search_runs([experiment_id], filter_string=flt)


def stage2_runs_past_their_first_epoch(experiment_id):
    """The RUNNING Stage-2 runs that have logged an epoch: a signal now finds them training."""
    return [r for r in stage2_runs(experiment_id, "RUNNING")
            if client().get_metric_history(r.info.run_id, "val_macro_f1")]


def cli_process(*argv, **popen):
    """``python -m av1_ablation ARGV`` as a process of its own (the tests' env: tracking store)."""
    # faulthandler: stopped_status() can have a hung process print its threads' stacks
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           **popen.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "av1_ablation", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def stopped_status(proc, timeout: float = 60.0) -> int:
    """The exit status of ``proc`` (a :func:`cli_process` sent a stop signal). One still
    running after ``timeout`` s is aborted, and the test fails with the Python stacks of its
    threads, which faulthandler prints on SIGABRT: where it hung, not only that it did."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # faulthandler's list of extension modules is long and says nothing about the hang
        err = "".join(line for line in proc.stderr.readlines() if not line.startswith("Extension modules:"))
        pytest.fail(f"still running {timeout:g} s after the stop signal; its stderr, with the "
                    f"stacks of its threads:\n{err[-20000:]}")


def wait_for(condition, what: str, proc=None, timeout: float = 120.0):
    """Poll ``condition()`` until it returns something truthy; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: "
                        f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    # MLflow's artifact progress bar also writes to stderr; it is not part of the message
    lines = [line for line in err.strip().splitlines() if "Downloading artifacts" not in line]
    assert len(lines) == 1 and lines[0].startswith("av1-ablation ") and "Traceback" not in err, err
    return lines[0]


# --- messages: one line, what is wrong and what to do --------------------------------------------

def test_crop_below_64_is_worded_as_a_bound(tmp_path, capsys):
    assert main(["dataset", "--source", "embedded:coins", "--crop", "10",
                 "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "--crop must be >= 64; got 10" in err and "in >=" not in err


def test_text_file_named_png_is_refused_by_content(tmp_path, capsys):
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture\n")
    assert main(["dataset", "--source", str(fake), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "is not a PNG or JPEG file" in err
    assert "pip install" not in err and "plugin" not in err and "backend" not in err
    assert not (tmp_path / "out").exists()


def test_missing_data_directory_says_it_does_not_exist(tmp_path, tracking_store, capsys):
    _, exp = tracking_store
    missing = tmp_path / "nonexistent"
    assert main(["train", "--data", str(missing), *SMOKE]) == 2
    err = one_line_error(capsys)
    assert f"data={missing} does not exist" in err and "holds no block store" not in err
    assert stage2_runs(exp) == []


def test_non_checkpoint_stage1_files_are_refused_without_torch_advice(tiny_dataset_two_qps, tracking_store,
                                                                      tmp_path, capsys):
    _, exp = tracking_store
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    code = tmp_path / "objects.pt"
    torch.save({"model_state_dict": {}, "extra": socket.AddressFamily.AF_INET}, code)
    for path, expected in ((text, "is not a PyTorch checkpoint"), (code, "holds Python objects")):
        assert main(["train", "--data", str(tiny_dataset_two_qps), *SMOKE, "--stage1", str(path)]) == 2
        err = one_line_error(capsys)
        assert expected in err and "weights_only" not in err, err
    assert stage2_runs(exp) == []


def test_non_finite_loss_is_one_line_and_debug_adds_the_traceback(tiny_dataset_two_qps, tracking_store,
                                                                  capsys):
    _, exp = tracking_store
    diverging = ["train", "--data", str(tiny_dataset_two_qps), *SMOKE, "--lr-head", "1e30",
                 "--lr-adapter", "1e30", "--epochs", "3", "--threads", "1"]
    assert main(diverging) == 1
    err = one_line_error(capsys)
    (run,) = stage2_runs(exp)
    assert "training diverged" in err and f"run {run.info.run_id} is marked FAILED" in err
    assert "--lr-adapter" in err
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["av1.failure_reason"]
    # the thread budget is a process setting, never a run parameter
    assert torch.get_num_threads() == 1 and not any("threads" in p for p in run.data.params)
    assert main(["--debug", *diverging]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "NonFiniteLoss" in err and "training diverged" in err


# --- thread budget -------------------------------------------------------------------------------

def test_thread_budget_divides_the_cores(monkeypatch):
    import argparse

    from av1_ablation.training.children import child_command
    from av1_ablation.training.config import Stage2Config
    from av1_ablation.training.threads import available_cores, default_threads, thread_count

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    assert default_threads(1) == cores and default_threads(2) == max(1, cores // 2)
    assert default_threads(10 * cores) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own cap wins when smaller
    assert default_threads(1) == 1
    assert thread_count("") is None and thread_count("3") == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
            thread_count(bad)
    with pytest.raises(ValueError, match="trainings_at_once"):
        default_threads(0)
    argv = child_command(Stage2Config(), 3)
    assert argv[argv.index("--threads") + 1] == "3"


# --- resume lease ------------------------------------------------------------------------------

def test_lease_holder_liveness():
    from av1_ablation.training.lifecycle import holder_alive

    host = socket.gethostname()
    assert holder_alive(f"{os.getpid()}@{host}")
    gone = subprocess.Popen(["true"])
    gone.wait()  # collected: its pid names no process now
    assert not holder_alive(f"{gone.pid}@{host}")
    assert holder_alive("1@another-host")  # cannot be checked from here: assumed alive
    assert not holder_alive("garbage")


def test_only_killed_or_failed_runs_can_be_resumed(tracking_store, capsys):
    _, exp = tracking_store
    assert main(["train", "--resume", "0" * 32]) == 2
    assert "no such run" in one_line_error(capsys)
    running = client().create_run(exp, tags={"av1.kind": "stage2"}).info.run_id
    assert main(["train", "--resume", running]) == 2
    err = one_line_error(capsys)
    assert "is RUNNING" in err and "only a KILLED or FAILED run can be resumed" in err
    assert "av1.lease" not in client().get_run(running).data.tags  # released after the refusal


def test_the_run_mlflow_run_created_for_a_resume_ends_with_the_resume(tracking_store, monkeypatch, capsys):
    from av1_ablation.errors import Terminated
    from av1_ablation.training.lifecycle import resume_launch

    _, exp = tracking_store
    resumed = client().create_run(exp, run_name="poly-seed42", tags={"av1.kind": "stage2"}).info.run_id

    def untouched():
        run = client().get_run(resumed)
        return run.info.run_name == "poly-seed42" and run.info.status == "RUNNING" and not {
            "av1.resumes", "mlflow.note.content", "av1.failure_reason"} & set(run.data.tags)

    with resume_launch(resumed):  # outside `mlflow run`: nothing to label
        pass
    monkeypatch.setenv("MLFLOW_RUN_ID", resumed)  # `mlflow run` made no run of its own
    with pytest.raises(RuntimeError), resume_launch(resumed):
        raise RuntimeError("disk full")
    assert untouched() and len(client().search_runs([exp])) == 1
    for exc, status, reason in ((RuntimeError("disk full"), "FAILED", "RuntimeError: disk full"),
                                (Terminated("received signal 15 (SIGTERM)"), "KILLED", "signal 15"),
                                (KeyboardInterrupt(), "KILLED", "interrupted by the user")):
        launch = client().create_run(exp).info.run_id  # what `mlflow run -P resume=...` creates
        monkeypatch.setenv("MLFLOW_RUN_ID", launch)
        with pytest.raises(type(exc)), resume_launch(resumed):
            raise exc
        run = client().get_run(launch)
        assert run.info.status == status and run.info.run_name == "resume-poly-seed42"
        assert run.data.tags["av1.resumes"] == resumed and resumed in run.data.tags["mlflow.note.content"]
        assert run.data.tags["av1.failure_reason"].startswith(f"the resume of run {resumed} ended: ")
        assert reason in run.data.tags["av1.failure_reason"]
        assert untouched()  # the resumed run is tracked_run's to end
    # a refused resume: the run `mlflow run` created ends FAILED with the refusal's own message
    client().set_terminated(resumed, "FINISHED")
    launch = client().create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launch)
    assert main(["train", "--resume", resumed]) == 2
    capsys.readouterr()
    run = client().get_run(launch)
    assert run.info.status == "FAILED" and run.data.tags["av1.resumes"] == resumed
    assert run.data.tags["av1.failure_reason"] == f"resume={resumed} already FINISHED; nothing to resume"


def _sigterm_to_this_process():
    os.kill(os.getpid(), signal.SIGTERM)  # tracked_run has installed the handler that raises


def _tracking_error():
    raise RuntimeError("tracking server gone")


@pytest.mark.parametrize("stop, where, status, reason", [
    (_sigterm_to_this_process, "create_run", "KILLED", "received signal 15 (SIGTERM)"),  # inside start_run
    (_sigterm_to_this_process, "mark_model_training", "KILLED", "received signal 15 (SIGTERM)"),
    (_tracking_error, "mark_model_training", "FAILED", "RuntimeError: tracking server gone"),
])
def test_a_run_stopped_while_it_starts_ends_with_its_kind_and_reason(tracking_store, monkeypatch, stop, where,
                                                                    status, reason):
    """A signal or an error between start_run and the kind tag, in a nested run: the nested
    run and the run it is nested in both end, neither RUNNING nor FINISHED."""
    import mlflow

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    owner = mlflow.MlflowClient if where == "create_run" else lifecycle
    real = getattr(owner, where)

    def stopped_in_the_nested_run(*args, **kwargs):
        result = real(*args, **kwargs)
        if len(client().search_runs([exp])) > 1:
            stop()
        return result

    monkeypatch.setattr(owner, where, stopped_in_the_nested_run)
    with pytest.raises((Terminated, RuntimeError)) as raised, \
            lifecycle.tracked_run(kind="stage1", run_name="outer"):
        with lifecycle.tracked_run(kind="stage2", run_name="inner"):
            pytest.fail("the block must not run")
    runs = {r.info.run_name: r for r in client().search_runs([exp])}
    assert set(runs) == {"outer", "inner"} and mlflow.active_run() is None
    for name, kind in (("outer", "stage1"), ("inner", "stage2")):
        run = runs[name]
        assert run.info.status == status, name
        assert run.data.tags["av1.kind"] == kind and run.data.tags["av1.failure_reason"] == reason
    assert runs["inner"].data.tags["mlflow.parentRunId"] == runs["outer"].info.run_id
    assert raised.value.av1_run == (runs["inner"].info.run_id, "stage2")  # the message names it


def test_a_resume_that_fails_to_start_leaves_the_run_ended(tracking_store, monkeypatch):
    """start_run marks a resumed run RUNNING before its last call to the store."""
    from mlflow import MlflowClient

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    resumed = client().create_run(exp, run_name="poly-seed42", tags={"av1.kind": "stage2"}).info.run_id
    client().set_terminated(resumed, "KILLED")
    real_get_run, failed = MlflowClient.get_run, []

    def fails_once_the_run_is_running(self, run_id):
        run = real_get_run(self, run_id)
        if run.info.status == "RUNNING" and not failed:
            failed.append(run_id)
            _tracking_error()
        return run

    monkeypatch.setattr(MlflowClient, "get_run", fails_once_the_run_is_running)
    with pytest.raises(RuntimeError) as raised, lifecycle.tracked_run(kind="stage2", run_id=resumed):
        pytest.fail("the block must not run")
    assert failed == [resumed] and raised.value.av1_run == (resumed, "stage2")
    run = client().get_run(resumed)
    assert run.info.status == "FAILED"
    assert run.data.tags["av1.failure_reason"] == "RuntimeError: tracking server gone"


@pytest.mark.parametrize("ending, how", [("FAILED", "signal"), ("FAILED", "refused"),
                                         ("FINISHED", "signal")])
def test_a_nested_run_ends_itself_whatever_happens_while_it_ends(tracking_store, monkeypatch, capsys,
                                                                 ending, how):
    """A SIGTERM, or a store refusing the failure tag, while the nested run is being ended: that
    run still ends (a signal acts after), and the run it is nested in ends too. A refusal is
    printed, once for each run it concerns."""
    import mlflow

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    real_end_run = mlflow.end_run
    real_set_tag, real_log_batch = mlflow.MlflowClient.set_tag, mlflow.MlflowClient.log_batch

    def signalled_while_the_inner_run_ends(status="FINISHED"):
        if status == ending and mlflow.active_run().info.run_name == "inner":
            _sigterm_to_this_process()
        real_end_run(status)

    def refuses_the_reason_one_by_one(self, run_id, key, value, *args, **kwargs):
        if key == "av1.failure_reason":
            _tracking_error()
        return real_set_tag(self, run_id, key, value, *args, **kwargs)

    def refuses_the_reason_in_a_batch(self, run_id, *args, tags=(), **kwargs):
        if any(t.key == "av1.failure_reason" for t in tags):
            _tracking_error()
        return real_log_batch(self, run_id, *args, tags=tags, **kwargs)

    if how == "signal":
        monkeypatch.setattr(mlflow, "end_run", signalled_while_the_inner_run_ends)
    else:  # the store refuses the tag, however it is written
        monkeypatch.setattr(mlflow.MlflowClient, "set_tag", refuses_the_reason_one_by_one)
        monkeypatch.setattr(mlflow.MlflowClient, "log_batch", refuses_the_reason_in_a_batch)
    expected = Terminated if how == "signal" else ValueError
    with pytest.raises(expected), lifecycle.tracked_run(kind="stage1", run_name="outer"):
        with lifecycle.tracked_run(kind="stage2", run_name="inner"):
            if ending == "FAILED":
                raise ValueError("a bug in the block")
    runs = {r.info.run_name: r for r in client().search_runs([exp])}
    assert runs["inner"].info.status == ending and mlflow.active_run() is None
    assert runs["outer"].info.status == ("KILLED" if how == "signal" else "FAILED")
    refusals = [line for line in capsys.readouterr().err.splitlines() if "could not record the end" in line]
    if how == "refused":
        assert len(refusals) == 2, refusals
        for run, line in zip((runs["inner"], runs["outer"]), refusals):
            assert f"end of run {run.info.run_id} in" in line and "tracking server gone" in line
            assert f"set_terminated('{run.info.run_id}', 'FAILED')" in line
    else:
        assert not refusals


def test_signals_deferred_acts_after_the_block_or_at_the_same_signal_again():
    from av1_ablation.training.lifecycle import install_stop_handlers, signals_deferred, signals_held

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        install_stop_handlers()
        reached = []
        with pytest.raises(Terminated):
            with signals_deferred():
                _sigterm_to_this_process()
                reached.append("after the first")
        assert reached == ["after the first"]
        with pytest.raises(Terminated):
            with signals_deferred():
                _sigterm_to_this_process()
                _sigterm_to_this_process()  # the user insists: a stuck block can still be stopped
                reached.append("after the second")
        assert reached == ["after the first"]
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C, and the SIGTERM a parent sends after it
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                _sigterm_to_this_process()
                reached.append("after both")
        assert reached == ["after the first", "after both"]
        with signals_held():  # dropped, even when a deferring block inside ends
            with signals_deferred():
                _sigterm_to_this_process()
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("held")
        assert reached[-1] == "held"
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        install_stop_handlers()  # an ignored signal stays ignored
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("cuts, inner_reason", [
    (1, "interrupted by the user"),  # the nested run's handler runs again and ends it
    (2, "received signal 15 (SIGTERM)"),  # cut twice: the enclosing run ends it, with its reason
])
def test_a_nested_run_whose_ending_a_signal_cut_short_is_still_ended(tracking_store, monkeypatch, cuts,
                                                                     inner_reason):
    """A SIGTERM at the very start of the nested run's handler, before it holds signals (a
    terminal's Ctrl-C and the SIGTERM sent after it)."""
    import mlflow

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    real_name_run, hit = lifecycle._name_run, []
    open_before = list(lifecycle._open_runs)

    def sigterm_in_the_inner_handler(exc, run_id, kind):
        if kind == "stage2" and len(hit) < cuts:
            hit.append(run_id)
            raise Terminated("received signal 15 (SIGTERM)")
        real_name_run(exc, run_id, kind)

    monkeypatch.setattr(lifecycle, "_name_run", sigterm_in_the_inner_handler)
    with pytest.raises(Terminated), lifecycle.tracked_run(kind="stage1", run_name="outer"):
        with lifecycle.tracked_run(kind="stage2", run_name="inner"):
            raise KeyboardInterrupt
    runs = {r.info.run_name: r for r in client().search_runs([exp])}
    assert mlflow.active_run() is None and lifecycle._open_runs == open_before
    assert len(hit) == cuts and set(hit) == {runs["inner"].info.run_id}
    assert runs["inner"].info.status == runs["outer"].info.status == "KILLED"
    assert runs["inner"].data.tags["av1.failure_reason"] == inner_reason
    assert runs["outer"].data.tags["av1.failure_reason"] == "received signal 15 (SIGTERM)"


def test_the_command_ends_a_run_that_a_signal_kept_from_its_own_handler(tracking_store):
    """A signal around a ``with`` statement's entry or exit reaches the command's handler
    directly: it ends what the command left open (here a block entered and never left), not
    a run that was open before the command started."""
    import mlflow

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    with lifecycle.tracked_run(kind="stage1", run_name="before-the-command") as outer:
        keep = lifecycle.open_run_count()
        block = lifecycle.tracked_run(kind="stage2", run_name="left-open")
        run = block.__enter__()
        lifecycle.end_open_runs(Terminated("received signal 15 (SIGTERM)"), keep=keep)
        assert mlflow.active_run().info.run_id == outer.info.run_id
        assert lifecycle.open_run_count() == keep
        block.__exit__(None, None, None)  # the generator, closed later, leaves it as it is
    ended = client().get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["av1.failure_reason"] == "received signal 15 (SIGTERM)"
    assert client().get_run(outer.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("body_error, status", [(None, "FINISHED"), (ValueError("a bug"), "FAILED")])
def test_a_run_whose_end_a_signal_cut_after_mlflow_took_it_off_its_stack_still_ends(tracking_store, monkeypatch,
                                                                                   body_error, status):
    """MLflow's end_run takes the run off its stack before it records the end: the same
    signal twice can stop it in between, and the ending, run again, records it."""
    from mlflow import MlflowClient

    import av1_ablation.training.lifecycle as lifecycle

    _, exp = tracking_store
    real_set_terminated, cut = MlflowClient.set_terminated, []

    def cut_once(self, run_id, status=None, *args, **kwargs):
        if not cut:
            cut.append(run_id)
            raise Terminated("received signal 15 (SIGTERM)")
        return real_set_terminated(self, run_id, status, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_terminated", cut_once)
    with pytest.raises(Terminated), lifecycle.tracked_run(kind="stage2", run_name="cut") as run:
        if body_error:
            raise body_error
    assert cut == [run.info.run_id] and run.info.run_id not in lifecycle._open_runs
    assert client().get_run(run.info.run_id).info.status == status


def _killed_run(tiny_dataset_two_qps, exp) -> str:
    """A Stage-2 run that a real SIGTERM ended KILLED after its first epoch."""
    # 40 smoke epochs: several seconds of training left when the first epoch is seen, so the
    # signal cannot arrive after the last one, and a resume still finishes quickly
    proc = cli_process("train", "--data", str(tiny_dataset_two_qps), *SMOKE, "--epochs", "40",
                       "--patience", "40", "--loss-type", "poly")
    wait_for(lambda: stage2_runs_past_their_first_epoch(exp), "the first epoch", proc)
    proc.send_signal(signal.SIGTERM)
    assert stopped_status(proc) == 143, proc.stderr.read()[-2000:]
    (killed,) = stage2_runs(exp, "KILLED")
    return killed.info.run_id


@pytest.mark.slow
def test_second_resume_is_refused_and_a_dead_holder_is_taken_over(tiny_dataset_two_qps, tracking_store,
                                                                  capsys):
    _, exp = tracking_store
    run_id = _killed_run(tiny_dataset_two_qps, exp)
    assert "signal 15" in client().get_run(run_id).data.tags["av1.failure_reason"]
    first = cli_process("train", "--resume", run_id)
    holder = f"{first.pid}@{socket.gethostname()}"
    wait_for(lambda: client().get_run(run_id).data.tags.get("av1.lease") == holder,
             "the first resume to hold the run", first)
    assert main(["train", "--resume", run_id]) == 2
    assert f"being resumed by process {first.pid}" in one_line_error(capsys)
    first.kill()  # SIGKILL: no cleanup, the mark stays behind with a dead pid
    first.wait(timeout=30)
    first.stderr.close()
    assert main(["train", "--resume", run_id]) == 0
    assert f"process {holder}" in capsys.readouterr().out  # the stale mark was noticed
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert not {"av1.failure_reason", "av1.failure_epoch", "av1.failure_step", "av1.lease"} & set(tags)
    epochs = tags["av1.resumed_from_epoch"].split(",")
    assert len(set(epochs)) == 1 and int(epochs[0]) >= 1  # every resume started from last.pt
    assert "signal 15" in tags["av1.interruptions"]
    assert main(["train", "--resume", run_id]) == 2
    assert "already FINISHED" in one_line_error(capsys)


# --- SIGTERM during stage1=auto ------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_while_stage1_auto_trains_kills_both_runs(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    pending = client().create_run(exp).info.run_id  # what `mlflow run` creates for the command
    proc = cli_process("train", "--data", str(tiny_dataset_two_qps), "--preset", "cpu",
                       env={"MLFLOW_RUN_ID": pending})
    # as soon as the Stage-1 run exists: its 12 epochs take about a second on this data, too
    # short a window to aim at after the first one is logged
    stage1 = wait_for(lambda: client().search_runs([exp], "tags.`av1.kind` = 'stage1'"),
                      "the Stage-1 run", proc)[0].info.run_id
    proc.send_signal(signal.SIGTERM)
    assert stopped_status(proc) == 143
    err = proc.stderr.read()
    assert f"run {stage1} is marked KILLED" in err.strip().splitlines()[-1], err[-2000:]
    for run_id in (stage1, pending):
        run = client().get_run(run_id)
        # with the process's stderr, to see where the stop landed when a run is left RUNNING
        assert run.info.status == "KILLED", (run_id, err[-2000:])
        assert "signal 15" in run.data.tags["av1.failure_reason"]
    assert "stage1=auto" in client().get_run(pending).data.tags["av1.failure_reason"]


# --- SIGTERM to a local ablation: no further child starts, no run is left RUNNING ---------------

def processes(wanted, parent: int | None = None) -> list[int]:
    """pids of the processes (children of ``parent``, if given) whose argv ``wanted`` accepts,
    from /proc."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while being read
        if (parent is None or ppid == parent) and wanted(argv):
            found.append(int(proc_dir.name))
    return found


def train_children(pid: int) -> list[int]:
    """pids of the ``av1_ablation train`` processes whose parent is ``pid``."""
    return processes(lambda argv: b"av1_ablation" in argv and b"train" in argv, parent=pid)


@pytest.mark.slow
def test_sigterm_to_a_local_ablation_ends_the_running_and_the_queued_children(tiny_dataset_two_qps,
                                                                               tracking_store):
    _, exp = tracking_store
    # children that cannot finish before the signal, however slowly this test sees them start
    proc = cli_process("ablation", "--losses", "baseline", "--seeds", "1,2,3,4,5", "--jobs", "2",
                       "--threads", "1", "--data", str(tiny_dataset_two_qps), *SMOKE, "--epochs", "100000",
                       "--patience", "0")
    wait_for(lambda: stage2_runs_past_their_first_epoch(exp), "a child's first epoch", proc, timeout=300)
    running = wait_for(lambda: train_children(proc.pid), "the training children's pids", proc)
    proc.send_signal(signal.SIGTERM)
    assert stopped_status(proc, 180) == 143, proc.stderr.read()[-2000:]
    assert not [pid for pid in running if process_exists(pid)] and not train_children(proc.pid)
    runs = stage2_runs(exp)
    assert len(runs) == 5 and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} <= {"KILLED", "FINISHED"}
    queued = [r for r in runs if "the ablation stopped" in r.data.tags.get("av1.failure_reason", "")]
    assert len(queued) >= 3 and all(r.info.status == "KILLED" for r in queued)  # 2 ran at most
    (parent,) = client().search_runs([exp], "tags.`av1.kind` = 'ablation'")
    assert parent.info.status == "KILLED"
    # the children's tracking server (a process group of its own) is gone too
    db = tracking_store[0].split("sqlite:///", 1)[1]
    assert not processes(lambda argv: b"server" in (text := b"\0".join(argv)) and db.encode() in text)


# --- dataset: signals stop the encoders and remove the temporary files --------------------------

def aomenc_children(pid: int) -> list[int]:
    """pids of the aomenc processes whose parent is ``pid``."""
    return processes(lambda argv: Path(os.fsdecode(argv[0])).name == "aomenc", parent=pid)


def process_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; it only waits for its parent to collect it


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group, status", [
    (signal.SIGTERM, False, 143),  # `kill PID`
    (signal.SIGTERM, True, 143),  # `kill -- -PGID`, a service manager, a container stop
    (signal.SIGINT, False, 130),  # Ctrl-C
])
def test_signal_during_dataset_build_leaves_nothing_behind(tmp_path, signum, to_group, status):
    tmpdir, out = tmp_path / "tmp", tmp_path / "data" / "store"
    tmpdir.mkdir()
    # a session of its own, so that a signal to its process group does not reach pytest
    proc = cli_process("dataset", *SLOW_ENCODES, "--out", str(out), env={"TMPDIR": str(tmpdir)},
                       start_new_session=True)
    encoders = wait_for(lambda: aomenc_children(proc.pid), "an aomenc encode", proc)
    assert list(tmpdir.iterdir())  # the encode directory exists while they run
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    assert stopped_status(proc) == status
    err = proc.stderr.read().strip()
    assert len(err.splitlines()) == 1 and "stopped by" in err and f"{out} unchanged" in err, err
    assert not [pid for pid in encoders if process_exists(pid)]
    assert list(tmpdir.iterdir()) == []
    # nor a half-written store beside --out: only whole finished encodes, for the next build
    beside = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert not out.exists() and beside in ([], ["store.partial"]), beside
    assert all(p.suffix == ".npz" for p in out.parent.glob("store.partial/*"))


def test_mlflow_telemetry_is_off_in_the_package_processes(tmp_path):
    """MLflow's telemetry fetches its config in a thread on the first tracked call and, when it
    gets none (no internet), deletes an environment variable while other threads iterate
    ``os.environ``, as every request to a tracking server does: one cross-validated ablation
    child died of that KeyError. Importing the package turns telemetry off unless the user
    chose, even where mlflow was imported first (a notebook)."""
    probe = (
        "import threading\n"
        "started, start = [], threading.Thread.start\n"
        "threading.Thread.start = lambda t: (started.append(t.name), start(t))[1]\n"
        "import mlflow\n"
        "from mlflow.telemetry import client, utils\n"
        # as on a user's machine: CI's and pytest's variables turned telemetry off at import
        "utils._IS_IN_CI_ENV_OR_TESTING = False\n"
        "client.TelemetryClient._get_config = lambda self: None  # offline, every time\n"
        "client.set_telemetry_client()\n"
        "import av1_ablation\n"
        "with mlflow.start_run():\n"
        "    mlflow.log_param('p', 1)\n"
        "print(utils.is_telemetry_disabled(), 'GetTelemetryConfig' in started)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "_MLFLOW_TESTING_TELEMETRY"}}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    for chosen, expected in [(None, "True False"), ("false", "False True")]:
        if chosen is not None:
            env["MLFLOW_DISABLE_TELEMETRY"] = chosen
        out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split("\n")[-2] == expected, (chosen, out.stdout, out.stderr[-2000:])


@contextlib.contextmanager
def sigterm_inside_a_select(times: int = 2):
    """Yields ``arm``: once it is called, the next SELECT of the tracking store gets SIGTERM
    (``times`` of them) while its cursor is still open. One stop waits for the end of the store
    call; the same signal twice, a user who insists, acts at once inside the read. A signal
    there (SQLAlchemy does not close the cursor of an exit exception) leaves a statement open
    that holds the database's read lock for as long as the exception's traceback keeps the
    cursor alive: a write then waits for SQLite's 20 s busy timeout, and fails."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    armed = []

    def sigterm_mid_select(*event_args):
        statement = event_args[2]
        del event_args  # this frame must not hold the cursor: in a real stop, only SQLAlchemy's do
        if armed and statement.lstrip().upper().startswith("SELECT"):
            armed.clear()
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)

    event.listen(Engine, "after_cursor_execute", sigterm_mid_select)
    try:
        yield lambda: armed.append(True)
    finally:
        event.remove(Engine, "after_cursor_execute", sigterm_mid_select)


def stop_at_line(k: int):
    """A trace function that sends SIGTERM to this process at the ``k``-th line event of
    MLflow's SQL stores or of SQLAlchemy (0: never), as a stop landing at that line of a store
    call. Returns it, the count of lines it has seen, the list of the signals it sent and a list
    that holds an item once the outermost store frame has returned."""
    seen, sent, returned = [0], [], []

    def trace(frame, event, _arg):
        if _sql_store_file(frame.f_code.co_filename):
            if event == "line":
                seen[0] += 1
                if seen[0] == k:
                    sent.append(k)
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            elif event == "return" and not _sql_store_file(frame.f_back.f_code.co_filename):
                returned.append(True)  # the store call is over
        return trace

    return trace, seen, sent, returned


def raised_in_store_code(exc: BaseException) -> list[str]:
    """The places in SQL store code that ``exc`` was raised through."""
    tb, found = exc.__traceback__, []
    while tb is not None:
        if _sql_store_file(tb.tb_frame.f_code.co_filename):
            found.append(f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}")
        tb = tb.tb_next
    return found


def store_lock_free(db: str) -> bool:
    """Whether no connection (of this process or another) holds a lock on the database."""
    import sqlite3

    probe = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    try:
        probe.execute("BEGIN EXCLUSIVE")
        probe.execute("COMMIT")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def test_a_stop_landing_anywhere_in_a_store_call_acts_once_the_call_is_over(tracking_store):
    """Ctrl-C or SIGTERM at any line of a store call (a read, a write) acts after the call:
    raised inside it, it could leave SQLAlchemy's session counter or pool lock taken (the
    clean-up's next call then hangs) or an unfinished SQLite statement whose lock makes the
    clean-up's writes fail. The stop is sent again until the call is over, never lost."""
    from av1_ablation.training.lifecycle import install_stop_handlers

    uri, exp = tracking_store
    db = uri.split("sqlite:///", 1)[1]
    run_id = client().create_run(exp).info.run_id
    for i in range(5):
        client().log_param(run_id, f"p{i}", i)
    calls = {"get_run": lambda: client().get_run(run_id),
             "search_runs": lambda: client().search_runs([exp], "params.p1 = '1'"),
             "set_tag": lambda: client().set_tag(run_id, "t", "v")}
    install_stop_handlers()
    tracer = sys.gettrace()  # a coverage tool's or a debugger's, put back after each call

    def traced(trace):
        sys.settrace(trace)
        try:
            return call()
        finally:
            sys.settrace(tracer)

    for name, call in calls.items():
        call()  # the first call imports and connects; the ones stopped below are like a command's
        trace, seen, _, _ = stop_at_line(0)
        traced(trace)
        lines = seen[0]
        assert lines > 100, (name, lines)
        for k in range(1, lines + 1, lines // 20):  # 20 places in each call, from its first line
            trace, _, sent, returned = stop_at_line(k)
            stopped = None
            try:
                traced(trace)
                deadline = time.monotonic() + 10.0
                while sent and time.monotonic() < deadline:  # the stop comes here, in 50 ms
                    time.sleep(0.005)
            except Terminated as exc:
                stopped = exc
            if not sent:
                assert stopped is None
                continue  # this call ran fewer lines than the one counted
            assert stopped is not None, f"{name}: a stop at line {k} of {lines} was lost"
            assert returned, f"{name}: a stop at line {k} of {lines} cut the store call short"
            assert not raised_in_store_code(stopped), (name, k, raised_in_store_code(stopped))
            assert store_lock_free(db), f"{name}: the store is locked after a stop at line {k}"
            # and nothing it left taken makes the next call hang (it would wait forever)
            follow_up = threading.Thread(target=lambda: client().get_run(run_id), daemon=True)
            follow_up.start()
            follow_up.join(10)
            assert not follow_up.is_alive(), f"{name}: a store call hangs after a stop at line {k}"


def stuck_store_call():
    """``call(seconds, then)``: code that counts as MLflow's SQL store code, waiting ``seconds``
    as a call to a database that does not answer would, then calling ``then()`` before it
    returns."""
    import mlflow

    path = os.path.join(os.path.dirname(mlflow.__file__), "store", "db", "database_that_does_not_answer.py")
    assert _sql_store_file(path)
    source = ("import time\n"
              "def call(seconds, then=lambda: None):\n"
              "    end = time.monotonic() + seconds\n"
              "    while time.monotonic() < end:\n"
              "        time.sleep(0.01)\n"
              "    then()\n"
              "    return 'answered'\n")
    namespace = {}
    exec(compile(source, path, "exec"), namespace)
    return namespace["call"]


@pytest.mark.parametrize("sent, acts", [((signal.SIGTERM,), "after the call"),
                                        ((signal.SIGINT, signal.SIGTERM), "after the call"),
                                        ((signal.SIGTERM, signal.SIGTERM), "at once")])
def test_a_stop_in_a_store_call_that_does_not_return_acts_when_the_user_insists(sent, acts):
    """A stop waits for the store call's end; the same signal again, from the user, acts at
    once, so that a call stuck on a database can still be stopped. A terminal's Ctrl-C and the
    SIGTERM sent after it are one stop (the first), which waits."""
    from av1_ablation.training.lifecycle import install_stop_handlers

    call = stuck_store_call()
    install_stop_handlers()
    main_thread = threading.main_thread().ident
    senders = [threading.Timer(0.2 + 0.3 * i, signal.pthread_kill, (main_thread, signum))
               for i, signum in enumerate(sent)]
    answered = []
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt if sent[0] == signal.SIGINT else Terminated) as stopped:
            for sender in senders:
                sender.start()
            answered.append(call(2.0))
            time.sleep(1.0)  # a stop that waited comes here
    finally:
        for sender in senders:  # none may fire once the test is over
            sender.cancel()
            sender.join()
    took = time.monotonic() - start
    if acts == "at once":
        assert not answered and took < 1.8
        assert raised_in_store_code(stopped.value)
    else:
        assert answered and 2.0 <= took < 4.0
        assert not raised_in_store_code(stopped.value)


def test_a_stop_that_waited_for_a_store_call_acts_after_a_clean_up_that_holds_signals():
    """The clean-up of an error holds signals; a stop sent again into it is not dropped, as a
    second stop would be, but acts once the clean-up is over."""
    from av1_ablation.training import lifecycle

    lifecycle.install_stop_handlers()
    cleaned_up = []
    with pytest.raises(Terminated) as stopped:
        with lifecycle.signals_held():
            lifecycle._wait((signal.SIGTERM, lifecycle._stops_acted[0]))  # as for a stop in a store call
            time.sleep(0.5)  # it is sent again here, several times
            cleaned_up.append(True)
        time.sleep(1.0)  # and acts here
    assert cleaned_up and "received signal 15" in str(stopped.value)


def test_a_stop_that_waits_acts_once_even_when_a_second_kind_came_in_a_deferred_block():
    """A Ctrl-C waits out a store call; the SIGTERM sent after it lands in a block that defers
    signals and acts at the block's end. That is the stop: the Ctrl-C, still waiting to be sent
    again, must not act a second time in the clean-up that follows."""
    from av1_ablation.training import lifecycle

    lifecycle.install_stop_handlers()
    lifecycle._wait((signal.SIGINT, lifecycle._stops_acted[0]))  # a Ctrl-C inside a store call
    stops = []
    try:
        with lifecycle.signals_deferred():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            time.sleep(0.01)
    except (KeyboardInterrupt, Terminated) as exc:
        stops.append(type(exc).__name__)
        try:
            with lifecycle.signals_held():
                time.sleep(0.3)  # the clean-up
            time.sleep(0.5)
        except (KeyboardInterrupt, Terminated) as again:
            stops.append(type(again).__name__)
    assert stops == ["Terminated"]


def test_a_stop_that_waits_when_the_command_ends_is_not_sent_to_what_comes_next():
    """A stop during the last store call of a command that has done its work: the command ends
    as it would have (the command line forgets the stop as it puts its handlers back), and
    nothing reaches the caller's own handler afterwards."""
    from av1_ablation.training import lifecycle

    call = stuck_store_call()
    lifecycle.install_stop_handlers()
    sender = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM))
    forgot = []
    sender.start()
    try:
        call(0.3, then=lambda: forgot.append(lifecycle.forget_pending_stops()))
    finally:
        sender.join()
    after = []
    signal.signal(signal.SIGTERM, lambda *_: after.append("SIGTERM"))  # the caller's handler, put back
    time.sleep(0.5)
    assert forgot == [True] and after == []


def test_a_stop_the_timer_sends_as_the_command_ends_reaches_neither_the_command_nor_the_caller():
    """The timer sends a stop that waited at the moment the command ends, and the copy arrives
    while the command line's clean-up waits for that timer: it must neither stop the finished
    command nor reach the handler the caller gets back."""
    from av1_ablation import cli
    from av1_ablation.training import lifecycle

    caller = []
    signal.signal(signal.SIGTERM, lambda *_: caller.append("SIGTERM"))  # the caller's own handler
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    lifecycle.install_stop_handlers()
    stop = (signal.SIGTERM, lifecycle._stops_acted[0])
    main_thread = threading.main_thread().ident

    class SendingTimer:  # the timer caught as it sends: its copy lands while it is joined
        def cancel(self):
            pass

        def join(self):
            lifecycle._resent[:] = [stop]  # as _send_when_safe records it, just before sending
            signal.pthread_kill(main_thread, signal.SIGTERM)
            time.sleep(0.1)  # the copy is handled here

    lifecycle._timers[:] = [SendingTimer()]
    try:
        cli._restore(previous)  # raises Terminated if the copy acts
        time.sleep(0.1)
    finally:
        lifecycle._timers.clear()
    assert caller == [] and signal.getsignal(signal.SIGTERM) is previous[1]


def test_a_signal_inside_a_store_query_does_not_lock_the_store_against_ending_the_run(tracking_store):
    import mlflow

    from av1_ablation.training.lifecycle import tracked_run

    with sigterm_inside_a_select() as arm:
        with pytest.raises(Terminated), tracked_run(kind="stage1", run_name="stopped") as run:
            arm()
            mlflow.log_params({"lr": "0.1"})  # reads the run, then writes
    ended = client().get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["av1.failure_reason"] == "received signal 15 (SIGTERM)"


def test_a_second_signal_inside_the_store_query_of_an_ending_run_does_not_leave_it_running(tracking_store):
    """The same signal twice acts at once even while a run ends (so that a stuck store can be
    stopped), and the ending is then retried: that retry must not wait on the lock of the
    read the second signal cut short."""
    from av1_ablation.training.lifecycle import tracked_run

    with sigterm_inside_a_select() as arm:
        with pytest.raises(Terminated), tracked_run(kind="stage1", run_name="ending") as run:
            arm()  # the next read is the ending's own
    assert client().get_run(run.info.run_id).info.status == "FINISHED"


def test_a_signal_inside_a_store_query_does_not_leave_a_resume_lease_behind(tracking_store):
    from av1_ablation.training.lifecycle import install_stop_handlers, run_lease

    _, exp = tracking_store
    run_id = client().create_run(exp).info.run_id
    install_stop_handlers()
    with sigterm_inside_a_select() as arm:
        with pytest.raises(Terminated), run_lease(run_id, label="resume"):
            assert "av1.lease" in client().get_run(run_id).data.tags
            arm()
            client().get_run(run_id)  # a resume reads its run before its own run starts
    assert "av1.lease" not in client().get_run(run_id).data.tags  # a later resume is not refused


def test_a_signal_before_the_command_run_starts_ends_the_run_mlflow_run_created(tiny_dataset_two_qps,
                                                                              tracking_store, monkeypatch,
                                                                              capsys):
    """SIGTERM while the data loads, before train's own run starts: no run's handler is on the
    stack, and the run ``mlflow run`` created must still end KILLED with the reason."""
    import av1_ablation.training.stage2 as stage2

    _, exp = tracking_store
    pending = client().create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", pending)
    real = stage2.load_split_data

    def stopped_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # main has installed the handler that raises
        return real(*args, **kwargs)

    monkeypatch.setattr(stage2, "load_split_data", stopped_while_loading)
    assert main(["train", "--data", str(tiny_dataset_two_qps), *SMOKE]) == 143
    assert one_line_error(capsys).endswith(f"stopped by SIGTERM; run {pending} is marked KILLED")
    run = client().get_run(pending)
    assert run.info.status == "KILLED"
    assert run.data.tags["av1.failure_reason"] == "received signal 15 (SIGTERM)"


def test_a_signal_before_the_finetune_reference_starts_its_run_ends_that_run(tiny_dataset_two_qps,
                                                                           tracking_store, monkeypatch):
    """The finetune reference's run is created before its Stage-1 backbone loads: SIGTERM
    there reaches no run's handler, and that run must still end KILLED with the reason."""
    import av1_ablation.training.stage2 as stage2

    _, exp = tracking_store
    real = stage2.resolve_stage1

    def stopped_while_loading_stage1(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # main has installed the handler that raises
        return real(*args, **kwargs)

    monkeypatch.setattr(stage2, "resolve_stage1", stopped_while_loading_stage1)
    assert main(["reference", "--models", "finetune", "--data", str(tiny_dataset_two_qps), *SMOKE]) == 143
    runs = client().search_runs([exp])
    assert sorted(r.data.tags.get("av1.kind", "") for r in runs) == ["reference", "references"]
    for run in runs:
        assert run.info.status == "KILLED", (run.info.run_name, run.info.status)
        assert run.data.tags["av1.failure_reason"] == "received signal 15 (SIGTERM)"


def test_a_signal_to_a_resume_leaves_the_resumed_run_to_the_process_that_holds_it(tracking_store, monkeypatch):
    """``mlflow run --run-id X -P resume=X``: the run ``mlflow run`` hands over is the resumed
    one, which another process may be training; a stop before this resume gets going must
    not end it."""
    import av1_ablation.training.stage2 as stage2

    _, exp = tracking_store
    held = client().create_run(exp, tags={"av1.lease": f"{os.getppid()}@{socket.gethostname()}"})
    monkeypatch.setenv("MLFLOW_RUN_ID", held.info.run_id)

    def stopped_before_the_lease(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # main has installed the handler that raises
        raise AssertionError("SIGTERM did not stop the resume")

    monkeypatch.setattr(stage2, "run_lease", stopped_before_the_lease)
    assert main(["train", "--resume", held.info.run_id]) == 143
    assert client().get_run(held.info.run_id).info.status == "RUNNING"


def test_a_stop_that_python_drops_inside_a_finalizer_is_sent_again():
    """A garbage collection runs weakref callbacks and finalizers between any two lines; a
    SIGTERM handled inside one raises there, and Python prints and drops that exception. The
    command must still stop, not run to its end."""
    import weakref

    from av1_ablation.training.lifecycle import install_stop_handlers

    dropped = []

    class Collected:
        pass

    def stopped_inside_the_callback(_ref):
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, in the callback
        dropped.append(True)  # not reached: the handler raised, and Python dropped that

    install_stop_handlers()
    collected = Collected()
    ref = weakref.ref(collected, stopped_inside_the_callback)
    with pytest.raises(Terminated):
        del collected
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the command's work, which must not run to its end
            time.sleep(0.01)
    assert ref() is None and not dropped


def test_a_dropped_stop_is_sent_again_only_after_a_garbage_collection_and_never_after_the_command():
    """A stop sent again during a long collection would land in its next finalizer and be
    dropped again, cutting that finalizer short too; one sent after the command has ended
    would stop whatever the process does next (the caller's code, its exit)."""
    import gc
    from types import SimpleNamespace

    from av1_ablation.training import lifecycle

    dropped = SimpleNamespace(exc_value=Terminated("received signal 15 (SIGTERM)"))
    finished = []

    class Finalized:
        def __del__(self):
            time.sleep(0.02)  # where a stop sent now would land
            finished.append(True)

    lifecycle.install_stop_handlers()
    with pytest.raises(Terminated):
        gc.disable()
        try:
            garbage = [Finalized() for _ in range(25)]
            for item in garbage:
                item.cycle = item  # freed only by a collection: 25 x 20 ms = 0.5 s of finalizers
            del garbage, item
            lifecycle._redeliver_dropped_stop(dropped)
            gc.collect()
        finally:
            gc.enable()
        time.sleep(5)  # the stop comes here, once the collection is over
    assert len(finished) == 25
    lifecycle._redeliver_dropped_stop(dropped)
    after_the_command = []
    signal.signal(signal.SIGTERM, lambda *_: after_the_command.append(True))  # the caller's handler
    time.sleep(0.5)
    assert after_the_command == []
