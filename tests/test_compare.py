"""The compare command against a temporary MLflow store with runs logged per the training contract,
and the comparison's verdict logic on synthetic run records."""
import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats
from statsmodels.stats.multitest import multipletests

from av1_ablation.comparison import command as compare
from av1_ablation.errors import UserError
from av1_ablation.record.contract import CHILDREN_TAG
from av1_ablation.record.metrics import calibration_metrics, classification_metrics
from av1_ablation.comparison.report import render_markdown, render_text, summarise, tables
from av1_ablation.comparison.runs import RunRecord, load_runs

N_BLOCKS = 240
CFG = {"cfg.epochs": "3", "cfg.batch_size": "64", "cfg.lr_head": "0.001", "cfg.width": "16",
       "cfg.device": "cpu"}
TAGS = {"av1.dataset_fingerprint": "d1", "av1.split_fingerprint": "s1", "av1.stage1_run_id": "r1"}
ACCURACY = {"baseline": 0.55, "poly": 0.75, "asymmetric": 0.5}


def _predictions(loss_type, seed, *, clusters=True, accuracy=None):
    rng = np.random.default_rng(1000 * seed + len(loss_type))
    y = np.random.default_rng(0).integers(0, 3, N_BLOCKS)
    acc = ACCURACY.get(loss_type, 0.55) if accuracy is None else accuracy
    pred = np.where(rng.random(N_BLOCKS) < acc, y, rng.integers(0, 3, N_BLOCKS))
    proba = rng.dirichlet([1, 1, 1], N_BLOCKS) * 0.4
    proba[np.arange(N_BLOCKS), pred] += 0.6
    frame = pd.DataFrame({"block_index": np.arange(N_BLOCKS) * 3, "y_true": y, "y_pred": pred,
                          "p_split": proba[:, 0], "p_rect": proba[:, 1], "p_ab": proba[:, 2]})
    if clusters:  # 5 test pictures of 48 blocks, each block at one of 4 QPs
        frame["qindex"] = 80 + 40 * (np.arange(N_BLOCKS) % 4)
        frame["cluster"] = np.arange(N_BLOCKS) // 48
    return frame


def log_stage2_run(client, exp_id, tmp_path, loss_type, seed, *, parent=None, cfg=None,
                   status="FINISHED", predictions=True, tags=None):
    tags = {"av1.kind": "stage2", **TAGS, **(tags or {})}
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
                   trainable_params=1234, total_params=5678, train_seconds=1.5, train_blocks_per_s=900.0,
                   mean_train_blocks_per_s=950.0)
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


