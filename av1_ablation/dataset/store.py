"""The block store: a directory of ``.npy`` arrays plus ``manifest.json``.

Layout (``FORMAT_VERSION`` 1)::

    manifest.json  format version, tool versions, settings, sources, counts,
                   sha256 of every array file
    blocks.npy     uint16 (N, 16, 16)  10-bit luma of each existing 16x16 node
    labels.npy     uint8  (N,)         partition id 0..9
    qindex.npy     uint16 (N,)         base qindex of the encode
    source.npy     int32  (N,)         index into manifest["sources"]
    frame.npy      int32  (N,)         frame number in the source (-1 unknown)
    pos.npy        int32  (N, 2)       pixel (y, x) of the node (-1 unknown)

A store is written into a temporary sibling directory and renamed into place
once complete, so a reader never sees a half-written store.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from av1_ablation.dataset.atomic import atomic_directory
from av1_ablation.dataset.partitions import ONE_TO_FOUR, PARTITION_NAMES, STAGE2_GROUPS
from av1_ablation.errors import UserError

FORMAT_VERSION = 1
ARRAYS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "blocks": (np.dtype(np.uint16), (16, 16)),
    "labels": (np.dtype(np.uint8), ()),
    "qindex": (np.dtype(np.uint16), ()),
    "source": (np.dtype(np.int32), ()),
    "frame": (np.dtype(np.int32), ()),
    "pos": (np.dtype(np.int32), (2,)),
}


@dataclass(frozen=True)
class BlockStore:
    """A loaded block store (see the module docstring for the arrays)."""

    path: Path
    manifest: dict
    fingerprint: str  # sha256 hex of manifest.json's bytes
    blocks: np.ndarray
    labels: np.ndarray
    qindex: np.ndarray
    source: np.ndarray
    frame: np.ndarray
    pos: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def class_counts(labels: np.ndarray) -> dict:
    """Counts per partition type and per Stage-2 group (1:4 types apart)."""
    per_type = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(PARTITION_NAMES))
    by_name = {name: int(per_type[i]) for i, name in enumerate(PARTITION_NAMES)}
    groups = {g: int(sum(per_type[int(p)] for p in members)) for g, members in STAGE2_GROUPS.items()}
    return {"per_type": by_name, "stage2": groups, "one_to_four": int(sum(per_type[int(p)] for p in ONE_TO_FOUR))}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_arrays(arrays: dict[str, np.ndarray]) -> int:
    """Check names, dtypes and shapes of store arrays; return N."""
    if set(arrays) != set(ARRAYS):
        raise ValueError(f"store arrays must be exactly {sorted(ARRAYS)}; got {sorted(arrays)}")
    n = len(arrays["labels"])
    for name, (dtype, tail) in ARRAYS.items():
        a = arrays[name]
        if a.dtype != dtype or a.shape != (n, *tail):
            raise ValueError(f"array {name}: expected {dtype} {(n, *tail)}, got {a.dtype} {a.shape}")
    if n and arrays["labels"].max() >= len(PARTITION_NAMES):
        raise ValueError("labels must be partition ids 0..9")
    return n


def write_store(out: Path, arrays: dict[str, np.ndarray], manifest: dict, *, overwrite: bool = False) -> Path:
    """Write a complete store to ``out`` atomically.

    The arrays go to a temporary sibling directory with the manifest (which
    gains ``format_version``, ``num_blocks``, ``counts`` and ``files``); the
    directory is then renamed to ``out``. An existing ``out`` is replaced only
    with ``overwrite``.
    """
    n = check_arrays(arrays)
    out = Path(out)
    empty_dir = out.is_dir() and not any(out.iterdir())
    if out.exists() and not (overwrite or empty_dir):
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    with atomic_directory(out) as tmp:
        files = {}
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
            files[f"{name}.npy"] = _sha256(tmp / f"{name}.npy")
        manifest = {"format_version": FORMAT_VERSION, **manifest, "num_blocks": n,
                    "counts": class_counts(arrays["labels"]), "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(path) -> dict:
    """The manifest of the store at ``path``."""
    mpath = Path(path) / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"{path} has no manifest.json; build a store with `av1-ablation dataset --out {path}`")
    try:
        return json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{mpath} is not valid JSON ({exc}); rebuild with `av1-ablation dataset --overwrite`") from None


def load_store(path, *, verify: bool = True) -> BlockStore:
    """Load a block store.

    Parameters
    ----------
    path : path-like
        Store directory (holds ``manifest.json``).
    verify : bool, default=True
        Check each array file's sha256 against the manifest.

    Raises
    ------
    UserError
        Missing manifest, unsupported format, missing or corrupted array file.
    """
    path = Path(path)
    manifest = read_manifest(path)
    raw = (path / "manifest.json").read_bytes()
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: store format {manifest.get('format_version')} is not {FORMAT_VERSION}; "
                        "rebuild it with `av1-ablation dataset --overwrite`")
    arrays = {}
    for name in ARRAYS:
        fpath = path / f"{name}.npy"
        if not fpath.is_file():
            raise UserError(f"{fpath} is missing; rebuild the store with `av1-ablation dataset --overwrite`")
        if verify and _sha256(fpath) != manifest["files"].get(f"{name}.npy"):
            raise UserError(f"{fpath} is corrupted (sha256 differs from manifest.json); "
                            "rebuild the store with `av1-ablation dataset --overwrite`")
        try:
            arrays[name] = np.load(fpath, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{fpath} is not a readable .npy file ({exc}); rebuild the store") from None
    try:
        check_arrays(arrays)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; rebuild the store with `av1-ablation dataset --overwrite`") from None
    return BlockStore(path=path, manifest=manifest, fingerprint=hashlib.sha256(raw).hexdigest(), **arrays)
