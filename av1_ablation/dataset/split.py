"""Train / val / test splits of a block store.

``mode="source"`` keeps every source (a picture or sequence, with all its
frames and QPs) inside one split. The original pipeline split at block level,
so neighbouring blocks of one frame, and the same block at other QPs, sat on
both sides; ``mode="random"`` reproduces that scheme for comparison. A store may
ask for a minimum number of sources in validation and test (``split_min_sources``
in its manifest, which a build from ``extended`` sets), so that selection and the
test statistics do not rest on a handful of pictures.

Cross-validation by picture (``folds=K``) deals the sources into K folds of
about equal blocks; fold ``k`` is the test split, and the validation sources
are drawn from the other folds, so over the K folds every picture is tested
exactly once and never seen in training or selection of the fold that tests it.
There the store's minimum applies to validation; the test minimum does not, since
every source is tested once over the folds.
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


def make_split(store, *, mode="source", fractions=(0.7, 0.15, 0.15), seed=0, folds=1, fold=0) -> Split:
    """Split a store's rows into train, val and test.

    Parameters
    ----------
    store : BlockStore
        From :func:`~av1_ablation.dataset.load_store`.
    mode : {"source", "random"}, default="source"
        ``"source"``: whole sources go to one split, assigned in a seeded
        random order: one to each split with a non-zero fraction, then to
        validation and test until they hold the store's minimum number of
        sources, then each to the split whose share of blocks is furthest
        below ``fractions``.
        ``"random"``: block level like the original pipeline
        (``np.random.default_rng(seed).permutation``, first 80% train, the rest
        val, test empty); ``fractions`` is not used.
    fractions : tuple of 3 float, default=(0.7, 0.15, 0.15)
        Target shares of train, val and test (mode "source").
    seed : int, default=0
    folds : int, default=1
        ``1``: one split by ``fractions``. ``K >= 2`` (mode "source"): grouped
        K-fold over sources; the test split is fold ``fold`` and validation
        takes about ``fractions[1] / (fractions[0] + fractions[1])`` of the
        remaining blocks (and at least the store's minimum of validation
        sources), whole sources drawn in a seeded order.
    fold : int, default=0
        Which fold is the test split, ``0 <= fold < folds``.

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
    check_folds(folds, fold, mode)

    if mode == "random":
        perm = np.random.default_rng(seed).permutation(n)
        cut = int(n * RANDOM_TRAIN_FRACTION)
        return _make(perm[:cut], perm[cut:], [], {**base, "train_fraction": RANDOM_TRAIN_FRACTION},
                     note="block-level random split: blocks of one picture are in train and val")

    legacy = store.manifest.get("legacy_split")
    if legacy is not None:
        if folds > 1:
            raise UserError(f"folds={folds}: an imported train.pt/val.pt pair has no sources to deal "
                            "into folds; use folds=1 with it")
        rows = np.arange(n)
        return _make(rows[store.source == legacy["train"]], rows[store.source == legacy["val"]], [], base,
                     note="imported train.pt/val.pt: their original block-level train/val assignment "
                          "is kept (no source ids); test is empty")

    ids, sizes = np.unique(store.source, return_counts=True)
    minimum = min_sources(store)
    if folds > 1:
        return _fold_split(store, ids, sizes, fractions, seed, folds, fold, base, minimum["val"])
    wanted = [k for k in range(3) if fractions[k] > 0]
    least = np.array([1, minimum["val"], minimum["test"]]) * (np.asarray(fractions) > 0)
    if len(ids) < least.sum():
        raise UserError(f"a source split of {store.path} needs at least {least.sum()} sources ({least[0]} to "
                        f"train, {least[1]} to validate, {least[2]} to test); the store has {len(ids)}; "
                        "add sources or use mode='random'")
    order = np.random.default_rng(seed).permutation(len(ids))
    assigned = np.empty(len(ids), dtype=np.int64)
    filled, count = np.zeros(3), np.zeros(3, dtype=np.int64)
    target = np.asarray(fractions) * sizes.sum()
    for rank, k in enumerate(order):
        short = np.flatnonzero(count < least)
        if rank < len(wanted):
            part = wanted[rank]
        elif len(short):  # the split furthest below its minimum count (val first on a tie)
            part = int(short[np.argmin(count[short] / least[short])])
        else:
            part = int(np.argmax(target - filled))
        assigned[k] = part
        filled[part] += sizes[k]
        count[part] += 1
    return _by_source(store, ids, assigned, base)


