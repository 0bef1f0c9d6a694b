"""Reading Stage-1 checkpoints: the original pipeline's and ours.

Accepted layouts (all written with ``torch.save``):

- ``{"model_state_dict": {...}, "epoch": ..., ...}``: the original research
  repository chiarorosa/cnn-av1-research (v6/v7) and this project;
- ``{"model_state": {...}, ...}``: its older v5 scripts;
- a bare state dict.

The state dict's ``backbone.*`` keys must match :class:`Backbone` exactly
(strict loading); the width is the one the checkpoint records (this project's,
since it stores it) or the one that reproduces every layer's channel count. Files are
read with ``torch.load(weights_only=True)``; numpy arrays and scalars, which
the original stored in ``val_metrics``, are allowed, arbitrary objects are not.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np
import torch

from av1_ablation.errors import UserError
from av1_ablation.models.backbone import BASE_CHANNELS, STAGES, Backbone, scaled_channels
from av1_ablation.models.stages import Stage1Model

_STATE_KEYS = ("model_state_dict", "model_state")
WIDTH_KEY = "width"  # in the config this project's checkpoints hold (or at their top level)


def _numpy_safe_globals() -> list:
    """numpy globals needed to unpickle arrays and scalars, under old and new module names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    found = [np.ndarray, np.dtype]
    for name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found += [(multiarray._reconstruct, f"{name}._reconstruct"), (multiarray.scalar, f"{name}.scalar")]
    found += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return found


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """The model state dict in a checkpoint file (or in an already loaded mapping).

    Raises :class:`UserError` when the file is missing, unreadable, or holds no state dict.
    """
    return _state_dict_of(_load_checkpoint(source))


def _load_checkpoint(source) -> Mapping:
    """The mapping a checkpoint file holds (``source`` itself when it is already loaded)."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise UserError(f"checkpoint {os.fspath(source)!r} does not exist; pass the path of a "
                            "Stage-1 checkpoint (.pt) written by the Stage-1 training")
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle and zip errors have no common base class
            # torch's own text advises weights_only=False, i.e. running whatever code the
            # file holds: never relayed to a user who may hold an untrusted file
            raise UserError(_unreadable_message(os.fspath(source), exc)) from exc
    else:
        obj = source
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint holds a {type(obj).__name__}, not a dict with a model state dict")
    return obj


def _state_dict_of(obj: Mapping) -> dict[str, torch.Tensor]:
    for key in _STATE_KEYS:
        if key in obj:
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint has no model state dict: expected one of the keys {_STATE_KEYS} "
                        "or a bare state dict of tensors")
    return dict(obj)


def _unreadable_message(path: str, exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return (f"cannot read checkpoint {path!r}: it holds Python objects other than tensors, "
                "numbers, strings and numpy arrays, which are not loaded (loading them could run "
                "code from the file); re-save it as {'model_state_dict': model.state_dict()}")
    return (f"cannot read checkpoint {path!r}: it is not a PyTorch checkpoint (torch.load: "
            f"{type(exc).__name__}); pass a Stage-1 checkpoint (.pt) written by the Stage-1 "
            "training or by the original pipeline")


def _stored_width(obj: Mapping) -> float | None:
    """The width a checkpoint records (its config's, or a top-level ``width``), else None."""
    config = obj.get("config")
    for width in (obj.get(WIDTH_KEY), config.get(WIDTH_KEY) if isinstance(config, Mapping) else None):
        if isinstance(width, (int, float)) and not isinstance(width, bool):
            return float(width)
    return None


def _channel_counts(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Module name -> (index into :data:`BASE_CHANNELS`, output channels) of the stem and
    of the layers that ``state`` holds."""
    weight = state.get("backbone.conv1.weight")
    if weight is None or weight.dim() != 4 or weight.shape[1] != 1:
        raise UserError("checkpoint has no 1-channel 'backbone.conv1.weight'; it is not a Stage-1 "
                        "checkpoint of this model family")
    counts = {"stem": (0, weight.shape[0])}
    for i, stage in enumerate(STAGES):
        conv = state.get(f"backbone.{stage}.0.conv1.weight")
        if conv is not None and conv.dim() == 4:  # a missing layer is reported by the strict load
            counts[stage] = (i, conv.shape[0])
    return counts


def _reproduces(width: float, counts: Mapping[str, tuple[int, int]]) -> bool:
    try:
        channels = scaled_channels(width)
    except ValueError:
        return False
    return all(channels[i] == c for i, c in counts.values())


def infer_width(state: Mapping[str, torch.Tensor], stored: float | None = None) -> float:
    """The backbone width multiplier of a state dict: ``stored`` (what the checkpoint
    records) when given, else a width that reproduces every layer's channel count.

    The stem's count alone is not enough: channels are rounded per layer, so width 0.2
    has 13 stem channels, and 13 / 64 = 0.203125 would give layer3 and layer4 52 and 104
    channels instead of 51 and 102. Raises :class:`UserError` when no width (or not
    ``stored``) reproduces the counts.
    """
    counts = _channel_counts(state)
    if stored is not None:
        candidates = [stored]
    else:
        # each layer's count over its base count; the stem's first, as older releases read it
        candidates = [c / BASE_CHANNELS[i] for i, c in counts.values()]
        # a count of 1 also stands for every narrower width (scaled_channels keeps one channel)
        low = max((c - 0.5) / BASE_CHANNELS[i] if c > 1 else 0.0 for i, c in counts.values())
        high = min((c + 0.5) / BASE_CHANNELS[i] for i, c in counts.values())
        candidates.append((low + high) / 2)  # off the rounding boundaries of every layer
    for width in candidates:
        if _reproduces(width, counts):
            return width
    names = ", ".join(f"{name} {c}" for name, (_, c) in counts.items())
    what = f"the recorded width {stored}" if stored is not None else "any width multiplier"
    raise UserError(f"checkpoint channel counts ({names}) do not match {what} of this model family; "
                    "use a Stage-1 checkpoint written by this project or by the original pipeline")


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                 optional: tuple[str, ...] = ()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        raise UserError(
            f"checkpoint does not match the {what}: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; use a Stage-1 checkpoint of this architecture"
        )


def load_stage1_backbone(source) -> Backbone:
    """A :class:`Backbone` with the ``backbone.*`` weights of a Stage-1 checkpoint (strict keys)."""
    obj = _load_checkpoint(source)
    state = _state_dict_of(obj)
    backbone = Backbone(infer_width(state, _stored_width(obj)))
    prefix = "backbone."
    _load_strict(backbone, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                 "backbone")
    return backbone


def infer_qp_input(state: Mapping[str, torch.Tensor]) -> str:
    """``none``, ``concat`` or ``film``, from the head's keys (the original's have no ``head.qp``)."""
    if "head.qp.2.weight" in state:
        return "film"
    return "concat" if "head.qp.0.weight" in state else "none"


def load_stage1_model(source) -> Stage1Model:
    """A :class:`Stage1Model` from a Stage-1 checkpoint (strict keys).

    ``head.temperature`` may be absent (the v7 head has none); it then keeps 1.5.
    The head's QP input is read from its keys.
    """
    obj = _load_checkpoint(source)
    state = _state_dict_of(obj)
    model = Stage1Model(infer_width(state, _stored_width(obj)), qp_input=infer_qp_input(state))
    _load_strict(model, state, "Stage-1 model", optional=("head.temperature",))
    return model
