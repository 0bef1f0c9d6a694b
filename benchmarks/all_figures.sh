#!/usr/bin/env bash
# Every measured figure of README.md and docs/, one script after the other on a quiet
# machine (about 5 hours on the 2-core host of the README's figures, from the step times of
# its last run; the extended data set needs `make extended-packages`). Each script's output
# goes to OUTDIR/<name>.out; copy the figures from there, and name the commit printed first
# beside them (tests/test_readme_results.py fails when av1_ablation/ or the other benchmark
# scripts have changed since that commit).
#
#   bash benchmarks/all_figures.sh [OUTDIR [NAME...]]   # from the project root; needs `make setup`
#
# With NAMEs (e.g. end_to_end extended), only those scripts run. To measure one commit in two
# sittings, run into the same OUTDIR first every name before `extended` (about 3 hours), then
# extended resampling_unit stage1_backbones_extended (about 2 hours 10 minutes); the scripts
# that check one another (stage1_backbones against end_to_end, its extended run against
# extended) stay in one half.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
out=${1:-$(mktemp -d)}
only=" ${*:2} "
cd "$repo"
# the Python benchmarks and the `av1-ablation` command import the installed package (only the
# `mlflow run .` steps run this checkout whatever is installed): it must be this checkout's
command -v python > /dev/null || { echo "error: no python on PATH; activate the environment of make setup" >&2; exit 2; }
pkg=$(cd / && python -c "import av1_ablation, pathlib; print(pathlib.Path(av1_ablation.__file__).resolve().parents[1])" 2>/dev/null)
if [[ -z "$pkg" || ! "$pkg" -ef "$repo" ]]; then
  echo "error: the installed av1_ablation is ${pkg:-missing}, not $repo, so the figures would measure other code; run 'python -m pip install -e \"$repo\"' (or make setup) first" >&2
  exit 2
fi
mkdir -p "$out"
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- av1_ablation || echo ' (with uncommitted changes to av1_ablation/)'), output in $out"
run() {
  local name=$1; shift
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  "$@" > "$out/$name.out" 2>&1
  echo "$name: exit $? at $(date +%H:%M:%S)"
}
run end_to_end bash benchmarks/end_to_end.sh "$out/e2e"
run cross_validation env AV1_ABLATION_DATA="$out/e2e/data/embedded" bash benchmarks/cross_validation.sh "$out/cv" 5 2
run scale_out bash benchmarks/scale_out.sh "$out/so"
run throughput python benchmarks/train_throughput.py --device cpu
run throughput_width1 python benchmarks/train_throughput.py --device cpu --width 1.0 --blocks 4000
run concurrent python benchmarks/train_throughput.py --device cpu --concurrent 2
run qp_label_conflicts python benchmarks/qp_label_conflicts.py
run dataset_build python benchmarks/dataset_build.py
run dataset_embedded bash -c "rm -rf '$out/ds' && /usr/bin/time -v av1-ablation dataset --out '$out/ds'"
run qp_input_choice python benchmarks/qp_input_choice.py --work "$out/qpc"
run stage1_backbones python benchmarks/stage1_backbones.py --work "$out/sb"
run model_variants python benchmarks/model_variants.py --work "$out/mv"
run extended bash benchmarks/extended.sh "$out/ext"
# each store above holds one experiment besides Default, so its id is 1
run resampling_unit bash -c "for s in e2e cv ext; do echo \"== \$s\"; MLFLOW_TRACKING_URI=sqlite:///$out/\$s/mlflow.db \
  MLFLOW_EXPERIMENT_ID=1 python benchmarks/resampling_unit.py || exit 1; done"
run stage1_backbones_extended python benchmarks/stage1_backbones.py --data "$out/ext/data/extended" --work "$out/sbx"