def _check_summary_group(group, printed):
    """summary.json holds the verdict, the paired table, Friedman and power; the terminal prints them."""
    assert group["winner"] == "poly" and group["arms"][0] == "baseline"
    assert group["primary_test"] == "paired_t" and group["winner_basis"] == "validation"
    assert "Holm over 2 comparison(s) with baseline" in group["verdict"] and "poly" in group["verdict"]
    assert group["resample"] == "clusters" and group["holm_family_size"] == 2
    assert group["friedman"]["n_arms"] == 3 and group["friedman"]["exact"]
    assert group["friedman_line"].startswith("Friedman test over all 3 arms")
    assert group["power_line"].startswith("Power (poly vs baseline)")
    assert [row["loss"] for row in group["paired_table"]] == ["poly", "asymmetric"]
    for line in (group["friedman_line"], group["power_line"], group["verdict"]):
        assert line in printed
    assert "Table 5: paired across seeds" in printed

    # Across-seed statistics equal scipy on the logged test macro-F1 values.
    per_seed = pd.DataFrame(group["per_seed"])
    a = per_seed[per_seed.loss_type == "poly"].test_macro_f1
    b = per_seed[per_seed.loss_type == "baseline"].test_macro_f1
    seeds = group["tests"]["poly"]["seeds"]
    assert seeds["welch_p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert seeds["mannwhitney_p"] == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue)
    # The main evidence is paired by seed (both frames are sorted by seed).
    paired = group["tests"]["poly"]["paired"]
    assert paired["t_p"] == pytest.approx(stats.ttest_rel(a.to_numpy(), b.to_numpy()).pvalue)
    assert len(group["tests"]["poly"]["per_seed"]) == 3
    # A 20-point accuracy gap, pooled over 3 seeds while resampling the 5 test pictures.
    pooled = group["tests"]["poly"]["bootstrap_pooled"]
    assert pooled["unit"] == "clusters" and pooled["n_units"] == 5 and pooled["ci_low"] > 0


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
    _check_summary_group(summary["groups"][0], printed)

    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.loss_type) == ["baseline", "poly", "asymmetric"]
    assert {"test_macro_f1_mean", "test_f1_ab_sd", "welch_holm", "seed_criterion", "paired_t_p",
            "paired_t_holm", "sign_flip_p", "tost_p", "seeds_for_power", "bootstrap_unit"} <= set(csv.columns)
    report = (out / "report.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Table 7", "Verdict", "Friedman",
                  "Power"):
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
    assert c.tests["poly"].seeds.welch_p is None and c.tests["poly"].paired.t_p is None
    assert "not enough seeds" in c.tests["poly"].seeds.note
    assert c.primary_test == "paired_t"  # no silent switch to a test-block statistic
    assert "Not enough seeds to judge retraining noise" in c.verdict
    assert "Test-set evidence only" in c.verdict and "survive" not in c.verdict


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


@pytest.mark.parametrize(("backbone_of", "named"), [
    (lambda seed: {}, "Stage-1 run r1"),
    (lambda seed: {"av1.stage1_run_id": f"r{seed}"}, None),
    (lambda seed: {"av1.stage1_run_id": "", "av1.stage1_source": "/ckpt/s1.pt"}, "the Stage-1 checkpoint /ckpt/s1.pt"),
    (lambda seed: {"av1.stage1_run_id": "", "av1.stage1_source": f"/ckpt/{seed}.pt"}, None),
])
def test_the_selection_names_the_backbone_every_run_shares(tracking_store, tmp_path, backbone_of, named):
    uri, exp_id = tracking_store
    for arm in ("baseline", "poly"):
        for seed in (1, 2):
            log_stage2_run(MlflowClient(uri), exp_id, tmp_path, arm, seed, tags=backbone_of(seed))
    description = load_runs().description
    assert description.endswith(f", on the backbone of {named}") if named else "backbone" not in description


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


# --------------------------------------------------------------------------- verdict logic on run records
BASE = {1: 0.40, 2: 0.41, 3: 0.39}
POLY_D = {1: 0.0108, 2: 0.0023, 3: 0.0098}  # the design's paired-t oracle, in fractions
ASYM_D = {1: -0.005, 2: 0.008, 3: -0.002}


def record(loss_type, seed, test, val=None, *, clusters=True, predictions=None):
    """A finished run with the given test and validation macro-F1 (fractions)."""
    metrics = {"test_macro_f1": test, "best_val_macro_f1": test if val is None else val}
    frame = _predictions(loss_type, seed, clusters=clusters) if predictions is None else predictions
    return RunRecord(run_id=f"{loss_type}-{seed}", run_name=f"{loss_type}-{seed}", loss_type=loss_type,
                     seed=seed, params={}, tags={}, metrics=metrics, predictions=frame)


def oracle_records(seeds=(1, 2, 3), **kw):
    """baseline, poly (the oracle's differences, best on validation) and asymmetric (noise)."""
    runs = [record("baseline", s, BASE[s], **kw) for s in seeds]
    runs += [record("poly", s, BASE[s] + POLY_D[s], BASE[s] + POLY_D[s] + 0.01, **kw) for s in seeds]
    runs += [record("asymmetric", s, BASE[s] + ASYM_D[s], **kw) for s in seeds]
    return runs


