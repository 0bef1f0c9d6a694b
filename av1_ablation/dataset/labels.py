"""Partition type of every 16x16 node, from libaom's per-4x4 decoded mode info.

The decoder reports, for each 4x4 unit, the ``bsize`` of the coded block that
covers it and the ``partition`` of the tree node that emitted that block. The
rules (libaom ``decode_partition()`` semantics, see ``av1/decoder/decodeframe.c``)
look at the node's top-left unit:

==========================================  ======================================
top-left leaf                               16x16 node
==========================================  ======================================
wider or taller than 16                     absent (part of a larger block)
16x16, partition NONE                       NONE
16x16, partition != NONE                    absent (square leaf of a 32x32 AB)
16x8, 8x16, 16x4, 4x16                      ``partition``
8x8 or smaller, partition HORZ_A..VERT_B    ``partition`` (8x8 nodes have no AB)
8x8 or smaller, other partition             SPLIT (the partition is an 8x8 child's)
==========================================  ======================================

Then all 16 units of the node are checked against the geometry of that type
(e.g. HORZ_A = two 8x8 leaves on top and a 16x8 leaf below, all carrying
HORZ_A). Any disagreement raises :class:`PartitionGeometryError`; nodes are
never skipped silently.
"""
from __future__ import annotations

import numpy as np

from av1_ablation.dataset.partitions import Partition

ABSENT = -1

# libaom BLOCK_SIZE enum -> (width, height) in pixels.
BLOCK_DIMS: tuple[tuple[int, int], ...] = (
    (4, 4), (4, 8), (8, 4), (8, 8), (8, 16), (16, 8), (16, 16), (16, 32),
    (32, 16), (32, 32), (32, 64), (64, 32), (64, 64), (64, 128), (128, 64),
    (128, 128), (4, 16), (16, 4), (8, 32), (32, 8), (16, 64), (64, 16),
)
BLOCK_IDS = {dims: i for i, dims in enumerate(BLOCK_DIMS)}
_AB = (Partition.HORZ_A, Partition.HORZ_B, Partition.VERT_A, Partition.VERT_B)


class PartitionGeometryError(ValueError):
    """The decoded mode info of a node does not match any partition tree."""


def _b(w, h):
    return BLOCK_IDS[(w, h)]


def _template(quadrants: str, part: Partition) -> tuple[np.ndarray, np.ndarray]:
    """4x4-unit (bsize, partition) template of a 16x16 node.

    ``quadrants`` names the leaf covering each 8x8 quadrant in raster order
    (tl, tr, bl, br): "s" an 8x8 square, "h" half of a 16x8, "v" half of an
    8x16, "N" a 16x16, "H4"/"V4" the 1:4 leaves (whole node).
    """
    bsize = np.empty((4, 4), dtype=np.int64)
    if quadrants in ("N", "H4", "V4"):
        bsize[:] = {"N": _b(16, 16), "H4": _b(16, 4), "V4": _b(4, 16)}[quadrants]
    else:
        leaf = {"s": _b(8, 8), "h": _b(16, 8), "v": _b(8, 16)}
        for q, code in enumerate(quadrants):
            r, c = divmod(q, 2)
            bsize[2 * r:2 * r + 2, 2 * c:2 * c + 2] = leaf[code]
    return bsize, np.full((4, 4), int(part), dtype=np.int64)


# Geometry of every type except SPLIT (whose quadrants are checked one by one).
_TEMPLATES: dict[int, tuple[np.ndarray, np.ndarray]] = {
    Partition.NONE: _template("N", Partition.NONE),
    Partition.HORZ: _template("hhhh", Partition.HORZ),
    Partition.VERT: _template("vvvv", Partition.VERT),
    Partition.HORZ_A: _template("sshh", Partition.HORZ_A),
    Partition.HORZ_B: _template("hhss", Partition.HORZ_B),
    Partition.VERT_A: _template("svsv", Partition.VERT_A),
    Partition.VERT_B: _template("vsvs", Partition.VERT_B),
    Partition.HORZ_4: _template("H4", Partition.HORZ_4),
    Partition.VERT_4: _template("V4", Partition.VERT_4),
}

