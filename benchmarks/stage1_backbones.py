"""How much does the Stage-1 backbone move the loss ablation?

An ablation holds one Stage-1 backbone fixed: every arm and seed is built on it, so
``compare``'s seeds resample the Stage-2 training, never the backbone. This trains
Stage 1 once per backbone seed (``cpu`` preset, the default QP input), runs the
default ablation (5 losses x 3 seeds) on each backbone through the real
``av1-ablation`` commands in a fresh tracking store, runs ``compare`` on each, and
then treats the backbone as the unit: per backbone, the mean over its seeds of each
arm's paired difference from ``baseline``; across backbones, the paired tests of
those means (Holm over the arms). It also splits the spread of ``baseline``'s test
macro-F1 into the part between backbones and the part between seeds of one backbone,
and tests each arm for an effect that depends on the backbone (the spread of its
per-backbone differences against the spread the seeds' noise alone gives them).
Validation picks every winner; test figures are what is reported.

    python benchmarks/stage1_backbones.py [--work DIR] [--stage1-seeds 42,43,44] [--data DIR] [--preset cpu]
    python benchmarks/stage1_backbones.py --work DIR --report-only   # the tables again, from DIR's runs

Takes about 25 minutes on 2 cores. Backbone seed 42 is the default ablation's, so its
rows reproduce the published single-split results on the same host.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this checkout's package, whatever an editable install elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy import stats  # noqa: E402

from av1_ablation.comparison.statistics import holm, paired_seed_tests  # noqa: E402
from av1_ablation.record.contract import (  # noqa: E402
    BEST_EPOCH, BEST_VAL, BEST_VAL_MACRO_F1, KIND_ABLATION, KIND_COMPARE, KIND_STAGE1, KIND_STAGE2,
    LOSS_TYPE_PARAM, ROC_AUC, SEED_PARAM, STAGE1_RUN_TAG, TEST, TEST_MACRO_F1, VERDICT_TAG, cfg_param,
    children_clause, kind_clause)
from av1_ablation.training.config import STAGE1_PRESETS, STAGE2_PRESETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "baseline"
RUNS_FILE = "backbones.json"  # what --report-only reads back


def av1_ablation(work: Path, log_name: str, *args: str) -> float:
    """Run one ``av1-ablation`` command (output to ``work/log_name``); its wall time."""
    t0 = time.perf_counter()
    with open(work / log_name, "w") as log:
        subprocess.run([sys.executable, "-m", "av1_ablation", *args], check=True, stdout=log,
                       stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - t0


def newest(client, experiment: str, clause: str):
    """The newest run of ``experiment`` that matches ``clause`` (the one a command just made:
    this script runs them one at a time)."""
    runs = client.search_runs([experiment], clause, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"error: no run matches {clause!r} in experiment {experiment}")
    return runs[0]


def run_backbone(work: Path, experiment: str, seed: int, preset: str, data: str | None) -> dict:
    """Stage 1 with ``seed``, the ablation on it and its ``compare``: the runs' ids,
    compare's verdict and the wall time."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    common = ["--preset", preset] + (["--data", data] if data else [])
    t0 = time.perf_counter()
    seconds = av1_ablation(work, f"stage1_{seed}.log", "stage1", "--seed", str(seed), *common)
    stage1 = newest(client, experiment, kind_clause(KIND_STAGE1))
    print(f"backbone {seed}: Stage 1 run {stage1.info.run_id} in {seconds:.0f} s", flush=True)
    seconds = av1_ablation(work, f"ablation_{seed}.log", "ablation", "--stage1", stage1.info.run_id, *common)
    parent = newest(client, experiment, kind_clause(KIND_ABLATION))
    print(f"backbone {seed}: ablation {parent.info.run_id} in {seconds:.0f} s", flush=True)
    out = work / f"compare_{seed}"
    av1_ablation(work, f"compare_{seed}.log", "compare", "--parent", parent.info.run_id, "--out", str(out))
    verdict = newest(client, experiment, kind_clause(KIND_COMPARE)).data.tags.get(VERDICT_TAG, "(none)")
    return {"seed": seed, "stage1": stage1.info.run_id, "parent": parent.info.run_id, "verdict": verdict,
            "seconds": time.perf_counter() - t0}


