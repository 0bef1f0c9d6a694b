"""The compare command against a temporary MLflow store with runs logged per the training contract."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from av1_ablation import compare
from av1_ablation.errors import UserError
from av1_ablation.metrics import calibration_metrics, classification_metrics

N_BLOCKS = 240
CFG = {"cfg.epochs": "3", "cfg.batch_size": "64", "cfg.lr_head": "0.001", "cfg.width": "16",
       "cfg.device": "cpu"}
TAGS = {"av1.dataset_fingerprint": "d1", "av1.split_fingerprint": "s1", "av1.stage1_run_id": "r1"}
ACCURACY = {"baseline": 0.55, "poly": 0.75, "asymmetric": 0.5}


def _predictions(loss_type, seed):
    rng = np.random.default_rng(1000 * seed + len(loss_type))
    y = np.random.default_rng(0).integers(0, 3, N_BLOCKS)
    pred = np.where(rng.random(N_BLOCKS) < ACCURACY[loss_type], y, rng.integers(0, 3, N_BLOCKS))
    proba = rng.dirichlet([1, 1, 1], N_BLOCKS) * 0.4
    proba[np.arange(N_BLOCKS), pred] += 0.6
    return pd.DataFrame({"block_index": np.arange(N_BLOCKS) * 3, "y_true": y, "y_pred": pred,
                         "p_split": proba[:, 0], "p_rect": proba[:, 1], "p_ab": proba[:, 2]})


def log_stage2_run(client, exp_id, tmp_path, loss_type, seed, *, parent=None, cfg=None,
                   status="FINISHED", predictions=True):
    tags = {"av1.kind": "stage2", **TAGS}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=f"{loss_type}-{seed}")
    rid = run.info.run_id
    params = {"loss_type": loss_type, "seed": str(seed), "cfg.loss_type": loss_type,
              "cfg.seed": str(seed), **CFG, **(cfg or {})}
    frame = _predictions(loss_type, seed)
    metrics = classification_metrics(frame.y_true, frame.y_pred, prefix="test_")
    metrics.update(calibration_metrics(frame.y_true, frame[["p_split", "p_rect", "p_ab"]], prefix="test_"))
    metrics.update(best_val_macro_f1=metrics["test_macro_f1"] + 0.01, best_epoch=2, epochs_run=3,
                   trainable_params=1234, total_params=5678, train_seconds=1.5, train_blocks_per_s=900.0)
    logged = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    logged += [Metric("val_macro_f1", metrics["test_macro_f1"] - 0.05 * (2 - e), 0, e) for e in range(3)]
    client.log_batch(rid, metrics=logged, params=[Param(k, v) for k, v in params.items()])
    if predictions:
        folder = tmp_path / "upload" / rid / "predictions"
        folder.mkdir(parents=True)
        frame.to_csv(folder / "test.csv", index=False)
        client.log_artifact(rid, str(folder / "test.csv"), "predictions")
    client.set_terminated(rid, status)
    return rid


def log_ablation(client, exp_id, tmp_path, arms=("baseline", "poly", "asymmetric"), seeds=(1, 2, 3)):
    parent = client.create_run(exp_id, tags={"av1.kind": "ablation"}).info.run_id
    ids = [log_stage2_run(client, exp_id, tmp_path, a, s, parent=parent) for a in arms for s in seeds]
    client.set_terminated(parent)
    return parent, ids


def parse(*argv):
    parser = argparse.ArgumentParser()
    compare.configure(parser)
    return parser.parse_args(["--n-resamples", "200", *argv])


@pytest.mark.slow
def test_normal_comparison_writes_reports_and_logs_a_compare_run(tracking_store, tmp_path, capsys):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    parent, ids = log_ablation(client, exp_id, tmp_path)
    failed = log_stage2_run(client, exp_id, tmp_path, "poly", 9, parent=parent, status="FAILED")

    assert compare.run(parse("--out", "cmp")) == 0
    printed = capsys.readouterr().out
    assert f"left out: run {failed}" in printed and "Table 1" in printed

    out = tmp_path / "cmp"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["compared_run_ids"]) == sorted(ids)
    group = summary["groups"][0]
    assert group["winner"] == "poly" and group["arms"][0] == "baseline"
    assert group["primary_test"] == "welch"
    assert "Holm" in group["verdict"] and "poly" in group["verdict"]

    # Across-seed statistics equal scipy on the logged test macro-F1 values.
    per_seed = pd.DataFrame(group["per_seed"])
    a = per_seed[per_seed.loss_type == "poly"].test_macro_f1
    b = per_seed[per_seed.loss_type == "baseline"].test_macro_f1
    seeds = group["tests"]["poly"]["seeds"]
    assert seeds["welch_p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert seeds["mannwhitney_p"] == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue)
    assert len(group["tests"]["poly"]["per_seed"]) == 3
    # A 20-point accuracy gap on 720 pooled blocks: the bootstrap CI excludes 0.
    assert group["tests"]["poly"]["bootstrap_pooled"]["ci_low"] > 0

    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.loss_type) == ["baseline", "poly", "asymmetric"]
    assert {"test_macro_f1_mean", "test_f1_ab_sd", "welch_holm", "seed_criterion"} <= set(csv.columns)
    report = (out / "report.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Verdict"):
        assert title in report
    assert {p.name for p in (out / "figures").iterdir()} >= {
        "macro_f1.png", "per_class_f1.png", "val_learning_curves.png", "reliability.png",
        "confusion_baseline.png"}

    runs = client.search_runs([exp_id], "tags.`av1.kind` = 'compare'")
    assert len(runs) == 1
    assert set(runs[0].data.tags["av1.compared_run_ids"].split(",")) == set(ids)
    assert any(f.path == "report.md" for f in client.list_artifacts(runs[0].info.run_id))

    # A second compare ignores the compare run and replaces the output folder.
    assert compare.run(parse("--out", "cmp", "--no-log")) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cmp")]


def test_too_few_seeds_reports_not_enough_seeds(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    log_ablation(MlflowClient(uri), exp_id, tmp_path, arms=("baseline", "poly"), seeds=(1, 2))
    selection, [c] = compare.compare(parse())
    assert c.tests["poly"].seeds.welch_p is None
    assert "not enough seeds" in c.tests["poly"].seeds.note
    assert c.primary_test == "bootstrap"


def test_non_comparable_runs_are_refused_naming_the_param(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    parent, _ = log_ablation(client, exp_id, tmp_path, arms=("baseline", "poly"), seeds=(1,))
    log_stage2_run(client, exp_id, tmp_path, "baseline", 2, parent=parent, cfg={"cfg.epochs": "9"})
    log_stage2_run(client, exp_id, tmp_path, "poly", 2, parent=parent, cfg={"cfg.epochs": "9"})
    with pytest.raises(UserError, match=r"cfg\.epochs differs.*--group-by cfg\.epochs"):
        compare.compare(parse())
    assert not (tmp_path / "compare_output").exists()
    # Grouping compares within each epochs value instead.
    _, comparisons = compare.compare(parse("--group-by", "cfg.epochs"))
    assert sorted(c.group for c in comparisons) == ["cfg.epochs=3", "cfg.epochs=9"]


def test_different_dataset_tag_is_not_comparable(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    log_stage2_run(client, exp_id, tmp_path, "baseline", 1)
    rid = log_stage2_run(client, exp_id, tmp_path, "poly", 1)
    client.set_tag(rid, "av1.split_fingerprint", "other")
    with pytest.raises(UserError, match="av1.split_fingerprint"):
        compare.compare(parse())


def test_no_runs_is_a_clear_error(tracking_store):
    with pytest.raises(UserError, match="no finished Stage-2 runs"):
        compare.run(parse())


def test_missing_reference_arm(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    log_ablation(MlflowClient(uri), exp_id, tmp_path, arms=("poly", "asymmetric"), seeds=(1,))
    with pytest.raises(UserError, match="reference arm 'baseline'.*--reference"):
        compare.run(parse())
    assert compare.compare(parse("--reference", "poly"))[1][0].reference == "poly"


def test_missing_predictions_artifact(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    log_stage2_run(client, exp_id, tmp_path, "baseline", 1)
    rid = log_stage2_run(client, exp_id, tmp_path, "poly", 1, predictions=False)
    with pytest.raises(UserError, match=f"{rid}.*predictions/test.csv"):
        compare.run(parse("--out", "x"))
    assert not (tmp_path / "x").exists()


def test_unknown_parent_id(tracking_store):
    with pytest.raises(UserError, match="no run with id 'deadbeef'"):
        compare.run(parse("--parent", "deadbeef"))


def test_unreachable_tracking_store(tracking_store, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with pytest.raises(UserError, match="does not exist"):
        compare.run(parse("--out", "y"))
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "y").exists()


def test_bad_options_are_user_errors(tracking_store):
    with pytest.raises(UserError, match="--alpha"):
        compare.run(parse("--alpha", "2"))


def test_filter_selects_runs_and_bad_filter_is_a_user_error(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    log_ablation(client, exp_id, tmp_path, arms=("baseline", "poly"), seeds=(1,))
    log_stage2_run(client, exp_id, tmp_path, "asymmetric", 1, cfg={"cfg.width": "32"})
    selection, [c] = compare.compare(parse("--filter", "params.`cfg.width` = '16'"))
    assert c.arms == ["baseline", "poly"] and len(selection.records) == 2
    with pytest.raises(UserError, match="--filter"):
        compare.compare(parse("--filter", "params.x ==== 'y'"))


def test_unreachable_tracking_server(tracking_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    with pytest.raises(UserError, match="cannot reach the MLflow tracking store"):
        compare.run(parse())
