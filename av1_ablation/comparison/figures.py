"""Figures of a :class:`~av1_ablation.comparison.report.Comparison` (matplotlib, Agg, no
pyplot), and the per-QP figure of the models in its context.

Each function returns a ``matplotlib.figure.Figure``; :func:`make_figures`
returns all of them keyed by file stem, ready for ``fig.savefig``. The figures
of a single run are in :mod:`av1_ablation.record.figures`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from av1_ablation.comparison.context import per_qp_scores
from av1_ablation.comparison.report import Comparison
from av1_ablation.comparison.runs import RunRecord
from av1_ablation.dataset.partitions import STAGE2_NAMES
from av1_ablation.record.contract import (CLASS_KEYS, F1, MACRO_F1, PROBA_COLUMNS, TEST, TEST_MACRO_F1,
                                          Y_PRED, Y_TRUE, per_class)
from av1_ablation.record.figures import confusion_figure, new_figure as _figure
from av1_ablation.record.metrics import reliability_curve


def _legend(ax, **kwargs) -> None:
    # An axis with nothing labelled (no arm logged a curve) gets no legend, not matplotlib's warning.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def macro_f1_figure(c: Comparison) -> Figure:
    """Left: test macro-F1 per seed and the mean with a 95% t-interval over seeds.
    Right: per-seed differences from the reference (paired by seed) with the paired
    t-interval of their mean, the main evidence of the report."""
    fig = _figure((10, 4))
    left, right = fig.subplots(1, 2)
    x = np.arange(len(c.arms))
    for i, arm in enumerate(c.arms):
        v = 100 * c.per_seed.loc[c.per_seed.loss_type == arm, TEST_MACRO_F1].to_numpy()
        left.scatter(np.full(v.size, i), v, s=14, alpha=0.6, color="grey")
        half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
        left.errorbar(i, v.mean(), yerr=half, fmt="o", color="C0", capsize=4)
    left.set_xticks(x, c.arms, rotation=20)
    left.set_ylabel("test macro-F1 (%)")
    left.set_title("per seed, mean ± 95% t-interval")
    others = c.arms[1:]
    scores = c.per_seed.pivot_table(index="seed", columns="loss_type", values=TEST_MACRO_F1)
    for i, arm in enumerate(others):
        d = 100 * (scores[arm] - scores[c.reference]).dropna().to_numpy()
        right.scatter(np.full(d.size, i), d, s=14, alpha=0.6, color="grey")
        p = c.tests[arm].paired
        if p.ci_low is not None:
            right.errorbar(i, 100 * p.mean_diff, yerr=[[100 * (p.mean_diff - p.ci_low)],
                                                       [100 * (p.ci_high - p.mean_diff)]],
                           fmt="o", color="C1", capsize=4)
        elif np.isfinite(p.mean_diff):
            right.scatter(i, 100 * p.mean_diff, color="C1")
    right.axhline(0, color="black", lw=0.8)
    right.set_xticks(np.arange(len(others)), others, rotation=20)
    right.set_ylabel(f"Δ macro-F1 vs {c.reference} (pp)")
    right.set_title("paired by seed: differences and 95% t-interval of their mean")
    fig.suptitle(f"Test macro-F1 ({c.group})")
    return fig


def per_class_figure(c: Comparison) -> Figure:
    """Grouped bars of per-class test F1 (mean ± sd over seeds)."""
    fig = _figure((8, 4))
    ax = fig.subplots()
    width = 0.8 / len(c.arms)
    for i, arm in enumerate(c.arms):
        d = c.per_seed[c.per_seed.loss_type == arm]
        means = [100 * d[TEST + per_class(F1, k)].mean() for k in CLASS_KEYS]
        sds = [100 * d[TEST + per_class(F1, k)].std(ddof=1) if len(d) > 1 else 0 for k in CLASS_KEYS]
        ax.bar(np.arange(len(CLASS_KEYS)) + (i - (len(c.arms) - 1) / 2) * width, means, width,
               yerr=sds, capsize=3, label=arm)
    ax.set_xticks(np.arange(len(CLASS_KEYS)), STAGE2_NAMES)
    ax.set_ylabel("test F1 (%)")
    _legend(ax, fontsize=8)
    ax.set_title(f"Per-class F1, mean ± sd over seeds ({c.group})")
    return fig


def val_curves_figure(c: Comparison) -> Figure:
    """Validation macro-F1 per epoch, mean over the seeds still training at that epoch."""
    fig = _figure((8, 4))
    ax = fig.subplots()
    for arm in c.arms:
        by_step: dict[int, list[float]] = {}
        for r in c.records[arm]:
            for step, value in r.val_curve:
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [100 * np.mean(by_step[s]) for s in steps], marker=".", label=arm)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val macro-F1 (%)")
    _legend(ax, fontsize=8)
    ax.set_title("Validation macro-F1 (mean over seeds; runs stop early at different epochs)")
    return fig


def reliability_figure(c: Comparison, *, n_bins: int = 15) -> Figure:
    """Reliability diagram per arm, test predictions pooled over seeds."""
    fig = _figure((3.2 * len(c.arms), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(c.arms), sharey=True))
    edges = np.linspace(0, 1, n_bins + 1)
    for ax, arm in zip(axes, c.arms):
        preds = [r.predictions for r in c.records[arm]]
        y = np.concatenate([p[Y_TRUE].to_numpy() for p in preds])
        proba = np.concatenate([p[list(PROBA_COLUMNS)].to_numpy() for p in preds])
        _, acc, count = reliability_curve(y, proba, n_bins=n_bins)
        ax.bar(edges[:-1], np.nan_to_num(acc), width=1 / n_bins, align="edge", edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set_title(arm)
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability (test, pooled over seeds; {c.group})")
    return fig


def make_figures(c: Comparison) -> dict[str, Figure]:
    """All figures of one comparison, keyed by file stem."""
    figs = {
        "macro_f1": macro_f1_figure(c),
        "per_class_f1": per_class_figure(c),
        "val_learning_curves": val_curves_figure(c),
        "reliability": reliability_figure(c),
    }
    for arm in c.arms:
        y = np.concatenate([r.predictions[Y_TRUE].to_numpy() for r in c.records[arm]])
        p = np.concatenate([r.predictions[Y_PRED].to_numpy() for r in c.records[arm]])
        figs[f"confusion_{arm}"] = confusion_figure(y, p, title=f"{arm}: test, pooled over seeds")
    return figs


def per_qp_models_figure(models: dict[str, list[RunRecord]]) -> Figure:
    """Per-qindex test macro-F1 and per-class F1 of a few models (mean over their runs)."""
    keys = (MACRO_F1, *(per_class(F1, k) for k in CLASS_KEYS))
    fig = _figure((12, 3.6))
    axes = fig.subplots(1, len(keys), sharey=True)
    for (name, runs) in models.items():
        scores = per_qp_scores(runs)
        if scores.empty:
            continue
        for ax, key in zip(axes, keys):
            ax.plot(scores.index, scores[key], marker="o", label=name)
    for ax, title in zip(axes, ("macro-F1", *STAGE2_NAMES)):
        ax.set(title=title, xlabel="qindex", ylim=(0, 1))
    axes[0].set_ylabel("test F1 (mean over runs)")
    _legend(axes[0], fontsize="small")
    fig.suptitle("test F1 per QP")
    return fig
