"""The analysis of benchmarks/resampling_unit.py, the script behind docs/compare.md's figures
on the test-side resampling unit: each run's macro-F1 interval and each per-seed difference's
interval, resampling pictures and single blocks with the same seed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from av1_ablation.comparison.runs import RunRecord
from av1_ablation.comparison.statistics import bootstrap_macro_f1, paired_bootstrap
from av1_ablation.record.contract import BLOCK_INDEX, CLUSTER, Y_PRED, Y_TRUE


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("resampling_unit")


def record(loss: str, seed: int, y_true, y_pred, clusters) -> RunRecord:
    predictions = pd.DataFrame({BLOCK_INDEX: np.arange(len(y_true)), Y_TRUE: y_true, Y_PRED: y_pred,
                                CLUSTER: clusters})
    return RunRecord(run_id=f"{loss}-{seed}", run_name=f"{loss}-seed{seed}", loss_type=loss, seed=seed,
                     params={}, tags={}, metrics={}, predictions=predictions)


def noisy(y, accuracy, rng):
    return np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, 3, len(y)))


def test_one_row_per_run_and_per_seed_pair(script):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pictures = np.repeat(np.arange(6), 50)
    records = [record("baseline", 1, y, noisy(y, 0.6, rng), pictures),
               record("baseline", 2, y, noisy(y, 0.6, rng), pictures),
               record("poly", 1, y, noisy(y, 0.7, rng), pictures),
               record("poly", 3, y, noisy(y, 0.7, rng), pictures)]  # seed 3 has no baseline run
    rows = script.interval_widths(records, "baseline", n_resamples=200, seed=0)
    assert [(r["kind"], r["arm"], r["seed"]) for r in rows] == [
        ("macro-F1", "baseline", 1), ("macro-F1", "baseline", 2), ("macro-F1", "poly", 1),
        ("difference", "poly", 1), ("macro-F1", "poly", 3)]
    # poly's seed 1 against baseline's seed 1 (not seed 2), each unit with the same draw seed
    poly1, base1 = (r.predictions[Y_PRED].to_numpy() for r in (records[2], records[0]))
    for unit, clusters in (("pictures", pictures), ("blocks", None)):
        b = paired_bootstrap(y, poly1, base1, clusters=clusters, n_resamples=200, random_state=0)
        assert rows[3][unit] == pytest.approx(100 * (b.ci_high - b.ci_low))
        low, high = bootstrap_macro_f1(y, poly1, clusters=clusters, n_resamples=200, random_state=0)
        assert rows[2][unit] == pytest.approx(100 * (high - low))


def test_each_unit_gets_its_own_resampling(script):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    # every block its own picture: the two units draw the same resamples, so equal widths
    own = [record("baseline", 1, y, noisy(y, 0.6, rng), np.arange(400)),
           record("poly", 1, y, noisy(y, 0.7, rng), np.arange(400))]
    for r in script.interval_widths(own, "baseline", n_resamples=300, seed=4):
        assert r["pictures"] == pytest.approx(r["blocks"])
    # 4 pictures, two easy and two hard for poly: resampling pictures must widen poly's interval
    # and its difference's, not the baseline's, which is alike on every picture
    pictures = np.repeat(np.arange(4), 100)
    poly = np.where(pictures < 2, y, noisy(y, 0.2, rng))
    alike = [record("baseline", 1, y, noisy(y, 0.6, rng), pictures), record("poly", 1, y, poly, pictures)]
    baseline, poly_f1, difference = script.interval_widths(alike, "baseline", n_resamples=300, seed=4)
    assert poly_f1["pictures"] > 3 * poly_f1["blocks"] and difference["pictures"] > 3 * difference["blocks"]
    assert baseline["pictures"] < 2 * baseline["blocks"]


def test_runs_on_other_blocks_are_refused(script):
    y = np.zeros(10, dtype=int)
    a = record("baseline", 1, y, y, np.arange(10) // 5)
    b = record("poly", 1, y, y, np.arange(10) // 5)
    b.predictions[CLUSTER] = np.arange(10) % 2
    with pytest.raises(ValueError, match="tests other blocks"):
        script.interval_widths([a, b], "baseline", n_resamples=50, seed=0)


def test_summary_reports_medians_and_the_ratio(script):
    # the median of the ratios (2) is not the ratio of the medians (6 / 2 = 3)
    rows = [{"kind": "macro-F1", "pictures": 2.0, "blocks": 1.0}, {"kind": "macro-F1", "pictures": 6.0, "blocks": 3.0},
            {"kind": "macro-F1", "pictures": 9.0, "blocks": 2.0},
            {"kind": "difference", "pictures": 0.5, "blocks": 1.0}, {"kind": "difference", "pictures": 2.0, "blocks": 1.0},
            {"kind": "difference", "pictures": 3.0, "blocks": 4.0}]
    lines = script.summary(rows, n_pictures=5, n_blocks=400).splitlines()
    # multisets of 5 pictures drawn from 5: C(9, 5)
    assert lines[0] == "400 test blocks from 5 pictures; the picture bootstrap has 126 distinct resamples"
    assert lines[3] == "| a run's test macro-F1 | 3 | 6.00 | 2.00 | 2.00 [2.00, 4.50] | 0 of 3 |"
    assert lines[4] == "| an arm's per-seed difference | 3 | 2.00 | 1.00 | 0.75 [0.50, 2.00] | 2 of 3 |"
    assert script.summary(rows, n_pictures=8, n_blocks=1).splitlines()[0].endswith("has 6,435 distinct resamples")
