"""Shared fixtures. ``tiny_dataset`` is a real (aomenc + libaom) block store."""
import gc
import importlib.util
from pathlib import Path

import pytest

pytest_plugins = ["tests.mlflow_fixtures"]

from av1_ablation.dataset import build_dataset

# Six bundled photos, centre 128x128, one QP: about 2 s on two cores and it
# holds SPLIT, RECT and AB blocks (the textures give SPLIT, the rest RECT/AB).
TINY_SOURCES = ["embedded:camera", "embedded:astronaut", "embedded:coffee",
                "embedded:chelsea", "embedded:brick", "embedded:grass"]


@pytest.fixture(autouse=True)
def _earlier_objects_frozen():
    """Every test starts with what is alive so far moved out of the collector's sight.

    A full collection visits every object the collector tracks, and this process holds hundreds
    of thousands of them (torch, MLflow, pandas, the test modules): about 0.2 s per collection.
    statsmodels' Holm correction collects on every call, so a comparison paid that a dozen
    times. A test's own garbage is still collected; what is alive when the next test starts is
    frozen, and a cycle it forms later is never collected: a small leak, for a suite a third
    faster.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a tiny block store: 6 photos cropped to 128x128, cq 32, cpu-used 2."""
    out = tmp_path_factory.mktemp("tiny") / "store"
    return build_dataset(TINY_SOURCES, out, qps=(32,), cpu_used=2, crop=128, progress=False)


@pytest.fixture(scope="session")
def tiny_dataset_two_qps(tmp_path_factory):
    """The same six photos at two QPs (cq 20 and 55): what training tests use, since the models
    read the QP by default."""
    out = tmp_path_factory.mktemp("tiny2qp") / "store"
    return build_dataset(TINY_SOURCES, out, qps=(20, 55), cpu_used=2, crop=128, progress=False)


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: the module of ``benchmarks/<name>.py``, whose analysis is behind published
    figures (the scripts are run by path, not installed, so they are loaded from their file)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]
    return load
