"""The MLflow experiment the commands log into, and the view mlflow ui opens it in."""
from __future__ import annotations

import contextlib

from av1_ablation.record.contract import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND


def experiment_id() -> str:
    """The experiment commands log into: ``MLFLOW_EXPERIMENT_ID``/``_NAME`` or the default."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def mark_model_training(experiment: str) -> None:
    """Make mlflow ui open ``experiment`` (an id) in its model-training view.

    Sets the experiment tag :data:`~av1_ablation.record.contract.EXPERIMENT_KIND_TAG` when
    it is absent, so a kind the user chose in the UI is kept. Best effort: a store that
    refuses experiment tags costs the view, not the run.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(MlflowException):
        client = MlflowClient()
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment).tags:
            client.set_experiment_tag(experiment, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
