"""QP input, the Stage-1 threshold, the reference models and the context table."""
from __future__ import annotations

import json
import re

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
    summary = json.loads((out / "summary.json").read_text())
    table = summary["groups"][0]["context"]["table"]
    assert [r["model"] for r in table] == ["prior", "gbm", "finetune", "baseline", "poly"]
    # the printed context table: one row per model, in order, its kind and its macro-F1 in %
    # (the names also appear in the comparison table above it, so only these rows count)
    context_lines = text.split("Context: reference models", 1)[1].splitlines()
    assert context_lines[1].split()[:3] == ["model", "kind", "runs"]
    kinds = ["reference"] * 3 + ["loss arm"] * 2
    for line, r, kind in zip(context_lines[2:7], table, kinds, strict=True):
        assert re.fullmatch(rf"\s*{r['model']}\s+{kind}\s+1\s+{100 * r['test_macro_f1']:.2f}\s.*", line), line
    assert context_lines[7] == summary["groups"][0]["context"]["sentence"]
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


def _statistics_oracle(block):
    """The 17 documented statistics of one 16x16 10-bit block, written with plain Python loops."""
    from statistics import fmean, pvariance

    x = [[v / 1023 for v in row] for row in np.asarray(block).tolist()]

    def region(rows, cols):
        return [x[i][j] for i in rows for j in cols]

    up, down, all16 = range(8), range(8, 16), range(16)
    q = {"q00": region(up, up), "q01": region(up, down), "q10": region(down, up), "q11": region(down, down)}
    halves = {"top": region(up, all16), "bottom": region(down, all16),
              "left": region(all16, up), "right": region(all16, down)}
    var = {name: pvariance(v) for name, v in {**halves, **q}.items()}
    q_var = [var[k] for k in q]
    pixels = region(all16, all16)
    return {
        "mean": fmean(pixels), "variance": pvariance(pixels), "range": max(pixels) - min(pixels),
        **{f"var_{name}": var[name] for name in (*halves, *q)},
        # neighbour to the right, below, and below-right (the main diagonal)
        "grad_h": fmean(abs(x[i][j + 1] - x[i][j]) for i in range(16) for j in range(15)),
        "grad_v": fmean(abs(x[i + 1][j] - x[i][j]) for i in range(15) for j in range(16)),
        "grad_diag": fmean(abs(x[i + 1][j + 1] - x[i][j]) for i in range(15) for j in range(15)),
        "diff_top_bottom": abs(var["top"] - var["bottom"]),
        "diff_left_right": abs(var["left"] - var["right"]),
        "spread_quadrants": max(q_var) - min(q_var),
    }


def test_block_statistics_match_their_definitions_on_asymmetric_blocks():
    """Every column, on blocks whose quadrants, halves and directions all differ, so a swapped
    quadrant, axis or diagonal shows."""
    from av1_ablation.training.reference import STATISTICS, block_statistics

    i, j = np.mgrid[0:16, 0:16]
    block = np.select(
        [(i < 8) & (j < 8), i < 8, j < 8],
        [np.full((16, 16), 200),            # top-left: flat
         300 + 40 * (j - 8),                # top-right: horizontal ramp
         100 * ((i + j) % 3)],              # bottom-left: constant along anti-diagonals
        np.where(i % 2 == 1, 900, 50))      # bottom-right: alternating rows
    noisy = np.random.default_rng(0).integers(0, 1024, (16, 16))
    stats = block_statistics(np.stack([block, noisy]))
    assert stats.shape == (2, 17)
    for row, b in zip(stats, (block, noisy)):
        expected = _statistics_oracle(b)
        assert set(expected) == set(STATISTICS)
        got = dict(zip(STATISTICS, row))
        for name in STATISTICS:
            assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-15), name
    # the hand-made block is asymmetric where it matters
    got = dict(zip(STATISTICS, stats[0]))
    assert len({got[k] for k in ("var_q00", "var_q01", "var_q10", "var_q11")}) == 4
    assert len({got["grad_h"], got["grad_v"], got["grad_diag"]}) == 3
    assert got["diff_top_bottom"] > 0 and got["diff_left_right"] > 0


