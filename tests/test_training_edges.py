"""Edge cases of training: a last batch of one block, resuming a run that had stopped early,
Stage-1 checkpoints whose width the stem does not give back, Stage-1 runs of another split,
and runs left RUNNING by a failure before training started (real torch, a real SQLite store)."""
from __future__ import annotations

import copy
import dataclasses
import types

import mlflow
import numpy as np
import pytest
import torch

from av1_ablation.cli import main
from av1_ablation.errors import UserError
from av1_ablation.models import Backbone, Stage1Model, load_stage1_backbone, load_stage1_model, scaled_channels
from av1_ablation.record.contract import MODEL_CHECKPOINT
from av1_ablation.training.loop import History, Optimisation, fit, train_one_epoch, trained_blocks

SMOKE = ["--preset", "smoke", "--batch-size", "16"]


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


# --------------------------------------------------------------------------- the epoch loop
class TinyStage:
    """A stage of 16x16 random blocks through a real narrow backbone: layer3 and layer4 see
    1x1 maps, as in the real stages. ``scores`` are the validation scores of epochs 1, 2, ..."""

    score_key = "val_score"
    title = "tiny"

    def __init__(self, n_blocks: int, scores=(0.5,)):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(Backbone(0.125), torch.nn.LazyLinear(2))
        self.model(torch.rand(2, 1, 16, 16))  # materialise the lazy head
        self.blocks = torch.rand(n_blocks, 1, 16, 16)
        self.train_targets = torch.arange(n_blocks) % 2
        self.scores, self.validated, self.resume_points = list(scores), 0, []

    def optimisation(self) -> Optimisation:
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        return Optimisation(self.model, torch.nn.functional.cross_entropy, optimizer,
                            torch.optim.lr_scheduler.StepLR(optimizer, 1))

    def train_logits(self, idx, variants):
        return self.model(self.blocks[idx])

    def validate(self):
        self.validated += 1
        return {"val_loss": 0.0, "val_score": self.scores[self.validated - 1]}

    def record_epoch(self, history, metrics):
        # what Stage 2 keeps as its resume point: before fit() checks the patience
        self.resume_points.append(copy.deepcopy(dataclasses.asdict(history)))


def loop_cfg(**kw):
    return types.SimpleNamespace(**{"seed": 1, "sampler": "none", "augment": False, "batch_size": 4,
                                    "epochs": 1, "patience": 0, **kw})


def test_a_last_batch_of_one_block_is_left_out_not_a_batchnorm_crash():
    stage = TinyStage(9)  # batches of 4, 4 and 1
    opt = stage.optimisation()
    opt.model.train()
    metrics = train_one_epoch(opt, stage, loop_cfg(), epoch=1)
    assert np.isfinite(metrics["train_loss"])
    # every other epoch size keeps all its blocks, so ordinary runs are unchanged
    assert [trained_blocks(n, 4) for n in (8, 9, 10, 11)] == [8, 8, 10, 11]
    assert trained_blocks(135 * 128 + 1, 128) == 135 * 128  # --split-seed 23 on the default data
    with pytest.raises(UserError, match="two or more blocks"):
        trained_blocks(1, 128)


def test_a_batch_size_of_one_is_refused_before_training(tiny_dataset_two_qps, tracking_store, capsys):
    assert main(["train", "--data", str(tiny_dataset_two_qps), "--preset", "smoke",
                 "--batch-size", "1"]) == 2
    assert "batch_size=1 must be >= 2" in capsys.readouterr().err


def test_resuming_a_run_that_had_stopped_early_trains_no_more_epochs():
    cfg = loop_cfg(epochs=10, patience=2)
    scores = (0.5, 0.4, 0.3, 0.9, 0.1)  # stops after epoch 3; epoch 4 would be a new best
    stage = TinyStage(8, scores)
    first = fit(stage.optimisation(), stage, cfg)
    assert (first.epoch, first.best_epoch, first.stopped_early) == (3, 1, True)
    # interrupted after the last epoch's resume point was kept (while logging the results)
    point = stage.resume_points[-1]
    stage = TinyStage(8, scores)
    resumed = fit(stage.optimisation(), stage, cfg, history=History(**point))
    assert (resumed.epoch, resumed.best_epoch, resumed.stopped_early) == (3, 1, True)
    assert stage.validated == 0


