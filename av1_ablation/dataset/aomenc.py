"""Running libaom's ``aomenc`` for intra-only 10-bit label encodes."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

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


def run_encode(args: list[str], y4m_path, ivf_path) -> None:
    """Encode ``y4m_path`` into ``ivf_path`` with aomenc and the given options."""
    cmd = [find_aomenc(), *args, "-o", str(ivf_path), str(y4m_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"aomenc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
