"""The MLflow contract: every name under which runs are written and read back.

The writers (``training``: Stage 1, Stage 2, the references, the ablation
parent; ``comparison``: the compare run) and the readers (``comparison``, the
notebook) take tag, param, metric, artifact and column names from here, so a
name is spelled once; a test fails on any of these literals elsewhere in the
package.

What a Stage-2 training run carries (``av1.kind = stage2``): the params
``loss_type`` and ``seed`` and its resolved configuration as ``cfg.<field>``;
per epoch (step = epoch) ``train_loss``, ``val_loss``, the ``val_*``
classification metrics, ``lr_<group>``, ``epoch_seconds``,
``train_blocks_per_s``; over the epochs run, ``mean_train_blocks_per_s``; for the
checkpoint selected on ``val_macro_f1``, ``best_epoch``, ``epochs_run``, ``stopped_early``,
``best_val_*``, ``test_*``
(with per-QP ``test_q<qindex>_*``); the artifacts ``checkpoint/model.pt``,
``predictions/{val,test}.csv`` (columns :data:`PREDICTION_COLUMNS` then
:data:`CONTEXT_COLUMNS`), ``figures/*.png`` and ``metrics.json``. Children of
an ablation parent (``av1.kind = ablation``) carry ``mlflow.parentRunId``.
"""
from __future__ import annotations

from av1_ablation.dataset.partitions import STAGE2_NAMES

# --------------------------------------------------------------------------- experiment
# The experiment tag mlflow ui reads to choose its view; "custom_model_development" is its
# model-training view (the GenAI view is "genai_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

# --------------------------------------------------------------------------- run kinds
KIND_TAG = "av1.kind"
KIND_STAGE1 = "stage1"
KIND_STAGE2 = "stage2"  # a loss arm: what `compare` compares
KIND_ABLATION = "ablation"  # the parent of the arms of one ablation
KIND_REFERENCE = "reference"  # a reference model (prior, gbm, finetune)
KIND_REFERENCES = "references"  # the parent of the references of one invocation
KIND_COMPARE = "compare"
KINDS = (KIND_STAGE1, KIND_STAGE2, KIND_ABLATION, KIND_REFERENCE, KIND_REFERENCES, KIND_COMPARE)

# --------------------------------------------------------------------------- run names
STAGE1_RUN_NAME = "stage1"
ABLATION_RUN_NAME = "ablation"
REFERENCES_RUN_NAME = "references"
COMPARE_RUN_NAME = "compare"


def _fold_suffix(folds: int, fold: int) -> str:
    return f"-fold{fold}" if folds > 1 else ""


def arm_run_name(loss_type: str, seed: int, folds: int = 1, fold: int = 0) -> str:
    """The run name of one loss arm: ``poly-seed42``, or ``poly-seed42-fold3`` in a
    cross-validation."""
    return f"{loss_type}-seed{seed}{_fold_suffix(folds, fold)}"


def resume_run_name(resumed: str) -> str:
    """The run name of what ``mlflow run -P resume=...`` created for the resume of the run
    named ``resumed``: ``resume-poly-seed42``."""
    return f"resume-{resumed}"


def reference_run_name(name: str, seed: int, folds: int = 1, fold: int = 0) -> str:
    """The run name of one reference model: ``reference-gbm-seed42`` (``-fold3`` in a
    cross-validation)."""
    return f"reference-{name}-seed{seed}{_fold_suffix(folds, fold)}"