def collect(experiment: str, backbones: list[dict]) -> None:
    """Adds to each backbone its Stage-1 metrics and ``arms``: loss -> seed -> Stage-2 metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for backbone in backbones:
        backbone["stage1_metrics"] = client.get_run(backbone["stage1"]).data.metrics
        arms: dict[str, dict[int, dict[str, float]]] = {}
        for run in client.search_runs([experiment], f"{children_clause(backbone['parent'])} and "
                                      f"{kind_clause(KIND_STAGE2)}", max_results=5000):
            if run.info.status != "FINISHED":
                continue
            if run.data.tags.get(STAGE1_RUN_TAG) != backbone["stage1"]:
                raise SystemExit(f"error: run {run.info.run_id} of ablation {backbone['parent']} "
                                 f"was not trained on Stage-1 run {backbone['stage1']}")
            p = run.data.params
            loss, seed = p[cfg_param(LOSS_TYPE_PARAM)], int(p[cfg_param(SEED_PARAM)])
            arms.setdefault(loss, {})[seed] = run.data.metrics
        backbone["arms"] = arms


def pp(x: float) -> str:
    """A fraction as percent (or percentage points), "n/a" where there is nothing to show."""
    return "n/a" if np.isnan(x) else f"{100 * x:.2f}"


def arm_mean(backbone: dict, loss: str, key: str) -> float:
    """The mean of ``key`` over the finished runs of ``loss`` on ``backbone`` (NaN if none)."""
    runs = backbone["arms"].get(loss, {})
    return float(np.mean([m[key] for m in runs.values()])) if runs else float("nan")


def paired_runs(backbone: dict, loss: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` of ``loss`` and of the reference arm on each seed both have on ``backbone``."""
    arm, ref = backbone["arms"].get(loss, {}), backbone["arms"].get(REFERENCE, {})
    shared = sorted(set(arm) & set(ref))
    return np.array([arm[s][key] for s in shared]), np.array([ref[s][key] for s in shared])


def seed_deltas(backbones: list[dict], loss: str, key: str = TEST_MACRO_F1) -> list[np.ndarray]:
    """Per backbone, ``loss`` minus the reference arm on each seed both have."""
    return [a - r for a, r in (paired_runs(b, loss, key) for b in backbones)]


def backbone_deltas(backbones: list[dict], loss: str, key: str = TEST_MACRO_F1) -> np.ndarray:
    """Per backbone, the mean over its seeds of ``loss`` minus the reference arm, paired
    by seed (NaN for a backbone where they share no seed): one value per backbone, the
    unit when the question is whether a difference holds for other backbones."""
    return np.array([d.mean() if len(d) else np.nan for d in seed_deltas(backbones, loss, key)])


def backbone_means(backbones: list[dict], loss: str, key: str = TEST_MACRO_F1) -> tuple[np.ndarray, np.ndarray]:
    """``loss``'s and the reference arm's means over the seeds they share, on each backbone
    where they share one: the paired samples of the tests over backbones (their
    differences are :func:`backbone_deltas`)."""
    pairs = [(a.mean(), r.mean()) for a, r in (paired_runs(b, loss, key) for b in backbones) if len(a)]
    return np.array([a for a, _ in pairs]), np.array([r for _, r in pairs])


