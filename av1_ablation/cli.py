"""The ``av1-ablation`` command. MLproject entry points call it too.

Each subcommand lives in its own module, which defines ``configure(parser)``
and ``run(args) -> int``. Modules are imported only when their subcommand is
chosen, so ``av1-ablation dataset --help`` does not pay for importing MLflow.

Failures the user can act on (bad input, a diverged training, Ctrl-C, SIGTERM)
end in one line saying what happened and what to do; ``--debug`` adds the
traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from av1_ablation.errors import Terminated, UserError, raise_terminated
from av1_ablation.record.contract import KIND_STAGE2
from av1_ablation.training.threads import apply_thread_budget, default_threads, thread_count

# in the order of the data flow: data set -> Stage 1 -> Stage 2 (arms, references) -> comparison
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "dataset": ("av1_ablation.dataset.command", "build a labelled block store with aomenc + libaom"),
    "stage1": ("av1_ablation.training.stage1", "train the Stage-1 model (NONE vs partitioned)"),
    "train": ("av1_ablation.training.stage2", "train one Stage-2 loss arm (the main job)"),
    "ablation": ("av1_ablation.training.ablation", "train every loss x seed as child runs of one parent"),
    "reference": ("av1_ablation.training.reference", "train the reference models: prior, gbm, finetune"),
    "compare": ("av1_ablation.comparison.command", "compare the loss arms: tables, statistics, verdict"),
}
# Commands that train, and so take a share of the cores (--threads)
TRAINING_COMMANDS = ("train", "stage1", "ablation", "reference")
# exit statuses of a shell for a process ended by SIGINT / SIGTERM
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="av1-ablation",
        description="Stage-2 loss-function ablation for AV1 partition prediction.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of a failure, not only its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # no abbreviations: `ablation --seed 1` must be refused, not read as --seeds
        sp = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        # also accepted after the subcommand; SUPPRESS keeps a global --debug from being reset
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback of a failure")
        # Import only the chosen subcommand's module (or all of them for --help).
        if chosen in (name, None) or chosen not in SUBCOMMANDS:
            modules[name] = importlib.import_module(module_name)
            modules[name].configure(sp)
        if name in TRAINING_COMMANDS:
            # a process setting, not a cfg.* field: it cannot change any result
            sp.add_argument("--threads", type=thread_count, default=None, metavar="N",
                            help="CPU threads of each training (default: the cores divided by the "
                                 "trainings run at once; ablation --jobs N gives each child cores/N)")
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    _progress_bars_on_terminals_only()
    previous = _handle_stop_signals(args)
    open_before = _open_run_count(args)
    pending = os.environ.get("MLFLOW_RUN_ID")  # read now: ending a Stage-1 run clears it
    if pending == getattr(args, "resume", None):
        pending = None  # the run being resumed: another process may hold it
    try:
        if args.command in TRAINING_COMMANDS:
            apply_thread_budget(args.threads or default_threads())
        return int(modules[args.command].run(args) or 0)
    except UserError as exc:
        return _report(args, f"error: {exc}", 2)
    except KeyboardInterrupt as exc:
        _end_open_runs(args, exc, open_before, pending)
        return _report(args, interrupted_message(args, exc, "Ctrl-C (SIGINT)"), EXIT_INTERRUPTED)
    except Terminated as exc:
        _end_open_runs(args, exc, open_before, pending)
        return _report(args, interrupted_message(args, exc, "SIGTERM"), EXIT_TERMINATED)
    except Exception as exc:
        if not _is_divergence(exc):
            raise  # a bug: its traceback is what a report needs
        return _report(args, f"error: {divergence_message(exc)}", 1)
    finally:
        _restore(previous)


def _open_run_count(args) -> int:
    if args.command not in TRAINING_COMMANDS:  # the others start no tracked run
        return 0
    from av1_ablation.training.lifecycle import open_run_count

    return open_run_count()


def _end_open_runs(args, exc: BaseException, keep: int, pending: str | None) -> None:
    """End the runs of this command that a signal kept from their own handler, and the run
    ``mlflow run`` created for it (``pending``) if the signal came before that run started."""
    if args.command in TRAINING_COMMANDS:
        from av1_ablation.training.lifecycle import end_open_runs

        end_open_runs(exc, keep=keep, pending=pending)


def _progress_bars_on_terminals_only() -> None:
    """The commands' own bars (tqdm, ``disable=None``) draw only on a terminal, and the epoch
    loop prints a line per epoch; MLflow's artifact-download bars draw whatever the output
    is, so they are turned off when it is not a terminal (an ``mlflow run`` log, a pipe)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _handle_stop_signals(args):
    """Make SIGTERM unwind like Ctrl-C for the whole command (not only inside a run), so
    that temporary files and child processes are cleaned up; a training command handles both
    as its runs do from the start. Returns what :func:`_restore` puts back."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    signal.signal(signal.SIGTERM, raise_terminated)
    if args.command in TRAINING_COMMANDS:
        from av1_ablation.training.lifecycle import install_stop_handlers

        install_stop_handlers()  # a stop that Python drops in a finalizer is sent again
    return previous


def _restore(previous) -> None:
    """Put back the handlers the command found: a stop sent again after it ended finds none of
    its own, and a caller in the same process (a notebook, a test) gets its own back."""
    lifecycle = sys.modules.get("av1_ablation.training.lifecycle")  # imported: stops may wait
    if lifecycle is not None:
        lifecycle.forget_pending_stops()
    if previous is not None:
        sigint, sigterm, sys.unraisablehook = previous
        for signum, handler in ((signal.SIGINT, sigint), (signal.SIGTERM, sigterm)):
            if handler is not None:  # None: a handler not set from Python, which stays
                signal.signal(signum, handler)


def _report(args, message: str, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"av1-ablation {args.command}: {message}", file=sys.stderr)
    return status


def _is_divergence(exc: BaseException) -> bool:
    # looked up, not imported: the dataset command must not pay for importing torch
    loop = sys.modules.get("av1_ablation.training.loop")
    return loop is not None and isinstance(exc, loop.NonFiniteLoss)


def divergence_message(exc) -> str:
    run_id, _ = getattr(exc, "av1_run", (None, None))
    where = f"; run {run_id} is marked FAILED" if run_id else ""
    return (f"training diverged ({exc}){where}; lower the learning rate (--lr-adapter and "
            "--lr-head, or --lr for stage1) and start a new run")


def interrupted_message(args, exc: BaseException, what: str) -> str:
    """One line: what stopped the command, what state it left, how to carry on."""
    if args.command == "dataset":
        out = Path(args.out)
        partial = out.with_name(out.name + ".partial")
        kept = len(list(partial.glob("*.npz"))) if partial.is_dir() else 0
        return (f"stopped by {what}; encoders stopped, {out} unchanged"
                + (f", {kept} finished encode(s) kept in {partial}" if kept else "")
                + "; run the same command again to " + ("continue from them" if kept else "build it"))
    run_id, kind = getattr(exc, "av1_run", (None, None))
    if run_id is None:
        return f"stopped by {what}"
    message = f"stopped by {what}; run {run_id} is marked KILLED"
    if kind == KIND_STAGE2:
        message += (f"; `av1-ablation train --resume {run_id}` continues it from its last "
                    "completed epoch")
    return message


if __name__ == "__main__":
    sys.exit(main())
