"""Stage models: backbone, Stage-1 and Stage-2 classifiers, checkpoint loading."""
from av1_ablation.models.backbone import STAGES, Backbone, BasicBlock, SEBlock, SpatialAttention, scaled_channels
from av1_ablation.models.checkpoints import load_stage1_backbone, load_stage1_model, read_state_dict
from av1_ablation.models.fastconv import FastConv2d, set_fast_paths
from av1_ablation.models.qp import QP_INPUTS, QPHead, standardise_qindex
from av1_ablation.models.stages import (
    ADAPTER_GROUP,
    BACKBONE_GROUP,
    HEAD_GROUP,
    ConvAdapter,
    Stage1Head,
    Stage1Model,
    Stage2Head,
    Stage2Model,
    count_parameters,
)

__all__ = [
    "ADAPTER_GROUP",
    "BACKBONE_GROUP",
    "HEAD_GROUP",
    "STAGES",
    "Backbone",
    "BasicBlock",
    "ConvAdapter",
    "QP_INPUTS",
    "QPHead",
    "FastConv2d",
    "SEBlock",
    "SpatialAttention",
    "Stage1Head",
    "Stage1Model",
    "Stage2Head",
    "Stage2Model",
    "count_parameters",
    "load_stage1_backbone",
    "load_stage1_model",
    "read_state_dict",
    "scaled_channels",
    "set_fast_paths",
    "standardise_qindex",
]