def adjusted_p(verdict):
    return float(re.search(r"adjusted p = ([0-9.e-]+)\)", verdict).group(1))


def test_paired_oracle_decides_the_verdict():
    c = summarise(oracle_records(), n_resamples=200)
    p = c.tests["poly"].paired
    assert p.t_p == pytest.approx(0.1045, abs=5e-5) and p.df == 2
    assert c.winner == "poly" and c.primary_test == "paired_t"
    assert "its lead is +0.76 pp (95% CI [-0.39, +1.92] pp)" in c.verdict
    assert "does not survive" in c.verdict
    asym_p = c.tests["asymmetric"].paired.t_p
    expected = multipletests([p.t_p, asym_p], method="holm")[1][0]
    assert adjusted_p(c.verdict) == pytest.approx(expected, rel=1e-2)
    assert "Holm over 2 comparison(s) with baseline" in c.verdict
    assert "Equivalence within ±0.5 pp is not shown" in c.verdict
    # The power line: 7 seeds for d_z = 1.64 at alpha / 2 (checked against statsmodels in
    # test_statistics); the terminal output carries the table, Friedman, power and verdict.
    assert c.tests["poly"].seeds_for_power == 7 and "needs 7 seeds for 80% power" in c.power_line
    text = render_text(c)
    for piece in ("Table 5: paired across seeds", c.friedman_line, c.power_line, c.verdict):
        assert piece in text
    assert "**Friedman.**" in render_markdown([c]) and "**Power.**" in render_markdown([c])


def test_missing_run_of_another_arm_does_not_change_the_verdict():
    full = summarise(oracle_records(), n_resamples=200)
    runs = [r for r in oracle_records() if (r.loss_type, r.seed) != ("asymmetric", 3)]
    missing = summarise(runs, n_resamples=200)
    assert missing.tests["asymmetric"].paired.t_p is None  # now untestable (2 seeds)
    assert missing.verdict == full.verdict
    assert (missing.winner, missing.primary_test) == (full.winner, full.primary_test)
    # The same under the unpaired test: Welch used to give way to the block bootstrap.
    welch = [summarise(r, n_resamples=200, primary_test="welch").verdict for r in (oracle_records(), runs)]
    assert welch[0] == welch[1] and "Welch" in welch[0]


def test_holm_family_size_in_the_sentence_is_the_one_used():
    # Four arms against the baseline; one of them has two seeds and cannot be tested.
    runs = oracle_records()
    runs += [record("focal_gamma3", s, BASE[s] + d) for s, d in ((1, 0.001), (2, -0.004), (3, 0.002))]
    runs += [record("focal_smoothing", s, BASE[s] + 0.003) for s in (1, 2)]
    c = summarise(runs, n_resamples=200)
    assert c.holm_family == 4
    assert "Holm over 4 comparison(s) with baseline" in c.verdict
    raw = [c.tests[a].paired.t_p for a in ("poly", "asymmetric", "focal_gamma3")] + [1.0]
    assert adjusted_p(c.verdict) == pytest.approx(multipletests(raw, method="holm")[1][0], rel=1e-2)
    assert c.tests["focal_smoothing"].holm_p["paired_t"] is None


def test_winner_is_picked_on_validation_and_its_test_figures_are_reported():
    runs = [record("baseline", s, BASE[s]) for s in BASE]
    runs += [record("poly", s, BASE[s] + 0.03, BASE[s] - 0.01) for s in BASE]  # best test, worse val
    runs += [record("asymmetric", s, BASE[s] + POLY_D[s], BASE[s] + 0.02) for s in BASE]
    c = summarise(runs, n_resamples=200)
    assert c.winner == "asymmetric" and c.arms == ["baseline", "asymmetric", "poly"]
    assert "Best mean validation macro-F1: asymmetric (42.00%" in c.verdict
    assert "its test macro-F1: 40.76%" in c.verdict


