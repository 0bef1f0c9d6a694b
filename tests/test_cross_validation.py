"""Cross-validation by picture: a real tiny K-fold ablation, pooled by ``compare``."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from av1_ablation.cli import main
from av1_ablation.comparison.folds import pool_folds
from av1_ablation.comparison.runs import RunRecord
from av1_ablation.dataset import load_store
from av1_ablation.dataset.partitions import to_stage2


@pytest.mark.slow
def test_kfold_ablation_tests_every_picture_once_and_compare_pools_the_folds(tiny_dataset_two_qps,
                                                                            tracking_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    _, exp = tracking_store
    assert main(["ablation", "--losses", "baseline,poly", "--seeds", "1,2", "--folds", "2",
                 "--data", str(tiny_dataset_two_qps), "--preset", "smoke", "--batch-size", "16"]) == 0
    client = MlflowClient()
    children = client.search_runs([exp], "tags.`av1.kind` = 'stage2'")
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{loss}-seed{seed}-fold{fold}" for loss in ("baseline", "poly") for seed in (1, 2) for fold in (0, 1))
    # one Stage-1 backbone per fold, trained without that fold's test pictures
    stage1 = client.search_runs([exp], "tags.`av1.kind` = 'stage1'")
    assert sorted(r.data.params["cfg.fold"] for r in stage1) == ["0", "1"]
    for child in children:
        backbone = next(r for r in stage1 if r.info.run_id == child.data.tags["av1.stage1_run_id"])
        assert backbone.data.params["cfg.fold"] == child.data.params["cfg.fold"]
        assert backbone.data.tags["av1.split_fingerprint"] == child.data.tags["av1.split_fingerprint"]

    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), "--n-resamples", "200", "--min-seeds", "2", "--no-log"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    per_seed = pd.DataFrame(summary["groups"][0]["per_seed"])
    assert len(per_seed) == 4 and sorted(per_seed.seed) == [1, 1, 2, 2]  # one pooled record per arm and seed
    assert all(len(rid.split(",")) == 2 for rid in per_seed.run_id)
    # the pooled score is the macro-F1 over every Stage-2 block of the data set
    n_stage2 = int((to_stage2(load_store(tiny_dataset_two_qps).labels) >= 0).sum())
    first = per_seed.iloc[0]
    pooled = pd.concat([pd.read_csv(client.download_artifacts(rid, "predictions/test.csv", str(tmp_path / rid)))
                        for rid in first.run_id.split(",")])
    assert pooled.block_index.is_unique and len(pooled) == n_stage2
    assert summary["groups"][0]["verdict"]


def _record(loss, seed, fold, blocks, folds=2):
    frame = pd.DataFrame({"block_index": blocks, "y_true": np.zeros(len(blocks), int),
                          "y_pred": np.zeros(len(blocks), int), "p_split": 1.0, "p_rect": 0.0, "p_ab": 0.0,
                          "qindex": 80, "cluster": blocks})
    return RunRecord(run_id=f"{loss}{seed}{fold}", run_name=f"{loss}-seed{seed}-fold{fold}", loss_type=loss,
                     seed=seed, params={"cfg.folds": str(folds), "cfg.fold": str(fold)},
                     tags={"av1.split_fingerprint": f"s{fold}"},
                     metrics={"best_val_macro_f1": 0.5 + fold / 10, "train_seconds": 10.0},
                     val_curve=[(0, 0.4), (1, 0.5 + fold)][: 1 + fold], predictions=frame)


def test_a_seed_with_a_missing_fold_is_left_out_whole():
    records = [_record("baseline", 1, 0, [0, 1]), _record("baseline", 1, 1, [2, 3]), _record("poly", 1, 0, [0, 1])]
    pooled, left_out = pool_folds(records)
    (only,) = pooled
    assert only.loss_type == "baseline" and list(only.predictions.block_index) == [0, 1, 2, 3]
    assert only.metrics["best_val_macro_f1"] == pytest.approx(0.55) and only.metrics["train_seconds"] == 20
    assert only.metrics["test_macro_f1"] == pytest.approx(1 / 3)  # one class of three, all right
    assert only.val_curve == [(0, 0.4), (1, 1.5)] and only.run_name == "baseline-seed1"
    assert [item["run_id"] for item in left_out] == ["poly10"] and "fold(s) 1 of 2" in left_out[0]["reason"]


def test_fold_runs_that_test_a_block_twice_are_refused():
    from av1_ablation.errors import UserError

    with pytest.raises(UserError, match="test some blocks twice"):
        pool_folds([_record("baseline", 1, 0, [0, 1]), _record("baseline", 1, 1, [1, 2])])


def test_a_fold_needs_sources_for_training_and_validation(tmp_path):
    from av1_ablation.dataset import make_split
    from av1_ablation.dataset.store import write_store
    from av1_ablation.errors import UserError

    # four sources, one of them nearly all the blocks: with 2 folds it fills one fold alone
    source = np.array([0] * 100 + [1, 2, 3], dtype=np.int32)
    n = len(source)
    arrays = {"blocks": np.zeros((n, 16, 16), np.uint16), "labels": np.full(n, 3, np.uint8),
              "qindex": np.zeros(n, np.uint16), "source": source, "frame": np.zeros(n, np.int32),
              "pos": np.zeros((n, 2), np.int32)}
    store = load_store(write_store(tmp_path / "s", arrays, {"kind": "test", "sources": [
        {"id": i, "name": f"s{i}"} for i in range(4)]}))
    outcomes = []
    for fold in (0, 1):
        try:
            outcomes.append(len(make_split(store, folds=2, fold=fold, seed=0).val) > 0)
        except UserError as exc:
            assert "cannot be both a training and a validation source" in str(exc)
            outcomes.append("refused")
    assert "refused" in outcomes  # the fold whose other fold is the one big source


@pytest.mark.slow
def test_a_backbone_of_another_split_is_refused_in_a_fold(tiny_dataset_two_qps, tracking_store, capsys):
    from mlflow.tracking import MlflowClient

    _, exp = tracking_store
    common = ["--data", str(tiny_dataset_two_qps), "--preset", "smoke", "--batch-size", "16"]
    assert main(["stage1", *common]) == 0
    (single,) = MlflowClient().search_runs([exp], "tags.`av1.kind` = 'stage1'")
    capsys.readouterr()
    assert main(["train", *common, "--folds", "2", "--fold", "1", "--stage1", single.info.run_id]) == 2
    assert "trained on another split" in capsys.readouterr().err
