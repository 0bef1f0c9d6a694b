"""Label rules and geometry check on hand-built per-4x4 mode-info grids."""
import numpy as np
import pytest

from av1_ablation.dataset.labels import (
    ABSENT, BLOCK_IDS, PartitionGeometryError, node_labels, node_type,
)
from av1_ablation.dataset.partitions import Partition as P

B = {f"{w}x{h}": i for (w, h), i in BLOCK_IDS.items()}


def node(layout):
    """4x4-unit (bsize, partition) grids from a list of (y, x, h, w, bsize, partition) leaves in units."""
    b = np.full((4, 4), -1)
    p = np.full((4, 4), -1)
    for y, x, h, w, bs, part in layout:
        b[y:y + h, x:x + w] = B[bs]
        p[y:y + h, x:x + w] = part
    assert (b >= 0).all(), "layout leaves a hole"
    return b, p


# The leaves of one 16x16 node for each partition type, as libaom's decoder lays them out.
NODES = {
    P.NONE: [(0, 0, 4, 4, "16x16", P.NONE)],
    P.HORZ: [(0, 0, 2, 4, "16x8", P.HORZ), (2, 0, 2, 4, "16x8", P.HORZ)],
    P.VERT: [(0, 0, 4, 2, "8x16", P.VERT), (0, 2, 4, 2, "8x16", P.VERT)],
    P.HORZ_A: [(0, 0, 2, 2, "8x8", P.HORZ_A), (0, 2, 2, 2, "8x8", P.HORZ_A), (2, 0, 2, 4, "16x8", P.HORZ_A)],
    P.HORZ_B: [(0, 0, 2, 4, "16x8", P.HORZ_B), (2, 0, 2, 2, "8x8", P.HORZ_B), (2, 2, 2, 2, "8x8", P.HORZ_B)],
    P.VERT_A: [(0, 0, 2, 2, "8x8", P.VERT_A), (2, 0, 2, 2, "8x8", P.VERT_A), (0, 2, 4, 2, "8x16", P.VERT_A)],
    P.VERT_B: [(0, 0, 4, 2, "8x16", P.VERT_B), (0, 2, 2, 2, "8x8", P.VERT_B), (2, 2, 2, 2, "8x8", P.VERT_B)],
    P.HORZ_4: [(k, 0, 1, 4, "16x4", P.HORZ_4) for k in range(4)],
    P.VERT_4: [(0, k, 4, 1, "4x16", P.VERT_4) for k in range(4)],
    # SPLIT: four 8x8 nodes, each NONE / HORZ / VERT / SPLIT into 4x4 (4x4 leaves carry NONE).
    P.SPLIT: [(0, 0, 2, 2, "8x8", P.NONE),
              (0, 2, 1, 2, "8x4", P.HORZ), (1, 2, 1, 2, "8x4", P.HORZ),
              (2, 0, 2, 1, "4x8", P.VERT), (2, 1, 2, 1, "4x8", P.VERT),
              *[(2 + dy, 2 + dx, 1, 1, "4x4", P.NONE) for dy in (0, 1) for dx in (0, 1)]],
}


@pytest.mark.parametrize("kind", list(NODES), ids=lambda k: P(k).name)
def test_every_partition_type_is_recognised_and_passes_geometry(kind):
    b, p = node(NODES[kind])
    assert node_labels(b, p).tolist() == [[kind]]


@pytest.mark.parametrize("bsize, partition, expected", [
    ("32x32", P.NONE, ABSENT),        # wider/taller than 16: part of a larger block
    ("64x16", P.HORZ_4, ABSENT),
    ("8x32", P.VERT_4, ABSENT),
    ("16x16", P.NONE, P.NONE),
    ("16x16", P.HORZ_A, ABSENT),      # square leaf of a 32x32 AB partition
    ("16x16", P.VERT_B, ABSENT),
    ("16x8", P.HORZ, P.HORZ), ("16x8", P.HORZ_B, P.HORZ_B), ("8x16", P.VERT_B, P.VERT_B),
    ("16x4", P.HORZ_4, P.HORZ_4), ("4x16", P.VERT_4, P.VERT_4),
    ("8x8", P.HORZ_A, P.HORZ_A), ("8x8", P.VERT_A, P.VERT_A),   # AB sub-block
    ("8x8", P.NONE, P.SPLIT), ("8x4", P.HORZ, P.SPLIT), ("4x8", P.VERT, P.SPLIT),
    ("4x4", P.NONE, P.SPLIT), ("8x8", P.SPLIT, P.SPLIT),
])
def test_rule_table(bsize, partition, expected):
    assert node_type(B[bsize], int(partition)) == expected


