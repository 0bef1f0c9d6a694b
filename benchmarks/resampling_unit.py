"""What the test-side resampling unit changes: pictures against single blocks.

For the Stage-2 runs of one ablation (default: the newest in the tracking store; the folds of
a cross-validated one pooled, as ``compare`` pools them), the width of the 95% percentile
interval of

* each run's test macro-F1 (``bootstrap_macro_f1``), and
* each arm's per-seed difference from the reference (``paired_bootstrap``, as in Table 7 of
  ``compare``'s report),

once resampling whole test pictures (``compare``'s default) and once single blocks
(``compare --resample blocks``), with the same resampling seed. Blocks of one picture are
alike and repeat at every QP, so treating them as independent should narrow the interval;
with few pictures the picture bootstrap has few distinct resamples and can be too narrow too.

    MLFLOW_TRACKING_URI=sqlite:///WORK/mlflow.db MLFLOW_EXPERIMENT_ID=1 \\
        python benchmarks/resampling_unit.py [--parent RUN_ID] [--reference baseline]
"""
from __future__ import annotations

import argparse
import sys
from math import comb
from pathlib import Path

import numpy as np

# this checkout's package, whatever an editable install elsewhere points at
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from av1_ablation.comparison.folds import pool_selection  # noqa: E402
from av1_ablation.comparison.runs import RunRecord, load_runs  # noqa: E402
from av1_ablation.comparison.statistics import bootstrap_macro_f1, paired_bootstrap  # noqa: E402
from av1_ablation.record.contract import BLOCK_INDEX, CLUSTER, Y_PRED, Y_TRUE  # noqa: E402

UNITS = ("pictures", "blocks")


def interval_widths(records: list[RunRecord], reference: str, *, n_resamples: int,
                    seed: int) -> list[dict]:
    """One row per run (``kind`` "macro-F1") and per arm-reference pair of a seed (``kind``
    "difference"), with the interval width in percentage points for each unit."""
    first = records[0].predictions
    y_true, clusters = first[Y_TRUE].to_numpy(), first[CLUSTER].to_numpy()
    for r in records:  # the pairing and the shared clusters assume the same blocks in the same order
        if not (np.array_equal(r.predictions[BLOCK_INDEX], first[BLOCK_INDEX])
                and np.array_equal(r.predictions[CLUSTER], clusters)):
            raise ValueError(f"run {r.run_id} tests other blocks than run {records[0].run_id}")
    draw = dict(n_resamples=n_resamples, random_state=seed)
    units = dict(zip(UNITS, (clusters, None)))
    by_key = {(r.loss_type, r.seed): r for r in records}
    rows = []
    for r in records:
        pred = r.predictions[Y_PRED].to_numpy()
        widths = {unit: np.diff(bootstrap_macro_f1(y_true, pred, clusters=c, **draw))[0] for unit, c in units.items()}
        rows.append({"kind": "macro-F1", "arm": r.loss_type, "seed": r.seed, **{u: 100 * w for u, w in widths.items()}})
        ref = by_key.get((reference, r.seed))
        if r.loss_type == reference or ref is None:
            continue
        ref_pred = ref.predictions[Y_PRED].to_numpy()
        paired = {unit: paired_bootstrap(y_true, pred, ref_pred, clusters=c, **draw) for unit, c in units.items()}
        rows.append({"kind": "difference", "arm": r.loss_type, "seed": r.seed,
                     **{u: 100 * (b.ci_high - b.ci_low) for u, b in paired.items()}})
    return rows


def summary(rows: list[dict], n_pictures: int, n_blocks: int) -> str:
    """Median widths per kind and the spread of the picture / block ratio."""
    lines = [f"{n_blocks} test blocks from {n_pictures} pictures; the picture bootstrap has "
             f"{comb(2 * n_pictures - 1, n_pictures):,} distinct resamples",
             "| interval of | n | median width, pictures (pp) | median width, blocks (pp) | "
             "ratio pictures / blocks: median [min, max] | picture interval narrower |",
             "|---|---|---|---|---|---|"]
    for kind in ("macro-F1", "difference"):
        of = [r for r in rows if r["kind"] == kind]
        if not of:
            continue
        pictures, blocks = (np.array([r[u] for r in of]) for u in UNITS)
        ratio = pictures / blocks
        what = "a run's test macro-F1" if kind == "macro-F1" else "an arm's per-seed difference"
        lines.append(f"| {what} | {len(of)} | {np.median(pictures):.2f} | {np.median(blocks):.2f} | "
                     f"{np.median(ratio):.2f} [{ratio.min():.2f}, {ratio.max():.2f}] | "
                     f"{int(np.sum(ratio < 1))} of {len(of)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", help="ablation parent run id (default: the newest ablation run)")
    parser.add_argument("--reference", default="baseline")
    parser.add_argument("--n-resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="resampling seed, the same for both units")
    args = parser.parse_args()
    selection = pool_selection(load_runs(parent=args.parent))
    print(f"{len(selection.records)} runs: {selection.description}")
    rows = interval_widths(selection.records, args.reference, n_resamples=args.n_resamples, seed=args.seed)
    first = selection.records[0].predictions
    print(summary(rows, int(first[CLUSTER].nunique()), len(first)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