def test_ties_on_validation_are_named():
    runs = [record("baseline", s, BASE[s]) for s in BASE]
    runs += [record("poly", s, BASE[s] + POLY_D[s], 0.45) for s in BASE]
    runs += [record("asymmetric", s, BASE[s] + ASYM_D[s], 0.45) for s in BASE]
    c = summarise(runs, n_resamples=200)
    assert c.ties and "Tied with" in c.verdict and set([c.winner, *c.ties]) == {"poly", "asymmetric"}
    # A tie with the reference goes to the reference: no lead is claimed from a tie.
    runs = [record("baseline", s, BASE[s], 0.45) for s in BASE] + runs[3:]
    c = summarise(runs, n_resamples=200)
    assert c.winner == "baseline" and "the reference wins a tie" in c.verdict


@pytest.mark.parametrize("min_seeds", [2, 3])
def test_fewer_than_three_shared_seeds_is_no_verdict(min_seeds):
    c = summarise(oracle_records(seeds=(1, 2)), n_resamples=200, min_seeds=min_seeds)
    assert "Not enough seeds to judge retraining noise (2 shared; need at least 3)" in c.verdict
    assert "Test-set evidence only" in c.verdict and "resampling 5 test pictures" in c.verdict
    assert "survive" not in c.verdict


def test_constant_arms_say_no_variance_and_give_no_tiny_p():
    runs = [record("baseline", s, 0.40, predictions=_predictions("baseline", 1)) for s in (1, 2, 3)]
    runs += [record("poly", s, 0.41, 0.42, predictions=_predictions("poly", 1)) for s in (1, 2, 3)]
    c = summarise(runs, n_resamples=200)
    t = c.tests["poly"]
    assert "no variance" in c.verdict and "cannot judge it" in c.verdict
    pvalues = [t.paired.t_p, t.paired.sign_flip_p, t.paired.wilcoxon_p, t.seeds.welch_p,
               t.seeds.mannwhitney_p, *t.holm_p.values()]
    assert all(p is None or p >= 1e-6 for p in pvalues)
    assert c.power_line.startswith("Power (poly vs baseline): not computed: no variance")


def test_resampling_unit_blocks_by_option_or_for_old_predictions():
    c = summarise(oracle_records(), n_resamples=200, resample="blocks")
    assert c.resample == "blocks" and c.tests["poly"].bootstrap_pooled is None
    assert c.tests["poly"].per_seed[0]["bootstrap"].unit == "blocks"
    assert "--resample blocks" in c.resample_note and "95% CI (blocks, pp)" in render_text(c)
    old = summarise(oracle_records(clusters=False), n_resamples=200)
    assert old.resample == "blocks" and "without a cluster column" in old.resample_note
    assert "Test-side resampling: 9 run(s)" in render_text(old)
    with pytest.raises(UserError, match="--primary-test|primary test"):
        summarise(oracle_records(), primary_test="bootstrap")


def test_all_arms_within_the_margin_is_stated_as_equivalence():
    runs = [record("baseline", s, 0.40 + 0.01 * s, 0.45) for s in (1, 2, 3, 4, 5)]
    for arm, shift in (("poly", 0.0005), ("asymmetric", -0.0004)):
        runs += [record(arm, s, 0.40 + 0.01 * s + shift + 0.0003 * (-1) ** s, 0.44) for s in (1, 2, 3, 4, 5)]
    c = summarise(runs, n_resamples=200)
    assert c.winner == "baseline"
    assert "Every arm is within ±0.5 pp of baseline" in c.verdict
    assert c.equivalence_line in c.verdict


def test_friedman_runs_on_the_seeds_every_arm_shares():
    c = summarise(oracle_records(), n_resamples=200)
    table = np.array([[BASE[s], BASE[s] + POLY_D[s], BASE[s] + ASYM_D[s]] for s in (1, 2, 3)])
    assert c.friedman.statistic == pytest.approx(stats.friedmanchisquare(*table.T).statistic)
    runs = [r for r in oracle_records() if (r.loss_type, r.seed) != ("asymmetric", 3)]
    assert summarise(runs, n_resamples=200).friedman.n_seeds == 2


