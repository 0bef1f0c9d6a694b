"""Pytest plugin: a fast, isolated MLflow tracking store per test.

Register it in ``tests/conftest.py`` with ``pytest_plugins = ["tests.mlflow_fixtures"]``.

Creating a SQLite store runs MLflow's alembic migrations (seconds), so one
migrated template database is built per session and copied for each test.
Each test also gets its own experiment whose artifact location lies in
``tmp_path`` and runs with the current directory in ``tmp_path``, so nothing
is written to the repository (a copied database would otherwise keep the
Default experiment's artifact location from when it was created).
"""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


@pytest.fixture
def tracking_store(tmp_path, monkeypatch, _mlflow_template_db):
    """``(tracking_uri, experiment_id)`` of a fresh store; env vars point MLflow at it."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"  # db is absolute, so this is sqlite:////abs/path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.MlflowClient(uri).create_experiment(
        "test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    yield uri, experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