def min_sources(store) -> dict[str, int]:
    """The least number of sources the store's validation and test splits must hold."""
    asked = store.manifest.get("split_min_sources", {})
    minimum = {"val": 1, "test": 1, **(asked if isinstance(asked, dict) else {"bad": asked})}
    if set(minimum) != {"val", "test"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in minimum.values()):
        raise UserError(f"{store.path}: split_min_sources {store.manifest['split_min_sources']!r} in its "
                        "manifest must give val and test each an integer >= 1; rebuild the store")
    return minimum


def _by_source(store, ids: np.ndarray, assigned: np.ndarray, params: dict) -> Split:
    """The split that puts every source ``ids[i]`` in part ``assigned[i]`` (train, val, test)."""
    rows = np.arange(len(store.labels))
    member = [np.isin(store.source, ids[assigned == part]) for part in range(3)]
    names = {int(s["id"]): s["name"] for s in store.manifest.get("sources", [])}
    groups = {split: [names.get(int(i), int(i)) for i in sorted(ids[assigned == part])]
              for part, split in enumerate(("train", "val", "test"))}
    return _make(rows[member[0]], rows[member[1]], rows[member[2]],
                 {**params, "sources": groups, "source_counts": {k: len(v) for k, v in groups.items()}})


def check_folds(folds: int, fold: int, mode: str = "source") -> None:
    """Refuse a fold setting that names no fold, or K-fold on a block-level split."""
    if int(folds) != folds or folds < 1:
        raise UserError(f"folds={folds} must be an integer >= 1 (1 = a single train/val/test split)")
    if int(fold) != fold or not 0 <= fold < folds:
        raise UserError(f"fold={fold} must lie in 0..{folds - 1} for folds={folds}"
                        + ("; pass folds=K as well to cross-validate" if folds == 1 else ""))
    if folds > 1 and mode != "source":
        raise UserError(f"folds={folds} needs split_mode=source: cross-validation keeps every picture "
                        "in one fold")


def fold_of_sources(sizes: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of every source: a seeded order, each source to the fold with the fewest blocks
    so far (ties to the lowest fold), so folds hold about equal blocks and none is empty."""
    order = np.random.default_rng(seed).permutation(len(sizes))
    fold_of = np.empty(len(sizes), dtype=np.int64)
    filled = np.zeros(folds)
    for rank, k in enumerate(order):
        part = rank if rank < folds else int(np.argmin(filled))
        fold_of[k] = part
        filled[part] += sizes[k]
    return fold_of


def _fold_split(store, ids, sizes, fractions, seed, folds, fold, base, min_val) -> Split:
    if len(ids) < folds + 2:
        raise UserError(f"folds={folds} needs at least {folds + 2} sources (one per fold, and a training "
                        f"and a validation source besides the test fold); the store has {len(ids)}; "
                        "use fewer folds or a larger data set")
    fold_of = fold_of_sources(sizes, folds, seed)
    assigned = np.where(fold_of == fold, 2, 0)
    rest = np.flatnonzero(fold_of != fold)
    if len(rest) < 2:
        raise UserError(f"fold {fold} of {folds} tests all but {len(rest)} source(s), which cannot be both a "
                        "training and a validation source; use fewer folds or a data set with more sources")
    if len(rest) - 1 < min_val:
        raise UserError(f"fold {fold} of {folds} leaves {len(rest)} sources besides its test fold, too few for "
                        f"the store's {min_val} validation sources and a training one; use fewer folds")
    val_share = fractions[1] / (fractions[0] + fractions[1])
    # A seeded draw per fold; sources go to validation until it holds its share of the
    # remaining blocks and the store's minimum count, keeping at least one source on each side.
    order = rest[np.random.default_rng([seed, fold]).permutation(len(rest))]
    target, taken = val_share * sizes[rest].sum(), 0
    for rank, k in enumerate(order[:-1]):
        if rank >= min_val and taken >= target:
            break
        assigned[k], taken = 1, taken + sizes[k]
    return _by_source(store, ids, assigned, {**base, "folds": int(folds), "fold": int(fold)})


def pooled_fingerprint(fingerprints: list[str]) -> str:
    """One fingerprint for the K splits of a cross-validation (in fold order)."""
    return hashlib.sha256(",".join(fingerprints).encode()).hexdigest()
