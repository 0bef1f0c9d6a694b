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
mkdir -p "$work"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
cd "$repo"
exp="cv-$(date +%s)"
export MLFLOW_EXPERIMENT_ID=$(python -c "import mlflow,sys; print(mlflow.create_experiment(sys.argv[1], artifact_location=sys.argv[2]))" "$exp" "file://$work/artifacts")

step() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$work/$name.log" 2>&1 || { echo "step $name failed, see $work/$name.log"; exit 1; }
  echo "TIME $name $(python -c "print(round($(date +%s.%N) - $t0, 1))")"
}

echo "machine: $(nproc) cores, $(python -c 'import torch; print("torch", torch.__version__)'), work dir $work"
echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- av1_ablation || echo ' (with uncommitted changes to av1_ablation/)')"
echo "folds: $folds, jobs: $jobs"
step ablation_folds mlflow run . --env-manager local -e ablation -P folds="$folds" -P jobs="$jobs"
step reference_folds mlflow run . --env-manager local -e reference -P folds="$folds"
step compare_folds mlflow run . --env-manager local -e compare -P out="$work/compare_output"
sed -n '/=== Run/,$p' "$work/compare_folds.log" | grep -v "INFO mlflow" || cat "$work/compare_folds.log"
