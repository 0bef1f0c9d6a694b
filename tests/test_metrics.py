"""Metrics against scikit-learn and hand-computed values."""
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from av1_ablation.record.contract import CLASS_KEYS
from av1_ablation.record.figures import confusion_figure
from av1_ablation.record.metrics import (
    binary_metrics,
    calibration_metrics,
    classification_metrics,
    f1_threshold,
    per_qp_metrics,
    reliability_curve,
    split_metrics,
)

# Four blocks whose confidences (0.9, 0.6, 0.4, 0.7) sit in distinct 15-bins.
Y4 = np.array([0, 1, 0, 1])
P4 = np.array([
    [0.9, 0.05, 0.05],   # conf 0.9, correct
    [0.6, 0.3, 0.1],     # conf 0.6, wrong
    [0.4, 0.35, 0.25],   # conf 0.4, correct
    [0.2, 0.7, 0.1],     # conf 0.7, correct
])


def _random_case(seed, n=200):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 3, n))
    return y_true, y_pred


def test_class_keys_follow_stage2_names():
    assert CLASS_KEYS == ("split", "rect", "ab")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    y_true, y_pred = _random_case(seed)
    m = classification_metrics(y_true, y_pred, prefix="test_")
    labels = [0, 1, 2]
    assert m["test_macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", labels=labels))
    assert m["test_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["test_macro_precision"] == pytest.approx(
        precision_score(y_true, y_pred, average="macro", labels=labels))
    assert m["test_macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro", labels=labels))
    per_f1 = f1_score(y_true, y_pred, average=None, labels=labels)
    per_p = precision_score(y_true, y_pred, average=None, labels=labels)
    per_r = recall_score(y_true, y_pred, average=None, labels=labels)
    for i, key in enumerate(CLASS_KEYS):
        assert m[f"test_f1_{key}"] == pytest.approx(per_f1[i])
        assert m[f"test_precision_{key}"] == pytest.approx(per_p[i])
        assert m[f"test_recall_{key}"] == pytest.approx(per_r[i])
    # Identity: macro = mean of the per-class values.
    assert m["test_macro_f1"] == pytest.approx(np.mean([m[f"test_f1_{k}"] for k in CLASS_KEYS]))
    assert len(m) == 4 + 3 * 3


def test_classification_metrics_absent_class_counts_as_zero():
    # AB never predicted and never present: its F1 is 0 and drags the macro mean down.
    m = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1])
    assert m["f1_ab"] == 0.0 and m["precision_ab"] == 0.0
    assert m["macro_f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1, 3], [0, 1, 2], "0..2"),
    ([0, 1], [0, 1, 2], "different lengths"),
    ([], [], "empty"),
    ([[0, 1]], [[0, 1]], "1-D"),
    ([0.5, 1], [0, 1], "integer"),
])
def test_classification_metrics_rejects_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred)


def test_ece_hand_computed():
    # 15 bins: each block alone in its bin, so ECE = mean |correct - conf|.
    expected = (0.1 + 0.6 + 0.6 + 0.3) / 4
    assert calibration_metrics(Y4, P4)["ece"] == pytest.approx(expected)
    # 2 bins: (0, .5] holds conf 0.4 (correct): |1 - 0.4| * 1/4;
    # (.5, 1] holds 0.9, 0.6, 0.7 with 2 of 3 correct: |2/3 - 2.2/3| * 3/4.
    expected2 = 0.6 / 4 + abs(2 / 3 - 2.2 / 3) * 3 / 4
    assert calibration_metrics(Y4, P4, n_bins=2)["ece"] == pytest.approx(expected2)


def test_ece_bins_are_right_closed():
    # Confidence exactly 0.5 belongs to the bin (0, 0.5], not (0.5, 1].
    proba = [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]
    conf, acc, count = reliability_curve([0, 0], proba, n_bins=2)
    assert count.tolist() == [1, 1]
    np.testing.assert_allclose(conf, [0.5, 1.0])
    np.testing.assert_allclose(acc, [1.0, 1.0])


