"""Resolved training configurations and the presets they start from.

A configuration is a frozen dataclass: the command line and the MLproject
parameters may only override existing fields, values are checked once here,
and the resolved object is logged (``cfg.<field>`` params) and stored in every
checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from av1_ablation.dataset.split import check_folds
from av1_ablation.errors import UserError
from av1_ablation.models.qp import QP_INPUTS
from av1_ablation.record.contract import STAGE1_SCORE, STAGE2_SCORE, cfg_param

ADAPTABLE_LAYERS = ("layer1", "layer2", "layer3", "layer4")
SAMPLERS = ("balanced", "none")
DEVICES = ("auto", "cpu", "cuda")
SPLIT_MODES = ("source", "random")


@dataclass(frozen=True)
class Stage2Config:
    """Stage-2 training of one loss arm (the seed's recipe is the ``paper`` preset)."""

    loss_type: str = "baseline"  # one of av1_ablation.losses.LOSS_TYPES
    seed: int = 42
    preset: str = "paper"  # where the defaults below came from
    epochs: int = 50  # maximum; early stopping usually ends sooner
    patience: int = 15  # epochs without a better val macro-F1 before stopping
    batch_size: int = 128
    eval_batch_size: int = 4096  # evaluation has no backward pass, so big batches are cheap
    lr_adapter: float = 0.001
    lr_head: float = 0.0001
    weight_decay: float = 0.01
    plateau_factor: float = 0.5  # ReduceLROnPlateau on val macro-F1
    plateau_patience: int = 5
    cb_beta: float = 0.9999  # class-balanced weights (Cui et al. 2019)
    adapter_reduction: int = 4  # Conv-Adapter bottleneck: channels / reduction
    adapter_layers: tuple[str, ...] = ("layer3", "layer4")
    qp_input: str = "concat"  # how the head reads the QP: none, concat or film (models/qp.py)
    finetune: bool = False  # train the backbone too (the `finetune` reference), at lr_adapter
    sampler: str = "balanced"  # class-balanced sampling with replacement, or plain shuffling
    augment: bool = True  # random dihedral transform per block: SPLIT/RECT/AB are invariant to it
    width: float = 1.0  # channel multiplier of the ResNet-18 backbone
    data: str = ""  # data-set directory; "" = the embedded default data set
    split_mode: str = "source"
    split_seed: int = 0
    folds: int = 1  # K >= 2: grouped K-fold over pictures (dataset/split.py)
    fold: int = 0  # the fold this run tests
    stage1: str = "auto"  # a Stage-1 run id, a checkpoint path, or "auto"
    device: str = "auto"

    def __post_init__(self):
        _validate_common(self)
        from av1_ablation.losses import LOSS_TYPES

        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"loss_type={self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        bad = [layer for layer in self.adapter_layers if layer not in ADAPTABLE_LAYERS]
        if bad or not self.adapter_layers:
            raise UserError(
                f"adapter_layers={','.join(self.adapter_layers) or '(empty)'} must name one or more "
                f"of {', '.join(ADAPTABLE_LAYERS)}, e.g. layer3,layer4"
            )
        _check_positive(self, "lr_adapter", "lr_head", "adapter_reduction", "plateau_patience")
        if not 0 < self.plateau_factor < 1:
            raise UserError(f"plateau_factor={self.plateau_factor} must lie in (0, 1)")
        if not 0 <= self.cb_beta < 1:
            raise UserError(f"cb_beta={self.cb_beta} must lie in [0, 1)")


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 training (NONE vs partitioned) of the backbone that Stage 2 freezes."""

    seed: int = 42
    preset: str = "paper"
    epochs: int = 20  # cosine schedule over all epochs; the best epoch is kept
    patience: int = 0  # 0 = run every epoch, as the original recipe did
    batch_size: int = 128
    eval_batch_size: int = 4096
    lr: float = 0.001
    lr_min: float = 0.00001
    weight_decay: float = 0.0001
    focal_alpha: float = 0.25
    focal_gamma: float = 2.5
    qp_input: str = "concat"  # how the head reads the QP: none, concat or film (models/qp.py)
    sampler: str = "balanced"
    augment: bool = True
    width: float = 1.0
    data: str = ""
    split_mode: str = "source"
    split_seed: int = 0
    folds: int = 1
    fold: int = 0
    device: str = "auto"

    def __post_init__(self):
        _validate_common(self)
        _check_positive(self, "lr")
        if self.patience < 0:
            raise UserError(f"patience={self.patience} must be >= 0 (0 runs every epoch)")


# Presets: "paper" is the seed's recipe; "cpu" keeps the recipe's optimiser and schedule
# but uses a quarter-width backbone and fewer epochs, so one arm takes minutes on 2 cores.
STAGE2_PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {"width": 0.25, "epochs": 30, "patience": 8, "plateau_patience": 3},
    "smoke": {"width": 0.25, "epochs": 1, "patience": 1, "batch_size": 32, "eval_batch_size": 512},
}
STAGE1_PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {"width": 0.25, "epochs": 12},
    "smoke": {"width": 0.25, "epochs": 1, "batch_size": 32, "eval_batch_size": 512},
}


def default_preset() -> str:
    """``paper`` where a CUDA device exists, ``cpu`` otherwise."""
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def resolve(cls, overrides: dict, presets: dict[str, dict]):
    """Build a config from ``preset`` (or the default one) plus explicit overrides.

    ``overrides`` maps field names to values (strings are parsed to the field's type;
    None means "not given"). Unknown names or values that do not parse raise UserError.
    """
    # None or "" = not given (MLproject passes "" for parameters left to the preset)
    overrides = {k: v for k, v in overrides.items() if v is not None and v != ""}
    preset = str(overrides.pop("preset", "") or "auto")
    if preset == "auto":
        preset = default_preset()
    if preset not in presets:
        raise UserError(f"preset={preset!r} is not one of auto, {', '.join(presets)}")
    types = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(types)}")
    values = {"preset": preset, **presets[preset]}
    for name, raw in overrides.items():
        values[name] = _parse(name, raw, types[name])
    return cls(**values)


# What --help says an option does, where its name alone does not say it
OPTION_MEANINGS = {
    "seed": "random seed of the run",
    "epochs": "at most this many epochs",
    "patience": "stop after this many epochs without a better {score} (0: never stop early)",
    "batch_size": "blocks per training batch",
    "eval_batch_size": "blocks per evaluation batch",
    "lr_adapter": "AdamW learning rate of the adapters (and of the backbone where it trains)",
    "lr_head": "AdamW learning rate of the head",
    "lr": "AdamW learning rate, cosine-annealed to --lr-min",
    "lr_min": "the learning rate at the end of the cosine schedule",
    "weight_decay": "AdamW weight decay",
    "plateau_factor": "ReduceLROnPlateau factor on val macro-F1",
    "plateau_patience": "ReduceLROnPlateau patience in epochs",
    "cb_beta": "beta of the class-balanced loss weights (Cui et al. 2019)",
    "focal_alpha": "focal-loss weight of the positive (partitioned) class",
    "focal_gamma": "focal-loss focusing parameter",
    "adapter_reduction": "Conv-Adapter bottleneck: channels / this",
    "adapter_layers": "backbone stages that get a Conv-Adapter",
    "qp_input": "how the head reads the block's QP",
    "finetune": "true: train the backbone too (the finetune reference)",
    "sampler": "class-balanced sampling with replacement, or plain shuffling",
    "augment": "true: a random dihedral transform of each training block",
    "width": "channel multiplier of the ResNet-18 backbone (1.0: the paper's)",
    "split_mode": "split by source picture into train/val/test, or by block into 80%% train and "
                  "20%% val with no test, as the original pipeline did",
    "split_seed": "seed of the train/val/test split",
    "folds": "1: one train/val/test split; K >= 2: grouped K-fold cross-validation over pictures",
    "fold": "the fold this run tests, 0..K-1",
    "stage1": "the Stage-1 backbone Stage 2 starts from: a Stage-1 run id, a checkpoint path, or auto "
              "(reuse or train one)",
    "device": "where to train",
}


def add_config_arguments(parser, cls, presets: dict[str, dict], *,
                         exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of ``cls`` but ``exclude`` (the fields the
    command sets itself, which it therefore refuses); default: the preset's value."""
    for f in fields(cls):
        if f.name in exclude:
            continue
        parser.add_argument(option_name(f.name), dest=f.name, default=None,
                            metavar=f.name.upper(), help=option_help(cls, f, presets))


def option_help(cls, f, presets: dict[str, dict]) -> str:
    """What ``--help`` says of a field: what it does, its choices, its default in each preset."""
    from av1_ablation.losses import LOSS_TYPES

    if f.name == "preset":
        return (f"where the other defaults come from: one of auto (paper on a CUDA machine, cpu "
                f"otherwise), {', '.join(presets)}; default: auto")
    if f.name == "data":
        return "data-set directory; default: the embedded data set, data/embedded or $AV1_ABLATION_DATA"
    choices = {"loss_type": LOSS_TYPES, "sampler": SAMPLERS, "qp_input": QP_INPUTS,
               "split_mode": SPLIT_MODES, "device": (*DEVICES, "cuda:N")}.get(f.name)
    if f.name == "adapter_layers":
        words = f"one or more of {', '.join(ADAPTABLE_LAYERS)}"
    else:
        words = f"one of {', '.join(choices)}" if choices else ""
    meaning = OPTION_MEANINGS.get(f.name, "").format(score=STAGE1_SCORE if cls is Stage1Config else STAGE2_SCORE)
    by_preset = {name: _format(values.get(f.name, f.default)) for name, values in presets.items()}
    if f.type == "bool":  # as typed on the command line
        by_preset = {name: value.lower() for name, value in by_preset.items()}
    if len(set(by_preset.values())) == 1:
        default = f"default: {by_preset['paper']}"
    else:
        default = "default: the preset's, " + ", ".join(f"{v} in {k}" for k, v in by_preset.items())
    what = ": ".join(part for part in (meaning, words) if part)
    return f"{what}; {default}" if what else default


def from_args(cls, args, presets: dict[str, dict], **fixed):
    """The configuration of a command's parsed arguments (see :func:`resolve`); ``fixed``
    gives the fields the command decides itself (None: the preset's value)."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(cls)}
    return resolve(cls, {**overrides, **fixed}, presets)


def to_params(cfg) -> dict[str, str]:
    """The ``cfg.<field>`` MLflow params of a configuration (strings, as stored)."""
    return {cfg_param(k): _format(v) for k, v in dataclasses.asdict(cfg).items()}


def to_arguments(cfg) -> list[str]:
    """The command-line options that resolve to ``cfg`` again: ``--field-name value`` pairs."""
    return [part for f in fields(cfg)
            for part in (option_name(f.name), _format(getattr(cfg, f.name)))]


def option_name(field: str) -> str:
    """The command-line option of a configuration field: ``split_seed`` -> ``--split-seed``."""
    return "--" + field.replace("_", "-")


def from_dict(cls, values: dict):
    """Rebuild a configuration stored in a checkpoint."""
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    return cls(**values)


def _format(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _parse(name: str, raw, type_name: str):
    if not isinstance(raw, str):
        return tuple(raw) if type_name.startswith("tuple") else raw
    text = raw.strip()
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if type_name.startswith("tuple"):
            return tuple(part for part in text.replace(",", " ").split() if part)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a valid {type_name.split('[')[0]}") from None
    return text


def _validate_common(cfg) -> None:
    _check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "width")
    if cfg.batch_size < 2:  # layer3, layer4 and the adapter see 1x1 maps of a 16x16 block
        raise UserError(f"batch_size={cfg.batch_size} must be >= 2: BatchNorm cannot normalise a "
                        "training batch of one block; use --batch-size 2 or more")
    if cfg.weight_decay < 0:
        raise UserError(f"weight_decay={cfg.weight_decay} must be >= 0")
    if cfg.sampler not in SAMPLERS:
        raise UserError(f"sampler={cfg.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise UserError(f"device={cfg.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
    if cfg.qp_input not in QP_INPUTS:
        raise UserError(f"qp_input={cfg.qp_input!r} is not one of {', '.join(QP_INPUTS)}")
    if cfg.split_mode not in SPLIT_MODES:
        raise UserError(f"split_mode={cfg.split_mode!r} is not one of {', '.join(SPLIT_MODES)}")
    check_folds(cfg.folds, cfg.fold, cfg.split_mode)
    if cfg.width > 4:
        raise UserError(f"width={cfg.width} is too large; 1.0 is the paper's model")
    if getattr(cfg, "patience", 0) < 0:
        raise UserError(f"patience={cfg.patience} must be >= 0")


def _check_positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise UserError(f"{name}={value} must be > 0")


__all__ = [
    "Stage1Config",
    "Stage2Config",
    "STAGE1_PRESETS",
    "STAGE2_PRESETS",
    "add_config_arguments",
    "from_args",
    "resolve",
    "to_params",
    "to_arguments",
    "option_name",
    "from_dict",
    "default_preset",
]
