"""Backbone, Stage-1/Stage-2 models, checkpoint compatibility and the exact fast paths."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from av1_ablation.errors import UserError
from av1_ablation.losses import build_loss
from av1_ablation.models import (
    Backbone,
    FastConv2d,
    Stage1Model,
    Stage2Model,
    count_parameters,
    load_stage1_backbone,
    load_stage1_model,
    set_fast_paths,
)


def blocks(n, seed=0):
    # 10-bit samples / 1023, the model's input convention.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1024, (n, 1, 16, 16), generator=g).float() / 1023


def torchvision_resnet18_backbone_keys():
    """Key names of torchvision's resnet18 (without fc), written out independently."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for k in range(1, 5):
        for i in range(2):
            p = f"layer{k}.{i}"
            keys += [f"{p}.conv1.weight", f"{p}.conv2.weight"]
            keys += [f"{p}.bn1.{s}" for s in bn] + [f"{p}.bn2.{s}" for s in bn]
            if k > 1 and i == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in bn]
    return keys


def test_backbone_keys_equal_torchvision_names_plus_attention():
    extra = [f"se{k}.excitation.{j}.weight" for k in range(1, 5) for j in (0, 2)]
    extra.append("spatial_attn.conv.weight")
    assert set(Backbone(0.25).state_dict()) == set(torchvision_resnet18_backbone_keys() + extra)


