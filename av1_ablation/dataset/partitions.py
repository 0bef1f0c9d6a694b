"""Partition ids of AV1 16x16 nodes and the label spaces of each stage.

This is the only place where partition ids, names and stage groupings are
defined. The ids are libaom's ``PARTITION_TYPE`` values, which are also the ids
of the original research data set.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Partition(IntEnum):
    NONE = 0
    HORZ = 1
    VERT = 2
    SPLIT = 3
    HORZ_A = 4
    HORZ_B = 5
    VERT_A = 6
    VERT_B = 7
    HORZ_4 = 8
    VERT_4 = 9


PARTITION_NAMES: tuple[str, ...] = tuple(p.name for p in Partition)

# Stage 2 separates these three groups; NONE belongs to Stage 1 and the 1:4
# types have no Stage-2 class (the original data set has none of them).
STAGE2_NAMES: tuple[str, ...] = ("SPLIT", "RECT", "AB")
STAGE2_GROUPS: dict[str, tuple[Partition, ...]] = {
    "SPLIT": (Partition.SPLIT,),
    "RECT": (Partition.HORZ, Partition.VERT),
    "AB": (Partition.HORZ_A, Partition.HORZ_B, Partition.VERT_A, Partition.VERT_B),
}
ONE_TO_FOUR: tuple[Partition, ...] = (Partition.HORZ_4, Partition.VERT_4)
STAGE1_NAMES: tuple[str, ...] = ("NONE", "PARTITIONED")

# Lookup tables indexed by partition id.
_STAGE2_OF_ID = np.full(len(Partition), -1, dtype=np.int64)
for _cls, _members in enumerate(STAGE2_GROUPS.values()):
    _STAGE2_OF_ID[list(_members)] = _cls
_STAGE1_OF_ID = (np.arange(len(Partition)) != Partition.NONE).astype(np.int64)


def _check_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(Partition)):
        raise ValueError(
            f"partition ids must lie in 0..{len(Partition) - 1}; got values "
            f"{ids.min()}..{ids.max()}"
        )
    return ids.astype(np.int64, copy=False)


def to_stage1(ids) -> np.ndarray:
    """Stage-1 target: 0 for NONE, 1 for every other partition type."""
    return _STAGE1_OF_ID[_check_ids(ids)]


def to_stage2(ids) -> np.ndarray:
    """Stage-2 target: SPLIT=0, RECT=1, AB=2, and -1 for NONE and the 1:4 types."""
    return _STAGE2_OF_ID[_check_ids(ids)]
