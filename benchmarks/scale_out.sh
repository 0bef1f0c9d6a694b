#!/usr/bin/env bash
# The 2 losses x 2 seeds smoke ablation on the embedded data set, twice, each into a fresh
# experiment of one `mlflow server` (SQLite backend, served artifacts) on the loopback
# address: with `--executor ray` (a local Ray instance started for the run) and with
# `--executor local`, both with `--jobs 2` (two children at a time, one thread each). Each
# trains its own smoke Stage-1 backbone first; the default data set is built (if missing) before
# either is timed.
#
#   bash benchmarks/scale_out.sh [WORKDIR]      # run from the project root; needs `make setup` and Ray
#
# Prints one "TIME <executor> <seconds>" line per run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cd "$repo"
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true} python -m mlflow server --backend-store-uri "sqlite:///$work/server.db" --artifacts-destination "$work/served" \
  --host 127.0.0.1 --port "$port" --workers 1 > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
export MLFLOW_TRACKING_URI="http://127.0.0.1:$port"
for _ in $(seq 120); do curl -sf "$MLFLOW_TRACKING_URI/health" > /dev/null && break; sleep 0.5; done

echo "machine: $(nproc) cores, $(python -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__)')"
echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- av1_ablation || echo ' (with uncommitted changes to av1_ablation/)')"
# the default data set (built on first use, about 90 s) is made ready outside the timings:
# otherwise the first executor timed would also time the build
python -c "from av1_ablation.dataset.build import ensure_dataset; print(ensure_dataset(progress=False))" \
  > "$work/dataset.log" 2>&1 || { echo "the data set build failed, see $work/dataset.log"; exit 1; }
smoke=(--losses baseline,poly --seeds 1,2 --preset smoke --jobs 2)
for executor in ray local; do
  export MLFLOW_EXPERIMENT_ID=$(python -c "import mlflow, sys; print(mlflow.create_experiment(sys.argv[1]))" "scale-out-$executor-$(date +%s)")
  t0=$(date +%s.%N)
  python -m av1_ablation ablation --executor "$executor" "${smoke[@]}" > "$work/$executor.log" 2>&1 \
    || { echo "$executor failed, see $work/$executor.log"; exit 1; }
  echo "TIME $executor $(python -c "print(round($(date +%s.%N) - $t0, 1))")"
done
