"""How many CPU threads each training process may use.

torch starts one thread per core in every process. Two trainings side by side (an
``ablation --jobs 2``, two ``mlflow run``s, a test suite run in parallel) then ask for
twice the cores and spend their time waiting for each other, about a hundred times
slower each. Each training therefore takes its share: the cores divided by the
trainings a command starts at once.
"""
from __future__ import annotations

import argparse
import os


def available_cores() -> int:
    """Cores this process may run on (a CPU affinity mask or ``taskset`` counts)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity outside Linux
        return os.cpu_count() or 1


def default_threads(trainings_at_once: int = 1) -> int:
    """The cores divided by the trainings run at once, at least 1; ``OMP_NUM_THREADS``,
    when set, is the user's own cap and wins when it is smaller."""
    if isinstance(trainings_at_once, bool) or not isinstance(trainings_at_once, int) \
            or trainings_at_once < 1:
        raise ValueError(f"trainings_at_once must be an integer >= 1; got {trainings_at_once!r}")
    share = max(1, available_cores() // trainings_at_once)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(share, int(env)) if env.isdigit() and int(env) >= 1 else share


def thread_count(text: str) -> int | None:
    """``--threads`` values: a whole number >= 1; empty (what MLproject passes for an unset
    parameter) means the default."""
    if str(text).strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number >= 1; pass e.g. --threads 2, or leave it out for "
            "the default (the cores divided by the trainings run at once)")
    return value


def apply_thread_budget(threads: int) -> None:
    """Set torch's intra- and inter-op threads; call it before any tensor work."""
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        # torch fixes the inter-op pool once per process: a second command run in the
        # same process (the tests do that) keeps the first value, which is harmless
        # because the training loops run no inter-op parallel work.
        pass


__all__ = ["available_cores", "default_threads", "thread_count", "apply_thread_budget"]
