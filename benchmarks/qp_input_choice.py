"""Which ``qp_input`` should be the default? Measured on validation, paired by seed.

Runs the default ablation (5 losses x 3 seeds, ``cpu`` preset) once per QP input
in a fresh tracking store, then compares the variants on *validation* macro-F1:
per seed, the mean over the five losses, paired against ``none`` (same seeds,
same batch order). Test figures are printed for the record only; they decide
nothing.

    python benchmarks/qp_input_choice.py [--work DIR] [--variants none,concat,film]

Prints one table and the choice; takes about 25 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this checkout's package, whatever an editable install elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from av1_ablation.comparison.statistics import paired_seed_tests  # noqa: E402
from av1_ablation.record.contract import (BEST_VAL_MACRO_F1, KIND_STAGE2, TEST_F1_AB,  # noqa: E402
                                          TEST_MACRO_F1, cfg_param, kind_clause)

REPO = Path(__file__).resolve().parents[1]


def run_ablations(work: Path, variants: list[str], data: str | None) -> dict[str, float]:
    seconds = {}
    for variant in variants:
        cmd = [sys.executable, "-m", "av1_ablation", "ablation", "--preset", "cpu", "--qp-input", variant]
        if data:
            cmd += ["--data", data]
        t0 = time.perf_counter()
        with open(work / f"ablation_{variant}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        seconds[variant] = time.perf_counter() - t0
        print(f"ablation qp_input={variant}: {seconds[variant]:.0f} s", flush=True)
    return seconds


def collect(variants: list[str]) -> dict[str, dict[tuple[str, int], dict[str, float]]]:
    """qp_input -> (loss, seed) -> metrics of the newest FINISHED Stage-2 runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    out: dict = {v: {} for v in variants}
    runs = client.search_runs([os.environ.get("MLFLOW_EXPERIMENT_ID", "0")], kind_clause(KIND_STAGE2) + " and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    for run in runs:
        p = run.data.params
        variant = p.get(cfg_param("qp_input"), "none")
        key = (p[cfg_param("loss_type")], int(p[cfg_param("seed")]))
        if variant in out and key not in out[variant]:
            out[variant][key] = run.data.metrics
    return out


def report(found, seconds: dict[str, float]) -> str:
    lines = ["| qp_input | runs | val macro-F1 (mean of 5 losses) | test macro-F1 | baseline val | "
             "baseline test | baseline test AB F1 | ablation wall time |", "|" + "---|" * 8]
    per_seed = {}
    for variant, runs in found.items():
        if not runs:
            continue
        seeds = sorted({s for _, s in runs})
        per_seed[variant] = {s: np.mean([m[BEST_VAL_MACRO_F1] for (l, ss), m in runs.items() if ss == s])
                             for s in seeds}
        mean = lambda key, loss=None: 100 * np.mean([m[key] for (l, _), m in runs.items()  # noqa: E731
                                                     if loss in (None, l)])
        lines.append(f"| {variant} | {len(runs)} | {mean(BEST_VAL_MACRO_F1):.2f} | {mean(TEST_MACRO_F1):.2f} | "
                     f"{mean(BEST_VAL_MACRO_F1, 'baseline'):.2f} | {mean(TEST_MACRO_F1, 'baseline'):.2f} | "
                     f"{mean(TEST_F1_AB, 'baseline'):.2f} | "
                     f"{seconds.get(variant, float('nan')):.0f} s |")
    lines.append("")
    means = {v: np.mean(list(scores.values())) for v, scores in per_seed.items()}
    best = max(means, key=means.get) if means else "none"
    for a, b in [(v, "none") for v in per_seed if v != "none"] + \
            [(best, v) for v in per_seed if v not in (best, "none")]:
        if a not in per_seed or b not in per_seed:
            continue
        shared = sorted(set(per_seed[a]) & set(per_seed[b]))
        a_scores, b_scores = [per_seed[a][s] for s in shared], [per_seed[b][s] for s in shared]
        d = (np.array(a_scores) - np.array(b_scores)) * 100
        p = paired_seed_tests(a_scores, b_scores, min_seeds=2).t_p
        p = float("nan") if p is None else p
        lines.append(f"{a} - {b}, validation, per seed {shared}: "
                     f"{', '.join(f'{x:+.2f}' for x in d)} pp; mean {d.mean():+.2f} pp, paired t p = {p:.3g}")
    lines.append(f"best on validation: qp_input={best}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work directory (default: a new temporary one)")
    parser.add_argument("--variants", default="none,concat,film")
    parser.add_argument("--data", help="data set (default: the embedded one, built on first use)")
    parser.add_argument("--report-only", action="store_true",
                        help="only read the runs already in MLFLOW_TRACKING_URI")
    args = parser.parse_args()
    variants = args.variants.split(",")
    seconds: dict[str, float] = {}
    if not args.report_only:
        work = Path(args.work or tempfile.mkdtemp(prefix="qp-choice-"))
        work.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        import mlflow

        os.environ["MLFLOW_EXPERIMENT_ID"] = mlflow.create_experiment(
            f"qp-choice-{int(time.time())}", artifact_location=f"file://{work}/artifacts")
        print(f"work dir {work}", flush=True)
        seconds = run_ablations(work, variants, args.data)
    print(report(collect(variants), seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