def between_and_within(groups: list[np.ndarray]) -> tuple[float, float, int]:
    """The sd of the groups' means, the sd within a group (variances pooled over the
    groups, weighted by their degrees of freedom) and those degrees of freedom; NaN where
    an sd is undefined (fewer than two groups, no group of two)."""
    between = float(np.std([x.mean() for x in groups], ddof=1)) if len(groups) > 1 else float("nan")
    dof = sum(len(x) - 1 for x in groups)
    within = float(np.sqrt(sum(((x - x.mean()) ** 2).sum() for x in groups) / dof)) if dof else float("nan")
    return between, within, dof


def backbone_interaction(backbones: list[dict], loss: str, key: str = TEST_MACRO_F1) -> tuple[float, float, float]:
    """Does ``loss``'s difference from the reference depend on the backbone?

    Returns
    -------
    between : float
        The sd of the per-backbone mean differences.
    from_seeds : float
        The sd those means would have from the seeds' noise alone: the per-seed
        differences' sd within a backbone (pooled over backbones) times sqrt(mean 1/n).
    pvalue : float
        The F-test of (between / from_seeds)^2 on (backbones - 1, pooled) degrees of freedom:
        small when the backbones disagree by more than their seeds explain (exact with
        equal seeds per backbone). NaN where either sd is undefined or both are 0.
    """
    per_seed = [d for d in seed_deltas(backbones, loss, key) if len(d)]
    between, within, dof = between_and_within(per_seed)
    if not dof or np.isnan(between):
        return between, float("nan"), float("nan")
    from_seeds = float(within * np.sqrt(np.mean([1 / len(d) for d in per_seed])))
    if from_seeds == 0:
        return between, from_seeds, float("nan") if between == 0 else 0.0
    return between, from_seeds, float(stats.f.sf((between / from_seeds) ** 2, len(per_seed) - 1, dof))


def reference_spread(backbones: list[dict], key: str = TEST_MACRO_F1) -> tuple[float, float]:
    """The reference arm's spread: the sd of its backbone means and the sd between the
    seeds of one backbone (pooled, see :func:`between_and_within`). Backbones without a
    reference run are left out."""
    between, within, _ = between_and_within([np.array([m[key] for m in b["arms"][REFERENCE].values()])
                                             for b in backbones if b["arms"].get(REFERENCE)])
    return between, within


