"""Finding the Stage-2 training runs of an ablation in MLflow and checking they compare.

A Stage-2 training run carries the tag ``av1.kind = stage2``, the params
``loss_type`` and ``seed``, its resolved configuration as ``cfg.<field>``
params, the final ``test_*`` metrics, the ``val_macro_f1`` history (step =
epoch) and the artifact ``predictions/test.csv`` with the columns of
:data:`PREDICTION_COLUMNS`. Children of an ablation parent (``av1.kind =
ablation``) carry ``mlflow.parentRunId``.

Runs compare when they differ only in ``loss_type`` and ``seed``. The
``cfg.*`` fields in :data:`NON_EXPERIMENTAL_PARAMS` are ignored because they
cannot change the result (where it ran, how it logs) or are the variables of
the ablation itself; so are the identifying tags in
:data:`COMPARABILITY_TAGS` checked alongside the params.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from av1_ablation.errors import UserError
from av1_ablation.run_artifacts import PREDICTION_COLUMNS

PREDICTIONS_ARTIFACT = "predictions/test.csv"
# The ablation's own variables, and fields that do not change what is learned.
# cfg.data is a local path; the data set itself is compared by its fingerprint tag.
NON_EXPERIMENTAL_PARAMS = frozenset({
    "cfg.loss_type", "cfg.seed", "cfg.device", "cfg.eval_batch_size", "cfg.data",
})
COMPARABILITY_TAGS = ("av1.dataset_fingerprint", "av1.split_fingerprint", "av1.stage1_run_id")
FINISHED = "FINISHED"


@dataclass
class RunRecord:
    """One finished Stage-2 training run, with what the comparison needs."""

    run_id: str
    run_name: str
    loss_type: str
    seed: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # test predictions, sorted by block_index

    def identity(self) -> dict[str, str]:
        """Everything that must match between comparable runs (params + tags)."""
        out = {k: v for k, v in self.params.items()
               if k.startswith("cfg.") and k not in NON_EXPERIMENTAL_PARAMS}
        out.update({f"tags.{t}": self.tags.get(t, "<missing>") for t in COMPARABILITY_TAGS})
        return out


@dataclass
class Selection:
    """What :func:`load_runs` found: the usable runs and those left out (with why)."""

    experiment_id: str
    description: str
    records: list[RunRecord]
    left_out: list[dict[str, str]]


# --------------------------------------------------------------------------- store access
def check_tracking_uri(uri: str) -> None:
    """Fail early, with a clear message, when the tracking store cannot be used.

    A SQLite file that does not exist would be created empty by MLflow, so a
    typo would silently yield "no runs"; it is refused here instead.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:" and not Path(path).is_file():
            raise UserError(
                f"tracking store {uri} does not exist (no file {Path(path).resolve()}); set "
                "MLFLOW_TRACKING_URI to the store the training runs were logged to"
            )


def _client():
    import mlflow
    from mlflow.exceptions import MlflowException

    # An unreachable server would otherwise be retried for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run clutters the tables
    uri = mlflow.get_tracking_uri()
    check_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        raise UserError(f"cannot reach the MLflow tracking store {uri}: {exc.message.splitlines()[0]}; "
                        "check MLFLOW_TRACKING_URI") from None
    except Exception as exc:  # connection errors, bad URI schemes
        raise UserError(f"cannot reach the MLflow tracking store {uri}: {exc}; "
                        "check MLFLOW_TRACKING_URI") from None
    return client


def resolve_experiment(client, name: str | None) -> str:
    """Experiment id from ``name``, else MLFLOW_EXPERIMENT_ID / _NAME, else Default."""
    name = name or (None if os.environ.get("MLFLOW_EXPERIMENT_ID") else os.environ.get("MLFLOW_EXPERIMENT_NAME"))
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise UserError(f"no MLflow experiment named {name!r}; pass the experiment the ablation "
                            "was logged to with --experiment")
        return exp.experiment_id
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
    from mlflow.exceptions import MlflowException
    try:
        client.get_experiment(exp_id)
    except MlflowException:
        raise UserError(f"MLFLOW_EXPERIMENT_ID={exp_id} names no experiment in this store; "
                        "unset it or pass --experiment NAME") from None
    return exp_id


