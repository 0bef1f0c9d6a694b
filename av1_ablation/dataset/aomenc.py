"""Running libaom's ``aomenc`` for intra-only 10-bit label encodes."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import threading

from av1_ablation.dataset.decoder import INSTALL_HINT
from av1_ablation.errors import UserError


@functools.lru_cache(maxsize=None)
def find_aomenc() -> str:
    """Path of the ``aomenc`` executable.

    Raises
    ------
    UserError
        If it is not on ``PATH``.
    """
    path = shutil.which("aomenc")
    if path is None:
        raise UserError(f"aomenc (libaom's encoder) not found on PATH; {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=None)
def aomenc_version() -> str:
    """Version of ``aomenc``, as listed under "Included encoders" of its help."""
    # aomenc has no --version; its help ends with "AV1 Encoder v3.6.0 (default)".
    proc = subprocess.run([find_aomenc(), "--help"], capture_output=True, text=True)
    match = re.search(r"AV1 Encoder v?(\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def encode_args(*, cq_level: int, cpu_used: int, frames: int, allintra: bool) -> list[str]:
    """aomenc options for an intra-only 10-bit encode (input and output not included).

    Parameters
    ----------
    cq_level : int
        ``--cq-level`` in 0..63 (base qindex = 4 * cq_level, 63 -> 255).
    cpu_used : int
        Speed preset; at >= 5 libaom prunes AB and 1:4 partitions of 16x16 nodes.
    frames : int
        Number of frames in the input (``--limit``).
    allintra : bool
        libaom's all-intra usage profile instead of good quality with key
        frames only; the two give different label distributions.
    """
    if not 0 <= cq_level <= 63:
        raise UserError(f"QP (cq-level) {cq_level} is outside 0..63; pass --qp values in 0..63")
    usage = ["--allintra"] if allintra else ["--good", "--passes=1", "--kf-min-dist=0"]
    return usage + [
        "--kf-max-dist=0",
        f"--limit={frames}",
        f"--cpu-used={cpu_used}",
        "--end-usage=q",
        f"--cq-level={cq_level}",
        "--bit-depth=10",
        "--input-bit-depth=10",
        # 16x4/4x16 leaves cannot occur, as in the original 4K data set.
        "--min-partition-size=8",
        # Dynamic superblocks would pick 128x128 at <= 480p; 64 keeps trees comparable.
        "--sb-size=64",
        # Off, so every block's qindex equals the frame's.
        "--deltaq-mode=0",
        # Key-frame temporal filtering would encode a blend of neighbouring frames,
        # not the source pixels stored with the labels.
        "--enable-keyframe-filtering=0",
        # One thread, one tile: encodes run in parallel instead, and decisions
        # do not depend on the machine.
        "--threads=1",
        "--tile-columns=0",
        "--tile-rows=0",
        "--ivf",
        "--quiet",
    ]


class EncoderGroup:
    """The aomenc processes of one build, each in a process group of its own.

    Their own group keeps a terminal's Ctrl-C, or a SIGTERM sent to this program's
    group, away from them, so that this program alone decides when they stop (and
    removes their temporary files afterwards): :meth:`stop` kills every running
    encoder's group, waits for it, and refuses to start new ones.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, cmd: list[str]) -> tuple[int, str]:
        """Run one encoder to completion; returns its exit status and standard error."""
        with self._lock:  # no encoder may start once stop() has collected the running ones
            if self._stopped:
                raise EncodesStopped("the build is stopping; no new encode starts")
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            self._running.add(proc)
        try:
            _, stderr = proc.communicate()
        finally:
            with self._lock:
                self._running.discard(proc)
        return proc.returncode, stderr

    def stop(self) -> None:
        """Kill every running encoder (its whole process group) and wait for it."""
        with self._lock:
            self._stopped = True
            procs = list(self._running)
        for proc in procs:
            if proc.returncode is None:  # not yet collected, so its pid is still its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()


class EncodesStopped(RuntimeError):
    """An encode was asked for after :meth:`EncoderGroup.stop`."""


def run_encode(args: list[str], y4m_path, ivf_path, encoders: EncoderGroup | None = None) -> None:
    """Encode ``y4m_path`` into ``ivf_path`` with aomenc and the given options, as one of
    ``encoders`` (a group of its own when None)."""
    cmd = [find_aomenc(), *args, "-o", str(ivf_path), str(y4m_path)]
    returncode, stderr = (encoders or EncoderGroup()).run(cmd)
    if returncode != 0:
        raise RuntimeError(f"aomenc failed ({returncode}): {' '.join(cmd)}\n{stderr[-2000:]}")
