"""Stage-1/Stage-2 training recorded in MLflow, on a tiny real data set (real encodes, real training)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from av1_ablation.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--batch-size", "16"]


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def stage2_runs(experiment_id, status=None):
    flt = "tags.`av1.kind` = 'stage2'" + (f" and attributes.status = '{status}'" if status else "")
    return client().search_runs([experiment_id], filter_string=flt)


def train(tiny_dataset_two_qps, *extra):
    return main(["train", "--data", str(tiny_dataset_two_qps), *SMOKE, *extra])


def test_normalisation_happens_once():
    from av1_ablation.training.tensors import DeviceBlocks

    blocks = np.array([[[0, 1023] * 8] * 16], dtype=np.uint16)
    x = DeviceBlocks(blocks, np.array([1]), torch.device("cpu")).inputs(torch.tensor([0]))
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[0, 0], torch.from_numpy(blocks[0].astype(np.float32)) / 1023.0)
    assert float(x.max()) == 1.0  # divided by 1023 once, not twice (the original's slip)


def test_dihedral_variants_are_the_eight_symmetries():
    from av1_ablation.training.tensors import dihedral

    x = torch.arange(16.0).reshape(1, 4, 4)
    images = {tuple(dihedral(x, v).flatten().tolist()) for v in range(8)}
    assert len(images) == 8


def test_train_run_records_contract(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    assert train(tiny_dataset_two_qps, "--loss-type", "poly", "--epochs", "2", "--patience", "5") == 0
    (run,) = stage2_runs(exp, "FINISHED")
    stage1 = client().get_run(run.data.tags["av1.stage1_run_id"])
    assert stage1.info.status == "FINISHED" and stage1.data.tags["av1.kind"] == "stage1"
    assert run.data.params["cfg.loss_type"] == "poly" and run.data.params["cfg.epochs"] == "2"
    pictures = [int(run.data.params[f"data.sources_{k}"]) for k in ("train", "val", "test")]
    assert min(pictures) >= 1 and sum(pictures) == 6  # the tiny set's six photos, each in one split
    history = client().get_metric_history(run.info.run_id, "val_macro_f1")
    assert sorted(m.step for m in history) == [1, 2]  # one point per epoch, nothing else
    assert run.data.metrics["best_val_macro_f1"] == max(m.value for m in history)
    for key in ("train_loss", "val_loss", "val_accuracy", "val_f1_split", "val_recall_ab",
                "best_val_f1_ab", "best_val_ece",
                "test_macro_f1", "test_f1_rect", "test_ece", "test_nll", "test_brier",
                "best_epoch", "epochs_run", "trainable_params", "train_blocks_per_s",
                "mean_train_blocks_per_s"):
        assert key in run.data.metrics, key
    assert run.data.metrics["trainable_params"] < run.data.metrics["total_params"]
    for tag in ("av1.dataset_fingerprint", "av1.split_fingerprint", "av1.device", "av1.torch"):
        assert run.data.tags[tag]
    files = {f.path for d in ("predictions", "figures", "checkpoint")
             for f in client().list_artifacts(run.info.run_id, d)}
    assert {"predictions/val.csv", "predictions/test.csv", "figures/confusion_test.png",
            "figures/learning_curves.png", "checkpoint/model.pt"} <= files
    import mlflow

    from av1_ablation.dataset import load_store
    from av1_ablation.training.stage2 import load_model
    from av1_ablation.models import standardise_qindex
    from av1_ablation.training.tensors import normalise

    model, cfg = load_model(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                               artifact_path="checkpoint/model.pt"))
    assert cfg.loss_type == "poly"
    preds = np.loadtxt(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                           artifact_path="predictions/test.csv"),
                       delimiter=",", skiprows=1)
    assert np.allclose(preds[:, 3:6].sum(1), 1, atol=1e-4)
    store = load_store(tiny_dataset_two_qps)
    rows = preds[:, 0].astype(int)
    assert np.array_equal(preds[:, 6], store.qindex[rows])  # qindex, then the picture (cluster)
    assert np.array_equal(preds[:, 7], store.source[rows])
    assert {"figures/per_qp_test.png"} <= files
    per_qp = {k for k in run.data.metrics if k.startswith("test_q") and k.endswith("_macro_f1")}
    assert per_qp == {f"test_q{q}_macro_f1" for q in np.unique(store.qindex[rows])}
    # the checkpoint reproduces the logged test probabilities
    blocks = torch.from_numpy(load_store(tiny_dataset_two_qps).blocks[preds[:, 0].astype(int)].astype(np.int16))
    with torch.no_grad():
        qp = standardise_qindex(preds[:, 6]) if cfg.qp_input != "none" else None
        proba = torch.softmax(model(normalise(blocks), qp).double(), 1).numpy()
    assert np.allclose(proba, preds[:, 3:6], atol=1e-5)
    # per-class test figures come from the selected checkpoint's predictions
    from av1_ablation.record.metrics import classification_metrics

    again = classification_metrics(preds[:, 1].astype(int), preds[:, 2].astype(int), prefix="test_")
    assert again["test_macro_f1"] == pytest.approx(run.data.metrics["test_macro_f1"])
    # the experiment is marked for mlflow ui's model-training view
    assert client().get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiment_kind_chosen_by_the_user_is_kept(tracking_store):
    from av1_ablation.record.experiment import mark_model_training

    _, exp = tracking_store
    other = client().create_experiment("genai")
    client().set_experiment_tag(other, "mlflow.experimentKind", "genai_development")
    for experiment in (exp, other):
        mark_model_training(experiment)
    assert client().get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client().get_experiment(other).tags["mlflow.experimentKind"] == "genai_development"


def test_same_seed_same_metrics(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    for _ in range(2):
        assert train(tiny_dataset_two_qps, "--loss-type", "asymmetric", "--epochs", "2") == 0
    a, b = stage2_runs(exp, "FINISHED")
    keys = [k for k in a.data.metrics if k.startswith(("val_", "test_", "train_loss"))]
    assert {k: a.data.metrics[k] for k in keys} == {k: b.data.metrics[k] for k in keys}
    # the second run reused the first run's Stage-1 model
    assert a.data.tags["av1.stage1_run_id"] == b.data.tags["av1.stage1_run_id"]


def test_non_finite_loss_fails_the_run(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    assert train(tiny_dataset_two_qps, "--lr-head", "1e30", "--lr-adapter", "1e30", "--epochs", "3") == 1
    (run,) = stage2_runs(exp)
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["av1.failure_reason"]
    assert int(run.data.tags["av1.failure_epoch"]) >= 1


def test_invalid_parameters_create_no_run(tiny_dataset_two_qps, tracking_store, capsys):
    _, exp = tracking_store
    assert train(tiny_dataset_two_qps, "--loss-type", "focal") == 2
    assert "loss_type='focal' is not one of baseline" in capsys.readouterr().err
    assert train(tiny_dataset_two_qps, "--epochs", "zero") == 2
    assert stage2_runs(exp) == []


@pytest.mark.slow
def test_interrupt_then_resume_matches_uninterrupted(tiny_dataset_two_qps, tracking_store):
    uri, exp = tracking_store
    args = [sys.executable, "-m", "av1_ablation", "train", "--data", str(tiny_dataset_two_qps), *SMOKE,
            "--epochs", "40", "--patience", "40", "--loss-type", "focal_smoothing"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    (reference,) = stage2_runs(exp, "FINISHED")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [r for r in stage2_runs(exp, "RUNNING")
                   if client().get_metric_history(r.info.run_id, "val_macro_f1")]
        if running:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stderr.read().decode()[-2000:]
    (killed,) = stage2_runs(exp, "KILLED")
    assert "signal" in killed.data.tags["av1.failure_reason"]
    # resumed the way the README says, through `mlflow run`, which creates a run of its own
    import mlflow

    launch = mlflow.projects.run(str(REPO), "main", env_manager="local", experiment_id=exp,
                                 parameters={"resume": killed.info.run_id}).run_id
    resumed = client().get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    for key in ("test_macro_f1", "best_val_macro_f1", "best_epoch", "test_nll"):
        assert resumed.data.metrics[key] == reference.data.metrics[key], key
    # the run `mlflow run` created is not a metric-less arm: it names the run it resumed
    launch = client().get_run(launch)
    assert launch.info.status == "FINISHED" and not launch.data.metrics
    assert launch.data.tags["av1.resumes"] == killed.info.run_id and "av1.kind" not in launch.data.tags
    assert killed.info.run_id in launch.data.tags["mlflow.note.content"]
    assert launch.info.run_name == f"resume-{killed.info.run_name}"
    assert len(stage2_runs(exp)) == 2  # the reference and the resumed run


def test_the_ablation_parent_names_what_validation_prefers_not_test(tracking_store):
    import mlflow

    from av1_ablation.training.ablation import log_parent_summary

    _, exp = tracking_store
    scores = {("baseline", 1): (0.50, 0.90), ("baseline", 2): (0.52, 0.91),  # best on test
              ("poly", 1): (0.61, 0.10), ("poly", 2): (0.61, 0.20)}  # best on validation, tied
    ids = {}
    for (loss, seed), (val, test) in scores.items():
        run = client().create_run(exp)
        client().log_param(run.info.run_id, "cfg.loss_type", loss)
        client().log_metric(run.info.run_id, "best_val_macro_f1", val)
        client().log_metric(run.info.run_id, "test_macro_f1", test)
        client().set_terminated(run.info.run_id, "FINISHED")
        ids[loss, seed] = run.info.run_id
    with mlflow.start_run(experiment_id=exp) as parent:
        log_parent_summary(list(ids.values()))
    parent = client().get_run(parent.info.run_id)
    assert parent.data.tags["av1.best_loss"] == "poly"
    assert parent.data.tags["av1.best_run"] == min(ids["poly", 1], ids["poly", 2])  # a tie: never by test
    assert parent.data.metrics["mean_best_val_macro_f1.poly"] == pytest.approx(0.61)
    assert parent.data.metrics["mean_test_macro_f1.baseline"] == pytest.approx(0.905)


@pytest.mark.slow
def test_ablation_nests_children_and_skips_finished_on_rerun(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    argv = ["ablation", "--losses", "baseline,poly", "--seeds", "1,2", "--data", str(tiny_dataset_two_qps),
            *SMOKE]
    assert main(argv) == 0
    parents = client().search_runs([exp], "tags.`av1.kind` = 'ablation'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client().search_runs([exp], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted((r.data.params["cfg.loss_type"], r.data.params["cfg.seed"]) for r in children) == [
        ("baseline", "1"), ("baseline", "2"), ("poly", "1"), ("poly", "2")]
    assert all(r.info.status == "FINISHED" for r in children)
    # the parent names the loss and the child that validation prefers, not test
    val = {loss: np.mean([r.data.metrics["best_val_macro_f1"] for r in children
                          if r.data.params["cfg.loss_type"] == loss]) for loss in ("baseline", "poly")}
    best = max(val, key=val.get)
    tags, metrics = parents[0].data.tags, parents[0].data.metrics
    assert tags["av1.best_loss"] == best and metrics[f"mean_best_val_macro_f1.{best}"] == pytest.approx(val[best])
    assert tags["av1.best_run"] == min((r for r in children if r.data.params["cfg.loss_type"] == best),
                                   key=lambda r: (-r.data.metrics["best_val_macro_f1"], r.info.run_id)).info.run_id
    assert {f"mean_test_macro_f1.{loss}" for loss in val} <= set(metrics)
    assert main(argv) == 0
    assert len(stage2_runs(exp)) == 4  # nothing retrained
    newest = client().search_runs([exp], "tags.`av1.kind` = 'ablation'",
                                  order_by=["attributes.start_time DESC"])[0]
    assert sorted(newest.data.tags["av1.children"].split(",")) == sorted(r.info.run_id for r in children)


@pytest.mark.slow
def test_parallel_children_are_all_recorded(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    assert main(["ablation", "--losses", "baseline", "--seeds", "5,6", "--jobs", "2",
                 "--data", str(tiny_dataset_two_qps), *SMOKE]) == 0
    runs = stage2_runs(exp, "FINISHED")
    assert sorted(r.data.params["cfg.seed"] for r in runs) == ["5", "6"]
    assert all(client().get_metric_history(r.info.run_id, "val_macro_f1") for r in runs)


@pytest.mark.slow
def test_mlflow_run_main_entry_point(tiny_dataset_two_qps, tracking_store):
    import mlflow

    _, exp = tracking_store
    submitted = mlflow.projects.run(
        str(REPO), "main", env_manager="local", experiment_id=exp,
        parameters={"loss_type": "asymmetric", "data": str(tiny_dataset_two_qps), "preset": "smoke",
                    "batch_size": "16"})
    run = client().get_run(submitted.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss_type"] == "asymmetric" and run.data.params["cfg.loss_type"] == "asymmetric"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.params["cfg.preset"] == "smoke" and run.data.params["cfg.epochs"] == "1"
    for key in ("train_loss", "val_loss", "val_macro_f1", "val_f1_ab", "lr_adapter"):
        assert [m.step for m in client().get_metric_history(run.info.run_id, key)] == [1], key
    assert {"test_macro_f1", "test_f1_split", "test_ece", "best_epoch", "epochs_run"} <= set(run.data.metrics)
    artifacts = {f.path for d in ("predictions", "checkpoint", "figures")
                 for f in client().list_artifacts(run.info.run_id, d)}
    assert {"predictions/test.csv", "checkpoint/model.pt", "figures/learning_curves.png"} <= artifacts
    stage1 = client().get_run(run.data.tags["av1.stage1_run_id"])  # trained first, as its own run
    assert stage1.info.status == "FINISHED" and "mlflow.parentRunId" not in stage1.data.tags


@pytest.mark.slow
def test_mlflow_run_with_bad_parameter_is_marked_failed(tiny_dataset_two_qps, tracking_store):
    import mlflow
    from mlflow.exceptions import ExecutionException

    _, exp = tracking_store
    with pytest.raises(ExecutionException):
        mlflow.projects.run(str(REPO), "main", env_manager="local", experiment_id=exp,
                            parameters={"loss_type": "nope", "data": str(tiny_dataset_two_qps)})
    (run,) = client().search_runs([exp])
    assert run.info.status == "FAILED"
    assert "loss_type='nope'" in run.data.tags["av1.failure_reason"]


def test_stage1_command_and_explicit_stage1_run(tiny_dataset_two_qps, tracking_store):
    _, exp = tracking_store
    assert main(["stage1", "--data", str(tiny_dataset_two_qps), *SMOKE]) == 0
    (stage1,) = client().search_runs([exp], "tags.`av1.kind` = 'stage1'")
    assert stage1.info.status == "FINISHED"
    assert {"val_f1", "val_roc_auc", "best_val_f1", "test_f1", "best_epoch"} <= set(stage1.data.metrics)
    assert [f.path for f in client().list_artifacts(stage1.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    assert train(tiny_dataset_two_qps, "--stage1", stage1.info.run_id) == 0
    (run,) = stage2_runs(exp, "FINISHED")
    assert run.data.tags["av1.stage1_run_id"] == stage1.info.run_id
    assert run.data.params["cfg.stage1"] == stage1.info.run_id
    # a Stage-1 model of another width is refused before any Stage-2 run exists
    assert train(tiny_dataset_two_qps, "--stage1", stage1.info.run_id, "--width", "0.5") == 2
    assert len(stage2_runs(exp)) == 1
