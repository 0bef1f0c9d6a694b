"""Finding the Stage-2 training runs of an ablation in MLflow and checking they compare.

What a Stage-2 training run carries is the contract of
:mod:`av1_ablation.record.contract`; this module reads the ``loss_type`` and
``seed`` params, the ``cfg.*`` params, the final metrics, the ``val_macro_f1``
history (step = epoch) and ``predictions/test.csv``.

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
from av1_ablation.record.artifacts import read_predictions
from av1_ablation.record.contract import (BLOCK_INDEX, CFG_PREFIX, CHILDREN_TAG, COMPARABILITY_TAGS,
                                          FOLD_PARAM, FOLDS_PARAM, KIND_ABLATION, KIND_STAGE2,
                                          LOSS_TYPE_PARAM, SEED_PARAM, STAGE1_RUN_TAG, STAGE1_SOURCE_TAG,
                                          STAGE2_SCORE, TAGS_PREFIX, TEST_PREDICTIONS, VALUE_WHEN_ABSENT,
                                          cfg_param, children_clause, kind_clause, param_value, tagged)

# The ablation's own variables, and fields that do not change what is learned.
# cfg.data is a local path; the data set itself is compared by its fingerprint tag.
NON_EXPERIMENTAL_PARAMS = frozenset(map(cfg_param, ("loss_type", "seed", "device", "eval_batch_size", "data")))
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
        out = {k: v for k, v in {**VALUE_WHEN_ABSENT, **self.params}.items()
               if k.startswith(CFG_PREFIX) and k not in NON_EXPERIMENTAL_PARAMS}
        out.update({tagged(t): self.tags.get(t, "<missing>") for t in COMPARABILITY_TAGS})
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


def read_test_predictions(client, run_id: str, dst: Path) -> pd.DataFrame | None:
    """A run's test predictions, sorted by block index; None when it has none."""
    return read_predictions(client, run_id, "test", dst)


# Run ids per ``run_id IN (...)`` search, so a long children list stays a short query.
RUN_ID_CHUNK = 100


def _reused_children(client, exp_id: str, parent: str, found: set[str], clauses: list[str]) -> list:
    """Children an ablation re-used from an earlier invocation instead of retraining them
    (listed in the parent's ``av1.children`` tag, nested under the earlier parent).

    With ``clauses`` (the kind and ``--filter`` clauses) only the listed runs matching them
    are returned, so a filter applies to re-used children as to the others.
    """
    listed = client.get_run(parent).data.tags.get(CHILDREN_TAG, "")
    ids = list(dict.fromkeys(rid for rid in listed.split(",") if rid and rid not in found))
    if not clauses:
        return [client.get_run(rid) for rid in ids]
    runs = []
    for i in range(0, len(ids), RUN_ID_CHUNK):
        chunk = ", ".join(f"'{rid}'" for rid in ids[i:i + RUN_ID_CHUNK])
        runs += _search(client, exp_id, " and ".join([*clauses, f"attributes.run_id IN ({chunk})"]))
    return runs


