"""``reference``: models that put the loss arms in context, each an MLflow run.

    av1-ablation reference                     # prior, gbm and finetune
    mlflow run . -e reference -P models=gbm

- ``prior``: predicts the training class frequencies (per qindex when the QP is
  an input): the floor any model must clear.
- ``gbm``: scikit-learn's ``HistGradientBoostingClassifier`` on the block
  statistics of :func:`block_statistics` (plus the standardised qindex when
  the QP is an input), balanced class weights: what a simple model does.
- ``finetune``: the Stage-2 network of the arms, ``baseline`` loss, trained end
  to end (backbone unfrozen, BatchNorm training normally) from the same
  Stage-1 backbone: are the frozen Stage-1 features the bottleneck?

Each run carries ``av1.kind = reference`` and ``av1.reference = <name>``, the
arms' metric contract (``best_val_*``, ``test_*``, per-QP ``test_q*``),
``predictions/{val,test}.csv`` and the confusion and per-QP figures, so
``compare`` reads it like an arm and shows it in its context table.
"""
from __future__ import annotations

import dataclasses
import time

import mlflow
import numpy as np

from av1_ablation.dataset.partitions import STAGE2_NAMES, to_stage2
from av1_ablation.errors import UserError
from av1_ablation.record.contract import (BEST_VAL, FINETUNE, GBM_ITERATIONS, KIND_REFERENCE, KIND_REFERENCES,
                                          LOSS_TYPE_PARAM, MACRO_F1, MODELS_PARAM, PARENT_RUN_TAG, PRIOR,
                                          REFERENCES_RUN_NAME, REFERENCE_MODELS, REFERENCE_TAG, SEED_PARAM,
                                          TEST, TEST_F1_AB, TRAIN_SECONDS, reference_run_name)
from av1_ablation.training import config as config_mod
from av1_ablation.training.config import STAGE2_PRESETS, Stage2Config
from av1_ablation.training.data import cross_validation_tags, load_split_data, log_dataset_input
from av1_ablation.training.lifecycle import (end_unstarted_run, environment_tags, experiment_id,
                                             fails_pending_run, log_new_params, tracked_run)
from av1_ablation.training.stage2 import RunLabels, log_evaluation, train_stage2

REFERENCES = REFERENCE_MODELS
STATISTICS = (
    "mean", "variance", "range",
    "var_top", "var_bottom", "var_left", "var_right",
    "var_q00", "var_q01", "var_q10", "var_q11",
    "grad_h", "grad_v", "grad_diag",
    "diff_top_bottom", "diff_left_right", "spread_quadrants",
)
# Set by the command itself: every reference uses the baseline loss, finetune alone
# trains the backbone, and with --folds K every fold is fitted.
FIXED_FIELDS = ("loss_type", "finetune", "fold")


def configure(parser) -> None:
    parser.add_argument("--models", default=",".join(REFERENCES),
                        help=f"comma-separated reference models (default: {','.join(REFERENCES)})")
    config_mod.add_config_arguments(parser, Stage2Config, STAGE2_PRESETS, exclude=FIXED_FIELDS)


def run(args) -> int:
    with fails_pending_run():
        names = [n for n in args.models.replace(" ", ",").split(",") if n]
        unknown = [n for n in names if n not in REFERENCES]
        if unknown or not names:
            raise UserError(f"models={args.models!r}: unknown {unknown or '(none given)'}; "
                            f"choose from {', '.join(REFERENCES)}")
        cfg = config_mod.from_args(Stage2Config, args, STAGE2_PRESETS, **dict.fromkeys(FIXED_FIELDS))
        data = load_split_data(cfg, to_stage2, every_fold=True)  # fold k at index k
    # `mlflow run` made one run for this command: it becomes the parent of the references
    with tracked_run(kind=KIND_REFERENCES, run_name=REFERENCES_RUN_NAME,
                     tags=cross_validation_tags(data)) as parent:
        log_new_params({MODELS_PARAM: ",".join(names), **config_mod.to_params(cfg)})
        for fold, fold_data in enumerate(data):
            fold_cfg = dataclasses.replace(cfg, fold=fold)
            for name in dict.fromkeys(names):
                run_id = train_reference(name, fold_cfg, fold_data, parent_id=parent.info.run_id)
                print(f"reference {name}{f' (fold {fold_cfg.fold})' if cfg.folds > 1 else ''}: run {run_id}")
    return 0


