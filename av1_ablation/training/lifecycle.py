"""MLflow run lifecycle shared by every command that records runs.

A run is never left RUNNING: errors end it FAILED with the reason as a tag,
Ctrl-C and SIGTERM end it KILLED. Input refused before a run starts ends the run
``mlflow run`` created for the command FAILED (:func:`fails_pending_run`).
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from av1_ablation.errors import Terminated, UserError, raise_terminated
from av1_ablation.record.contract import (DEVICE_TAG, FAILURE_TAG, FAILURE_TAGS, GIT_COMMIT_TAG, GPU_TAG,
                                          INTERRUPTIONS_TAG, KIND_TAG, LEASE_TAG, MLFLOW_TAG, NOTE_TAG,
                                          NUMPY_TAG, PYTHON_TAG, RESUMED_TAG, RESUMES_TAG, SKLEARN_TAG,
                                          TORCH_TAG, kind_clause, param_clause, resume_run_name,
                                          tag_clause)
from av1_ablation.record.experiment import experiment_id, mark_model_training

# time for a concurrent claim to land before a claim is read back (MLflow has no
# compare-and-set; two claims less than this apart are decided by the later write)
LEASE_SETTLE_SECONDS = 0.3


# What a Ctrl-C or SIGTERM does now, innermost last: "hold" drops it, "defer" keeps it for
# the end of the block; with none, it raises at once (KeyboardInterrupt, Terminated). One
# handler reads this, so that entering or leaving a block is one list operation, never a
# swap of handlers that a signal could find half done.
_signal_modes: list[str] = []
_deferred_signals: list[int] = []


def _raise_for(signum: int):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise_terminated(signum, None)


def _act(signum: int):
    """Raise the stop: any stop still waiting to be sent again is this one."""
    _stops_acted[0] += 1  # a copy of it the timer is sending now is recognised as stale
    _waiting.clear()
    _raise_for(signum)


def _on_stop_signal(signum, frame):
    resent = None  # set when this process sent the signal itself, for a stop that waited
    if _resent and _resent[0][0] == signum:
        resent = _resent.pop()
        if resent[1] != _stops_acted[0]:
            return  # a stop acted since it was sent: it is that stop, already handled
    mode = _signal_modes[-1] if _signal_modes else None
    if mode == "hold":
        if resent is not None:  # a stop that waited, in the clean-up of an error: it acts after
            _wait(resent)
        return
    if mode == "defer":
        if not _deferred_signals:
            _deferred_signals.append(signum)
            return
        if _deferred_signals[0] != signum:
            return  # a terminal's Ctrl-C and the SIGTERM mlflow run or a parent sends after it: one stop
        _deferred_signals.clear()  # the same signal again: the user insists, it acts at once
    elif _postponed(signum, frame, resent):
        return
    _act(signum)


_MLFLOW_STORES = os.path.join(os.path.dirname(mlflow.__file__), "store") + os.sep
_sqlalchemy_code: list[str] = []  # SQLAlchemy's folder, once it is imported (MLflow's SQL stores do)


def _sql_store_file(path: str) -> bool:
    """Whether ``path`` is a file of MLflow's SQL stores or of SQLAlchemy: the code a stop must
    not raise in (:func:`_postponed`). MLflow's file and REST stores, and its artifact
    transfers, hold no such lock: a stop acts there at once."""
    if not _sqlalchemy_code and getattr(sys.modules.get("sqlalchemy"), "__file__", None):
        _sqlalchemy_code.append(os.path.dirname(sys.modules["sqlalchemy"].__file__) + os.sep)
    if _sqlalchemy_code and path.startswith(_sqlalchemy_code[0]):
        return True
    return path.startswith(_MLFLOW_STORES) and (path.endswith("sqlalchemy_store.py")
                                                or path.startswith(_MLFLOW_STORES + "db" + os.sep))


def _in_sql_store_code(frame) -> bool:
    """Whether ``frame`` or a caller of it runs a :func:`_sql_store_file`."""
    while frame is not None:
        if _sql_store_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


def _postponed(signum: int, frame, resent) -> bool:
    """Whether a stop that landed inside a call to a SQL tracking store waits for the call's
    end: it is sent again once the main thread has left the store's code.

    An exception raised between two bytecodes of SQLAlchemy or of MLflow's SQL stores can
    leave a lock taken that only its ``with`` statement would release (SQLAlchemy's session
    counter, its pool's overflow lock), so that the clean-up's next store call hangs for good,
    or leave a SQLite statement unfinished, whose read lock makes the clean-up's writes on the
    pool's other connection wait out the busy timeout and fail, leaving runs RUNNING. Such a
    call takes milliseconds on a local database, up to the busy timeout on a locked one. The
    same signal again, sent by the user while the first waits, acts at once.
    """
    if _waiting and resent is None:
        if _waiting[0][0] != signum:
            return True  # a Ctrl-C and the SIGTERM sent after it are one stop, still waiting
        return False  # the user insists
    if not _in_sql_store_code(frame):
        return False
    _wait(resent or (signum, _stops_acted[0]))
    return True


def forget_pending_stops() -> bool:
    """Drop a stop that waits to be sent again; returns whether there was one. The command
    line calls it when a command ends: a stop that came during the last store call of a
    command that has done its work is not sent to whatever the process does next."""
    pending = bool(_waiting)
    _stops_acted[0] += 1  # a copy the timer is sending now is stale when it arrives
    _waiting.clear()
    timer = _timers[-1] if _timers else None
    if timer is not None and timer is not threading.current_thread():
        timer.cancel()
        timer.join()  # a signal it sent is handled (and dropped as stale) while this waits
    return pending


# how often a stop that waits (one Python dropped in a finalizer, one postponed out of a SQL
# store call) is looked at: it is sent again once no garbage collection runs (so that it lands
# in the code the collection interrupted, not in its next finalizer) and the main thread is out
# of the SQL store's code
REDELIVERY_SECONDS = 0.05
_unraisable_hooks: list = []  # the hook that _redeliver_dropped_stop replaced
_collecting: list[bool] = [False]  # whether a garbage collection is running (gc.callbacks)
# the stop waiting to be sent again, one at a time: (signal, how many stops had acted then)
_waiting: list[tuple[int, int]] = []
_resent: list[tuple[int, int]] = []  # the stop the timer has just sent (not the user)
_stops_acted = [0]  # how many stops have raised in this process
_timers: list[threading.Timer] = []  # the timer that looks at the waiting stop


def _redeliver_dropped_stop(unraisable) -> None:
    """``sys.unraisablehook``: send again a Ctrl-C or SIGTERM that Python dropped.

    A garbage collection can run a finalizer or a weakref callback between any two lines; a
    stop signal handled while one runs raises in it, and Python prints that exception and
    drops it, so the command would go on as if never stopped (seen once in a few dozen stops
    during ``stage1=auto``). The signal is sent again a moment later, from a thread, once the
    collection is over, so that it is handled in the code the collection interrupted; it is
    not sent if the command has ended since (its stop handlers are gone). Other exceptions go
    to the hook this one replaced."""
    exc = unraisable.exc_value
    if not isinstance(exc, (KeyboardInterrupt, Terminated)):
        _unraisable_hooks[-1](unraisable)
        return
    if not _waiting:
        _wait((signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM, _stops_acted[0]))


def _wait(stop: tuple[int, int]) -> None:
    _waiting[:] = [stop]
    _look_again()


def _look_again() -> None:
    timer = threading.Timer(REDELIVERY_SECONDS, _send_when_safe)
    timer.daemon = True
    timer.start()
    _timers[:] = [timer]  # started: forget_pending_stops may join it


def _send_when_safe() -> None:
    if not _waiting:
        return  # the stop acted meanwhile, or the command ended
    main = threading.main_thread()
    if _collecting[0] or _in_sql_store_code(sys._current_frames().get(main.ident)):
        _look_again()  # a stop sent now would land in a finalizer, or in the store's code
        return
    stop = _waiting[0]
    if signal.getsignal(stop[0]) is _on_stop_signal:
        _resent[:] = [stop]  # before the stop leaves _waiting: no moment without either
        if _waiting and _waiting[0] == stop:
            _waiting.clear()
            signal.pthread_kill(main.ident, stop[0])
            return
        _resent.clear()
    _waiting.clear()


def _note_collection(phase: str, _info) -> None:
    _collecting[0] = phase == "start"


def install_stop_handlers() -> None:
    """Make Ctrl-C and SIGTERM unwind (as KeyboardInterrupt and Terminated), and obey
    :func:`signals_held` and :func:`signals_deferred`; a stop that Python drops is sent again
    (:func:`_redeliver_dropped_stop`). Only the main thread can set handlers; a signal ignored
    (SIG_IGN) stays ignored. The command line restores the handlers it found when it ends."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _on_stop_signal)
    if sys.unraisablehook is not _redeliver_dropped_stop:  # a test runner may have set its own since
        _unraisable_hooks[:] = [sys.unraisablehook]
        sys.unraisablehook = _redeliver_dropped_stop
    if _note_collection not in gc.callbacks:
        gc.callbacks.append(_note_collection)


@contextlib.contextmanager
def _signal_mode(mode: str):
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread: another one has nothing to hold
        return
    install_stop_handlers()
    _signal_modes.append(mode)
    try:
        yield
    finally:
        _signal_modes.pop()
        if _signal_modes and _signal_modes[-1] == "hold":
            _deferred_signals.clear()
        elif not _signal_modes and _deferred_signals:
            _act(_deferred_signals.pop())  # here, after the block


def signals_held():
    """Ctrl-C and SIGTERM do nothing inside: the clean-up after a first one must not be cut
    short by a second (a terminal's Ctrl-C and a parent's SIGTERM often arrive together)."""
    return _signal_mode("hold")


def signals_deferred():
    """Ctrl-C and SIGTERM inside wait for the end of the block, then act as they would have:
    for steps that must not be cut in two, where a signal must not be lost either. The
    same signal twice acts at once, so that a block stuck on a tracking server that does
    not answer can still be stopped; a Ctrl-C and a SIGTERM together are one stop."""
    return _signal_mode("defer")


def release_interrupted_frames(exc: BaseException) -> None:
    """Free the SQLite cursor a Ctrl-C or SIGTERM left open, before the clean-up writes to the
    tracking store.

    A signal that lands while SQLite reads leaves the read's cursor open (SQLAlchemy does not
    close the cursor of an exit exception), and the traceback keeps it alive: its unfinished
    statement holds the database's read lock, so every write that would end the runs waits
    SQLite's busy timeout and fails, leaving them RUNNING. Only the frames of SQLAlchemy's own
    code are cleared, and of those only the ones no longer running: clearing others could
    close a context manager still suspended at its ``yield`` (a run's own). The traceback
    still prints. Signals are held meanwhile; callers that write after it call it inside their
    own :func:`signals_held` block, so that a second signal cannot come in between.
    """
    sqlalchemy = sys.modules.get("sqlalchemy")  # MLflow's SQL stores use it; not loaded, no cursor
    if sqlalchemy is None or not getattr(sqlalchemy, "__file__", None):
        return
    package = os.path.dirname(sqlalchemy.__file__) + os.sep
    chain = []
    while exc is not None and exc not in chain:  # a stop may come wrapped (Ray) or as a context
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    if not any(isinstance(e, (KeyboardInterrupt, Terminated)) for e in chain):
        return
    with signals_held():
        cleared = False
        for e in chain:
            tb = e.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename.startswith(package):
                    with contextlib.suppress(RuntimeError):  # a frame still running
                        tb.tb_frame.clear()
                        cleared = True
                tb = tb.tb_next
        if cleared:
            gc.collect()  # a cursor in a reference cycle is freed only by the collector


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
        DEVICE_TAG: str(device),
        PYTHON_TAG: platform.python_version(),
        TORCH_TAG: torch.__version__,
        MLFLOW_TAG: mlflow.__version__,
        NUMPY_TAG: numpy.__version__,
        SKLEARN_TAG: sklearn.__version__,
    }
    if torch.device(device).type == "cuda":
        tags[GPU_TAG] = torch.cuda.get_device_name(torch.device(device))
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def log_new_params(params: dict[str, str]) -> None:
    """Log params not yet on the active run; ``mlflow run`` has already logged its own
    parameters as strings, and MLflow refuses to change a logged value."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: str(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


# the runs tracked_run has started and not yet ended, outermost first
_open_runs: list[str] = []


@contextlib.contextmanager
def tracked_run(*, kind: str, run_id: str | None = None, run_name: str | None = None,
                tags: dict | None = None, nested: bool = False, on_interrupt=None):
    """Start (or resume) a run and end it FINISHED, FAILED or KILLED.

    ``run_id=None`` picks up the run that ``mlflow run`` created (``MLFLOW_RUN_ID``) or
    starts a new one. ``on_interrupt()`` runs before a run is marked KILLED (the
    training commands log their last resume point there). An exception leaving the
    block carries ``av1_run = (run id, kind)`` of the innermost run it ended, so the
    command's one-line message can name it. The run's experiment is marked for mlflow
    ui's model-training view.
    """
    install_stop_handlers()
    nested = nested or mlflow.active_run() is not None
    reopened = run_id or os.environ.get("MLFLOW_RUN_ID")  # start_run marks it RUNNING first
    run = None
    try:
        # a run stopped between start_run and its kind tag would be left RUNNING, or ended
        # FINISHED by MLflow's exit hook: a signal there waits until the run is tagged
        with signals_deferred():
            run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested)
            _open_runs.append(run.info.run_id)
            mark_model_training(run.info.experiment_id)
            mlflow.set_tags({KIND_TAG: kind, **(tags or {})})
        yield run
    except BaseException as exc:
        release_interrupted_frames(exc)
        if run is not None:
            _ending(lambda: _end_run(run, kind, exc, on_interrupt))
        elif reopened is not None:
            _ending(lambda: end_unstarted_run(reopened, kind, exc))
        raise
    else:
        _ending(lambda: _finish(run))


def _ending(end) -> None:
    """Run ``end``, and once more if a signal cut it short before it could hold signals (a
    terminal's Ctrl-C and the SIGTERM sent after it come milliseconds apart); the signal
    then acts. Every ending does nothing for a run already ended."""
    try:
        end()
    except (KeyboardInterrupt, Terminated) as again:
        try:
            release_interrupted_frames(again)  # it too may have landed in a store read
        finally:
            end()
        raise


def _open_position(run_id: str) -> int | None:
    hits = [i for i, r in enumerate(_open_runs) if r == run_id]
    return hits[-1] if hits else None


def _finish(run) -> None:
    """End ``run`` FINISHED. A signal acts after; a store that refuses to record the end
    raises, so that the command does not report success."""
    with signals_deferred():
        pos = _open_position(run.info.run_id)
        if pos is None:
            return  # already ended
        if (active := mlflow.active_run()) is not None and active.info.run_id == run.info.run_id:
            with contextlib.suppress(Exception):
                # a resumed run carries the tags of the interruption it came back from
                for key in FAILURE_TAGS:
                    if key in run.data.tags:
                        MlflowClient().delete_tag(run.info.run_id, key)
            mlflow.end_run("FINISHED")
        else:
            _terminate_if_running(run.info.run_id, "FINISHED")
        del _open_runs[pos:]  # only once it has ended: the enclosing run ends it otherwise


def _end_run(run, kind: str, exc: BaseException, on_interrupt) -> None:
    """End ``run`` KILLED (Ctrl-C, SIGTERM) or FAILED with the reason, and with its kind in
    case it stopped before being tagged."""
    _name_run(exc, run.info.run_id, kind)
    interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
    status, reason = ("KILLED" if interrupted else "FAILED"), end_reason(exc)
    tags = {KIND_TAG: kind, FAILURE_TAG: reason}
    # a second stop signal is dropped; a first one, during the clean-up of an error, acts after it
    with signals_held() if interrupted else signals_deferred():
        pos = _open_position(run.info.run_id)
        # a run nested in this one that a signal stopped before it could end itself is still
        # active above it: end it first, so that what follows goes to this run
        above = _open_runs[pos + 1:] if pos is not None else []
        while (active := mlflow.active_run()) is not None and active.info.run_id in above:
            _end_active_run(status, {FAILURE_TAG: reason})
        if active is not None and active.info.run_id == run.info.run_id:
            if interrupted and on_interrupt is not None:
                with contextlib.suppress(Exception):
                    on_interrupt()
            _end_active_run(status, tags)
        elif pos is not None:
            _terminate_if_running(run.info.run_id, status, tags)
        if pos is not None:
            del _open_runs[pos:]  # only once it has ended: the enclosing run ends it otherwise


_refusals_reported: set[str] = set()  # runs whose refused ending has been printed


@contextlib.contextmanager
def store_refusal_reported(run_id: str, status: str):
    """Go on when the tracking store refuses a write that ends ``run_id`` (the error or the
    stop that ended the run, if any, is what the command reports), but print the refusal on
    standard error, once per run, with the command that ends the run by hand: it may be left
    RUNNING."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any store error; the original exception wins
        if run_id not in _refusals_reported:
            _refusals_reported.add(run_id)
            with contextlib.suppress(OSError):  # a closed stderr must not replace the exception
                _print_refusal(run_id, status, exc)


def _print_refusal(run_id: str, status: str, exc: Exception) -> None:
    print(f"av1-ablation: could not record the end of run {run_id} in the tracking store "
          f"({type(exc).__name__}: {str(exc)[:300]}); if `mlflow ui` shows it RUNNING, "
          f"end it with MLFLOW_TRACKING_URI set to this store: python -c \"from mlflow "
          f"import MlflowClient; MlflowClient().set_terminated('{run_id}', '{status}')\"",
          file=sys.stderr)


def _end_active_run(status: str, tags: dict) -> None:
    """End the active run KILLED or FAILED; a store that refuses the tags or the status
    neither keeps it active (MLflow takes it off its stack first) nor hides the error
    that ended it."""
    run_id = mlflow.active_run().info.run_id
    with store_refusal_reported(run_id, status):
        mlflow.set_tags(tags)
    with store_refusal_reported(run_id, status):
        mlflow.end_run(status)


def _terminate_if_running(run_id: str, status: str, tags: dict | None = None) -> bool:
    """End a run that is off MLflow's stack but still RUNNING in the store: ``end_run`` takes
    it off the stack before it records the end, and a signal can come in between. Returns
    whether it ended the run."""
    with store_refusal_reported(run_id, status):
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            for key, value in (tags or {}).items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, status)
            return True
    return False


