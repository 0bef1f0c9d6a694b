"""Stage-2 loss-function ablation for AV1 partition prediction, tracked in MLflow."""

__version__ = "0.1.0"
