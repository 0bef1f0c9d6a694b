"""What was tried to make the Stage-2 model beat the simple references, measured.

Trains the ``baseline`` arm once per variant (seed 42, ``cpu`` preset, the
default QP input unless the variant sets another) through the real
``av1-ablation train`` command in a fresh tracking store, then prints each
variant's selected-epoch validation macro-F1 (what selection sees) and its test
macro-F1 and AB F1 (reported, never used to choose). Stage-1 variants train
their own Stage-1 run.

    python benchmarks/model_variants.py [--work DIR] [--seeds 42]

Takes about 15 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> extra options of `av1-ablation train`
VARIANTS: dict[str, list[str]] = {
    "qp_input none (the original model)": ["--qp-input", "none"],
    "qp_input concat": ["--qp-input", "concat"],
    "qp_input film": ["--qp-input", "film"],
    "head lr 1e-3 (10x)": ["--lr-head", "0.001"],
    "adapters on layer2-4": ["--adapter-layers", "layer2,layer3,layer4"],
    "adapters on layer2-4, reduction 1": ["--adapter-layers", "layer2,layer3,layer4",
                                          "--adapter-reduction", "1"],
    "width 0.5 (Stage 1 and Stage 2)": ["--width", "0.5"],
    "backbone trained too (finetune)": ["--finetune", "true"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work directory (default: a new temporary one)")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--data", help="data set (default: the embedded one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="variants-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    import mlflow
    from mlflow.tracking import MlflowClient

    from av1_ablation.record.contract import BEST_VAL_MACRO_F1, KIND_STAGE2, TEST_F1_AB, TEST_MACRO_F1, kind_clause

    exp = mlflow.create_experiment(f"variants-{int(time.time())}", artifact_location=f"file://{work}/artifacts")
    os.environ["MLFLOW_EXPERIMENT_ID"] = exp
    print(f"work dir {work}", flush=True)
    rows = []
    for name, extra in VARIANTS.items():
        for seed in args.seeds.split(","):
            cmd = [sys.executable, "-m", "av1_ablation", "train", "--preset", "cpu", "--seed", seed, *extra]
            if args.data:
                cmd += ["--data", args.data]
            t0 = time.perf_counter()
            with open(work / "train.log", "a") as log:
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            run = MlflowClient().search_runs([exp], kind_clause(KIND_STAGE2),
                                             order_by=["attributes.start_time DESC"], max_results=1)[0]
            m = run.data.metrics
            rows.append((name, seed, m[BEST_VAL_MACRO_F1], m[TEST_MACRO_F1], m[TEST_F1_AB],
                         time.perf_counter() - t0))
            print(f"{name}, seed {seed}: val {m[BEST_VAL_MACRO_F1]:.4f} test {m[TEST_MACRO_F1]:.4f} "
                  f"AB {m[TEST_F1_AB]:.4f}", flush=True)
    print("\n| variant | seed | val macro-F1 (selection) | test macro-F1 | test AB F1 | wall time |")
    print("|---|---|---|---|---|---|")
    for name, seed, val, test, ab, seconds in rows:
        print(f"| {name} | {seed} | {100 * val:.2f} | {100 * test:.2f} | {100 * ab:.2f} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
