"""``compare`` and the report notebook on a real tiny ablation (real encodes, real training)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from av1_ablation.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_real_tiny_ablation_and_notebook(tiny_dataset_two_qps, tracking_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri, exp = tracking_store
    assert main(["ablation", "--losses", "baseline,poly", "--seeds", "1,2,3", "--data", str(tiny_dataset_two_qps),
                 "--preset", "smoke", "--batch-size", "16", "--epochs", "2"]) == 0
    (parent,) = MlflowClient().search_runs([exp], "tags.`av1.kind` = 'ablation'")
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), "--n-resamples", "500"]) == 0
    text = capsys.readouterr().out
    assert "poly" in text and "baseline" in text and "Holm" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][0]["winner"] in ("baseline", "poly")
    assert summary["groups"][0]["verdict"]
    assert {p.name for p in out.iterdir()} >= {"report.md", "summary.csv", "summary.json"}
    # every arm sits on one frozen backbone, and the report says which
    (stage1,) = {c.data.tags["av1.stage1_run_id"] for c in MlflowClient().search_runs(
        [exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert f"on the backbone of Stage-1 run {stage1}" in (out / "report.md").read_text()
    (compare_run,) = MlflowClient().search_runs([exp], "tags.`av1.kind` = 'compare'")
    assert compare_run.info.status == "FINISHED"
    children = MlflowClient().search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    compared = json.dumps(compare_run.data.tags)
    assert len(children) == 6 and all(c.info.run_id in compared for c in children)

    # a child trained with another setting is not comparable: refused, naming the parameter
    assert main(["train", "--data", str(tiny_dataset_two_qps), "--preset", "smoke", "--batch-size", "16",
                 "--epochs", "1", "--loss-type", "poly", "--seed", "9"]) == 0
    assert main(["compare", "--filter", "params.`cfg.batch_size` = '16'", "--out",
                 str(tmp_path / "mixed"), "--no-log"]) == 2
    assert "cfg.epochs" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()

    import nbformat  # the test extra: the notebook check must not skip quietly after the costly part
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "loss_ablation_report.ipynb", as_version=4)
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp,
           "AV1_PARENT_RUN_ID": parent.info.run_id, "AV1_N_RESAMPLES": "300"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