def report(backbones: list[dict]) -> str:
    """The tables and lines this script prints, from the collected backbones."""
    fmt = lambda p: "n/a" if p is None or np.isnan(p) else f"{p:.3g}"  # noqa: E731
    lines = ["| Stage-1 seed | selected epoch | val ROC AUC | test ROC AUC | validation winner | "
             f"{REFERENCE} test macro-F1 | winner test macro-F1 |", "|" + "---|" * 7]
    for b in backbones:
        m = b["stage1_metrics"]
        b["winner"] = max(b["arms"], key=lambda loss: arm_mean(b, loss, BEST_VAL_MACRO_F1), default="none")
        lines.append(f"| {b['seed']} | {m[BEST_EPOCH]:.0f} | {m[BEST_VAL + ROC_AUC]:.4f} | "
                     f"{m[TEST + ROC_AUC]:.4f} | {b['winner']} | {pp(arm_mean(b, REFERENCE, TEST_MACRO_F1))} | "
                     f"{pp(arm_mean(b, b['winner'], TEST_MACRO_F1))} |")
    arms = sorted({loss for b in backbones for loss in b["arms"]} - {REFERENCE})
    tests = {loss: paired_seed_tests(*backbone_means(backbones, loss), min_seeds=2) for loss in arms}
    _, adjusted = holm([tests[loss].t_p for loss in arms], missing="one")
    columns = " | ".join(f"backbone {b['seed']}" for b in backbones)
    lines += ["", f"Test macro-F1 (%), mean over each backbone's seeds; Δ: paired with {REFERENCE} by seed "
              "within a backbone, averaged per backbone, then tested over backbones", "",
              f"| loss | {columns} | Δ per backbone (pp) | mean Δ (pp) | sd of Δ over backbones / from seeds "
              "alone (pp), F-test p | paired t p over backbones (Holm) | TOST ±0.5 pp p |",
              "|" + "---|" * (len(backbones) + 6),
              f"| {REFERENCE} | " + " | ".join(pp(arm_mean(b, REFERENCE, TEST_MACRO_F1)) for b in backbones)
              + " | reference | | | | |"]
    for loss, p_holm in zip(arms, adjusted):
        t = tests[loss]
        between, from_seeds, interaction_p = backbone_interaction(backbones, loss)
        lines.append(f"| {loss} | " + " | ".join(pp(arm_mean(b, loss, TEST_MACRO_F1)) for b in backbones)
                     + f" | {', '.join('n/a' if np.isnan(d) else f'{100 * d:+.2f}' for d in backbone_deltas(backbones, loss))}"
                     f" | {100 * t.mean_diff:+.2f} | {pp(between)} / {pp(from_seeds)}, p {fmt(interaction_p)}"
                     f" | {fmt(t.t_p)} ({fmt(p_holm)}) | {fmt(t.tost_p)} |")
    between, within = reference_spread(backbones)
    runs = [m[TEST_MACRO_F1] for b in backbones for m in b["arms"].get(REFERENCE, {}).values()]
    lines += ["", f"{REFERENCE} test macro-F1: {pp(min(runs, default=np.nan))}-{pp(max(runs, default=np.nan))} "
              f"over its {len(runs)} runs; sd of the {len(backbones)} backbone means {pp(between)} pp, sd between "
              f"the seeds of one backbone {pp(within)} pp (pooled)",
              "validation winner per backbone: " + ", ".join(f"{b['seed']}: {b['winner']}" for b in backbones), ""]
    lines += [f"backbone {b['seed']}, compare's verdict: {b['verdict']}" for b in backbones]
    lines += ["", "wall time per backbone (Stage 1 + ablation + compare): "
              + ", ".join(f"{b['seed']}: {b['seconds']:.0f} s" for b in backbones)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work directory (default: a new temporary one)")
    parser.add_argument("--stage1-seeds", default="42,43,44", help="one Stage-1 backbone per seed")
    parser.add_argument("--data", help="data set (default: the embedded one, built on first use)")
    parser.add_argument("--preset", default="cpu", choices=sorted(set(STAGE1_PRESETS) & set(STAGE2_PRESETS)),
                        help="preset of both stages (smoke: a quick check of this script)")
    parser.add_argument("--report-only", action="store_true",
                        help=f"only report the runs of an earlier --work DIR (its {RUNS_FILE}; the seeds, "
                        "data and preset are the ones that run used)")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.stage1_seeds.split(",")]
    except ValueError:
        parser.error(f"--stage1-seeds takes comma-separated integers; got {args.stage1_seeds!r}")
    if len(set(seeds)) < 2:
        parser.error("--stage1-seeds needs at least two different seeds to compare backbones")
    if args.report_only and not (args.work and (Path(args.work) / RUNS_FILE).is_file()):
        parser.error(f"--report-only needs --work DIR of an earlier run of this script (with its {RUNS_FILE})")
    work = Path(args.work or tempfile.mkdtemp(prefix="stage1-backbones-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    if args.report_only:
        recorded = json.loads((work / RUNS_FILE).read_text())
        experiment, backbones = recorded["experiment"], recorded["backbones"]
    else:
        import mlflow

        experiment = mlflow.create_experiment(f"stage1-backbones-{int(time.time())}",
                                              artifact_location=f"file://{work}/artifacts")
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment
        print(f"work dir {work}", flush=True)
        backbones = [run_backbone(work, experiment, seed, args.preset, args.data) for seed in seeds]
        (work / RUNS_FILE).write_text(json.dumps({"experiment": experiment, "backbones": backbones}, indent=1))
    collect(experiment, backbones)
    print(report(backbones))
    return 0


if __name__ == "__main__":
    sys.exit(main())