def load_runs(*, parent: str | None = None, experiment: str | None = None,
              filter_string: str | None = None, with_predictions: bool = True,
              group_by: str | None = None) -> Selection:
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
    group_by : str, default=None
        The param or tag (``tags.<name>``) the runs will be grouped by (see
        :func:`group_records`); runs that differ in it are no duplicates.

    Returns
    -------
    selection : Selection
        The FINISHED runs (the newest per loss, seed, fold and ``group_by``
        value; older duplicates are left out) and the left-out runs with the reason.

    Raises
    ------
    UserError
        Unreachable store, unknown experiment or parent, no runs, or a run
        without its prediction artifact.
    """
    client = _client()
    exp_id, parent, description = _where(client, parent, experiment, filter_string)
    runs = _search_arms(client, exp_id, parent, filter_string)
    if filter_string:
        description += f" matching {filter_string!r}"
    records, left_out = read_records(client, runs, with_predictions, group_by=group_by)
    if not records:
        raise UserError(f"no finished Stage-2 runs found ({description}); run the ablation first "
                        "(`mlflow run . -e ablation`) or point --experiment/--parent/--filter at it")
    records.sort(key=lambda r: (r.loss_type, r.seed))
    description += _shared_backbone(records)
    return Selection(exp_id, description, records, left_out)


def _where(client, parent: str | None, experiment: str | None,
           filter_string: str | None) -> tuple[str, str | None, str]:
    """The experiment, the ablation parent (given, or the newest one when neither a parent
    nor a filter is given) and a description of what is compared."""
    from mlflow.exceptions import MlflowException

    if parent:
        try:
            parent_run = client.get_run(parent)
        except MlflowException:
            raise UserError(f"no run with id {parent!r} in {client.tracking_uri}; pass the run id of "
                            f"an ablation parent (see `mlflow ui` or {kind_clause(KIND_ABLATION)})") from None
        return parent_run.info.experiment_id, parent, f"children of ablation run {parent}"
    exp_id = resolve_experiment(client, experiment)
    if not filter_string:
        parents = _search(client, exp_id, kind_clause(KIND_ABLATION))
        if parents:
            parent = parents[0].info.run_id
            return exp_id, parent, f"children of the newest ablation run {parent} (experiment {exp_id})"
    return exp_id, None, f"Stage-2 runs of experiment {exp_id}"


def _search_arms(client, exp_id: str, parent: str | None, filter_string: str | None) -> list:
    """The Stage-2 runs of ``parent`` (with those it re-used) or of the experiment, newest first."""
    from mlflow.exceptions import MlflowException

    selected = [kind_clause(KIND_STAGE2)]
    if filter_string:
        selected.append(f"({filter_string})" if " or " in filter_string.lower() else filter_string)
    clauses = [*selected, children_clause(parent)] if parent else selected
    try:
        runs = _search(client, exp_id, " and ".join(clauses))
    except MlflowException as exc:
        raise UserError(f"MLflow rejected the run filter: {exc.message.splitlines()[0]}; fix --filter "
                        f"(MLflow search syntax, e.g. \"params.{cfg_param('epochs')} = '20'\")") from None
    if parent:
        # Re-used children are nested under an earlier parent, so the search above misses
        # them; a filter must select among them too, not drop them all.
        runs += _reused_children(client, exp_id, parent, {r.info.run_id for r in runs},
                                 selected if filter_string else [])
    return runs


def _loss_type(run) -> str | None:
    return run.data.params.get(LOSS_TYPE_PARAM)


def read_records(client, runs: list, with_predictions: bool, name_of=_loss_type,
                 skip_without_predictions: bool = False,
                 group_by: str | None = None) -> tuple[list[RunRecord], list[dict[str, str]]]:
    """The usable runs as records (the newest of each name, seed, fold and ``group_by``
    value; ``name_of(run)`` names the arm, by default its loss type) and the left-out ones
    with the reason. A run without test predictions is an error, or left out with
    ``skip_without_predictions``."""
    records, left_out, seen = [], [], set()
    with tempfile.TemporaryDirectory(prefix="av1-compare-") as tmp:
        for run in runs:
            rid, p, name = run.info.run_id, run.data.params, name_of(run)
            label = {"run_id": rid, "loss_type": name or "?", "seed": p.get(SEED_PARAM, "?")}
            if run.info.status != FINISHED:
                left_out.append({**label, "reason": f"status {run.info.status}"})
                continue
            if name is None or SEED_PARAM not in p:
                left_out.append({**label, "reason": "no loss_type/seed params"})
                continue
            # Runs that --group-by will put in different groups are no duplicates of each other.
            key = (name, p[SEED_PARAM], param_value(p, FOLDS_PARAM), param_value(p, FOLD_PARAM),
                   group_value(p, run.data.tags, group_by))
            if key in seen:
                same = "loss_type, seed and fold" + (f" and {group_by}" if group_by else "")
                left_out.append({**label, "reason": f"older duplicate of the same {same}"})
                continue
            record = _record(client, run, name, Path(tmp) / rid if with_predictions else None,
                             required=not skip_without_predictions)
            if with_predictions and record.predictions is None:
                left_out.append({**label, "reason": f"no {TEST_PREDICTIONS} artifact"})
                continue
            seen.add(key)
            records.append(record)
    return records, left_out


def _record(client, run, name: str, predictions_dir: Path | None, required: bool = True) -> RunRecord:
    """One run as a record; its test predictions are read into ``predictions_dir`` (None:
    not read), which must exist when ``required``."""
    rid, p = run.info.run_id, run.data.params
    record = RunRecord(
        run_id=rid, run_name=run.info.run_name or rid[:8], loss_type=name,
        seed=int(float(p[SEED_PARAM])), params=dict(p), tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        val_curve=[(m.step, m.value) for m in client.get_metric_history(rid, STAGE2_SCORE)],
    )
    if predictions_dir is not None:
        record.predictions = read_test_predictions(client, rid, predictions_dir)
        if record.predictions is None and required:
            raise UserError(
                f"run {rid} ({record.loss_type}, seed {record.seed}) has no {TEST_PREDICTIONS} "
                "artifact; re-run its evaluation, or leave it out with --filter "
                f"\"attributes.run_id != '{rid}'\"")
    return record


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
    blocks = [r.predictions[BLOCK_INDEX].to_numpy() for r in records if r.predictions is not None]
    for record, b in zip(records, blocks):
        if not np.array_equal(b, blocks[0]):
            raise UserError(f"run {record.run_id} ({record.loss_type}, seed {record.seed}) was evaluated on "
                            "other test blocks than the rest; compare runs of the same data set and split")


def _shared_backbone(records: list[RunRecord]) -> str:
    """Where the Stage-1 backbone every run starts from came from, when they share one: a
    Stage-1 run, or a checkpoint file (which has no run id)."""
    for tag, words in ((STAGE1_RUN_TAG, "Stage-1 run"), (STAGE1_SOURCE_TAG, "the Stage-1 checkpoint")):
        values = {r.tags.get(tag, "") for r in records}
        if len(values) == 1 and all(values):
            return f", on the backbone of {words} {values.pop()}"
    return ""


def group_value(params: dict[str, str], tags: dict[str, str], group_by: str | None) -> str | None:
    """The value of the ``--group-by`` key (a param, or ``tags.<name>``) in a run; None when
    it has none or no key is given."""
    if not group_by:
        return None
    if group_by.startswith(TAGS_PREFIX):
        return tags.get(group_by.removeprefix(TAGS_PREFIX))
    return params.get(group_by)


def group_records(records: list[RunRecord], group_by: str | None) -> dict[str, list[RunRecord]]:
    """Split the runs by the value of a param or tag (``None``: one group)."""
    if not group_by:
        return {"all runs": records}
    def value(r):
        return group_value(r.params, r.tags, group_by)
    if all(value(r) is None for r in records):
        known = sorted({k for r in records for k in r.params})
        raise UserError(f"--group-by {group_by}: no run has this param; use one of {', '.join(known)} "
                        f"(or {TAGS_PREFIX}<name>)")
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(f"{group_by}={value(r)}", []).append(r)
    return groups