def test_reliability_curve_counts_and_empty_bins():
    conf, acc, count = reliability_curve(Y4, P4, n_bins=10)
    assert count.sum() == 4 and count.shape == (10,)
    assert np.isnan(acc[0]) and np.isnan(conf[0])
    assert acc[8] == 1.0 and conf[8] == pytest.approx(0.9)


def test_brier_and_nll_hand_values():
    y = [0, 1]
    proba = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]
    m = calibration_metrics(y, proba, prefix="val_")
    assert m["val_brier"] == pytest.approx((0 + 0.25 + 0.25) / 2)
    assert m["val_nll"] == pytest.approx(math.log(2) / 2)
    assert m["val_ece"] == pytest.approx(0.5 / 2)  # second block: conf 0.5, correct
    assert set(m) == {"val_ece", "val_nll", "val_brier"}


def test_brier_matches_sklearn_multiclass():
    rng = np.random.default_rng(3)
    proba = rng.dirichlet([1, 1, 1], size=50)
    y = rng.integers(0, 3, 50)
    assert calibration_metrics(y, proba)["brier"] == pytest.approx(brier_score_loss(y, proba, labels=[0, 1, 2]))


@pytest.mark.parametrize("proba, match", [
    ([[0.5, 0.5]] * 4, "shape"),
    ([[2.0, -1.0, 0.0]] * 4, r"\[0, 1\]"),
    ([[0.5, 0.5, 0.5]] * 4, "sum to 1"),
])
def test_calibration_rejects_bad_proba(proba, match):
    with pytest.raises(ValueError, match=match):
        calibration_metrics(Y4, proba)