# --------------------------------------------------------------------------- review fixes
def _pair(d, val_lead=0.02):
    """baseline and poly, poly best on validation, its test differences ``d`` per seed."""
    runs = [record("baseline", s, BASE[s]) for s in BASE]
    return runs + [record("poly", s, BASE[s] + d[s], BASE[s] + val_lead) for s in BASE]


def test_a_significantly_worse_validation_winner_is_said_to_be_worse():
    # Best on validation, consistently worse on test: the two-sided test is significant.
    c = summarise(_pair({1: -0.015, 2: -0.018, 3: -0.016}), n_resamples=200)
    assert c.winner == "poly" and c.tests["poly"].holm_p["paired_t"] < c.alpha
    assert "it survives" not in c.verdict
    assert ("poly, the arm chosen on validation, is significantly worse than baseline on test: the "
            "difference survives Holm's correction at alpha = 0.05") in c.verdict
    assert f"adjusted p = {c.tests['poly'].holm_p['paired_t']:.3g})" in c.verdict
    # Under the 0.5 pp threshold but negative: no "not a practical win" about a loss.
    small = summarise(_pair({1: -0.0030, 2: -0.0033, 3: -0.0031}), n_resamples=200)
    assert "significantly worse" in small.verdict and "practical win" not in small.verdict
    # A small significant positive lead still gets the clause.
    win = summarise(_pair({1: 0.0030, 2: 0.0033, 3: 0.0031}), n_resamples=200)
    assert "it survives Holm's correction" in win.verdict and "not a practical win" in win.verdict


def test_verdict_says_when_holm_step_down_rests_on_the_other_arms():
    poly, asym = {1: 0.010, 2: 0.013, 3: 0.007}, {1: -0.030, 2: -0.031, 3: -0.029}
    runs = _pair(poly) + [record("asymmetric", s, BASE[s] + asym[s], BASE[s] - 0.02) for s in BASE]
    full = summarise(runs, n_resamples=200)
    # poly's raw p (0.029) passes Holm only because asymmetric's smaller p is rejected first;
    # 2 x p = 0.057 would not, and losing one asymmetric run turns the verdict around.
    assert "it survives Holm's correction" in full.verdict
    assert "depends on the other arms' p-values" in full.verdict and "2 × p = 0.0574" in full.verdict
    lost = summarise([r for r in runs if (r.loss_type, r.seed) != ("asymmetric", 3)], n_resamples=200)
    assert "does not survive" in lost.verdict and "depends on the other arms" not in lost.verdict
    # The ordinary case, where Holm and the Bonferroni bound agree, prints no such clause.
    assert "depends on the other arms" not in summarise(oracle_records(), n_resamples=200).verdict


def test_power_line_for_large_tiny_and_constant_effects():
    # A large consistent lead (d_z = 20): statsmodels' power was NaN, read as "no spread".
    big = summarise(_pair({1: 0.020, 2: 0.022, 3: 0.0205}), n_resamples=200)
    assert big.tests["poly"].seeds_for_power == 2 and "needs 2 seeds for 80% power" in big.power_line
    # d_z = 0.01: beyond the cap, said as such (the lead has spread, so not "no spread").
    tiny = summarise(_pair({1: 0.0101, 2: -0.0099, 3: 0.0001}), n_resamples=200)
    assert tiny.tests["poly"].seeds_for_power is None
    assert "would need more than 10000 seeds" in tiny.power_line and "no spread" not in tiny.power_line
    flat = summarise(_pair({1: 0.01, 2: 0.01, 3: 0.01}), n_resamples=200)
    assert flat.tests["poly"].paired.sd_diff == 0 and "no variance" in flat.power_line
    assert "more than" not in flat.power_line


