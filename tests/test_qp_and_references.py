"""QP input, the Stage-1 threshold, the reference models and the context table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from av1_ablation.cli import main
from av1_ablation.models import Stage1Model, Stage2Model, load_stage1_model, standardise_qindex
from av1_ablation.models.qp import QP_INPUTS


def _perturb_qp_weights(model):
    # FiLM starts as the identity: give its QP branch weights so the QP can matter
    torch.manual_seed(1)
    for p in model.head.qp.parameters():
        torch.nn.init.normal_(p, std=0.5)


@pytest.mark.parametrize("qp_input", ["concat", "film"])
def test_qp_input_changes_logits_only_when_the_qp_changes(qp_input):
    torch.manual_seed(0)
    model = Stage2Model(width=0.25, qp_input=qp_input).eval()
    _perturb_qp_weights(model)
    x = torch.rand(6, 1, 16, 16)
    low, high = standardise_qindex([80] * 6), standardise_qindex([220] * 6)
    with torch.no_grad():
        a, b, again = model(x, low), model(x, high), model(x.clone(), low.clone())
    assert not torch.allclose(a, b)
    assert torch.equal(a, again)
    with pytest.raises(ValueError, match="qp_input"):
        model(x)  # a QP head refuses to run blind


def test_qp_none_is_the_original_model():
    torch.manual_seed(0)
    model = Stage2Model(width=0.25, qp_input="none").eval()
    keys = {k for k in model.state_dict() if k.startswith("head.")}
    assert keys == {f"head.head.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        pooled = model.backbone.forward_suffix(model.frozen_prefix(x), "layer3", model.adapters)
        expected = model.head.head(pooled)  # the original head: a plain MLP on pooled features
        assert torch.equal(model(x), expected)
        assert torch.equal(model(x, standardise_qindex([80] * 5)), expected)  # QP ignored
    # the same seed builds the same parameters whatever qp_input a later model uses
    torch.manual_seed(0)
    twin = Stage2Model(width=0.25)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("qp_input", QP_INPUTS)
def test_prefix_cache_is_exact_with_qp_input(qp_input):
    from av1_ablation.training.prefix import prefix_features
    from av1_ablation.training.tensors import DeviceBlocks

    torch.manual_seed(0)
    model = Stage2Model(width=0.25, qp_input=qp_input).eval()
    if qp_input != "none":
        _perturb_qp_weights(model)
    rng = np.random.default_rng(0)
    blocks = DeviceBlocks(rng.integers(0, 1024, (20, 16, 16)), rng.integers(0, 3, 20),
                          torch.device("cpu"), qindex=rng.choice([80, 128, 220], 20))
    cache = prefix_features(model, blocks, all_variants=False, batch_size=7)
    idx = torch.arange(20)
    with torch.no_grad():
        direct = model(blocks.inputs(idx), blocks.qp)
        cached = model.forward_from_prefix(cache[0], blocks.qp)
    assert torch.allclose(direct, cached, atol=1e-6)


@pytest.mark.parametrize("qp_input", QP_INPUTS)
def test_stage1_checkpoints_record_their_qp_input(qp_input, tmp_path):
    model = Stage1Model(0.25, qp_input=qp_input)
    path = tmp_path / "stage1.pt"
    # the original pipeline's layout: {"model_state_dict": ...} with backbone.* and head.head.* keys
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    assert load_stage1_model(path).head.qp_input == qp_input


def test_one_model_cluster_interval_brackets_its_macro_f1_and_widens_with_clusters():
    from av1_ablation.comparison.statistics import bootstrap_macro_f1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    p = np.where(rng.random(400) < 0.6, y, rng.integers(0, 3, 400))
    f1 = f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0)
    blocks = bootstrap_macro_f1(y, p, n_resamples=500, random_state=0)
    clusters = bootstrap_macro_f1(y, p, clusters=np.arange(400) // 40, n_resamples=500, random_state=0)
    assert blocks[0] < f1 < blocks[1] and clusters[0] < f1 < clusters[1]
    # the same blocks twice, in one cluster each pair: blocks look twice as many as they are
    y2, p2 = np.repeat(y, 2), np.repeat(p, 2)
    naive = bootstrap_macro_f1(y2, p2, n_resamples=500, random_state=0)
    paired = bootstrap_macro_f1(y2, p2, clusters=np.repeat(np.arange(400), 2), n_resamples=500, random_state=0)
    assert paired[1] - paired[0] > 1.2 * (naive[1] - naive[0])


def test_block_statistics_are_the_documented_columns():
    from av1_ablation.training.reference import STATISTICS, block_statistics

    flat = np.full((1, 16, 16), 512)
    halves = np.zeros((1, 16, 16))
    halves[:, 8:] = 1023  # bottom half bright: top/bottom variances 0, left/right variances 0.25
    stats = block_statistics(np.concatenate([flat, halves]))
    assert stats.shape == (2, len(STATISTICS))
    col = dict(zip(STATISTICS, stats[1]))
    assert stats[0, 1:].max() == pytest.approx(0, abs=1e-20)  # a flat block has no variance, gradient or contrast
    assert col["variance"] == pytest.approx(0.25)
    assert col["var_top"] == col["var_bottom"] == 0
    assert col["var_left"] == pytest.approx(0.25)
    assert col["grad_h"] == 0 and col["grad_v"] == pytest.approx(1 / 15)


def test_qp_input_refused_on_a_single_qp_data_set(tiny_dataset, tracking_store, capsys):
    from mlflow.tracking import MlflowClient

    _, exp = tracking_store
    assert main(["train", "--data", str(tiny_dataset), "--preset", "smoke", "--qp-input", "concat"]) == 2
    err = capsys.readouterr().err
    assert "qp_input=concat" in err and "qindex 128" in err and "qp_input=none" in err
    assert main(["train", "--data", str(tiny_dataset), "--preset", "smoke", "--qp-input", "late"]) == 2
    assert "qp_input='late' is not one of none, concat, film" in capsys.readouterr().err
    assert not MlflowClient().search_runs([exp], "attributes.status = 'RUNNING'")


def test_stage1_selects_on_roc_auc_and_logs_its_threshold(tiny_dataset_two_qps, tracking_store):
    from mlflow.tracking import MlflowClient

    _, exp = tracking_store
    assert main(["stage1", "--data", str(tiny_dataset_two_qps), "--preset", "smoke", "--epochs", "2",
                 "--qp-input", "film"]) == 0
    (run,) = MlflowClient().search_runs([exp], "tags.`av1.kind` = 'stage1'")
    m = run.data.metrics
    assert 0 < m["decision_threshold"] < 1
    history = MlflowClient().get_metric_history(run.info.run_id, "val_roc_auc")
    assert m["best_epoch"] == 1 + int(np.argmax([h.value for h in sorted(history, key=lambda h: h.step)]))
    assert {"test_roc_auc", "test_average_precision", "test_f1", "best_val_f1"} <= set(m)
    assert run.data.params["cfg.qp_input"] == "film"


@pytest.mark.slow
def test_references_and_context_table(tiny_dataset_two_qps, tracking_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    _, exp = tracking_store
    data = str(tiny_dataset_two_qps)
    common = ["--data", data, "--preset", "smoke", "--batch-size", "16", "--qp-input", "concat"]
    assert main(["reference", *common]) == 0
    client = MlflowClient()
    refs = client.search_runs([exp], "tags.`av1.kind` = 'reference'")
    assert sorted(r.data.tags["av1.reference"] for r in refs) == ["finetune", "gbm", "prior"]
    for run in refs:
        assert run.info.status == "FINISHED"
        m = run.data.metrics
        assert {"test_macro_f1", "test_f1_ab", "test_ece", "best_val_macro_f1",
                "test_q80_macro_f1", "test_q220_macro_f1"} <= set(m)
        files = {f.path for d in ("predictions", "figures") for f in client.list_artifacts(run.info.run_id, d)}
        assert {"predictions/test.csv", "predictions/val.csv", "figures/per_qp_test.png"} <= files
    finetune = next(r for r in refs if r.data.tags["av1.reference"] == "finetune")
    assert finetune.data.params["cfg.finetune"] == "True"
    assert finetune.data.metrics["trainable_params"] == finetune.data.metrics["total_params"]

    assert main(["ablation", "--losses", "baseline,poly", "--seeds", "1", *common]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), "--n-resamples", "200", "--min-seeds", "2"]) == 0
    text = capsys.readouterr().out
    assert "Context: reference models" in text and "95% CI (pictures)" in text
    for name in ("prior", "gbm", "finetune", "baseline", "poly"):
        assert f"\n{name:>8} " in text or f"\n{name} " in text or f" {name} " in text
    summary = json.loads((out / "summary.json").read_text())
    table = summary["groups"][0]["context"]["table"]
    assert [r["model"] for r in table] == ["prior", "gbm", "finetune", "baseline", "poly"]
    assert all(r["ci_low"] is None or r["ci_low"] <= r["test_macro_f1"] <= r["ci_high"] for r in table)
    assert "prior" in summary["groups"][0]["context"]["sentence"]
    assert (out / "figures" / "per_qp.png").is_file()
    assert "### Context" in (out / "report.md").read_text()


def test_every_qindex_standardises_into_the_unit_interval():
    q = standardise_qindex(np.arange(256))
    assert q[0] == 0 and q[-1] == 1 and bool((q[1:] > q[:-1]).all())
    # a QP the model never saw still gives a finite, distinct output
    torch.manual_seed(0)
    model = Stage2Model(width=0.25, qp_input="concat").eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        seen, unseen = model(x, standardise_qindex([80, 80])), model(x, standardise_qindex([3, 3]))
    assert torch.isfinite(unseen).all() and not torch.allclose(seen, unseen)
