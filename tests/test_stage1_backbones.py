"""The analysis of benchmarks/stage1_backbones.py, the script behind the README's figures on
the Stage-1 backbone: an arm's differences from the reference are paired by seed within a
backbone and averaged per backbone, the backbones are the units of the tests, and the
reference arm's spread is split into between and within backbones."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from av1_ablation.record.contract import BEST_EPOCH, BEST_VAL, BEST_VAL_MACRO_F1, ROC_AUC, TEST, TEST_MACRO_F1


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("stage1_backbones")


def backbone(seed: int, test: dict[str, dict[int, float]], val: dict[str, float] | None = None) -> dict:
    """A backbone as the script collects it: loss -> seed -> metrics (validation macro-F1
    per loss from ``val``, else equal to test)."""
    return {"seed": seed, "verdict": "(compare's verdict)", "seconds": 1.0,
            "stage1_metrics": {BEST_EPOCH: 1.0, BEST_VAL + ROC_AUC: 0.7, TEST + ROC_AUC: 0.8},
            "arms": {loss: {s: {TEST_MACRO_F1: f1, BEST_VAL_MACRO_F1: (val or {}).get(loss, f1)}
                            for s, f1 in by_seed.items()} for loss, by_seed in test.items()}}


def test_differences_are_paired_by_seed_within_each_backbone(script):
    # unpaired, the first backbone's poly lead would be 0.46 - 0.42 = 0.04; paired over the
    # seeds both arms have (42, 43) it is 0.02; the second shares no seed
    backbones = [backbone(42, {"baseline": {42: 0.40, 43: 0.44}, "poly": {42: 0.41, 43: 0.47, 44: 0.50}}),
                 backbone(43, {"baseline": {42: 0.50}, "poly": {43: 0.60}})]
    d = script.backbone_deltas(backbones, "poly")
    assert d[0] == pytest.approx(0.02)
    assert np.isnan(d[1])


def test_interaction_sets_the_backbones_against_the_seeds_noise(script):
    # poly - baseline per seed: backbone 42 [0.01, 0.03] (mean 0.02, 1 degree of freedom),
    # backbone 43 [0.02, 0.06, 0.04] (mean 0.04, 2 degrees of freedom)
    backbones = [backbone(42, {"baseline": {1: 0.40, 2: 0.40}, "poly": {1: 0.41, 2: 0.43}}),
                 backbone(43, {"baseline": {1: 0.50, 2: 0.50, 3: 0.50}, "poly": {1: 0.52, 2: 0.56, 3: 0.54}})]
    between, from_seeds, p = script.backbone_interaction(backbones, "poly")
    assert between == pytest.approx(np.std([0.02, 0.04], ddof=1))
    pooled = (2 * 0.01 ** 2 + 2 * 0.02 ** 2) / 3  # squares about each backbone's mean, over 1 + 2 dof
    assert from_seeds == pytest.approx(np.sqrt(pooled * (1 / 2 + 1 / 3) / 2))  # a mean of 2 or of 3 seeds
    assert p == pytest.approx(stats.f.sf((between / from_seeds) ** 2, 1, 3))


def test_reference_spread_separates_backbones_from_seeds(script):
    backbones = [backbone(42, {"baseline": {42: 0.40, 43: 0.44}}),
                 backbone(43, {"baseline": {42: 0.50, 43: 0.52, 44: 0.54}}),
                 backbone(44, {"poly": {42: 0.50}})]  # no reference run: left out
    between, within = script.reference_spread(backbones)
    assert between == pytest.approx(np.std([0.42, 0.52], ddof=1))
    assert within == pytest.approx(np.sqrt((2 * 0.02 ** 2 + 2 * 0.02 ** 2) / 3))


def test_report_tests_the_backbone_means(script):
    seeds = (42, 43, 44)
    backbones = [backbone(b, {"baseline": {s: 0.40 + 0.01 * i for i, s in enumerate(seeds)},
                              "poly": {s: 0.40 + 0.01 * i + lead for i, s in enumerate(seeds)}},
                          val={"baseline": 0.5, "poly": 0.6 if b == 43 else 0.4})
                 for b, lead in zip((42, 43, 44), (0.01, 0.02, 0.04))]
    backbones[0]["arms"]["asymmetric"] = {42: {TEST_MACRO_F1: 0.45, BEST_VAL_MACRO_F1: 0.3}}  # one backbone only
    text = script.report(backbones)
    # oracles written out with scipy: the paired t over the backbone means, and TOST at +-0.5 pp
    # as the larger of the two one-sided t-tests
    d = np.array([0.01, 0.02, 0.04])
    t_p = stats.ttest_1samp(d, 0.0).pvalue
    se = d.std(ddof=1) / np.sqrt(len(d))
    tost_p = max(stats.t.sf((d.mean() + 0.005) / se, len(d) - 1), stats.t.cdf((d.mean() - 0.005) / se, len(d) - 1))
    row = next(line for line in text.splitlines() if line.startswith("| poly |"))
    assert "| +1.00, +2.00, +4.00 | +2.33 | 1.53 / 0.00, p 0 |" in row  # the same lead on every seed
    # asymmetric cannot be tested over one backbone, but stays in Holm's family of two
    assert f"| {t_p:.3g} ({min(1, 2 * t_p):.3g}) | {tost_p:.3g} |" in row
    assert next(line for line in text.splitlines() if line.startswith("| asymmetric |")) == (
        "| asymmetric | 45.00 | n/a | n/a | +5.00, n/a, n/a | +5.00 | n/a / n/a, p n/a | n/a (n/a) | n/a |")
    assert "validation winner per backbone: 42: baseline, 43: poly, 44: baseline" in text
