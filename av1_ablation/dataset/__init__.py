"""Labelled 16x16 block data set: AV1 partition types chosen by libaom."""
from av1_ablation.dataset.build import DEFAULT_DATA_DIR, build_dataset, ensure_dataset
from av1_ablation.dataset.split import Split, make_split, pooled_fingerprint
from av1_ablation.dataset.store import BlockStore, load_store

__all__ = [
    "DEFAULT_DATA_DIR",
    "BlockStore",
    "Split",
    "build_dataset",
    "ensure_dataset",
    "load_store",
    "make_split",
    "pooled_fingerprint",
]
