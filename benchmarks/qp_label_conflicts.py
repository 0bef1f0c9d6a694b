"""How much of the Stage-2 label depends on the QP rather than the pixels?

Counts, in one split of a data set (default: the test split of the embedded
default), the distinct pixel blocks (identical 16x16 samples, which a picture
encoded at several QPs repeats once per QP), how many of them carry different
Stage-2 labels at different QPs (no QP-blind model can get all of those
right), and the share of each Stage-2 class per qindex.

    python benchmarks/qp_label_conflicts.py [--data DIR] [--split test]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# this checkout's package, whatever an editable install elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def label_conflicts(blocks: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[int, int]:
    """Distinct pixel blocks among ``blocks`` (one row per Stage-2 block, any shape after the
    first axis) and how many of them carry two or more of the labels ``y``."""
    _, group = np.unique(blocks.reshape(len(blocks), -1), axis=0, return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1
    # distinct (pixel block, label) pairs; a block with two or more of them has a QP-dependent label
    labels_per_group = np.bincount(np.unique(group * n_classes + y) // n_classes, minlength=n_groups)
    return n_groups, int(np.sum(labels_per_group > 1))


def main() -> int:
    from av1_ablation.dataset import ensure_dataset, load_store, make_split
    from av1_ablation.dataset.partitions import STAGE2_NAMES, to_stage2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set (default: the embedded one, built on first use)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    args = parser.parse_args()
    store = load_store(ensure_dataset(args.data))
    idx = np.asarray(getattr(make_split(store, mode="source", seed=0), args.split))
    y = to_stage2(store.labels[idx])
    idx, y = idx[y >= 0], y[y >= 0]
    n_groups, conflicting = label_conflicts(store.blocks[idx], y, len(STAGE2_NAMES))
    print(f"{args.split} split of {store.path}: {len(idx)} Stage-2 blocks, {n_groups} "
          f"distinct pixel blocks, {conflicting} of them with different labels at different QPs")
    q = store.qindex[idx]
    for value in np.unique(q):
        counts = np.bincount(y[q == value], minlength=len(STAGE2_NAMES))
        shares = ", ".join(f"{n} {100 * c / counts.sum():.1f}%" for n, c in zip(STAGE2_NAMES, counts))
        print(f"  qindex {value}: {counts.sum()} blocks: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