def test_calibration_rejects_bad_bins():
    with pytest.raises(ValueError, match="n_bins"):
        calibration_metrics(Y4, P4, n_bins=0)


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 100)
    score = np.clip(0.35 * y + rng.random(100) * 0.65, 0, 1)
    m = binary_metrics(y, score, threshold=0.45, prefix="s1_")
    pred = (score >= 0.45).astype(int)
    assert m["s1_f1"] == pytest.approx(f1_score(y, pred))
    assert m["s1_precision"] == pytest.approx(precision_score(y, pred))
    assert m["s1_recall"] == pytest.approx(recall_score(y, pred))
    assert m["s1_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["s1_roc_auc"] == pytest.approx(roc_auc_score(y, score))


def test_binary_metrics_single_class_auc_is_nan_with_warning():
    with pytest.warns(UserWarning, match="ROC AUC"):
        m = binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(m["roc_auc"]) and m["recall"] == 0.5


def test_confusion_figure_has_two_panels_with_class_names(tmp_path):
    fig = confusion_figure([0, 1, 2, 2], [0, 1, 1, 2], title="baseline / test")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["SPLIT", "RECT", "AB"]
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "0.50" in texts  # AB row: one of two correct
    fig.savefig(tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0


def _best_f1_thresholds(y, score):
    """Brute force: F1 of ``score >= t`` for every distinct score t; (best F1, the t reaching it)."""
    f1 = {t: f1_score(y, (score >= t).astype(int), zero_division=0) for t in np.unique(score)}
    best = max(f1.values())
    return best, {t for t, v in f1.items() if v == pytest.approx(best)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_threshold_is_a_brute_force_f1_maximiser(seed):
    """Stage 1's test F1 uses this validation cut: it must be a best cut, not merely one in (0, 1)."""
    # Scores rounded to 0.05 so many blocks share a score and can only be cut together.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    score = np.round(np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1) * 20) / 20
    best, maximisers = _best_f1_thresholds(y, score)
    t = f1_threshold(y, score)
    assert t in maximisers
    # the threshold is applied as `>=`, as binary_metrics does on test
    assert binary_metrics(y, score, threshold=t)["f1"] == pytest.approx(best)


def test_f1_threshold_edge_cases():
    """Tied scores, tied F1, one class only: the cases a brute-force search would treat differently."""
    # Tied scores: the 0.8 pair (one positive, one negative) is cut together; 0.3 keeps both positives.
    assert f1_threshold([1, 0, 1], [0.8, 0.8, 0.3]) == 0.3
    # An F1 tie: the top positive alone (2*1/(2+2) = 0.5) or everything (2*3/(6+6) = 0.5);
    # both maximise F1, intermediate cuts do worse.
    y = [1, 0, 0, 0, 0, 0, 0, 1, 1]
    score = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    best, maximisers = _best_f1_thresholds(np.array(y), np.array(score))
    assert best == pytest.approx(0.5) and maximisers == {0.1, 0.9}
    assert f1_threshold(y, score) in maximisers
    # Every block partitioned: the lowest score recalls all with precision 1.
    assert f1_threshold([1, 1, 1], [0.2, 0.7, 0.4]) == 0.2
    # No partitioned block on validation: F1 is 0 at every cut, so the neutral 0.5 is kept.
    assert f1_threshold([0, 0, 0], [0.2, 0.7, 0.4]) == 0.5


def test_per_qp_metrics_match_sklearn_on_each_qindex_subset():
    """Per-QP figures must be each qindex's blocks scored alone, not the pooled split."""
    # Three qindex values of unequal size; at qindex 220 the AB class is absent from both labels.
    rng = np.random.default_rng(5)
    qindex = np.repeat([80, 128, 220], [40, 25, 15])
    y_true = rng.integers(0, 3, 80)
    y_true[qindex == 220] = rng.integers(0, 2, 15)
    y_pred = np.where(rng.random(80) < 0.6, y_true, rng.integers(0, 3, 80))
    y_pred[(qindex == 220) & (y_pred == 2)] = 0
    m = per_qp_metrics(y_true, y_pred, qindex)
    assert sorted(m) == [80, 128, 220]
    for q in (80, 128, 220):
        sel = qindex == q
        yt, yp = y_true[sel], y_pred[sel]
        per_f1 = f1_score(yt, yp, average=None, labels=[0, 1, 2], zero_division=0)
        assert m[q]["n"] == sel.sum()
        assert m[q]["macro_f1"] == pytest.approx(f1_score(yt, yp, average="macro", labels=[0, 1, 2],
                                                          zero_division=0))
        assert m[q]["accuracy"] == pytest.approx(accuracy_score(yt, yp))
        for i, key in enumerate(CLASS_KEYS):
            assert m[q][f"f1_{key}"] == pytest.approx(per_f1[i])
    assert m[220]["f1_ab"] == 0.0


def test_split_metrics_per_qp_keys_hold_the_subset_values():
    """The logged ``test_q<q>_*`` keys: the arg-max class scored on each qindex's blocks alone."""
    rng = np.random.default_rng(6)
    qindex = rng.choice([80, 220], 60, p=[0.7, 0.3])
    y_true = rng.integers(0, 3, 60)
    proba = rng.dirichlet([1, 1, 1], size=60)
    proba[np.arange(60), y_true] += rng.random(60)  # better than chance, still makes mistakes
    proba /= proba.sum(1, keepdims=True)
    m = split_metrics(y_true, proba, qindex, prefix="test_")
    y_pred = np.argmax(proba, axis=1)
    per_qp_keys = {k for k in m if k.startswith("test_q")}
    assert per_qp_keys == {f"test_q{q}_{k}" for q in (80, 220)
                           for k in ("n", "macro_f1", "f1_split", "f1_rect", "f1_ab")}
    for q in (80, 220):
        sel = qindex == q
        assert m[f"test_q{q}_n"] == sel.sum()
        assert m[f"test_q{q}_macro_f1"] == pytest.approx(
            f1_score(y_true[sel], y_pred[sel], average="macro", labels=[0, 1, 2], zero_division=0))
        per_f1 = f1_score(y_true[sel], y_pred[sel], average=None, labels=[0, 1, 2], zero_division=0)
        for i, key in enumerate(CLASS_KEYS):
            assert m[f"test_q{q}_f1_{key}"] == pytest.approx(per_f1[i])
    assert m["test_q80_n"] + m["test_q220_n"] == 60