# --------------------------------------------------------------------------- tags
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a child under its parent
# failures: a FAILED or KILLED run carries them; a resumed run that finishes drops them
FAILURE_TAG = "av1.failure_reason"
FAILURE_EPOCH_TAG = "av1.failure_epoch"
FAILURE_STEP_TAG = "av1.failure_step"
FAILURE_TAGS = (FAILURE_TAG, FAILURE_EPOCH_TAG, FAILURE_STEP_TAG)
# resume: "pid@host" of the process resuming a run, and the interruptions it came back from
LEASE_TAG = "av1.lease"
RESUMED_TAG = "av1.resumed_from_epoch"
INTERRUPTIONS_TAG = "av1.interruptions"
# the run `mlflow run -P resume=ID` created: it trains nothing itself, it names the run it resumed
RESUMES_TAG = "av1.resumes"
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description in mlflow ui
# where and with what a run was trained
DEVICE_TAG = "av1.device"
GPU_TAG = "av1.gpu"
GIT_COMMIT_TAG = "av1.git_commit"
PYTHON_TAG = "av1.python"
TORCH_TAG = "av1.torch"
MLFLOW_TAG = "av1.mlflow"
NUMPY_TAG = "av1.numpy"
SKLEARN_TAG = "av1.sklearn"
# the data a run saw
DATASET_FINGERPRINT_TAG = "av1.dataset_fingerprint"
SPLIT_FINGERPRINT_TAG = "av1.split_fingerprint"
DATASET_PATH_TAG = "av1.dataset_path"
SPLIT_NOTE_TAG = "av1.split_note"
# Stage 2 and its Stage-1 backbone
STAGE1_RUN_TAG = "av1.stage1_run_id"
STAGE1_SOURCE_TAG = "av1.stage1_source"
LOSS_TYPE_TAG = "av1.loss_type"
TRAINED_FOR_TAG = "av1.trained_for"  # a Stage-1 run trained for stage1=auto
TRAINED_FOR_AUTO = "stage1=auto"
# the ablation parent
CHILDREN_TAG = "av1.children"  # every child: trained now or re-used from an earlier parent
REUSED_CHILDREN_TAG = "av1.reused_children"
FAILED_CHILDREN_TAG = "av1.failed_children"
BEST_LOSS_TAG = "av1.best_loss"
BEST_RUN_TAG = "av1.best_run"
# reference runs: the tag names the model
REFERENCE_TAG = "av1.reference"
# the class frequencies, gradient boosting on block statistics, the Stage-2 model with its
# backbone trained too
PRIOR, GBM, FINETUNE = "prior", "gbm", "finetune"
REFERENCE_MODELS = (PRIOR, GBM, FINETUNE)
# the compare run
COMPARED_RUNS_TAG = "av1.compared_run_ids"
WINNER_TAG = "av1.winner"
VERDICT_TAG = "av1.verdict"
# what makes two arms comparable besides their cfg.* params
COMPARABILITY_TAGS = (DATASET_FINGERPRINT_TAG, SPLIT_FINGERPRINT_TAG, STAGE1_RUN_TAG)

# --------------------------------------------------------------------------- params
LOSS_TYPE_PARAM = "loss_type"
SEED_PARAM = "seed"
LOSSES_PARAM = "losses"  # ablation parent
SEEDS_PARAM = "seeds"
JOBS_PARAM = "jobs"
MODELS_PARAM = "models"  # references parent
CFG_PREFIX = "cfg."


def cfg_param(field: str) -> str:
    """The param of one resolved configuration field: ``cfg.epochs``."""
    return CFG_PREFIX + field


FOLDS_PARAM, FOLD_PARAM = cfg_param("folds"), cfg_param("fold")
ALL_FOLDS = "all"  # the fold param of what spans every fold: an ablation parent, a pooled record
# Fields added to the configurations after runs were logged without them: the value such a
# run had (cross-validation did not exist: one split, fold 0).
VALUE_WHEN_ABSENT = {FOLDS_PARAM: "1", FOLD_PARAM: "0"}


def param_value(params: dict[str, str], name: str) -> str | None:
    """A logged param, or what a run logged before the param existed had."""
    return params.get(name, VALUE_WHEN_ABSENT.get(name))


def split_size_param(split: str) -> str:
    """The param holding how many blocks of a split a stage uses: ``data.n_train``."""
    return f"data.n_{split}"


def split_sources_param(split: str) -> str:
    """The param holding how many sources (pictures, clips) a split's blocks come from:
    ``data.sources_test``."""
    return f"data.sources_{split}"


# --------------------------------------------------------------------------- metrics
# prefixes: per-epoch training and validation history; the selected checkpoint's figures
TRAIN, VAL, TEST, BEST_VAL = "train_", "val_", "test_", "best_val_"
# names as the metric functions return them, before a prefix
LOSS = "loss"
MACRO_F1 = "macro_f1"
ACCURACY = "accuracy"
MACRO_PRECISION = "macro_precision"
MACRO_RECALL = "macro_recall"
F1, PRECISION, RECALL = "f1", "precision", "recall"  # per class: f1_split, ...; Stage 1: as is
ECE, NLL, BRIER = "ece", "nll", "brier"
ROC_AUC = "roc_auc"
AVERAGE_PRECISION = "average_precision"
COUNT = "n"  # blocks behind a per-QP figure
CLASS_KEYS: tuple[str, ...] = tuple(name.lower() for name in STAGE2_NAMES)


def per_class(metric: str, class_key: str) -> str:
    """A per-class metric name: ``per_class(F1, "ab") == "f1_ab"``."""
    return f"{metric}_{class_key}"


def per_qp(qindex: int, metric: str) -> str:
    """A per-QP metric name (prefix it with a split): ``q128_macro_f1``."""
    return f"q{qindex}_{metric}"


def parse_per_qp(key: str, prefix: str) -> tuple[int, str] | None:
    """``(qindex, metric)`` of a prefixed per-QP metric key, None for any other key."""
    if not key.startswith(prefix + "q"):
        return None
    q, sep, metric = key[len(prefix) + 1:].partition("_")
    return (int(q), metric) if sep and q.isdigit() else None


