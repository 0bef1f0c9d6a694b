"""``av1-ablation compare``: which loss is best for Stage 2, and is its lead real?

Example::

    mlflow run . -e compare                      # the newest ablation in the experiment
    python -m av1_ablation compare --parent <ablation run id> --reference baseline --out compare_output

Reads the finished Stage-2 runs (see :mod:`av1_ablation.comparison.runs`), checks that
they differ only in ``loss_type`` and ``seed``, prints the tables and the
verdict, writes ``report.md``, ``summary.csv``, ``summary.json`` and
``figures/*.png`` to ``--out`` (built in a temporary folder, then renamed, so
an error leaves no half-written folder), and logs the same files as a
``compare`` run (tag ``av1.kind = compare``) in the experiment of the runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from av1_ablation.comparison.report import (PRIMARY_TESTS, RESAMPLE_UNITS, Comparison, md_table as _md,
                                            render_markdown, render_text, summarise, tables)
from av1_ablation.comparison.folds import pool_selection
from av1_ablation.comparison.runs import Selection, check_comparable, group_records, load_runs
from av1_ablation.dataset.atomic import atomic_directory
from av1_ablation.dataset.command import flag
from av1_ablation.errors import UserError
from av1_ablation.record.contract import (CFG_PREFIX, COMPARE_REPORT, COMPARE_RUN_NAME,
                                          COMPARE_SUMMARY_CSV, COMPARE_SUMMARY_JSON,
                                          COMPARED_RUNS_TAG, FIGURES_DIR, GBM, KIND_COMPARE, KIND_TAG,
                                          TAGS_PREFIX, VERDICT_TAG, WINNER_TAG, cfg_param, compare_delta_metric)
from av1_ablation.record.experiment import mark_model_training


def _param_list(text: str) -> list[str]:
    """``--ignore-param`` values: one param or several, comma-separated ("" is none)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent", help="ablation parent run id (default: the newest ablation run)")
    parser.add_argument("--experiment", help="experiment name (default: MLFLOW_EXPERIMENT_ID, "
                        "then MLFLOW_EXPERIMENT_NAME, then Default)")
    parser.add_argument("--filter", dest="filter_string",
                        help=f"extra MLflow filter, e.g. \"params.{cfg_param('epochs')} = '20'\"")
    parser.add_argument("--reference", default="baseline", help="loss_type every arm is compared with (default: %(default)s)")
    parser.add_argument("--group-by", help=f"compare within each value of this param (e.g. "
                        f"{cfg_param('epochs')}) or tag ({TAGS_PREFIX}<name>) instead of refusing runs that "
                        "differ in it")
    parser.add_argument("--ignore-param", action="extend", type=_param_list, default=[], metavar="PARAM",
                        help=f"another {CFG_PREFIX}* param that may differ between arms (repeatable, "
                             "or comma-separated)")
    parser.add_argument("--out", default="compare_output", help="output folder, replaced whole (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm (default: %(default)s)")
    parser.add_argument("--min-seeds", type=int, default=3,
                        help="seeds (shared with the reference) needed for across-seed tests; "
                             "the verdict needs at least 3 whatever this says (default: %(default)s)")
    parser.add_argument("--n-resamples", type=int, default=10_000, help="paired-bootstrap resamples (default: %(default)s)")
    parser.add_argument("--bootstrap-seed", type=int, default=0,
                        help="seed of the bootstrap and of Friedman's permutation draw (default: %(default)s)")
    parser.add_argument("--primary-test", default="paired_t", choices=PRIMARY_TESTS,
                        help="across-seed test deciding the verdict for the winner-reference pair "
                             "(default: paired_t, the paired t-test on the per-seed differences)")
    parser.add_argument("--resample", default="clusters", choices=RESAMPLE_UNITS,
                        help="unit of the test-side paired bootstrap: test pictures (clusters) "
                             "or single blocks, as if independent (default: clusters)")
    parser.add_argument("--no-log", nargs="?", const=True, default=False, type=flag, metavar="BOOL",
                        help="do not log a compare run to MLflow (--no-log alone, or --no-log true; "
                             "default: log one)")


