#!/usr/bin/env bash
# The default ablation cross-validated by picture: 5 losses x 3 seeds x K folds (each fold
# with its own Stage-1 backbone), the reference models on the same folds, and compare,
# which pools the folds of each seed so that every picture is tested once.
#
#   bash benchmarks/cross_validation.sh [WORKDIR] [FOLDS] [JOBS]   # defaults: a temp dir, 5, 2
#
# Uses the embedded data set at $AV1_ABLATION_DATA (built on first use). Prints one
# "TIME <step> <seconds>" line per step and compare's terminal report.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
folds=${2:-5}
jobs=${3:-2}
source "$repo/benchmarks/steps.sh"
fresh_experiment cv
echo "folds: $folds, jobs: $jobs"
step ablation_folds mlflow run . --env-manager local -e ablation -P folds="$folds" -P jobs="$jobs"
step reference_folds mlflow run . --env-manager local -e reference -P folds="$folds"
step compare_folds mlflow run . --env-manager local -e compare -P out="$work/compare_output"
sed -n '/=== Run/,$p' "$work/compare_folds.log" | grep -v "INFO mlflow" || cat "$work/compare_folds.log"