def test_group_by_keeps_the_same_seeds_of_every_group(tracking_store, tmp_path):
    # Same losses and seeds under two cfg.epochs: no duplicates once grouped by cfg.epochs.
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    for epochs in ("3", "5"):
        for arm in ("baseline", "poly"):
            for seed in (1, 2, 3):
                log_stage2_run(client, exp_id, tmp_path, arm, seed, cfg={"cfg.epochs": epochs})
    selection, comparisons = compare.compare(parse("--group-by", "cfg.epochs"))
    assert len(selection.records) == 12 and not selection.left_out
    assert sorted(c.group for c in comparisons) == ["cfg.epochs=3", "cfg.epochs=5"]
    # Within one group the older of two runs of a loss and seed is still a duplicate.
    log_stage2_run(client, exp_id, tmp_path, "poly", 1, cfg={"cfg.epochs": "3"})
    selection, _ = compare.compare(parse("--group-by", "cfg.epochs"))
    assert len(selection.records) == 12 and len(selection.left_out) == 1
    assert "and cfg.epochs" in selection.left_out[0]["reason"]


def test_filter_applies_to_children_reused_from_an_earlier_parent(tracking_store, tmp_path):
    uri, exp_id = tracking_store
    client = MlflowClient(uri)
    # The first invocation trained seeds 1-3 (and a 5-epoch run the filter must drop); the
    # second re-used them, listed in its children tag, and trained seeds 4 and 5.
    first, old = log_ablation(client, exp_id, tmp_path, arms=("baseline", "poly"))
    other = log_stage2_run(client, exp_id, tmp_path, "poly", 6, parent=first, cfg={"cfg.epochs": "5"})
    second = client.create_run(exp_id, tags={"av1.kind": "ablation"}).info.run_id
    new = [log_stage2_run(client, exp_id, tmp_path, a, s, parent=second) for a in ("baseline", "poly")
           for s in (4, 5)]
    client.set_tag(second, CHILDREN_TAG, ",".join([*old, other, *new]))
    client.set_terminated(second)
    unfiltered = load_runs(parent=second, with_predictions=False)
    assert sorted(r.run_id for r in unfiltered.records) == sorted([*old, other, *new])
    selection, [c] = compare.compare(parse("--parent", second, "--filter", "params.`cfg.epochs` = '3'"))
    assert sorted(r.run_id for r in selection.records) == sorted([*old, *new])
    assert c.tests["poly"].shared_seeds == [1, 2, 3, 4, 5]


def test_throughput_column_is_the_mean_over_epochs_or_the_last_epoch_of_older_runs():
    runs = oracle_records()
    for r in runs:
        r.metrics.update(train_blocks_per_s=100.0, **({} if r.loss_type == "asymmetric"
                                                       else {"mean_train_blocks_per_s": 250.0}))
    t3 = tables(summarise(runs, n_resamples=50))["Table 3: training details"].set_index("loss")
    assert t3.loc["poly", "blocks/s"].startswith("250") and t3.loc["asymmetric", "blocks/s"].startswith("100")


def test_an_unpaired_primary_test_takes_its_direction_from_every_seed():
    # Ahead on the three shared seeds, far behind over all eight of the reference's: Welch's
    # significant difference is a loss, not a surviving lead.
    runs = [record("baseline", s, BASE[s]) for s in BASE]
    runs += [record("baseline", s, 0.46 + 0.001 * s) for s in (4, 5, 6, 7, 8)]
    runs += [record("poly", s, BASE[s] + 0.003, BASE[s] + 0.05) for s in BASE]
    c = summarise(runs, n_resamples=50, primary_test="welch")
    assert c.tests["poly"].paired.mean_diff > 0 > c.tests["poly"].seeds.mean_diff
    assert c.tests["poly"].holm_p["welch"] < c.alpha
    assert "over every seed of each (3 of poly, 8 of baseline) the means differ by -3.8" in c.verdict
    welch = stats.ttest_ind([r.metrics["test_macro_f1"] for r in runs if r.loss_type == "poly"],
                            [r.metrics["test_macro_f1"] for r in runs if r.loss_type == "baseline"],
                            equal_var=False).confidence_interval()
    assert f"(Welch 95% CI [{100 * welch.low:+.2f}, {100 * welch.high:+.2f}] pp)" in c.verdict
    assert "significantly worse than baseline" in c.verdict and "it survives" not in c.verdict