# --------------------------------------------------------------------------- Stage-1 checkpoints
@pytest.mark.parametrize("width", [0.2, 0.3, 0.7])
def test_widths_whose_stem_does_not_give_them_back_load(tmp_path, width):
    model = Stage1Model(width)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "old.pt")  # no width recorded
    assert scaled_channels(load_stage1_backbone(tmp_path / "old.pt").width) == scaled_channels(width)
    torch.save({"model_state_dict": model.state_dict(), "width": width}, tmp_path / "new.pt")
    assert load_stage1_backbone(tmp_path / "new.pt").width == width
    torch.save({"model_state_dict": model.state_dict(), "config": {"width": width}}, tmp_path / "cfg.pt")
    assert load_stage1_backbone(tmp_path / "cfg.pt").width == width  # as training writes it
    assert load_stage1_model(tmp_path / "new.pt").backbone.width == width


def test_channel_counts_of_no_width_are_refused(tmp_path):
    state = Stage1Model(0.25).state_dict()
    torch.save({"model_state_dict": state, "width": 0.5}, tmp_path / "wrong_width.pt")
    with pytest.raises(UserError, match="recorded width 0.5"):
        load_stage1_backbone(tmp_path / "wrong_width.pt")
    state["backbone.layer4.0.conv1.weight"] = torch.ones(7, 64, 3, 3)  # 7 channels: no width gives 16..7
    torch.save({"model_state_dict": state}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="do not match any width"):
        load_stage1_backbone(tmp_path / "odd.pt")