def test_parameter_counts_at_width_one():
    assert count_parameters(Backbone(1.0)) == {"total": 11_213_858, "trainable": 11_213_858}
    # Original Stage1Model: 11,345,444 including the (frozen here) temperature.
    assert count_parameters(Stage1Model(1.0)) == {"total": 11_345_444, "trainable": 11_345_443}
    model = Stage2Model(width=1.0)
    assert count_parameters(model.head)["total"] == 164_611  # the original Stage2ThreeWayHead
    # Adapters (gamma 4): layer3 256->64 and layer4 512->128, each down+BN+dw3x3+up+alpha.
    adapters = (256 * 64 + 2 * 64 + 64 * 9 + 64 * 256 + 256) + (512 * 128 + 2 * 128 + 128 * 9 + 128 * 512 + 512)
    assert count_parameters(model) == {"total": 11_213_858 + 164_611 + adapters,
                                       "trainable": 164_611 + adapters}


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25])
def test_forward_shapes_at_each_width(width):
    x = blocks(4)
    stage1 = Stage1Model(width).eval()
    stage2 = Stage2Model(width=width).eval()
    assert stage1.backbone(x).shape == (4, stage1.backbone.out_features)
    assert stage1(x).shape == (4,)
    out = stage2(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def fabricated_original_checkpoint(path, width):
    """A Stage-1 checkpoint in the original pipeline's format, with non-default weights."""
    g = torch.Generator().manual_seed(1)
    state = {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3)
             for k, v in Stage1Model(width).state_dict().items()}
    torch.save({
        "epoch": 19, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []},
        "scheduler_state_dict": {"last_epoch": 19}, "best_f1": 0.7228,
        "val_metrics": {"f1": np.float64(0.7228), "confusion_matrix": np.array([[5, 1], [2, 7]])},
    }, path)
    return state


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_original_stage1_checkpoint_loads_strictly(tmp_path, width):
    path = tmp_path / "stage1_model_best.pt"
    state = fabricated_original_checkpoint(path, width)
    backbone = load_stage1_backbone(path)
    assert backbone.width == width
    loaded = backbone.state_dict()
    assert set(loaded) == {k[len("backbone."):] for k in state if k.startswith("backbone.")}
    assert all(torch.equal(loaded[k], state["backbone." + k]) for k in loaded)
    model = load_stage1_model(path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    stage2 = Stage2Model.from_stage1(load_stage1_backbone(path))
    assert all(torch.equal(v, state["backbone." + k]) for k, v in stage2.backbone.state_dict().items())


def test_v7_checkpoint_without_temperature_and_our_own_round_trip(tmp_path):
    model = Stage1Model(0.25)
    state = {k: v for k, v in model.state_dict().items() if k != "head.temperature"}
    torch.save({"model_state_dict": state, "epoch": 3}, tmp_path / "v7.pt")
    assert float(load_stage1_model(tmp_path / "v7.pt").head.temperature) == 1.5
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert torch.equal(load_stage1_backbone(tmp_path / "bare.pt").conv1.weight, model.backbone.conv1.weight)


def test_bad_checkpoints_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_stage1_backbone(tmp_path / "missing.pt")
    state = Stage1Model(0.25).state_dict()
    del state["backbone.layer2.0.downsample.0.weight"]
    torch.save({"model_state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="missing keys.*layer2.0.downsample.0.weight"):
        load_stage1_backbone(tmp_path / "partial.pt")
    torch.save({"model_state_dict": {"conv.weight": torch.ones(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="backbone.conv1.weight"):
        load_stage1_backbone(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_stage1_backbone(tmp_path / "junk.pt")


def test_optimizer_step_changes_only_adapters_and_head():
    torch.manual_seed(0)
    model = Stage2Model.from_stage1(Stage1Model(0.25)).train()
    assert not model.backbone.training and all(not m.training for m in model.backbone.modules())
    assert model.adapters["layer3"].bn.training and model.head.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = model.parameter_groups()
    opt = torch.optim.AdamW([{"params": groups["adapter"], "lr": 1e-3},
                             {"params": groups["head"], "lr": 1e-3}], weight_decay=1e-4)
    loss = build_loss("baseline", [10, 30, 20])(model(blocks(16)), torch.randint(0, 3, (16,)))
    loss.backward()
    opt.step()
    after = model.state_dict()
    backbone_keys = [k for k in after if k.startswith("backbone.")]
    # Weights and BatchNorm running statistics (and counters) bitwise unchanged.
    assert all(torch.equal(before[k], after[k]) for k in backbone_keys)
    assert all(p.grad is None for p in model.backbone.parameters())
    for prefix in ("adapters.layer3.", "adapters.layer4.", "head."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    n_grouped = sum(p.numel() for g in groups.values() for p in g)
    assert n_grouped == count_parameters(model)["trainable"]


def test_cached_prefix_gives_the_same_logits():
    torch.manual_seed(0)
    model = Stage2Model(width=0.25).eval()
    for adapter in model.adapters.values():  # make the adapters non-trivial
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    x = blocks(8)
    with torch.no_grad():
        prefix = model.frozen_prefix(x)
        torch.testing.assert_close(model.forward_from_prefix(prefix), model(x), rtol=0, atol=0)
        torch.testing.assert_close(prefix, model.backbone.forward_prefix(x), rtol=0, atol=0)
    assert prefix.shape == (8, 32, 2, 2)  # layer2 output at width 0.25
    assert Stage2Model(width=0.25, adapter_layers=("layer4",)).frozen_prefix(x).shape == (8, 64, 1, 1)
    head_only = Stage2Model(width=0.25, adapter_layers=()).eval()
    with torch.no_grad():
        torch.testing.assert_close(head_only.forward_from_prefix(head_only.frozen_prefix(x)),
                                   head_only.head(head_only.backbone(x)))


def test_a_trained_backbone_has_no_prefix_and_runs_whole():
    from av1_ablation.training.prefix import WholeNetwork, logit_source
    from av1_ablation.training.tensors import DeviceBlocks

    torch.manual_seed(0)
    model = Stage2Model(width=0.25, frozen=False, qp_input="concat").eval()
    with pytest.raises(RuntimeError, match="no frozen prefix"):
        model.frozen_prefix(blocks(2))
    rng = np.random.default_rng(0)
    split = DeviceBlocks(rng.integers(0, 1024, (10, 16, 16)), rng.integers(0, 3, 10), torch.device("cpu"),
                         qindex=rng.choice([80, 220], 10))
    source = logit_source(model, {"train": split}, augment=True, batch_size=4)
    assert isinstance(source, WholeNetwork)  # no cached copies of the inputs
    # the same batches of 4: a convolution's rounding may depend on the batch size (oneDNN on AVX-512)
    batches = torch.arange(10).split(4)
    with torch.no_grad():
        whole = torch.cat([model(split.inputs(idx), split.qp[idx]) for idx in batches])
        torch.testing.assert_close(source.logits("train"), whole, rtol=0, atol=0)


@pytest.mark.parametrize("cin, cout, k, stride, pad, groups, size", [
    (32, 48, 3, 1, 1, 1, 1),   # 3x3 on 1x1: centre tap
    (32, 48, 3, 2, 1, 1, 2),   # stride-2 3x3 from 2x2 to 1x1: weight[:, :, 1:3, 1:3]
    (32, 48, 1, 2, 0, 1, 2),   # downsample 1x1 stride 2 from 2x2
    (16, 16, 3, 1, 1, 16, 1),  # adapter depthwise 3x3 on 1x1
    (2, 1, 7, 1, 3, 1, 1),     # spatial attention 7x7 on 1x1
    (8, 8, 3, 1, 1, 1, 4),     # larger map: plain conv path
    (8, 8, 3, 1, 1, 2, 1),     # grouped, not depthwise: plain conv path
])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_path_equals_plain_conv(cin, cout, k, stride, pad, groups, size, bias):
    torch.manual_seed(0)
    conv = FastConv2d(cin, cout, k, stride, pad, groups=groups, bias=bias).double()
    x = torch.randn(5, cin, size, size, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    want = F.conv2d(x, conv.weight, conv.bias, stride, pad, groups=groups)
    torch.testing.assert_close(out, want)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight])
    want_grads = torch.autograd.grad(want.square().sum(), [x, conv.weight])
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected)


def test_whole_model_fast_paths_equal_plain_convs():
    torch.manual_seed(0)
    model = Stage2Model(width=0.5).eval()
    for adapter in model.adapters.values():
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    x = blocks(6)
    with torch.no_grad():
        fast = model(x)
        slow = set_fast_paths(model, False)(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.adapters["layer4"](torch.ones(2, 256, 1, 1)), torch.ones(2, 256, 1, 1))


@pytest.mark.parametrize("kwargs, match", [
    ({"adapter_layers": ("layer5",)}, "adapter_layers"),
    ({"adapter_layers": "layer3"}, "adapter_layers"),
    ({"adapter_layers": ("layer3", "layer3")}, "adapter_layers"),
    ({"adapter_reduction": 0}, "adapter_reduction"),
    ({"width": 0.0}, "width"),
    ({"backbone": Backbone(0.25), "width": 1.0}, "width"),
])
def test_stage2_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Stage2Model(**kwargs)