def test_mann_whitney_judges_the_direction_of_its_ranks_not_of_the_means():
    # Seven of poly's eight seeds beat every baseline seed; the eighth diverged far below. The
    # means say poly is behind, the ranks (what Mann-Whitney tests) say it is ahead.
    base = {s: 0.40 + 0.001 * s for s in range(1, 9)}
    poly = {s: base[s] + 0.02 for s in range(1, 8)} | {8: 0.05}
    runs = [record("baseline", s, base[s]) for s in base]
    runs += [record("poly", s, poly[s], poly[s] + 0.5) for s in poly]
    c = summarise(runs, n_resamples=50, primary_test="mannwhitney")
    t = c.tests["poly"]
    assert t.seeds.mean_diff < 0 and t.seeds.p_superiority == 56 / 64
    assert t.holm_p["mannwhitney"] < c.alpha
    assert "with probability 0.88 (ties count 1/2)" in c.verdict
    assert "the ranks favour poly, and that survives Holm's correction" in c.verdict
    assert "its mean is behind baseline's" in c.verdict and "not a practical win" in c.verdict
    assert "significantly worse" not in c.verdict and "under the protocol's" not in c.verdict


def test_mann_whitney_says_when_its_ranks_favour_the_reference_but_the_mean_does_not():
    # Seven of poly's eight seeds are below every baseline seed; the eighth is far above.
    base = {s: 0.40 + 0.001 * s for s in range(1, 9)}
    poly = {s: base[s] - 0.02 for s in range(1, 8)} | {8: 0.90}
    runs = [record("baseline", s, base[s]) for s in base]
    runs += [record("poly", s, poly[s], poly[s] + 0.5) for s in poly]
    c = summarise(runs, n_resamples=50, primary_test="mannwhitney")
    t = c.tests["poly"]
    assert t.seeds.mean_diff > 0 and t.seeds.p_superiority == 8 / 64
    assert t.holm_p["mannwhitney"] < c.alpha
    assert "poly, the arm chosen on validation, is significantly worse than baseline" in c.verdict
    assert "Its mean is ahead, though: the ranks and the means disagree" in c.verdict


def test_mann_whitney_verdict_names_the_approximation_when_ties_leave_it_inexact():
    # Twelve seeds a side, scores on a 0.01 grid: ties, and C(24, 12) splits are too many.
    base = {s: 0.40 + 0.01 * (s % 3) for s in range(1, 13)}
    runs = [record("baseline", s, base[s]) for s in base]
    runs += [record("poly", s, base[s] + 0.02, base[s] + 0.5) for s in base]
    c = summarise(runs, n_resamples=50, primary_test="mannwhitney")
    assert c.tests["poly"].seeds.mannwhitney_exact is False
    assert "(Mann-Whitney U across seeds (unpaired; ties, so the tie-corrected normal " in c.verdict
    exact = summarise([r for r in runs if r.seed <= 3], n_resamples=50, primary_test="mannwhitney")
    assert exact.tests["poly"].seeds.mannwhitney_exact is True
    assert "(exact Mann-Whitney U across seeds (unpaired), Holm" in exact.verdict


def test_the_power_of_an_enormous_effect_is_one_without_the_noncentral_t(monkeypatch):
    # scipy's noncentral t is slow (tens of seconds) and can fail to converge this far out.
    from av1_ablation.comparison import statistics as st

    def refuse(*args, **kwargs):
        raise AssertionError("nct.sf called for an effect the normal approximation settles")

    monkeypatch.setattr(st.stats.nct, "sf", refuse)
    assert st.paired_t_power(7071.0, 79, alpha=0.05) == 1.0