def test_a_stage1_run_of_width_0_2_backs_a_stage2_run(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    common = ["--data", str(tiny_dataset_two_qps), *SMOKE, "--width", "0.2"]
    assert main(["stage1", *common]) == 0
    (stage1,) = client().search_runs([exp], "tags.`av1.kind` = 'stage1'")
    written = torch.load(mlflow.artifacts.download_artifacts(run_id=stage1.info.run_id,
                                                             artifact_path=MODEL_CHECKPOINT),
                         weights_only=True)
    assert written["config"]["width"] == 0.2  # what the loader reads: the channels do not give it back
    assert main(["train", *common, "--stage1", stage1.info.run_id, "--epochs", "2", "--patience", "5"]) == 0
    (run,) = client().search_runs([exp], "tags.`av1.kind` = 'stage2'")
    # the per-epoch series has one point per epoch; its mean has a name of its own
    history = client().get_metric_history(run.info.run_id, "train_blocks_per_s")
    assert sorted(m.step for m in history) == [1, 2]
    assert run.data.metrics["mean_train_blocks_per_s"] == pytest.approx(np.mean([m.value for m in history]))


# --------------------------------------------------------------------------- Stage-1 runs of other data
def test_a_stage1_run_of_another_split_or_data_set_is_refused(tiny_dataset, tiny_dataset_two_qps,
                                                               tracking_store, capsys):
    _, exp = tracking_store
    common = ["--data", str(tiny_dataset_two_qps), *SMOKE]
    assert main(["stage1", *common]) == 0
    (stage1,) = client().search_runs([exp], "tags.`av1.kind` = 'stage1'")
    capsys.readouterr()
    assert main(["train", *common, "--split-seed", "1", "--stage1", stage1.info.run_id]) == 2
    err = capsys.readouterr().err
    assert "trained on another split than this run" in err and "--split-seed 0" in err
    assert main(["train", "--data", str(tiny_dataset), *SMOKE, "--qp-input", "none",
                 "--stage1", stage1.info.run_id]) == 2
    assert "trained on another data set" in capsys.readouterr().err
    assert client().search_runs([exp], "tags.`av1.kind` = 'stage2'") == []


# --------------------------------------------------------------------------- runs left RUNNING
def test_a_child_failing_before_its_run_starts_ends_failed(tiny_dataset_two_qps, tracking_store):
    from av1_ablation.dataset.partitions import to_stage2
    from av1_ablation.training import config as config_mod
    from av1_ablation.training.ablation import _train_in_process
    from av1_ablation.training.children import child_name, new_child_run
    from av1_ablation.training.config import STAGE2_PRESETS, Stage2Config
    from av1_ablation.training.data import load_split_data

    _, exp = tracking_store
    cfg = config_mod.resolve(Stage2Config, {"data": str(tiny_dataset_two_qps), "preset": "smoke"},
                             STAGE2_PRESETS)
    data = load_split_data(cfg, to_stage2)
    # a FINISHED Stage-1 run of this split whose checkpoint is gone: downloading it raises an
    # MLflow error, not a UserError, before the child's run starts
    stage1 = client().create_run(exp, tags={"av1.kind": "stage1", **data.fingerprints()}).info.run_id
    client().set_terminated(stage1, "FINISHED")
    cfg = dataclasses.replace(cfg, stage1=stage1)
    parent = client().create_run(exp).info.run_id
    child = new_child_run(cfg, parent)
    assert _train_in_process(cfg, child, data) == child_name(cfg)
    run = client().get_run(child)
    assert run.info.status == "FAILED"
    assert run.data.tags["av1.failure_reason"]


def test_a_refused_ablation_split_ends_the_pending_run(tiny_dataset_two_qps, tracking_store, monkeypatch,
                                                       capsys):
    _, exp = tracking_store
    pending = client().create_run(exp).info.run_id  # what `mlflow run -e ablation` creates
    monkeypatch.setenv("MLFLOW_RUN_ID", pending)
    assert main(["ablation", "--folds", "20", "--losses", "baseline", "--seeds", "1",
                 "--data", str(tiny_dataset_two_qps), *SMOKE]) == 2
    run = client().get_run(pending)
    assert run.info.status == "FAILED"
    assert run.data.tags["av1.failure_reason"] in capsys.readouterr().err


# --------------------------------------------------------------------------- augmentation and sampling
def test_cached_prefix_with_per_block_variants_equals_the_whole_network():
    """The default training path reads ``cache[variants, idx]``: each block's prefix under its
    own dihedral variant must give the logits of the whole network on that transformed block,
    in train mode (adapter BatchNorm on batch statistics, head dropout), with repeated indices
    as the balanced sampler draws them."""
    from av1_ablation.models import Stage2Model
    from av1_ablation.training.prefix import PrefixCache, WholeNetwork
    from av1_ablation.training.tensors import DeviceBlocks

    torch.manual_seed(0)
    model = Stage2Model(width=0.125, qp_input="concat")
    for adapter in model.adapters.values():  # untrained adapters are the identity: make them act
        torch.nn.init.normal_(adapter.up.weight, std=0.5)
    rng = np.random.default_rng(0)
    n = 24
    splits = {"train": DeviceBlocks(rng.integers(0, 1024, (n, 16, 16)), rng.integers(0, 3, n),
                                    torch.device("cpu"), qindex=rng.choice([80, 128, 220], n))}
    cache = PrefixCache(model, splits, augment=True, batch_size=5)  # chunks of 5 in the cache
    whole = WholeNetwork(model, splits, batch_size=5)
    assert cache.features["train"].shape[0] == 8
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, n, (16,), generator=gen)
    variants = torch.randperm(16, generator=gen) % 8  # every variant twice, in random places
    assert len(set(idx.tolist())) < 16  # repeated blocks too
    model.train()
    with torch.no_grad():
        torch.manual_seed(7)  # the same dropout draws on both paths
        cached = cache.train_logits(idx, variants)
        torch.manual_seed(7)
        direct = whole.train_logits(idx, variants)
        torch.manual_seed(7)
        identity = whole.train_logits(idx, torch.zeros_like(variants))
    torch.testing.assert_close(cached, direct, rtol=1.3e-6, atol=1e-6)
    assert not torch.allclose(cached, identity, atol=1e-3)  # the variants do change the logits


