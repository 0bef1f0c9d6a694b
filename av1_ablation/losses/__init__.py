"""The five Stage-2 ablation losses, the Stage-1 binary focal loss, and class-balanced weights."""
from av1_ablation.losses.asymmetric import AsymmetricLoss
from av1_ablation.losses.binary import BinaryFocalLoss
from av1_ablation.losses.factory import LOSS_TYPES, build_loss, loss_hyperparameters
from av1_ablation.losses.focal import ClassBalancedFocalLoss, FocalLabelSmoothingLoss
from av1_ablation.losses.poly import PolyLoss
from av1_ablation.losses.weights import WeightedMeanLoss, class_balanced_weights

__all__ = [
    "LOSS_TYPES",
    "AsymmetricLoss",
    "BinaryFocalLoss",
    "ClassBalancedFocalLoss",
    "FocalLabelSmoothingLoss",
    "PolyLoss",
    "WeightedMeanLoss",
    "build_loss",
    "class_balanced_weights",
    "loss_hyperparameters",
]
