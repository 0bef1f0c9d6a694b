"""The analysis of the two scripts behind the README's case for the QP input:
benchmarks/qp_label_conflicts.py (how many pixel blocks change label with the QP) and
benchmarks/qp_input_choice.py (which ``qp_input`` validation prefers, paired by seed)."""
from __future__ import annotations

import numpy as np
from scipy import stats

from av1_ablation.record.contract import BEST_VAL_MACRO_F1, TEST_F1_AB, TEST_MACRO_F1


def test_label_conflicts_counts_pixel_blocks_not_rows(benchmark_script):
    # three distinct 2x2 blocks: A at 3 QPs with labels 0, 0, 1 (a conflict), B twice with 2, 2,
    # C once; a block equal to A in all but one pixel is its own block
    a, b, c = np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 7)
    a_like = a.copy()
    a_like[1, 1] = 1
    blocks = np.stack([a, b, a, c, a, b, a_like]).astype(np.uint8)
    y = np.array([0, 2, 0, 1, 1, 2, 2])
    label_conflicts = benchmark_script("qp_label_conflicts").label_conflicts
    assert label_conflicts(blocks, y, 3) == (4, 1)
    # B's second label differs too: two conflicting blocks
    assert label_conflicts(blocks, np.array([0, 2, 0, 1, 1, 0, 2]), 3) == (4, 2)


def _runs(val: dict[int, list[float]], loss_names=("baseline", "poly")) -> dict:
    """(loss, seed) -> metrics; ``val[seed]`` lists each loss's validation macro-F1, test is
    validation - 0.1 and AB F1 0.2."""
    return {(loss, seed): {BEST_VAL_MACRO_F1: v, TEST_MACRO_F1: v - 0.1, TEST_F1_AB: 0.2}
            for seed, values in val.items() for loss, v in zip(loss_names, values)}


def test_qp_input_choice_pairs_the_variants_by_seed_on_validation(benchmark_script):
    found = {"none": _runs({1: [0.40, 0.42], 2: [0.50, 0.52], 3: [0.45, 0.45]}),
             "concat": _runs({1: [0.44, 0.44], 2: [0.54, 0.56], 3: [0.46, 0.48]}),
             "film": _runs({1: [0.45, 0.45], 2: [0.50, 0.50]})}  # seed 3 missing
    text = benchmark_script("qp_input_choice").report(found, {"none": 10.0, "concat": 12.0})
    lines = text.splitlines()
    # per seed, the mean over the losses: none 0.41, 0.51, 0.45; concat 0.44, 0.55, 0.47; film 0.45, 0.50
    assert "| concat | 6 | 48.67 | 38.67 | 48.00 | 38.00 | 20.00 | 12 s |" in lines
    assert "| film | 4 | 47.50 | 37.50 | 47.50 | 37.50 | 20.00 | nan s |" in lines
    p = stats.ttest_rel([0.44, 0.55, 0.47], [0.41, 0.51, 0.45]).pvalue
    assert f"concat - none, validation, per seed [1, 2, 3]: +3.00, +4.00, +2.00 pp; mean +3.00 pp, " \
           f"paired t p = {p:.3g}" in lines
    p = stats.ttest_rel([0.45, 0.50], [0.41, 0.51]).pvalue
    assert f"film - none, validation, per seed [1, 2]: +4.00, -1.00 pp; mean +1.50 pp, paired t p = {p:.3g}" in lines
    # the best is then set against every other variant on the seeds they share
    p = stats.ttest_rel([0.44, 0.55], [0.45, 0.50]).pvalue
    assert f"concat - film, validation, per seed [1, 2]: -1.00, +5.00 pp; mean +2.00 pp, " \
           f"paired t p = {p:.3g}" in lines
    assert lines[-1] == "best on validation: qp_input=concat"


def test_qp_input_choice_is_decided_on_validation_not_test(benchmark_script):
    found = {"none": _runs({1: [0.50, 0.50], 2: [0.50, 0.50]}),
             "concat": _runs({1: [0.45, 0.45], 2: [0.46, 0.46]})}
    for metrics in found["concat"].values():
        metrics[TEST_MACRO_F1] = 0.9  # far better on test: must not matter
    text = benchmark_script("qp_input_choice").report(found, {})
    assert text.splitlines()[-1] == "best on validation: qp_input=none"
    assert "concat - none, validation, per seed [1, 2]: -5.00, -4.00 pp; mean -4.50 pp" in text
