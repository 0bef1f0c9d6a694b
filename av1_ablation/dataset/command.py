"""``av1-ablation dataset``: build a labelled block store with aomenc + libaom."""
from __future__ import annotations

import argparse
import re

from av1_ablation.dataset.build import DEFAULT_DATA_DIR, DEFAULT_QPS, build_dataset, cq_to_qindex
from av1_ablation.dataset.partitions import ONE_TO_FOUR, PARTITION_NAMES, STAGE2_GROUPS
from av1_ablation.dataset.sources import SOURCE_KINDS
from av1_ablation.dataset.store import read_manifest
from av1_ablation.errors import UserError


def int_list(values) -> list[int]:
    """Integers from values like ``["20 32 43 55"]``, ``["20,32"]`` or ``["20", "32"]``.

    MLproject passes a whole list as one string, hence the splitting.
    """
    if isinstance(values, str):
        values = [values]
    out = []
    for tok in (t for v in values for t in re.split(r"[\s,]+", str(v).strip()) if t):
        try:
            out.append(int(tok))
        except ValueError:
            raise UserError(f"{tok!r} is not an integer") from None
    return out


def optional_int(text: str) -> int | None:
    """An integer option; empty (what ``mlflow run`` passes for an unset parameter) is None."""
    if str(text).strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def store_dir(text: str) -> str:
    """``--out``; empty (the MLproject default) is the store training reads by default, so
    ``AV1_ABLATION_DATA`` moves both."""
    return text.strip() or str(DEFAULT_DATA_DIR)


def flag(text: str) -> bool:
    """A flag's optional value: the flag alone is true; ``true``/``false`` (or "", false) is
    what ``mlflow run`` passes."""
    value = text.strip().lower()
    if value not in ("", "true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value == "true"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", metavar="SRC",
                        help=f"repeatable; one of {', '.join(SOURCE_KINDS)} (default: embedded; extended = embedded "
                             "plus the packaged photographs and clip, see `make extended-packages`)")
    parser.add_argument("--out", type=store_dir, default="",
                        help=f"store directory (default: {DEFAULT_DATA_DIR}; $AV1_ABLATION_DATA "
                             "sets it, for training too)")
    parser.add_argument("--qp", nargs="+", default=None, metavar="Q",
                        help="aomenc cq-levels 0..63, e.g. 20 32 43 55 or \"20,32\" (default: 20 32 43 55)")
    parser.add_argument("--cpu-used", type=int, default=2, help="aomenc speed; <= 4 keeps AB (default: 2)")
    parser.add_argument("--jobs", type=int, default=0, help="parallel encodes, 0 = all cores (default: 0)")
    parser.add_argument("--width", type=optional_int, help="width of raw .yuv sources")
    parser.add_argument("--height", type=optional_int, help="height of raw .yuv sources")
    parser.add_argument("--frame-step", type=int, default=1, help="videos: every N-th frame (default: 1)")
    parser.add_argument("--frames", nargs="+", metavar="LIST", help="videos: frame numbers, e.g. \"0,50,100\"")
    parser.add_argument("--max-frames", type=optional_int, help="videos: at most N frames")
    parser.add_argument("--crop", type=optional_int,
                        help="centre crop each picture to NxN (then to a multiple of 64)")
    # flags: alone, or with true/false (how MLproject sets them)
    parser.add_argument("--allintra", nargs="?", const=True, default=False, type=flag, metavar="BOOL",
                        help="libaom all-intra profile (default: good quality, key frames only)")
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=flag, metavar="BOOL",
                        help="replace an existing store")
    parser.add_argument("--no-progress", nargs="?", const=True, default=False, type=flag, metavar="BOOL",
                        help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # empty values are what `mlflow run` passes for parameters left unset
    out = build_dataset(
        [s for s in args.source or [] if s] or ["embedded"], args.out,
        qps=int_list(args.qp or []) or DEFAULT_QPS,
        cpu_used=args.cpu_used, jobs=args.jobs, crop=args.crop, allintra=args.allintra,
        width=args.width, height=args.height, frame_step=args.frame_step,
        frames=int_list(args.frames or []) or None, max_frames=args.max_frames,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(summary(read_manifest(out), out))
    return 0


def _table(counts: dict) -> list[str]:
    per_type, groups = counts["per_type"], counts["stage2"]
    stage2 = sum(groups.values())
    lines = ["  " + "  ".join(f"{n} {per_type[n]}" for n in PARTITION_NAMES)]
    lines.append("  Stage 2: " + "  ".join(
        f"{g} {groups[g]} ({100 * groups[g] / stage2:.1f}%)" if stage2 else f"{g} 0" for g in STAGE2_GROUPS)
        + f"  (total {stage2}); 1:4 types (no Stage-2 class) "
        + str(sum(per_type[p.name] for p in ONE_TO_FOUR)))
    return lines


def summary(manifest: dict, out) -> str:
    """Human-readable summary of a store's manifest."""
    lines = [f"{out}: {manifest['num_blocks']} blocks from {len(manifest['sources'])} sources ({manifest['kind']})"]
    lines += _table(manifest["counts"])
    for qp, counts in manifest.get("counts_per_qp", {}).items():
        lines.append(f" cq {qp} (qindex {cq_to_qindex(int(qp))}): {sum(counts['per_type'].values())} blocks")
        lines += _table(counts)
    if "absent_nodes" in manifest:
        lines.append(f" 16x16 positions without a 16x16 node: {manifest['absent_nodes']['total']}")
    split = manifest.get("default_split", {})
    if "sources" in split:
        lines.append(" default split (seed 0), train / val / test: "
                     + " / ".join(str(split["sources"][k]) for k in ("train", "val", "test")) + " sources, "
                     + " / ".join(str(split["stage2_blocks"][k]) for k in ("train", "val", "test"))
                     + " Stage-2 blocks")
    elif "note" in split:
        lines.append(f" no default split: {split['note']}")
    if "build_seconds" in manifest:
        rates = f"{manifest['blocks_per_second']:.0f} blocks/s"
        if "frames_per_minute" in manifest:
            rates += f", {manifest['frames_per_minute']:.1f} frames/min"
        resumed = f", {manifest['resumed_encodes']} encodes resumed" if manifest.get("resumed_encodes") else ""
        lines.append(f" built in {manifest['build_seconds']:.1f} s ({rates}, "
                     f"{manifest['encode_seconds']:.1f} s of encoding{resumed})")
    return "\n".join(lines)