def frame(nodes_layout):
    """Stack per-node grids (a 2-D list of (b, p) pairs) into one frame grid."""
    b = np.block([[n[0] for n in row] for row in nodes_layout])
    p = np.block([[n[1] for n in row] for row in nodes_layout])
    return b, p


def test_nodes_inside_larger_blocks_do_not_exist():
    # A 64x64 superblock: 32x32 NONE (top left), 32x32 HORZ_A (top right: two
    # 16x16 squares on top, a 32x16 below), 32x32 VERT_4 (bottom left: four 8x32),
    # and a 32x32 SPLIT into NONE / HORZ / VERT_A / SPLIT 16x16 nodes (bottom right).
    b = np.zeros((16, 16), dtype=np.int64)
    p = np.zeros((16, 16), dtype=np.int64)
    b[0:8, 0:8], p[0:8, 0:8] = B["32x32"], P.NONE
    b[0:4, 8:16], p[0:4, 8:16] = B["16x16"], P.HORZ_A
    b[4:8, 8:16], p[4:8, 8:16] = B["32x16"], P.HORZ_A
    b[8:16, 0:8], p[8:16, 0:8] = B["8x32"], P.VERT_4
    for (y, x), kind in zip([(8, 8), (8, 12), (12, 8), (12, 12)], [P.NONE, P.HORZ, P.VERT_A, P.SPLIT]):
        b[y:y + 4, x:x + 4], p[y:y + 4, x:x + 4] = node(NODES[kind])
    assert node_labels(b, p).tolist() == [
        [ABSENT, ABSENT, ABSENT, ABSENT],
        [ABSENT, ABSENT, ABSENT, ABSENT],
        [ABSENT, ABSENT, P.NONE, P.HORZ],
        [ABSENT, ABSENT, P.VERT_A, P.SPLIT],
    ]


def _broken(kind, y, x, bsize=None, partition=None):
    b, p = node(NODES[kind])
    if bsize is not None:
        b[y, x] = B[bsize]
    if partition is not None:
        p[y, x] = partition
    return b, p


@pytest.mark.parametrize("b, p, why", [
    (*_broken(P.HORZ_A, 3, 3, partition=P.HORZ), "HORZ_A geometry"),     # bottom leaf from another node
    (*_broken(P.HORZ_A, 0, 3, bsize="16x8"), "HORZ_A geometry"),          # top right is not 8x8
    (*_broken(P.VERT, 0, 3, bsize="8x8"), "VERT geometry"),
    (*_broken(P.NONE, 2, 2, bsize="8x8"), "NONE geometry"),
    (*_broken(P.SPLIT, 0, 1, partition=P.HORZ_A), "not a valid 8x8 node"),  # an AB leaf in one quadrant only
    (*_broken(P.SPLIT, 0, 0, partition=P.HORZ_A), "HORZ_A geometry"),       # ... at the top left it reads as AB
    (*_broken(P.SPLIT, 3, 3, bsize="8x8"), "not a valid 8x8 node"),        # 8x8 leaf inside a 4x4 quadrant
    (*_broken(P.SPLIT, 1, 3, partition=P.VERT), "not a valid 8x8 node"),   # 8x4 leaves must carry HORZ
    (*_broken(P.HORZ_B, 0, 0, bsize="8x8"), "HORZ_B geometry"),            # HORZ_B's top is one 16x8
    (*_broken(P.HORZ_4, 2, 1, bsize="4x16"), "HORZ_4 geometry"),
])
def test_geometry_check_rejects_inconsistent_nodes(b, p, why):
    with pytest.raises(PartitionGeometryError, match=why):
        node_labels(b, p)


def test_absent_node_must_be_one_leaf():
    b, p = np.full((4, 4), B["32x32"]), np.zeros((4, 4), dtype=int)
    b[3, 3] = B["16x16"]
    with pytest.raises(PartitionGeometryError, match="absent node"):
        node_labels(b, p)


def test_error_names_the_node_position():
    b0, p0 = node(NODES[P.NONE])
    b1, p1 = _broken(P.VERT, 0, 3, bsize="8x8")
    b, p = frame([[(b0, p0), (b0, p0)], [(b0, p0), (b1, p1)]])
    with pytest.raises(PartitionGeometryError, match=r"pixel \(16,16\)"):
        node_labels(b, p)


def test_unknown_ids_and_bad_shapes_raise():
    with pytest.raises(PartitionGeometryError, match="unknown bsize"):
        node_type(30, 0)
    with pytest.raises(PartitionGeometryError, match="unknown bsize"):
        node_type(B["8x8"], 12)
    with pytest.raises(ValueError, match="multiple of 4"):
        node_labels(np.zeros((4, 6), dtype=int), np.zeros((4, 6), dtype=int))
    with pytest.raises(ValueError, match="one shape"):
        node_labels(np.zeros((4, 4), dtype=int), np.zeros((4, 8), dtype=int))