def _check_args(args) -> None:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must lie in (0, 1); got {args.alpha}")
    if args.min_seeds < 2:
        raise UserError(f"--min-seeds must be at least 2 (a variance needs two seeds); got {args.min_seeds}")
    if args.n_resamples < 100:
        raise UserError(f"--n-resamples must be at least 100; got {args.n_resamples}")


def compare(args) -> tuple[Selection, list[Comparison]]:
    """Load, check and summarise the runs named by the parsed arguments."""
    _check_args(args)
    selection = pool_selection(load_runs(parent=args.parent, experiment=args.experiment,
                                         filter_string=args.filter_string, group_by=args.group_by))
    groups = group_records(selection.records, args.group_by)
    comparisons = []
    for label, records in groups.items():
        check_comparable(records, ignore=[*args.ignore_param, *([args.group_by] if args.group_by else [])])
        comparisons.append(summarise(
            records, reference=args.reference, group=label, alpha=args.alpha, min_seeds=args.min_seeds,
            n_resamples=args.n_resamples, random_state=args.bootstrap_seed, primary_test=args.primary_test,
            resample=args.resample))
    return selection, comparisons


@dataclass
class Context:
    """The reference models beside one comparison's arms, and the per-QP figure."""

    table: object  # pandas.DataFrame from context.context_table
    sentence: str
    per_qp_models: dict  # name -> runs drawn in the per-QP figure