def _prior_data(store_qindex, train_index, train_targets, **splits):
    from types import SimpleNamespace

    return SimpleNamespace(store=SimpleNamespace(qindex=np.asarray(store_qindex)),
                           index={"train": np.asarray(train_index), **{k: np.asarray(v, dtype=int)
                                                                       for k, v in splits.items()}},
                           targets={"train": np.asarray(train_targets)})


def test_prior_predicts_training_frequencies_per_qp_with_a_fallback():
    """The floor of the context table: per-qindex class frequencies of the training blocks,
    all training blocks for a qindex training never saw, and no QP at all with qp_input=none."""
    from av1_ablation.training.reference import fit_prior

    # store positions 0..9; training blocks are scattered so the qindex must follow the index
    store_qindex = [80, 220, 128, 220, 80, 220, 80, 220, 80, 220]
    train = [6, 1, 0, 3, 4, 5, 7]        # qindex 80, 220, 80, 220, 80, 220, 220
    targets = [0, 2, 0, 2, 1, 2, 1]      # at 80: 0, 0, 1; at 220: 2, 2, 2, 1
    data = _prior_data(store_qindex, train, targets, test=[9, 8, 2], val=[])
    at_80, at_220, overall = [2 / 3, 1 / 3, 0], [0, 1 / 4, 3 / 4], [2 / 7, 2 / 7, 3 / 7]

    by_qp = fit_prior(data, "concat")
    np.testing.assert_allclose(by_qp("test"), [at_220, at_80, overall])  # 128 unseen: fallback
    np.testing.assert_allclose(by_qp("train")[:3], [at_80, at_220, at_80])
    assert by_qp("val").shape == (0, 3)
    blind = fit_prior(data, "none")
    np.testing.assert_allclose(blind("test"), [overall] * 3)


def _context(scores, arms):
    import pandas as pd

    return pd.DataFrame({"model": list(scores), "test_macro_f1": list(scores.values()),
                         "kind": ["loss arm" if m in arms else "reference" for m in scores]})


def _placements(sentence):
    """{clause: arm names} of the sentence's 'Test macro-F1 of the loss arms: ...' part."""
    head = "Test macro-F1 of the loss arms: "
    body = re.split(r"\.(?: |$)", sentence[sentence.index(head) + len(head):])[0]  # not 30.00%
    clauses = {}
    for part in body.split("; "):
        label, names = part.split("): ")
        clauses[label.split(" (")[0]] = names.split(", ")
    return clauses


def test_context_sentence_places_each_arm_below_between_or_above_the_references():
    """The report's one-line verdict: an arm in the wrong clause misstates the whole comparison."""
    from av1_ablation.comparison.context import context_sentence

    scores = {"prior": 0.30, "gbm": 0.50, "finetune": 0.55,
              "baseline": 0.45, "focal": 0.20, "poly": 0.62, "asym": 0.30, "dice": 0.50}
    arms = ("baseline", "focal", "poly", "asym", "dice")
    sentence = context_sentence(_context(scores, arms), "baseline")
    # an arm level with prior or gbm is neither below the floor nor above gbm
    assert _placements(sentence) == {"below the prior floor": ["focal"],
                                     "between the prior": ["baseline", "asym", "dice"],
                                     "above gbm": ["poly"]}
    assert "below the prior floor (30.00%)" in sentence and "and gbm (50.00%)" in sentence
    assert sentence.endswith("changes test macro-F1 by +10.00 pp against the frozen-backbone baseline "
                             "arm: the frozen Stage-1 features are a bottleneck.")

    # all arms between: a single clause; a finetune gap under 2 pp is no bottleneck
    scores = {"prior": 0.30, "gbm": 0.50, "finetune": 0.46, "baseline": 0.45, "poly": 0.40}
    sentence = context_sentence(_context(scores, ("baseline", "poly")), "baseline")
    assert _placements(sentence) == {"between the prior": ["baseline", "poly"]}
    assert sentence.endswith("by +1.00 pp against the frozen-backbone baseline arm.")

    # without gbm there is nothing to place the arms between; without references, a hint
    no_gbm = context_sentence(_context({"prior": 0.3, "baseline": 0.4}, ("baseline",)), "baseline")
    assert "Test macro-F1 of the loss arms" not in no_gbm
    assert context_sentence(_context({"baseline": 0.4}, ("baseline",)), "baseline").startswith(
        "No reference runs")