# An 8x8 node (a SPLIT quadrant): leaf bsize -> the partition its units carry.
# 4x4 leaves carry NONE because nodes below 8x8 code no partition symbol.
_EIGHT_BY_EIGHT = {
    _b(8, 8): Partition.NONE,
    _b(8, 4): Partition.HORZ,
    _b(4, 8): Partition.VERT,
    _b(4, 4): Partition.NONE,
}


def node_type(bsize: int, partition: int) -> int:
    """Partition type of a 16x16 node from its top-left unit, or ``ABSENT``.

    Parameters
    ----------
    bsize : int
        libaom ``BLOCK_SIZE`` of the leaf covering the node's top-left 4x4 unit.
    partition : int
        ``partition`` field of that leaf.

    Returns
    -------
    int
        A :class:`~av1_ablation.dataset.partitions.Partition` id, or ``ABSENT`` (-1)
        when no 16x16 node exists there.
    """
    if not 0 <= bsize < len(BLOCK_DIMS) or not 0 <= partition < len(Partition):
        raise PartitionGeometryError(f"unknown bsize {bsize} or partition {partition}")
    w, h = BLOCK_DIMS[bsize]
    if w > 16 or h > 16:
        return ABSENT
    if (w, h) == (16, 16):
        return Partition.NONE if partition == Partition.NONE else ABSENT
    if w == 16 or h == 16:
        return int(partition)
    return int(partition) if partition in _AB else int(Partition.SPLIT)


def _check_node(b: np.ndarray, p: np.ndarray, kind: int) -> str | None:
    """Why the node's 4x4 (bsize, partition) units contradict ``kind``, or None."""
    if kind == ABSENT:
        # One leaf of a larger block (or a 32x32 AB square) covers the node.
        if (b != b[0, 0]).any() or (p != p[0, 0]).any():
            return "absent node not covered by a single larger leaf"
        return None
    if kind == Partition.SPLIT:
        for r in (0, 2):
            for c in (0, 2):
                qb, qp = b[r:r + 2, c:c + 2], p[r:r + 2, c:c + 2]
                want = _EIGHT_BY_EIGHT.get(int(qb[0, 0]))
                if want is None or (qb != qb[0, 0]).any() or (qp != want).any():
                    return f"8x8 quadrant at unit ({r},{c}) is not a valid 8x8 node"
        return None
    tb, tp = _TEMPLATES[kind]
    if (b != tb).any() or (p != tp).any():
        return f"units do not match the {Partition(kind).name} geometry"
    return None


def node_labels(bsize: np.ndarray, partition: np.ndarray) -> np.ndarray:
    """Partition type of every 16x16 node of a frame, geometry-checked.

    Parameters
    ----------
    bsize, partition : ndarray of shape (R, C)
        Per-4x4-unit ``bsize`` and ``partition`` from the decoder; R and C
        must be multiples of 4 (the frame is cropped to a multiple of 64).

    Returns
    -------
    ndarray of shape (R // 4, C // 4), int8
        Partition id of each node, ``ABSENT`` (-1) where none exists.

    Raises
    ------
    PartitionGeometryError
        If any node's 16 units disagree with the geometry of its type.
    """
    bsize = np.asarray(bsize)
    partition = np.asarray(partition)
    if bsize.shape != partition.shape or bsize.ndim != 2:
        raise ValueError(f"bsize and partition must be 2-D of one shape; got {bsize.shape}, {partition.shape}")
    if bsize.shape[0] % 4 or bsize.shape[1] % 4:
        raise ValueError(f"grid shape {bsize.shape} is not a multiple of 4 units (16 px)")
    rows, cols = bsize.shape[0] // 4, bsize.shape[1] // 4
    out = np.empty((rows, cols), dtype=np.int8)
    for i in range(rows):
        for j in range(cols):
            b = bsize[4 * i:4 * i + 4, 4 * j:4 * j + 4]
            p = partition[4 * i:4 * i + 4, 4 * j:4 * j + 4]
            kind = node_type(int(b[0, 0]), int(p[0, 0]))
            problem = _check_node(b, p, kind)
            if problem:
                raise PartitionGeometryError(
                    f"16x16 node at pixel ({16 * i},{16 * j}): {problem}; "
                    f"bsize units {b.tolist()}, partition units {p.tolist()}"
                )
            out[i, j] = kind
    return out