def build_context(c: Comparison, args, experiment_id: str) -> Context:
    from av1_ablation.comparison.context import context_sentence, context_table, load_references

    references = load_references([r for runs in c.records.values() for r in runs], experiment_id)
    table = context_table(c.records, references, n_resamples=max(100, args.n_resamples // 5),
                          random_state=args.bootstrap_seed)
    shown = {c.winner: c.records[c.winner], c.reference: c.records.get(c.reference, []),
             **({GBM: references[GBM]} if GBM in references else {})}
    return Context(table, context_sentence(table, c.reference), shown)


def render_context_text(ctx: Context) -> str:
    from av1_ablation.comparison.context import render_context

    return (f"Context: reference models (mean test macro-F1 over runs, 95% CI from resampling test "
            f"pictures)\n{render_context(ctx.table).to_string(index=False)}\n{ctx.sentence}")


def _clean(value):
    """JSON-safe value: NaN becomes null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tests_json(c: Comparison) -> dict:
    return {arm: {"shared_seeds": t.shared_seeds, "paired": t.paired.as_dict(), "seeds": t.seeds.as_dict(),
                  "bootstrap_pooled": t.bootstrap_pooled.as_dict() if t.bootstrap_pooled else None,
                  "holm_p": t.holm_p, "seeds_for_power": t.seeds_for_power, "seed_criterion": t.criterion,
                  "per_seed": [{"seed": p["seed"], "mcnemar": p["mcnemar"].as_dict(),
                                "bootstrap": p["bootstrap"].as_dict()} for p in t.per_seed]}
            for arm, t in c.tests.items()}


def summary_json(selection: Selection, comparisons: list[Comparison], args) -> dict:
    groups = []
    for c in comparisons:
        paired_table = next(frame for name, frame in tables(c).items() if name.startswith("Table 5"))
        groups.append({"group": c.group, "reference": c.reference, "arms": c.arms, "winner": c.winner,
                       "winner_basis": c.winner_basis, "ties": c.ties, "primary_test": c.primary_test,
                       "alpha": c.alpha, "holm_family_size": c.holm_family, "resample": c.resample,
                       "resample_note": c.resample_note, "verdict": c.verdict,
                       "friedman": c.friedman.as_dict() if c.friedman else None,
                       "friedman_line": c.friedman_line, "power_line": c.power_line,
                       "equivalence_line": c.equivalence_line,
                       "paired_table": paired_table.to_dict(orient="records"),
                       "per_seed": c.per_seed.to_dict(orient="records"), "tests": _tests_json(c)})
    return _clean({
        "selection": selection.description, "experiment_id": selection.experiment_id,
        "compared_run_ids": [r.run_id for r in selection.records], "left_out": selection.left_out,
        "settings": {k: v for k, v in vars(args).items() if k != "func"}, "groups": groups,
    })


def write_outputs(out: Path, selection: Selection, comparisons: list[Comparison], args,
                  contexts: list[Context] = ()) -> Path:
    """Write the report, the summaries and the figures to ``out`` atomically."""
    import pandas as pd

    from av1_ablation.comparison.context import render_context
    from av1_ablation.comparison.figures import make_figures, per_qp_models_figure

    out = Path(out)
    with atomic_directory(out) as tmp:
        (tmp / FIGURES_DIR).mkdir()
        figure_paths = []
        for i, c in enumerate(comparisons):
            suffix = "" if len(comparisons) == 1 else "_" + "".join(ch if ch.isalnum() else "_" for ch in c.group)
            figures = make_figures(c)
            if i < len(contexts):
                figures["per_qp"] = per_qp_models_figure(contexts[i].per_qp_models)
            for stem, fig in figures.items():
                rel = f"{FIGURES_DIR}/{stem}{suffix}.png"
                fig.savefig(tmp / rel, dpi=110)
                figure_paths.append(rel)
        report = render_markdown(comparisons, selection=selection.description, left_out=selection.left_out,
                                 figures=figure_paths)
        for c, ctx in zip(comparisons, contexts):
            report += (f"\n### Context{'' if len(comparisons) == 1 else ': ' + c.group}\n\n"
                       f"Mean test macro-F1 over runs, with a 95% interval from resampling test "
                       f"pictures; values in %.\n\n{_md(render_context(ctx.table))}\n{ctx.sentence}\n")
        (tmp / COMPARE_REPORT).write_text(report)
        pd.concat([c.summary() for c in comparisons]).to_csv(tmp / COMPARE_SUMMARY_CSV, index=False)
        summary = summary_json(selection, comparisons, args)
        for group, ctx in zip(summary["groups"], contexts):
            group["context"] = _clean({"table": ctx.table.to_dict(orient="records"), "sentence": ctx.sentence})
        (tmp / COMPARE_SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return out


def log_compare_run(out: Path, selection: Selection, comparisons: list[Comparison]) -> str:
    """Log the outputs as a ``compare`` run in the experiment of the compared runs."""
    import mlflow

    # Under `mlflow run -e compare` MLFLOW_RUN_ID names the run to resume; its experiment is fixed.
    kwargs = {} if os.environ.get("MLFLOW_RUN_ID") else {"experiment_id": selection.experiment_id,
                                                          "run_name": COMPARE_RUN_NAME}
    with mlflow.start_run(**kwargs) as run:
        mark_model_training(run.info.experiment_id)
        mlflow.set_tags({
            KIND_TAG: KIND_COMPARE,
            COMPARED_RUNS_TAG: ",".join(r.run_id for r in selection.records),
            WINNER_TAG: ";".join(f"{c.group}:{c.winner}" for c in comparisons),
        })
        if len(comparisons) == 1:
            c = comparisons[0]
            mlflow.set_tag(VERDICT_TAG, c.verdict[:4900])
            for arm, t in c.tests.items():
                if math.isfinite(t.paired.mean_diff):  # the paired mean difference over shared seeds
                    mlflow.log_metric(compare_delta_metric(arm), t.paired.mean_diff)
        mlflow.log_artifacts(str(out))
        return run.info.run_id


def run(args) -> int:
    selection, comparisons = compare(args)
    for item in selection.left_out:
        print(f"left out: run {item['run_id']} ({item['loss_type']}, seed {item['seed']}): {item['reason']}")
    print(f"compared {len(selection.records)} runs: {selection.description}\n")
    contexts = [build_context(c, args, selection.experiment_id) for c in comparisons]
    for c, ctx in zip(comparisons, contexts):
        print(render_text(c) + "\n")
        print(render_context_text(ctx) + "\n")
    out = write_outputs(Path(args.out), selection, comparisons, args, contexts)
    print(f"wrote {out}/{COMPARE_REPORT}, {COMPARE_SUMMARY_CSV}, {COMPARE_SUMMARY_JSON} and {FIGURES_DIR}/")
    if not args.no_log:
        run_id = log_compare_run(out, selection, comparisons)
        print(f"logged compare run {run_id}")
    return 0
