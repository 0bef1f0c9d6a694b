#!/usr/bin/env bash
# The extended data set, measured the way a user meets it: a fresh build from the packaged
# pictures (`make extended-packages` first), then the default ablation, the reference models
# and compare on it, in a fresh tracking store.
#
#   bash benchmarks/extended.sh [WORKDIR]      # run from the project root
#
# Prints one "TIME <step> <seconds>" line per step, the build summary and compare's report.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
source "$repo/benchmarks/steps.sh"
data="$work/data/extended"
step build python -m av1_ablation dataset --source extended --out "$data" --no-progress
fresh_experiment extended
step ablation mlflow run . --env-manager local -e ablation -P data="$data"
step reference mlflow run . --env-manager local -e reference -P data="$data"
step compare mlflow run . --env-manager local -e compare -P out="$work/compare_output"
cat "$work/build.log"
grep -h "^Stage 1: selected\|^reference " "$work/ablation.log" "$work/reference.log" || true
sed -n '/=== Run/,$p' "$work/compare.log" | grep -v "INFO mlflow" || cat "$work/compare.log"
