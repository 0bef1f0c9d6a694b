# Sourced by the timing scripts: a fresh tracking store and experiment in $work (artifacts
# there too), a timed `step NAME COMMAND...` that logs to $work/NAME.log and prints
# "TIME NAME seconds", and the machine and commit lines. Needs $repo and $work set.
mkdir -p "$work"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
# `mlflow run` is MLflow's process, not the package's: telemetry off there too (README, mlflow)
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}
cd "$repo"

fresh_experiment() {  # fresh_experiment PREFIX: sets MLFLOW_EXPERIMENT_ID
  MLFLOW_EXPERIMENT_ID=$(python -c "import mlflow,sys; print(mlflow.create_experiment(sys.argv[1], artifact_location=sys.argv[2]))" "$1-$(date +%s)" "file://$work/artifacts")
  export MLFLOW_EXPERIMENT_ID
}

step() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$work/$name.log" 2>&1 || { echo "step $name failed, see $work/$name.log"; exit 1; }
  echo "TIME $name $(python -c "print(round($(date +%s.%N) - $t0, 1))")"
}

echo "machine: $(nproc) cores, $(python -c 'import torch; print("torch", torch.__version__)'), work dir $work"
echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- av1_ablation || echo ' (with uncommitted changes to av1_ablation/)')"