def open_run_count() -> int:
    """How many :func:`tracked_run` runs of this process are open (for :func:`end_open_runs`)."""
    return len(_open_runs)


def end_open_runs(exc: BaseException, *, keep: int = 0, pending: str | None = None) -> None:
    """End KILLED or FAILED, innermost first, the runs of this process that no
    :func:`tracked_run` ended, except the first ``keep`` (open before the command started):
    a signal around a ``with`` statement's entry or exit reaches the command without
    passing through the run's own handler. ``pending``, the run ``mlflow run`` created for
    the command, ends too if still RUNNING: a signal before the command's run starts (while
    the data or the Stage-1 backbone load) reaches no run's handler at all."""
    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Terminated)) else "FAILED"
    tags = {FAILURE_TAG: end_reason(exc)}
    with signals_held():
        release_interrupted_frames(exc)
        kept, left = _open_runs[:keep], _open_runs[keep:]
        while (active := mlflow.active_run()) is not None and active.info.run_id in left:
            _end_active_run(status, tags)
        for run_id in reversed(left):
            _terminate_if_running(run_id, status, tags)
        del _open_runs[keep:]
        active = mlflow.active_run()  # a run the caller opened around the command is its to end
        if pending and pending not in kept and not (active and active.info.run_id == pending):
            if _terminate_if_running(pending, status, tags):
                _name_run(exc, pending, "")  # it never trained: nothing to resume


