"""Importers for the data of the original research repository (chiarorosa/cnn-av1-research).

* ``legacy-raw:DIR``: the raw layout, per sequence ``intra_raw_blocks/<seq>_sample_16.txt``
  (binary uint16 little-endian, N x 16 x 16, no header), ``labels/<seq>_labels_16_intra.txt``
  and ``qps/<seq>_qps_16_intra.txt`` (one decimal integer per line), aligned by index.
* ``legacy-pt:FILE``: the prepared ``train.pt`` and its sibling ``val.pt`` (``torch.save``
  dicts with float32 ``samples`` = uint16 / 1023, ``labels_stage0`` and ``qps``).

Neither records positions or frames (stored as -1). Their "QP" column is the
constant 80 the original pipeline wrote; it is copied into ``qindex`` as is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from av1_ablation.dataset.sources import file_sha256
from av1_ablation.errors import UserError

_SAMPLES = "intra_raw_blocks/{}_sample_16.txt"
_LABELS = "labels/{}_labels_16_intra.txt"
_QPS = "qps/{}_qps_16_intra.txt"
_QP_NOTE = "copied from the original files; the original pipeline wrote the constant 80 there"


def _read_ints(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise UserError(f"{path} is not a list of integers ({exc})") from None


def _arrays(blocks, labels, qps, source) -> dict:
    n = len(labels)
    return {
        "blocks": blocks.astype(np.uint16), "labels": labels.astype(np.uint8),
        "qindex": qps.astype(np.uint16), "source": source.astype(np.int32),
        "frame": np.full(n, -1, dtype=np.int32), "pos": np.full((n, 2), -1, dtype=np.int32),
    }


def _check_values(where, blocks, labels, qps):
    if blocks.size and blocks.max() > 1023:
        raise UserError(f"{where}: samples above 1023; expected 10-bit blocks")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{where}: labels outside the partition ids 0..9")
    if qps.size and (qps.min() < 0 or qps.max() > 255):
        raise UserError(f"{where}: QP values outside 0..255")


def import_legacy_raw(dirs: list[Path]) -> tuple[dict, dict]:
    """Read the original raw layout from one or more directories.

    Sequences are taken in sorted name order, one source each. Unlike the
    original loader, a sequence with a missing file or with sample, label and
    QP counts that disagree is an error, not silently skipped or misaligned.

    Returns
    -------
    arrays : dict of ndarray
        Store arrays (see :mod:`av1_ablation.dataset.store`).
    manifest : dict
        Manifest fields describing the import.
    """
    parts, sources, request_sources = [], [], []
    for root in dirs:
        root = Path(root)
        seqs = sorted(p.name[: -len("_sample_16.txt")] for p in (root / "intra_raw_blocks").glob("*_sample_16.txt"))
        if not seqs:
            raise UserError(f"{root}: no intra_raw_blocks/<seq>_sample_16.txt files; is this the original raw layout?")
        for seq in seqs:
            paths = [root / t.format(seq) for t in (_SAMPLES, _LABELS, _QPS)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise UserError(f"sequence {seq}: missing {', '.join(missing)}")
            raw = paths[0].read_bytes()
            if len(raw) % 512:
                raise UserError(f"{paths[0]}: {len(raw)} bytes is not a whole number of 16x16 uint16 blocks")
            blocks = np.frombuffer(raw, dtype="<u2").reshape(-1, 16, 16)
            labels, qps = _read_ints(paths[1]), _read_ints(paths[2])
            if not len(blocks) == len(labels) == len(qps):
                raise UserError(f"sequence {seq}: {len(blocks)} samples, {len(labels)} labels, {len(qps)} QPs; "
                                "the three files must have one entry per block")
            _check_values(f"sequence {seq}", blocks, labels, qps)
            sid = len(sources)
            digest = hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()
            sources.append({"id": sid, "kind": "legacy-raw", "name": seq, "spec": f"legacy-raw:{root}",
                            "sha256": digest, "frames": None, "size": None, "num_blocks": len(labels)})
            request_sources.append({"spec": f"legacy-raw:{root}", "name": seq, "sha256": digest})
            parts.append(_arrays(blocks, labels, qps, np.full(len(labels), sid)))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    manifest = {"kind": "legacy-raw", "sources": sources, "request_sources": request_sources,
                "qindex_note": _QP_NOTE}
    return arrays, manifest


def _load_pt(path: Path) -> dict:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        raise UserError(f"cannot read {path} as a torch file ({exc})") from None
    need = {"samples", "labels_stage0", "qps"}
    if not isinstance(data, dict) or not need <= set(data):
        raise UserError(f"{path}: expected a dict with keys {sorted(need)} (the original prepared format)")
    samples = data["samples"].numpy()
    labels, qps = data["labels_stage0"].numpy(), data["qps"].numpy()
    if samples.ndim != 4 or samples.shape[1:] != (1, 16, 16):
        raise UserError(f"{path}: samples have shape {samples.shape}, expected (N, 1, 16, 16)")
    if not len(samples) == len(labels) == len(qps):
        raise UserError(f"{path}: {len(samples)} samples, {len(labels)} labels, {len(qps)} QPs")
    # The samples were uint16 / 1023 in float32: round back and prove it exact.
    scaled = samples[:, 0].astype(np.float64) * 1023.0
    blocks = np.rint(scaled)
    deviation = float(np.abs(scaled - blocks).max(initial=0.0))
    if deviation > 1e-3 or (blocks.size and (blocks.min() < 0 or blocks.max() > 1023)):
        raise UserError(f"{path}: samples are not 10-bit values / 1023 (off by up to {deviation:.3g}); "
                        "only the original prepared train.pt/val.pt can be imported")
    rq = np.rint(qps)
    if (rq != qps).any():
        raise UserError(f"{path}: non-integer QP values")
    _check_values(str(path), blocks, labels, rq)
    return {"blocks": blocks, "labels": labels, "qps": rq, "deviation": deviation}


def import_legacy_pt(train_path: Path) -> tuple[dict, dict]:
    """Read the original prepared ``train.pt`` and its sibling ``val.pt``.

    The two files become sources 0 (train) and 1 (val); ``manifest["legacy_split"]``
    keeps the original block-level assignment for :func:`make_split`.
    """
    train_path = Path(train_path)
    val_path = train_path.with_name("val.pt")
    if not val_path.is_file():
        raise UserError(f"{val_path} not found: a legacy-pt import reads train.pt and its sibling val.pt")
    parts, sources, request_sources = [], [], []
    for sid, path in enumerate((train_path, val_path)):
        d = _load_pt(path)
        digest = file_sha256(path)
        sources.append({"id": sid, "kind": "legacy-pt", "name": path.stem, "spec": f"legacy-pt:{path}",
                        "sha256": digest, "frames": None, "size": None, "num_blocks": len(d["labels"]),
                        "max_rounding_deviation": d["deviation"]})
        request_sources.append({"spec": f"legacy-pt:{path}", "sha256": digest})
        parts.append(_arrays(d["blocks"], d["labels"], d["qps"], np.full(len(d["labels"]), sid)))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    manifest = {"kind": "legacy-pt", "sources": sources, "request_sources": request_sources,
                "legacy_split": {"train": 0, "val": 1}, "qindex_note": _QP_NOTE}
    return arrays, manifest
