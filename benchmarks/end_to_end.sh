#!/usr/bin/env bash
# The CPU time targets, measured the way a user meets them: a fresh tracking store and
# data directory, the main job (building the embedded data set and Stage 1 on first use),
# a later arm, the whole default ablation (5 losses x 3 seeds), the reference models
# (prior, gbm, finetune) and compare with its context table.
#
#   bash benchmarks/end_to_end.sh [WORKDIR]      # run from the project root; needs `make setup`
#
# Prints one "TIME <step> <seconds>" line per step and compare's terminal report.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
export AV1_ABLATION_DATA="$work/data/embedded"
source "$repo/benchmarks/steps.sh"
fresh_experiment e2e
step first_run mlflow run . --env-manager local -P loss_type=asymmetric
step later_arm mlflow run . --env-manager local -P loss_type=poly
step ablation mlflow run . --env-manager local -e ablation
step reference mlflow run . --env-manager local -e reference
step compare mlflow run . --env-manager local -e compare -P out="$work/compare_output"
grep -h "^Stage 1: selected\|^reference " "$work/first_run.log" "$work/reference.log" || true
sed -n '/=== Run/,$p' "$work/compare.log" | grep -v "INFO mlflow" || cat "$work/compare.log"
