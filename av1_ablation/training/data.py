"""What every training command needs before its loop: device, data, split, their tags."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from av1_ablation.errors import UserError
from av1_ablation.record.contract import (DATASET_FINGERPRINT_TAG, DATASET_PATH_TAG, SPLIT_FINGERPRINT_TAG,
                                          SPLIT_NOTE_TAG, split_size_param, split_sources_param)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but no CUDA device is available; use device=cpu or auto")
    return device


@dataclass(frozen=True)
class SplitData:
    """A data set, its split, and the block indices of one stage's label space."""

    store: object  # av1_ablation.dataset.BlockStore
    split: object  # av1_ablation.dataset.Split
    index: dict[str, np.ndarray]  # split name -> block indices into the store
    targets: dict[str, np.ndarray]  # split name -> class targets of those blocks

    def fingerprints(self) -> dict[str, str]:
        """The tags that identify the data a run saw."""
        return {DATASET_FINGERPRINT_TAG: self.store.fingerprint,
                SPLIT_FINGERPRINT_TAG: self.split.fingerprint}

    def tags(self) -> dict[str, str]:
        return {**self.fingerprints(), DATASET_PATH_TAG: str(self.store.path),
                **({SPLIT_NOTE_TAG: self.split.note} if self.split.note else {})}

    def params(self) -> dict[str, str]:
        """The split sizes in blocks and in sources, as run params."""
        return {**{split_size_param(name): str(len(idx)) for name, idx in self.index.items()},
                **{split_sources_param(name): str(len(np.unique(self.store.source[idx])))
                   for name, idx in self.index.items()}}

    def on_device(self, device) -> dict:
        """Split name -> :class:`~av1_ablation.training.tensors.DeviceBlocks` of this stage's blocks."""
        from av1_ablation.training.tensors import DeviceBlocks

        return {k: DeviceBlocks(self.store.blocks[idx], self.targets[k], device,
                                qindex=self.store.qindex[idx])
                for k, idx in self.index.items()}

    def check_qp_input(self, qp_input: str) -> None:
        """Refuse QP input on a data set whose training blocks share one qindex (a legacy
        import stores the original pipeline's constant): the model could learn nothing from it."""
        if qp_input == "none":
            return
        values = np.unique(self.store.qindex[self.index["train"]])
        if len(values) < 2:
            raise UserError(f"qp_input={qp_input} needs training blocks encoded at two or more QPs, "
                            f"but every training block of {self.store.path} has qindex "
                            f"{values[0] if len(values) else '(none)'}; use qp_input=none with this "
                            "data set, or build one with `av1-ablation dataset --qp ...`")


def load_split_data(cfg, to_target, *, every_fold: bool = False):
    """Load ``cfg.data`` (building the embedded default on first use), split it (fold
    ``cfg.fold`` of ``cfg.folds``), keep the blocks that ``to_target`` maps to a class
    (targets < 0 are dropped), and check that ``cfg.qp_input`` can be learnt from them.

    ``every_fold``: a list with the :class:`SplitData` of each of the ``cfg.folds`` folds
    (one store in memory for all), instead of one."""
    from av1_ablation.dataset import ensure_dataset, load_store, make_split

    store = load_store(ensure_dataset(cfg.data or None))
    folds = range(cfg.folds) if every_fold else [cfg.fold]
    out = []
    for fold in folds:
        split = make_split(store, mode=cfg.split_mode, seed=cfg.split_seed, folds=cfg.folds, fold=fold)
        out.append(select(store, split, to_target))
        out[-1].check_qp_input(cfg.qp_input)
    return out if every_fold else out[0]


def cross_validation_tags(folds: list[SplitData]) -> dict[str, str]:
    """The data tags of work that spans every fold (an ablation parent): the split
    fingerprint becomes the fingerprint of the K splits."""
    from av1_ablation.dataset import pooled_fingerprint

    tags = folds[0].tags()
    if len(folds) > 1:
        tags[SPLIT_FINGERPRINT_TAG] = pooled_fingerprint([d.split.fingerprint for d in folds])
    return tags


def select(store, split, to_target) -> SplitData:
    """The blocks of each split that ``to_target`` maps to a class of this stage."""
    index, targets = {}, {}
    for name in ("train", "val", "test"):
        idx = np.asarray(getattr(split, name), dtype=np.int64)
        y = to_target(store.labels[idx])
        index[name], targets[name] = idx[y >= 0], y[y >= 0]
    for name in ("train", "val"):
        if len(index[name]) == 0:
            raise UserError(f"the {name} split of {store.path} has no blocks for this stage; "
                            "build a larger data set (more sources) with `av1-ablation dataset`")
    print(f"data set {store.path}: {len(store.labels)} blocks; this stage uses "
          + " / ".join(f"{len(index[k])} {k}" for k in index)
          + (f" ({split.note})" if split.note else ""))
    return SplitData(store, split, index, targets)


def log_dataset_input(data: SplitData) -> None:
    """Record the data set as an MLflow dataset input (digest = manifest fingerprint)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    dataset = MetaDataset(LocalArtifactDatasetSource(str(data.store.path)),
                          name=data.store.path.name, digest=data.store.fingerprint[:16])
    mlflow.log_input(dataset, context="training")
