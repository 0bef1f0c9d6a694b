"""Data-set build speed: frames (pictures x QPs) encoded and labelled per minute, by --jobs.

    python benchmarks/dataset_build.py                 # 6 embedded photos, 4 QPs, jobs 1 and 2
    python benchmarks/dataset_build.py --sources embedded --jobs 1 2

Each build goes to a fresh temporary directory (nothing is reused). One "frame" is
one picture encoded at one QP: one aomenc run plus the decoder pass that labels it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from av1_ablation.dataset import build_dataset  # noqa: E402

DEFAULT_SOURCES = ["embedded:camera", "embedded:astronaut", "embedded:coffee", "embedded:brick",
                   "embedded:coins", "embedded:page"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", default=DEFAULT_SOURCES)
    p.add_argument("--qp", type=int, nargs="+", default=[20, 32, 43, 55])
    p.add_argument("--cpu-used", type=int, default=2)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; sources {' '.join(args.sources)}; cq {args.qp}; cpu-used {args.cpu_used}")
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = build_dataset(args.sources, Path(tmp) / "store", qps=tuple(args.qp),
                                cpu_used=args.cpu_used, jobs=jobs, progress=False)
            wall = time.perf_counter() - start
            manifest = json.loads((out / "manifest.json").read_text())
        frames = len(manifest["encodes"])
        print(f"jobs {jobs}: {frames} frames in {wall:.1f} s = {60 * frames / wall:.1f} frames/min, "
              f"{manifest['num_blocks'] / wall:.0f} blocks/s")


if __name__ == "__main__":
    main()
