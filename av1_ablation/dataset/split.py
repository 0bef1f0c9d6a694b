"""Train / val / test splits of a block store.

``mode="source"`` keeps every source (a picture or sequence, with all its
frames and QPs) inside one split. The original pipeline split at block level,
so neighbouring blocks of one frame, and the same block at other QPs, sat on
both sides; ``mode="random"`` reproduces that scheme for comparison.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from av1_ablation.errors import UserError

SPLIT_MODES = ("source", "random")
RANDOM_TRAIN_FRACTION = 0.8  # the original pipeline's test_ratio 0.2


@dataclass(frozen=True)
class Split:
    """Sorted int64 row indices into a store for each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    params: dict
    fingerprint: str  # sha256 hex of the three index lists
    note: str | None = None


def _fingerprint(train, val, test) -> str:
    h = hashlib.sha256()
    for name, idx in (("train", train), ("val", val), ("test", test)):
        h.update(name.encode() + np.asarray(idx, dtype="<i8").tobytes())
    return h.hexdigest()


def _make(train, val, test, params, note=None) -> Split:
    train, val, test = (np.sort(np.asarray(a, dtype=np.int64)) for a in (train, val, test))
    params = {**params, "sizes": {"train": len(train), "val": len(val), "test": len(test)}}
    return Split(train, val, test, params, _fingerprint(train, val, test), note)


def make_split(store, *, mode="source", fractions=(0.7, 0.15, 0.15), seed=0) -> Split:
    """Split a store's rows into train, val and test.

    Parameters
    ----------
    store : BlockStore
        From :func:`~av1_ablation.dataset.load_store`.
    mode : {"source", "random"}, default="source"
        ``"source"``: whole sources go to one split, assigned in a seeded
        random order so that each split's share of blocks approaches
        ``fractions``; needs a source for every non-zero fraction.
        ``"random"``: block level like the original pipeline
        (``np.random.default_rng(seed).permutation``, first 80% train, the rest
        val, test empty); ``fractions`` is not used.
    fractions : tuple of 3 float, default=(0.7, 0.15, 0.15)
        Target shares of train, val and test (mode "source").
    seed : int, default=0

    Returns
    -------
    Split
        An imported ``legacy-pt`` pair keeps its own train/val assignment in
        mode "source" (test empty), which ``note`` says.
    """
    if mode not in SPLIT_MODES:
        raise UserError(f"unknown split mode {mode!r}; choose one of {SPLIT_MODES}")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise UserError(f"fractions must be 3 non-negative shares (train > 0) summing to 1; got {fractions}")
    base = {"mode": mode, "fractions": list(fractions), "seed": int(seed), "store": store.fingerprint}
    n = len(store.labels)

    if mode == "random":
        perm = np.random.default_rng(seed).permutation(n)
        cut = int(n * RANDOM_TRAIN_FRACTION)
        return _make(perm[:cut], perm[cut:], [], {**base, "train_fraction": RANDOM_TRAIN_FRACTION},
                     note="block-level random split: blocks of one picture are in train and val")

    legacy = store.manifest.get("legacy_split")
    if legacy is not None:
        rows = np.arange(n)
        return _make(rows[store.source == legacy["train"]], rows[store.source == legacy["val"]], [], base,
                     note="imported train.pt/val.pt: their original block-level train/val assignment "
                          "is kept (no source ids); test is empty")

    ids, sizes = np.unique(store.source, return_counts=True)
    wanted = [k for k in range(3) if fractions[k] > 0]
    if len(ids) < len(wanted):
        raise UserError(f"a source split needs at least {len(wanted)} sources to fill every split; the store "
                        f"has {len(ids)}; add sources or use mode='random'")
    order = np.random.default_rng(seed).permutation(len(ids))
    assigned = np.empty(len(ids), dtype=np.int64)
    filled = np.zeros(3)
    target = np.asarray(fractions) * sizes.sum()
    for rank, k in enumerate(order):
        # One source to each wanted split first, then to the largest shortfall.
        part = wanted[rank] if rank < len(wanted) else int(np.argmax(target - filled))
        assigned[k] = part
        filled[part] += sizes[k]
    rows = np.arange(n)
    member = [np.isin(store.source, ids[assigned == part]) for part in range(3)]
    names = {int(s["id"]): s["name"] for s in store.manifest.get("sources", [])}
    groups = {split: [names.get(int(i), int(i)) for i in sorted(ids[assigned == part])]
              for part, split in enumerate(("train", "val", "test"))}
    return _make(rows[member[0]], rows[member[1]], rows[member[2]], {**base, "sources": groups})
