"""The five Stage-2 losses, the Stage-1 binary focal loss and class-balanced weights.

Each loss is checked against an independent numpy computation of the formula in
the design note, against its identities, with gradcheck, and on extreme logits.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from av1_ablation.losses import (
    LOSS_TYPES,
    AsymmetricLoss,
    BinaryFocalLoss,
    ClassBalancedFocalLoss,
    FocalLabelSmoothingLoss,
    PolyLoss,
    build_loss,
    class_balanced_weights,
    loss_hyperparameters,
)

COUNTS = [23942, 71378, 57280]  # original Stage-2 training counts: SPLIT, RECT, AB
LOGITS = np.array([
    [2.0, -1.0, 0.5],
    [-0.3, 0.8, 0.1],
    [1.5, 1.4, -2.0],
    [-3.0, 4.0, 0.0],
    [0.2, 0.1, 0.3],
    [6.0, -5.0, -4.0],
])
TARGET = np.array([0, 1, 2, 2, 0, 0])


# ---------------------------------------------------------------- numpy references
def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_weights(counts, beta=0.9999):
    counts = np.asarray(counts, dtype=float)
    w = (1 - beta) / (1 - beta ** counts)
    return w * len(counts) / w.sum()


def np_reference(name, z, y, w, **hp):
    p = np_softmax(z)
    n, c = p.shape
    onehot = np.eye(c)[y]
    pt = p[np.arange(n), y]
    if name in ("baseline", "focal_gamma3"):
        l = (1 - pt) ** hp["gamma"] * -np.log(pt)
    elif name == "poly":
        l = -np.log(pt) + hp["epsilon"] * (1 - pt)
    elif name == "asymmetric":
        lp, lq = np.log(np.clip(p, 1e-8, None)), np.log(np.clip(1 - p, 1e-8, None))
        l = -(onehot * (1 - p) ** hp["gamma_pos"] * lp
              + (1 - onehot) * p ** hp["gamma_neg"] * lq).sum(axis=1)
    elif name == "focal_smoothing":
        q = (1 - hp["smoothing"]) * onehot + hp["smoothing"] / c
        l = -(q * (1 - p) ** hp["gamma"] * np.log(p)).sum(axis=1)
    return float(np.mean(w[y] * l))


def t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


# ---------------------------------------------------------------- class-balanced weights
def test_class_balanced_weights_match_cui_and_the_original_values():
    w = class_balanced_weights(COUNTS)
    np.testing.assert_allclose(w.numpy(), np_weights(COUNTS), rtol=1e-6)
    # The original pipeline's derived values on these counts.
    np.testing.assert_allclose(w.numpy(), [1.063, 0.967, 0.970], atol=1e-3)
    assert w.dtype == torch.float32 and math.isclose(float(w.sum()), 3.0, rel_tol=1e-6)


def test_beta_zero_gives_equal_weights():
    np.testing.assert_allclose(class_balanced_weights([1, 10, 1000], beta=0.0).numpy(), [1, 1, 1])


def test_absent_class_gets_weight_zero_with_a_warning():
    with pytest.warns(UserWarning, match="no training samples"):
        w = class_balanced_weights([100, 0, 50])
    assert torch.isfinite(w).all() and w[1] == 0 and math.isclose(float(w.sum()), 3.0, rel_tol=1e-6)


@pytest.mark.parametrize("counts, beta, match", [
    ([0, 0, 0], 0.9999, "all 0"),
    ([10, -1, 5], 0.9999, "non-negative"),
    ([[1, 2]], 0.9999, "1-D"),
    ([10, 20], 1.0, "beta"),
    ([10, 20], -0.1, "beta"),
])
def test_class_balanced_weights_reject_bad_input(counts, beta, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_weights(counts, beta)


# ---------------------------------------------------------------- the five arms
def test_loss_types_order():
    assert LOSS_TYPES == ("baseline", "focal_gamma3", "poly", "asymmetric", "focal_smoothing")


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_each_loss_matches_numpy(name):
    hp = loss_hyperparameters(name)
    hp.pop("beta")
    loss = build_loss(name, COUNTS).double()
    got = loss(t(LOGITS), torch.tensor(TARGET))
    want = np_reference(name, LOGITS, TARGET, np_weights(COUNTS), **hp)
    assert got.shape == () and math.isclose(float(got), want, rel_tol=1e-6)  # weights are float32


@pytest.mark.parametrize("name, hp", [
    ("baseline", {"gamma": 1.5}), ("poly", {"epsilon": 2.5}),
    ("asymmetric", {"gamma_pos": 0.0, "gamma_neg": 1.0}),
    ("focal_smoothing", {"gamma": 1.0, "smoothing": 0.3}),
])
def test_hyperparameter_overrides_match_numpy(name, hp):
    loss = build_loss(name, COUNTS, beta=0.99, **hp)
    got = loss(t(LOGITS), torch.tensor(TARGET))
    assert math.isclose(float(got), np_reference(name, LOGITS, TARGET, np_weights(COUNTS, 0.99), **hp),
                        rel_tol=1e-6)


def test_defaults_are_the_protocols():
    assert loss_hyperparameters("baseline") == {"gamma": 2.0, "beta": 0.9999}
    assert loss_hyperparameters("focal_gamma3")["gamma"] == 3.0
    assert loss_hyperparameters("poly")["epsilon"] == 1.0
    assert loss_hyperparameters("asymmetric") == {"gamma_pos": 2.0, "gamma_neg": 4.0, "beta": 0.9999}
    assert loss_hyperparameters("focal_smoothing") == {"gamma": 2.0, "smoothing": 0.1, "beta": 0.9999}


def cb_cross_entropy(z, y, w):
    # Class-balanced CE with the plain batch mean (not torch's weight= mean).
    return (F.cross_entropy(z, y, reduction="none") * w[y]).mean()


def test_identities_reduce_to_class_balanced_cross_entropy():
    z, y = t(LOGITS), torch.tensor(TARGET)
    w = class_balanced_weights(COUNTS).double()
    ce = cb_cross_entropy(z, y, w)
    torch.testing.assert_close(build_loss("baseline", COUNTS, gamma=0.0)(z, y), ce)
    torch.testing.assert_close(build_loss("poly", COUNTS, epsilon=0.0)(z, y), ce)
    torch.testing.assert_close(build_loss("focal_smoothing", COUNTS, smoothing=0.0)(z, y),
                               build_loss("baseline", COUNTS)(z, y))
    # The plain mean differs from torch's weighted mean, which divides by sum w_y.
    assert not math.isclose(float(ce), float(F.cross_entropy(z, y, weight=w)), rel_tol=1e-6)


def test_weights_are_a_buffer_in_the_state_dict():
    loss = build_loss("poly", COUNTS)
    assert "weight" in dict(loss.named_buffers()) and "weight" in loss.state_dict()
    assert not list(loss.parameters())


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_gradcheck(name):
    z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    loss = build_loss(name, COUNTS)
    assert torch.autograd.gradcheck(lambda x: loss(x, torch.tensor(TARGET)), (z,))


@pytest.mark.parametrize("name", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_on_extreme_logits_and_absent_class(name, dtype):
    # Magnitude-50 logits, right and wrong with full confidence; class 1 absent from the batch.
    z = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, -50.0], [50.0, -50.0, 50.0],
                      [0.0, 50.0, -50.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 2, 2, 0])
    value = build_loss(name, COUNTS)(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_loss_is_float32_for_half_logits():
    z = t(LOGITS, torch.bfloat16)
    assert build_loss("baseline", COUNTS)(z, torch.tensor(TARGET)).dtype == torch.float32


# ---------------------------------------------------------------- factory errors
def test_unknown_loss_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown loss 'ce'.*baseline.*focal_smoothing"):
        build_loss("ce", COUNTS)


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['gamma_neg'\].*'poly'.*\['beta', 'epsilon'\]"):
        build_loss("poly", COUNTS, gamma_neg=3.0)


@pytest.mark.parametrize("cls, kwargs, match", [
    (ClassBalancedFocalLoss, {"gamma": -1.0}, "gamma"),
    (PolyLoss, {"epsilon": -2.0}, "epsilon"),
    (AsymmetricLoss, {"gamma_neg": float("nan")}, "gamma_neg"),
    (AsymmetricLoss, {"clip": 0.0}, "clip"),
    (FocalLabelSmoothingLoss, {"smoothing": 1.0}, "smoothing"),
    (ClassBalancedFocalLoss, {"weight": torch.tensor([1.0, float("inf")])}, "weight"),
    (BinaryFocalLoss, {"alpha": 1.5}, "alpha"),
    (BinaryFocalLoss, {"gamma": "2"}, "gamma"),
])
def test_bad_hyperparameter_values(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# ---------------------------------------------------------------- Stage-1 binary focal loss
def test_binary_focal_matches_numpy_with_alpha_on_the_positive_class():
    z = np.array([2.0, -1.0, 0.3, -4.0, 5.0])
    y = np.array([1, 0, 1, 1, 0])
    p = 1 / (1 + np.exp(-z))
    pt = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, 0.25, 0.75)
    want = np.mean(alpha_t * (1 - pt) ** 2.5 * -np.log(pt))
    got = BinaryFocalLoss()(t(z), torch.tensor(y))
    assert math.isclose(float(got), want, rel_tol=1e-6)  # weights are float32
    # gamma 0 is alpha-weighted BCE.
    bce = F.binary_cross_entropy_with_logits(t(z), t(y), weight=t(alpha_t))
    torch.testing.assert_close(BinaryFocalLoss(gamma=0.0)(t(z), torch.tensor(y)), bce)


def test_binary_focal_gradcheck_and_extremes():
    z = torch.tensor([2.0, -1.0, 0.3, -4.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: BinaryFocalLoss()(x, y), (z,))
    z = torch.tensor([50.0, -50.0, 50.0, -50.0], requires_grad=True)
    value = BinaryFocalLoss()(z, torch.tensor([1, 0, 0, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