# --------------------------------------------------------------------------- loading
def _search(client, exp_id: str, filter_string: str):
    return client.search_runs([exp_id], filter_string=filter_string, max_results=50_000,
                              order_by=["attributes.start_time DESC"])


def _read_predictions(client, run_id: str, dst: Path) -> pd.DataFrame | None:
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(dst))
    except (MlflowException, OSError):
        return None
    frame = pd.read_csv(local)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"run {run_id}: {PREDICTIONS_ARTIFACT} lacks the columns {missing}; "
                        "re-run its evaluation with the current training code")
    return frame.sort_values("block_index", kind="stable").reset_index(drop=True)


def _reused_children(client, parent: str, found: set[str]) -> list:
    """Children an ablation re-used from an earlier invocation instead of retraining them
    (listed in the parent's ``av1.children`` tag, nested under the earlier parent)."""
    listed = client.get_run(parent).data.tags.get("av1.children", "")
    return [client.get_run(rid) for rid in listed.split(",") if rid and rid not in found]


def load_runs(*, parent: str | None = None, experiment: str | None = None,
              filter_string: str | None = None, with_predictions: bool = True) -> Selection:
    """Load the Stage-2 runs to compare.

    Parameters
    ----------
    parent : str, default=None
        Ablation parent run id; its children are compared.
    experiment : str, default=None
        Experiment name; default MLFLOW_EXPERIMENT_ID (set by ``mlflow run``),
        then MLFLOW_EXPERIMENT_NAME, then the Default experiment.
    filter_string : str, default=None
        Extra MLflow search filter, ANDed with ``tags.av1.kind = 'stage2'``.
        Without ``parent`` it searches all Stage-2 runs of the experiment.
    with_predictions : bool, default=True
        Download ``predictions/test.csv`` of every run; a run without it is an error.

    Returns
    -------
    selection : Selection
        The FINISHED runs (newest first per loss/seed; older duplicates are
        left out) and the left-out runs with the reason.

    Raises
    ------
    UserError
        Unreachable store, unknown experiment or parent, no runs, or a run
        without its prediction artifact.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    if parent:
        try:
            parent_run = client.get_run(parent)
        except MlflowException:
            raise UserError(f"no run with id {parent!r} in {client.tracking_uri}; pass the run id of "
                            "an ablation parent (see `mlflow ui` or tags.av1.kind = 'ablation')") from None
        exp_id = parent_run.info.experiment_id
        description = f"children of ablation run {parent}"
    else:
        exp_id = resolve_experiment(client, experiment)
        description = f"Stage-2 runs of experiment {exp_id}"
        if not filter_string:
            parents = _search(client, exp_id, "tags.`av1.kind` = 'ablation'")
            if parents:
                parent = parents[0].info.run_id
                description = f"children of the newest ablation run {parent} (experiment {exp_id})"
    clauses = ["tags.`av1.kind` = 'stage2'"]
    if parent:
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")
    if filter_string:
        clauses.append(f"({filter_string})" if " or " in filter_string.lower() else filter_string)
        description += f" matching {filter_string!r}"
    try:
        runs = _search(client, exp_id, " and ".join(clauses))
    except MlflowException as exc:
        raise UserError(f"MLflow rejected the run filter: {exc.message.splitlines()[0]}; "
                        "fix --filter (MLflow search syntax, e.g. \"params.cfg.epochs = '20'\")") from None
    if parent and not filter_string:
        runs += _reused_children(client, parent, {r.info.run_id for r in runs})

    records, left_out, seen = [], [], set()
    with tempfile.TemporaryDirectory(prefix="av1-compare-") as tmp:
        for run in runs:
            rid, p = run.info.run_id, run.data.params
            label = {"run_id": rid, "loss_type": p.get("loss_type", "?"), "seed": p.get("seed", "?")}
            if run.info.status != FINISHED:
                left_out.append({**label, "reason": f"status {run.info.status}"})
                continue
            if "loss_type" not in p or "seed" not in p:
                left_out.append({**label, "reason": "no loss_type/seed params"})
                continue
            key = (p["loss_type"], p["seed"])
            if key in seen:
                left_out.append({**label, "reason": "older duplicate of the same loss_type and seed"})
                continue
            seen.add(key)
            record = RunRecord(
                run_id=rid, run_name=run.info.run_name or rid[:8], loss_type=p["loss_type"],
                seed=int(float(p["seed"])), params=dict(p), tags=dict(run.data.tags),
                metrics=dict(run.data.metrics),
                val_curve=[(m.step, m.value) for m in client.get_metric_history(rid, "val_macro_f1")],
            )
            if with_predictions:
                record.predictions = _read_predictions(client, rid, Path(tmp) / rid)
                if record.predictions is None:
                    raise UserError(
                        f"run {rid} ({record.loss_type}, seed {record.seed}) has no {PREDICTIONS_ARTIFACT} "
                        "artifact; re-run its evaluation, or leave it out with --filter "
                        f"\"attributes.run_id != '{rid}'\"")
            records.append(record)
    if not records:
        raise UserError(f"no finished Stage-2 runs found ({description}); run the ablation first "
                        "(`mlflow run . -e ablation`) or point --experiment/--parent/--filter at it")
    records.sort(key=lambda r: (r.loss_type, r.seed))
    return Selection(exp_id, description, records, left_out)


# --------------------------------------------------------------------------- comparability
def check_comparable(records: list[RunRecord], *, ignore=()) -> None:
    """Refuse runs that differ in anything but ``loss_type`` and ``seed``.

    Parameters
    ----------
    records : list of RunRecord
    ignore : iterable of str, default=()
        More param/tag keys to ignore (e.g. the ``--group-by`` key).

    Raises
    ------
    UserError
        Naming the first differing parameter and its values, or test
        predictions on different blocks.
    """
    ignore = set(ignore)
    identities = [r.identity() for r in records]
    keys = sorted(set().union(*identities) - ignore)
    for key in keys:
        values = {}
        for record, ident in zip(records, identities):
            values.setdefault(ident.get(key, "<missing>"), []).append(f"{record.loss_type}/seed {record.seed}")
        if len(values) > 1:
            shown = "; ".join(f"{v!r} in {', '.join(who[:3])}{' ...' if len(who) > 3 else ''}"
                              for v, who in values.items())
            raise UserError(f"runs are not comparable: {key} differs ({shown}); compare runs that differ "
                            f"only in loss_type and seed, or pass --group-by {key}")
    blocks = [r.predictions["block_index"].to_numpy() for r in records if r.predictions is not None]
    for record, b in zip(records, blocks):
        if not np.array_equal(b, blocks[0]):
            raise UserError(f"run {record.run_id} ({record.loss_type}, seed {record.seed}) was evaluated on "
                            "other test blocks than the rest; compare runs of the same data set and split")


def group_records(records: list[RunRecord], group_by: str | None) -> dict[str, list[RunRecord]]:
    """Split the runs by the value of a param or tag (``None``: one group)."""
    if not group_by:
        return {"all runs": records}
    def value(r):
        if group_by.startswith("tags."):
            return r.tags.get(group_by[5:])
        return r.params.get(group_by)
    if all(value(r) is None for r in records):
        known = sorted({k for r in records for k in r.params})
        raise UserError(f"--group-by {group_by}: no run has this param; use one of {', '.join(known)} "
                        "(or tags.<name>)")
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(f"{group_by}={value(r)}", []).append(r)
    return groups