def end_unstarted_run(run_id: str, kind: str, exc: BaseException) -> None:
    """End ``run_id`` KILLED (Ctrl-C, SIGTERM) or FAILED with the reason if it is still
    RUNNING: a run created for a block that stopped before its :func:`tracked_run` started it
    (or while ``start_run`` was reopening it, which marks it RUNNING first)."""
    interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
    # a second stop signal is dropped; a first one, during the clean-up of an error, acts after it
    status = "KILLED" if interrupted else "FAILED"
    with signals_held() if interrupted else signals_deferred(), store_refusal_reported(run_id, status):
        release_interrupted_frames(exc)
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            _name_run(exc, run_id, kind)  # only a run this ends: the message says it is KILLED
            client.set_tag(run_id, KIND_TAG, kind)
            fail_pending_run(end_reason(exc), run_id, status=status)


def _name_run(exc: BaseException, run_id: str, kind: str) -> None:
    if not hasattr(exc, "av1_run"):  # the innermost run is the one the user needs
        with contextlib.suppress(AttributeError):  # a few builtin exceptions take no attributes
            exc.av1_run = (run_id, kind)


def end_reason(exc: BaseException) -> str:
    """The ``av1.failure_reason`` of a run ended by ``exc`` (Ctrl-C, SIGTERM or an error)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, Terminated):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:4000]


@contextlib.contextmanager
def fails_pending_run(run_id: str | None = None):
    """Resolve a command's input in this block: a :class:`UserError` raised in it ends the
    run ``mlflow run`` created (``run_id`` or ``MLFLOW_RUN_ID``) FAILED with the message,
    then propagates, so a refused invocation leaves no run RUNNING."""
    try:
        yield
    except UserError as exc:
        fail_pending_run(str(exc), run_id)
        raise


def fail_pending_run(message: str, run_id: str | None = None, *, status: str = "FAILED") -> None:
    """Record a rejected or interrupted invocation on the run ``mlflow run`` created for it
    (``run_id`` or ``MLFLOW_RUN_ID``), so it is not left RUNNING. ``status`` is FAILED, or
    KILLED for Ctrl-C and SIGTERM."""
    if status not in ("FAILED", "KILLED"):
        raise ValueError(f"status must be 'FAILED' or 'KILLED'; got {status!r}")
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    client.set_tag(run_id, FAILURE_TAG, message[:4000])
    client.set_terminated(run_id, status)


def this_process() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def holder_alive(holder: str) -> bool:
    """Whether the process a lease names (``pid@host``) still runs. One on another host
    cannot be checked from here and counts as alive; a malformed one as gone."""
    pid_text, _, host = str(holder).partition("@")
    if not pid_text.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid_text), 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    try:  # a zombie has exited; only its parent has not collected it yet
        state = Path(f"/proc/{pid_text}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _lease_refusal(label: str, holder: str) -> UserError:
    pid, _, host = holder.partition("@")
    if host != socket.gethostname():  # its liveness cannot be checked from here
        return UserError(f"{label}: the run is being resumed by process {pid} on {host}; wait for "
                         f"it to end, or, if that process is gone, delete the run's {LEASE_TAG} "
                         "tag and resume again")
    return UserError(f"{label}: the run is being resumed by process {pid} on {host}; wait for it "
                     f"to end, or stop it (kill {pid}) and resume again")


def _clear_stale_lease(client, run, label: str):
    """Refuse a run held by a live process; drop the mark of one that is gone (ending the
    run KILLED when that process left it RUNNING). Returns the run as it is now."""
    holder = run.data.tags.get(LEASE_TAG)
    if holder is None:
        return run
    if holder_alive(holder):
        raise _lease_refusal(label, holder)
    if run.info.status == "RUNNING":
        client.set_tag(run.info.run_id, FAILURE_TAG,
                       f"process {holder} ended without closing the run")
        client.set_terminated(run.info.run_id, "KILLED")
    client.delete_tag(run.info.run_id, LEASE_TAG)
    print(f"{label}: process {holder}, which was resuming the run, is gone; taking over")
    return client.get_run(run.info.run_id)


@contextlib.contextmanager
def run_lease(run_id: str, *, label: str):
    """Hold ``run_id`` for this process (tag :data:`LEASE_TAG`) while the block runs.

    Raises :class:`UserError` naming the holder when a live process holds the run; a
    mark whose process is gone is cleared. ``label`` starts the messages.
    """
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"{label}: no such run in {mlflow.get_tracking_uri()}") from None
    _clear_stale_lease(client, run, label)
    mine = this_process()
    client.set_tag(run_id, LEASE_TAG, mine)
    time.sleep(LEASE_SETTLE_SECONDS)
    holder = client.get_run(run_id).data.tags.get(LEASE_TAG)
    if holder != mine:  # another process claimed it at the same moment and wrote last
        raise _lease_refusal(label, holder or "?@?")
    try:
        yield
    except BaseException as exc:
        release_interrupted_frames(exc)  # or the lease's removal below waits out the store's lock
        raise
    finally:
        with contextlib.suppress(Exception):  # an unreachable store leaves a stale mark
            if client.get_run(run_id).data.tags.get(LEASE_TAG) == mine:
                client.delete_tag(run_id, LEASE_TAG)


def record_resume(run_id: str, epoch: int) -> None:
    """Append the interruption ``run_id`` is being resumed from (its last completed epoch
    and the reason it stopped) to its history tags; the failure tags themselves go when
    it finishes. A resume that stopped before training again adds nothing new."""
    client = MlflowClient()
    tags = client.get_run(run_id).data.tags
    entry = f"epoch {epoch}: {tags.get(FAILURE_TAG, 'unknown reason')}"
    if tags.get(INTERRUPTIONS_TAG, "").endswith(entry):
        return  # the same interruption, met again by a resume that did not get going
    epochs = ",".join(filter(None, [tags.get(RESUMED_TAG), str(epoch)]))
    reasons = "; ".join(filter(None, [tags.get(INTERRUPTIONS_TAG), entry]))
    client.set_tag(run_id, RESUMED_TAG, epochs[-4000:])
    client.set_tag(run_id, INTERRUPTIONS_TAG, reasons[-4000:])


@contextlib.contextmanager
def resume_launch(run_id: str):
    """While the block resumes ``run_id``, label the run ``mlflow run -P resume=...`` created.

    That run trains nothing: the epochs, metrics and model go to ``run_id``. Left as it is,
    it would sit in mlflow ui as an arm with the project's default params and no metrics,
    and end FAILED without a reason when the resume fails. It gets a description and a
    :data:`RESUMES_TAG` naming the resumed run, and ends KILLED or FAILED with the reason
    when the block does, unless a refusal (:func:`fails_pending_run`) ended it first with its
    own message; ``mlflow run`` marks it FINISHED after a success. Outside ``mlflow run`` (no
    ``MLFLOW_RUN_ID``) this does nothing.
    """
    launch = os.environ.get("MLFLOW_RUN_ID")
    if not launch or launch == run_id:
        yield
        return
    client = MlflowClient()
    try:
        resumed = client.get_run(run_id).info.run_name
        client.set_tag(launch, RESUMES_TAG, run_id)
        client.set_tag(launch, NOTE_TAG, f"Resumes run {run_id} ({resumed}). That run holds the "
                                         "training: its epochs, metrics, model and artifacts; this one "
                                         "holds none.")
        client.update_run(launch, name=resume_run_name(resumed))
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
        with signals_held(), contextlib.suppress(Exception):
            release_interrupted_frames(exc)
            if client.get_run(launch).info.status == "RUNNING":  # a refusal has ended it with its message
                fail_pending_run(f"the resume of run {run_id} ended: {end_reason(exc)}", launch,
                                 status="KILLED" if interrupted else "FAILED")
        raise


def finished_runs(kind: str, *, tags: dict[str, str], params: dict[str, str], max_results: int = 1000):
    """FINISHED runs of the current experiment of ``kind`` with exactly these tag and param
    values, newest first."""
    clauses = [kind_clause(kind), "attributes.status = 'FINISHED'"]
    clauses += [tag_clause(k, v) for k, v in tags.items()]
    clauses += [param_clause(k, v) for k, v in params.items()]
    return MlflowClient().search_runs([experiment_id()], " and ".join(clauses),
                                      order_by=["attributes.start_time DESC"], max_results=max_results)



__all__ = [
    "tracked_run", "end_open_runs", "open_run_count", "install_stop_handlers", "signals_held",
    "signals_deferred", "log_new_params", "finished_runs", "environment_tags", "fails_pending_run",
    "fail_pending_run", "end_unstarted_run", "end_reason", "experiment_id", "git_commit", "run_lease",
    "holder_alive", "record_resume", "resume_launch", "release_interrupted_frames",
    "store_refusal_reported", "forget_pending_stops",
]