def test_dihedral_variants_are_the_rotations_then_the_reflections_of_the_square():
    """``dihedral`` must give exactly the 8 symmetries of the square (built here from
    torch.rot90 of the block and of its transpose): 0 is the identity (the cache's slot 0,
    read when augmentation is off), 0..3 the rotations, 4..7 the transposed ones, as its
    docstring says."""
    from av1_ablation.training.tensors import N_DIHEDRAL, dihedral

    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)  # batch, channel, H, W

    def key(t):
        return tuple(t.flatten().tolist())

    rotations = {key(torch.rot90(x, k, dims=(-2, -1))) for k in range(4)}
    reflections = {key(torch.rot90(x.transpose(-1, -2), k, dims=(-2, -1))) for k in range(4)}
    assert len(rotations | reflections) == 8  # the group of the square, built independently
    images = [dihedral(x, v) for v in range(N_DIHEDRAL)]
    assert N_DIHEDRAL == 8 and all(im.shape == x.shape for im in images)
    assert torch.equal(images[0], x)
    assert {key(im) for im in images[:4]} == rotations
    assert {key(im) for im in images[4:]} == reflections


def test_balanced_sampler_draws_each_class_equally_often_from_skewed_targets():
    """``sampler="balanced"`` must undo an 80/15/5 imbalance: each class about 1/3 of the
    draws (within 5 binomial sd), reproducibly for one generator seed; ``none`` is a
    permutation of every block."""
    from av1_ablation.training.tensors import epoch_order

    n = 20_000
    targets = torch.cat([torch.full((16_000,), 0), torch.full((3_000,), 1), torch.full((1_000,), 2)])
    targets = targets[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    order = epoch_order(targets, "balanced", torch.Generator().manual_seed(1))
    assert order.shape == (n,) and order.dtype == torch.int64
    assert int(order.min()) >= 0 and int(order.max()) < n
    freq = torch.bincount(targets[order], minlength=3).double() / n
    sd = (1 / 3 * 2 / 3 / n) ** 0.5
    assert torch.all((freq - 1 / 3).abs() < 5 * sd), freq
    assert torch.equal(order, epoch_order(targets, "balanced", torch.Generator().manual_seed(1)))

    plain = epoch_order(targets, "none", torch.Generator().manual_seed(1))
    assert torch.equal(torch.sort(plain).values, torch.arange(n))
    assert not torch.equal(plain, torch.arange(n))  # shuffled, not the stored order


def test_stage_targets_of_every_partition_id_follow_the_libaom_types():
    """The full lookup, against libaom's PARTITION_TYPE ids written out here: Stage 1 is NONE vs
    the rest; Stage 2 is SPLIT / RECT (HORZ, VERT) / AB (HORZ_A/B, VERT_A/B), with -1 for NONE
    and the 1:4 types. A transpose (augmentation variants 4..7) keeps both targets."""
    from av1_ablation.dataset.partitions import Partition, to_stage1, to_stage2

    libaom = {"NONE": 0, "HORZ": 1, "VERT": 2, "SPLIT": 3, "HORZ_A": 4, "HORZ_B": 5,
              "VERT_A": 6, "VERT_B": 7, "HORZ_4": 8, "VERT_4": 9}
    assert {p.name: int(p) for p in Partition} == libaom
    split, rect, ab, none = 0, 1, 2, -1
    stage2 = {"NONE": none, "HORZ": rect, "VERT": rect, "SPLIT": split, "HORZ_A": ab, "HORZ_B": ab,
              "VERT_A": ab, "VERT_B": ab, "HORZ_4": none, "VERT_4": none}
    ids = np.arange(10)
    names = [name for name, _ in sorted(libaom.items(), key=lambda kv: kv[1])]
    assert to_stage2(ids).tolist() == [stage2[name] for name in names]
    assert to_stage1(ids).tolist() == [0] + [1] * 9
    assert [int(to_stage2(i)) for i in ids] == to_stage2(ids).tolist()  # scalars look up the same
    transpose = {"HORZ": "VERT", "VERT": "HORZ", "HORZ_A": "VERT_A", "VERT_A": "HORZ_A",
                 "HORZ_B": "VERT_B", "VERT_B": "HORZ_B", "HORZ_4": "VERT_4", "VERT_4": "HORZ_4"}
    swapped = np.array([libaom[transpose.get(name, name)] for name in names])
    assert to_stage2(swapped).tolist() == to_stage2(ids).tolist()
    assert to_stage1(swapped).tolist() == to_stage1(ids).tolist()
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="partition ids"):
            to_stage2([bad])
        with pytest.raises(ValueError, match="partition ids"):
            to_stage1([bad])