TRAIN_LOSS = TRAIN + LOSS
VAL_LOSS = VAL + LOSS
STAGE2_SCORE = VAL + MACRO_F1  # Stage 2 selects its checkpoint on this
STAGE1_SCORE = VAL + ROC_AUC  # threshold-free: F1 at 0.5 swung between epochs
TEST_MACRO_F1 = TEST + MACRO_F1  # the comparison's primary metric
TEST_F1_AB = TEST + per_class(F1, "ab")  # the hard class: the seed protocol's success needs it
BEST_VAL_MACRO_F1 = BEST_VAL + MACRO_F1  # the comparison picks its winner on this
EPOCH_SECONDS = "epoch_seconds"
THROUGHPUT = "train_blocks_per_s"  # per epoch (step = epoch)
MEAN_THROUGHPUT = "mean_" + THROUGHPUT  # over the epochs run: a name of its own, not step 0 of the series
BEST_EPOCH = "best_epoch"
EPOCHS_RUN = "epochs_run"
STOPPED_EARLY = "stopped_early"
TRAIN_SECONDS = "train_seconds"
DECISION_THRESHOLD = "decision_threshold"  # Stage 1, chosen on validation
PREFIX_CACHE_SECONDS = "prefix_cache_seconds"
GBM_ITERATIONS = "gbm_iterations"
TOTAL_PARAMS = "total_params"
TRAINABLE_PARAMS = "trainable_params"


def parameter_count_metric(kind: str) -> str:
    """``total_params`` or ``trainable_params`` for the keys of ``count_parameters``."""
    return f"{kind}_params"


def lr_metric(group: str) -> str:
    """The learning rate of an optimiser parameter group, per epoch: ``lr_head``."""
    return f"lr_{group}"


def ablation_mean_metric(metric: str, loss_type: str) -> str:
    """The ablation parent's mean of one metric over the runs of one loss:
    ``mean_best_val_macro_f1.poly``."""
    return f"mean_{metric}.{loss_type}"


def compare_delta_metric(arm: str) -> str:
    """The compare run's paired mean difference of one arm from the reference."""
    return f"delta_{MACRO_F1}_{arm}"


# --------------------------------------------------------------------------- artifacts
MODEL_CHECKPOINT = "checkpoint/model.pt"  # the selected epoch
RESUME_CHECKPOINT = "checkpoint/last.pt"  # the last completed epoch of an interrupted run
PREDICTIONS_DIR = "predictions"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"
LEARNING_CURVES_FIGURE = f"{FIGURES_DIR}/learning_curves.png"
PER_QP_FIGURE = f"{FIGURES_DIR}/per_qp_test.png"
# the compare run (and its --out folder)
COMPARE_REPORT = "report.md"
COMPARE_SUMMARY_CSV = "summary.csv"
COMPARE_SUMMARY_JSON = "summary.json"


def predictions_file(split: str) -> str:
    """``predictions/<split>.csv``: one row per block of the split."""
    return f"{PREDICTIONS_DIR}/{split}.csv"


def confusion_figure_file(split: str) -> str:
    return f"{FIGURES_DIR}/confusion_{split}.png"


TEST_PREDICTIONS = predictions_file("test")

# --------------------------------------------------------------------------- prediction columns
BLOCK_INDEX, Y_TRUE, Y_PRED = "block_index", "y_true", "y_pred"
PROBA_COLUMNS: tuple[str, ...] = tuple(f"p_{k}" for k in CLASS_KEYS)
PREDICTION_COLUMNS = (BLOCK_INDEX, Y_TRUE, Y_PRED, *PROBA_COLUMNS)
# Written since QP input and cluster statistics; not required of older runs.
QINDEX, CLUSTER = "qindex", "cluster"
CONTEXT_COLUMNS = (QINDEX, CLUSTER)


# --------------------------------------------------------------------------- search filters
# how MLflow's search syntax, and --group-by, name a tag: tags.<name>
TAGS_PREFIX = "tags."


def tagged(key: str) -> str:
    """``tags.<key>``: a tag where params and tags share one namespace."""
    return TAGS_PREFIX + key


def tag_clause(key: str, value: str) -> str:
    """An MLflow search clause on a tag value."""
    return f"{TAGS_PREFIX}`{key}` = '{value}'"


def param_clause(key: str, value: str) -> str:
    return f"params.`{key}` = '{value}'"


def kind_clause(kind: str) -> str:
    """The runs of one kind: ``tags.`av1.kind` = 'stage2'``."""
    return tag_clause(KIND_TAG, kind)


def children_clause(parent_id: str) -> str:
    return tag_clause(PARENT_RUN_TAG, parent_id)