def train_reference(name: str, cfg: Stage2Config, data, *, parent_id: str | None = None) -> str:
    """Train and record one reference model; returns its run id."""
    tags = {REFERENCE_TAG: name, **({PARENT_RUN_TAG: parent_id} if parent_id else {})}
    run_name = reference_run_name(name, cfg.seed, cfg.folds, cfg.fold)
    if name == FINETUNE:
        from mlflow.tracking import MlflowClient

        run_id = None
        try:
            run_id = MlflowClient().create_run(experiment_id(), run_name=run_name, tags=tags).info.run_id
            return train_stage2(dataclasses.replace(cfg, finetune=True), run_id=run_id, data=data,
                                labels=RunLabels(kind=KIND_REFERENCE, name=run_name, tags=tags))
        except BaseException as exc:
            # stopped or failed before train_stage2 started the run (its Stage-1 backbone loads
            # first): no run's handler ends it
            if run_id is not None:
                end_unstarted_run(run_id, KIND_REFERENCE, exc)
            raise
    with tracked_run(kind=KIND_REFERENCE, run_name=run_name,
                     tags={**data.tags(), **environment_tags("cpu"), **tags}, nested=True) as run:
        log_new_params({LOSS_TYPE_PARAM: "baseline", SEED_PARAM: str(cfg.seed),
                        **config_mod.to_params(cfg), **data.params()})
        log_dataset_input(data)
        t0 = time.perf_counter()
        predict = fit_prior(data, cfg.qp_input) if name == PRIOR else fit_gbm(data, cfg)
        final = {TRAIN_SECONDS: time.perf_counter() - t0}
        for split_name, prefix in (("val", BEST_VAL), ("test", TEST)):
            if len(data.index[split_name]):
                final.update(log_evaluation(data, split_name, prefix, data.targets[split_name],
                                            predict(split_name), title=f"{name}, {split_name}"))
        mlflow.log_metrics(final)
        print(f"reference {name}: val macro-F1 {final[BEST_VAL + MACRO_F1]:.4f}"
              + (f", test macro-F1 {final[TEST + MACRO_F1]:.4f} (AB {final[TEST_F1_AB]:.4f})"
                 if TEST + MACRO_F1 in final else ""))
        return run.info.run_id


def fit_prior(data, qp_input: str):
    """Class frequencies of the training blocks (of the block's qindex when the QP is an input;
    a qindex unseen in training falls back to all training blocks)."""
    n_classes = len(STAGE2_NAMES)
    y = data.targets["train"]
    overall = np.bincount(y, minlength=n_classes) / len(y)
    by_qp = {}
    if qp_input != "none":
        q_train = data.store.qindex[data.index["train"]]
        by_qp = {int(q): np.bincount(y[q_train == q], minlength=n_classes) / (q_train == q).sum()
                 for q in np.unique(q_train)}

    def predict(split_name):
        qs = data.store.qindex[data.index[split_name]]
        return np.stack([by_qp.get(int(q), overall) for q in qs]) if len(qs) else np.empty((0, n_classes))

    return predict


def block_statistics(blocks: np.ndarray) -> np.ndarray:
    """The :data:`STATISTICS` of (N, 16, 16) 10-bit blocks, as (N, 17) float64 on [0, 1] samples.

    Variances of the block, its halves and quadrants (the encoder weighs splits by
    how the energy spreads over them), mean absolute gradients in three directions,
    and the half and quadrant contrasts that tell a 1:2 split from a three-way AB one.
    """
    x = np.asarray(blocks, dtype=np.float64) / 1023.0
    if x.ndim != 3 or x.shape[1:] != (16, 16):
        raise ValueError(f"blocks must have shape (N, 16, 16); got {x.shape}")
    var = lambda a: a.reshape(len(a), -1).var(axis=1)  # noqa: E731
    top, bottom, left, right = x[:, :8], x[:, 8:], x[:, :, :8], x[:, :, 8:]
    quads = [x[:, :8, :8], x[:, :8, 8:], x[:, 8:, :8], x[:, 8:, 8:]]
    q_var = np.stack([var(q) for q in quads], axis=1)
    columns = [
        x.mean(axis=(1, 2)), var(x), x.max(axis=(1, 2)) - x.min(axis=(1, 2)),
        var(top), var(bottom), var(left), var(right), *q_var.T,
        np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)), np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)),
        np.abs(x[:, 1:, 1:] - x[:, :-1, :-1]).mean(axis=(1, 2)),
        np.abs(var(top) - var(bottom)), np.abs(var(left) - var(right)),
        q_var.max(axis=1) - q_var.min(axis=1),
    ]
    return np.stack(columns, axis=1)


def _features(data, split_name: str, qp_input: str) -> np.ndarray:
    from av1_ablation.models.qp import standardise_qindex

    idx = data.index[split_name]
    stats = block_statistics(data.store.blocks[idx])
    if qp_input == "none":
        return stats
    return np.column_stack([stats, standardise_qindex(data.store.qindex[idx]).numpy()])


def fit_gbm(data, cfg: Stage2Config):
    """Gradient boosting on :func:`block_statistics`, balanced class weights, early stopping
    on a random tenth of the training blocks (validation stays untouched)."""
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingClassifier(max_iter=500, learning_rate=0.1, class_weight="balanced",
                                           early_stopping=True, validation_fraction=0.1,
                                           random_state=cfg.seed)
    # its OpenMP threads keep to the command's thread budget, like torch's
    with threadpool_limits(limits=torch.get_num_threads(), user_api="openmp"):
        model.fit(_features(data, "train", cfg.qp_input), data.targets["train"])
    mlflow.log_metric(GBM_ITERATIONS, model.n_iter_)

    def predict(split_name):
        return model.predict_proba(_features(data, split_name, cfg.qp_input))

    return predict
