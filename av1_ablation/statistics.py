"""Significance tests for comparing Stage-2 models (loss arms).

Two kinds of evidence, as in the ablation's design:

* **Across seeds** (the main evidence): each arm is trained with several
  seeds; its test macro-F1 values are compared with Welch's t-test, the exact
  Mann-Whitney U test and the probability of superiority P(A > B).
  With fewer than ``min_seeds`` values per arm these are reported as
  "not enough seeds", never as a p-value.
* **Paired, on the same test blocks**: McNemar's test on correct/incorrect
  (Dietterich 1998) and the paired bootstrap of the macro-F1 difference
  (Berg-Kirkpatrick et al. 2012).

Several arms against one reference are corrected with Holm's step-down
method (:func:`holm`).

References
----------
T. G. Dietterich, "Approximate Statistical Tests for Comparing Supervised
Classification Learning Algorithms", Neural Computation 10(7), 1998.
T. Berg-Kirkpatrick, D. Burkett, D. Klein, "An Empirical Investigation of
Statistical Significance in NLP", EMNLP 2012.
R. Dror, G. Baumer, S. Shlomov, R. Reichart, "The Hitchhiker's Guide to
Testing Statistical Significance in Natural Language Processing", ACL 2018.
S. Holm, "A Simple Sequentially Rejective Multiple Test Procedure",
Scandinavian Journal of Statistics 6(2), 1979.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from av1_ablation.metrics import N_CLASSES

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "SeedTestResult",
    "across_seed_tests",
    "holm",
    "macro_f1_from_confusion",
    "mcnemar_test",
    "paired_bootstrap",
    "probability_of_superiority",
]

NOT_ENOUGH_SEEDS = "not enough seeds"


def _as_labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"{name} must hold integer class ids in 0..{N_CLASSES - 1}")
    return y.astype(np.int64, copy=False)


def _as_scores(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must hold finite numbers")
    return x


# --------------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two models on the same blocks.

    ``b``: blocks A gets right and B wrong; ``c``: B right and A wrong.
    ``method`` is ``"exact"`` (binomial) or ``"chi2"`` (continuity-corrected).
    """

    b: int
    c: int
    statistic: float
    pvalue: float
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar_test(y_true, y_pred_a, y_pred_b, *, exact_below: int = 25) -> McNemarResult:
    """McNemar's test on the correct/incorrect outcomes of two models.

    Only the discordant blocks count: ``b`` = A right and B wrong, ``c`` = B
    right and A wrong. Under the null both are equally likely.

    .. math:: \\chi^2 = \\frac{(|b - c| - 1)^2}{b + c}

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class ids.
    y_pred_a, y_pred_b : array-like of shape (n_samples,)
        Predictions of models A and B on the same blocks, in the same order.
    exact_below : int, default=25
        When ``b + c < exact_below`` the two-sided exact binomial p-value
        (scipy ``binomtest(b, b + c, 0.5)``) is used; otherwise the chi-square
        statistic with continuity correction (1 degree of freedom).

    Returns
    -------
    result : McNemarResult
        ``b``, ``c``, the statistic (``min(b, c)`` for the exact test, as
        statsmodels reports it), the two-sided p-value and the method.

    Notes
    -----
    With no discordant block (``b + c = 0``) the models cannot be told
    apart: the p-value is 1. Both branches agree with
    ``statsmodels.stats.contingency_tables.mcnemar`` (``exact=True`` and
    ``exact=False, correction=True``).

    References
    ----------
    Q. McNemar, Psychometrika 12(2), 1947; T. G. Dietterich, Neural
    Computation 10(7), 1998.

    Examples
    --------
    >>> r = mcnemar_test([0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0])
    >>> (r.b, r.c, r.method, r.pvalue)
    (2, 1, 'exact', 1.0)
    """
    y_true = _as_labels(y_true, "y_true")
    a_ok = _as_labels(y_pred_a, "y_pred_a") == y_true
    b_ok = _as_labels(y_pred_b, "y_pred_b") == y_true
    if not (len(y_true) == len(a_ok) == len(b_ok)):
        raise ValueError("y_true, y_pred_a and y_pred_b must have the same length")
    b = int(np.sum(a_ok & ~b_ok))
    c = int(np.sum(~a_ok & b_ok))
    return mcnemar_from_counts(b, c, exact_below=exact_below)


def mcnemar_from_counts(b: int, c: int, *, exact_below: int = 25) -> McNemarResult:
    """McNemar's test from the discordant counts (see :func:`mcnemar_test`)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative; got b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact")
    if n < exact_below:
        pvalue = stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue
        return McNemarResult(b, c, float(min(b, c)), float(min(pvalue, 1.0)), "exact")
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return McNemarResult(b, c, float(statistic), float(stats.chi2.sf(statistic, df=1)), "chi2")


# --------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of the macro-F1 difference A - B on the same blocks."""

    delta: float
    ci_low: float
    ci_high: float
    pvalue: float
    n_resamples: int
    confidence_level: float

    def as_dict(self) -> dict:
        return asdict(self)


def macro_f1_from_confusion(counts) -> np.ndarray:
    """Macro-F1 of confusion matrices, vectorised over leading axes.

    Parameters
    ----------
    counts : array-like of shape (..., C, C)
        Confusion counts, rows = true class, columns = predicted class.

    Returns
    -------
    macro_f1 : ndarray of shape (...)
        Mean over classes of ``2 TP / (2 TP + FP + FN)``; a class with no true
        and no predicted block scores 0 (scikit-learn ``zero_division=0``).
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    denom = counts.sum(axis=-1) + counts.sum(axis=-2)  # true_sum + pred_sum = 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / denom, 0.0)
    return f1.mean(axis=-1)


def paired_bootstrap(
    y_true,
    y_pred_a,
    y_pred_b,
    *,
    n_resamples: int = 10_000,
    confidence_level: float = 0.95,
    random_state=None,
    chunk_elements: int = 4_000_000,
) -> BootstrapResult:
    """Paired bootstrap of the macro-F1 difference between two models.

    Each resample draws ``n_samples`` block indices with replacement; the
    *same* indices are applied to both models and macro-F1 is recomputed on
    the resample (it is not a mean of per-block scores). The statistic is

    .. math:: \\delta = \\overline{F1}(A) - \\overline{F1}(B)

    where :math:`\\overline{F1}` is the macro-F1, averaged over seeds when
    predictions of several seeds are given (pooled comparison: the blocks
    are resampled, all seeds see the same resample).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class ids of the evaluation blocks.
    y_pred_a, y_pred_b : array-like of shape (n_samples,) or (n_seeds, n_samples)
        Predictions of A and B on the same blocks; 2-D arrays hold one row
        per seed (the numbers of seeds of A and B may differ).
    n_resamples : int, default=10000
        Number of bootstrap resamples.
    confidence_level : float, default=0.95
        Coverage of the percentile interval.
    random_state : int, numpy.random.Generator or None, default=None
        Seed of the resampling, for reproducible intervals.
    chunk_elements : int, default=4_000_000
        Resamples are drawn in chunks of about this many indices, to bound memory.

    Returns
    -------
    result : BootstrapResult
        ``delta`` on the full set, the percentile interval ``ci_low, ci_high``
        and the one-sided p-value of "A is not better than B".

    Notes
    -----
    The p-value follows Berg-Kirkpatrick et al. (2012): the bootstrap
    distribution is shifted to the null (centred on 0), so
    ``p = (1 + #{delta* - delta >= delta}) / (1 + n_resamples)``; the +1
    keeps it away from an impossible 0 (Davison and Hinkley 1997). When
    ``delta <= 0`` it is at least about 0.5.

    Confusion counts of each resample come from one ``np.bincount`` of the
    index draw (block multiplicities) times the one-hot confusion cell of
    each block, so there is no Python loop over resamples.

    References
    ----------
    T. Berg-Kirkpatrick, D. Burkett, D. Klein, EMNLP 2012; B. Efron and
    R. Tibshirani, "An Introduction to the Bootstrap", 1993.

    Examples
    --------
    >>> y = [0, 1, 2, 0, 1, 2]
    >>> r = paired_bootstrap(y, y, [0, 1, 1, 0, 1, 1], n_resamples=200, random_state=0)
    >>> round(r.delta, 4), r.ci_high >= r.delta >= r.ci_low
    (0.4444, True)
    """
    y_true = _as_labels(y_true, "y_true")
    n = len(y_true)
    a = np.atleast_2d(_as_labels(y_pred_a, "y_pred_a"))
    b = np.atleast_2d(_as_labels(y_pred_b, "y_pred_b"))
    if a.shape[1] != n or b.shape[1] != n or a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"predictions must have shape (n_samples,) or (n_seeds, n_samples) with n_samples={n}; "
            f"got {np.shape(y_pred_a)} and {np.shape(y_pred_b)}"
        )
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1); got {confidence_level!r}")
    rng = np.random.default_rng(random_state)
    cells = N_CLASSES * N_CLASSES
    # One-hot confusion cell of every block for every model row: (n, rows * 9).
    models = np.vstack([a, b])
    codes = y_true[None, :] * N_CLASSES + models  # (rows, n)
    onehot = np.zeros((n, models.shape[0] * cells), dtype=np.float64)
    onehot[np.arange(n)[None, :], np.arange(models.shape[0])[:, None] * cells + codes] = 1.0

    def delta_of(conf):  # conf: (r, rows * 9) -> (r,)
        f1 = macro_f1_from_confusion(conf.reshape(len(conf), models.shape[0], N_CLASSES, N_CLASSES))
        return f1[:, : len(a)].mean(axis=1) - f1[:, len(a):].mean(axis=1)

    observed = float(delta_of(onehot.sum(axis=0, keepdims=True))[0])
    per_chunk = max(1, chunk_elements // n)
    deltas = np.empty(int(n_resamples))
    for start in range(0, len(deltas), per_chunk):
        r = min(per_chunk, len(deltas) - start)
        idx = rng.integers(0, n, size=(r, n))
        # Block multiplicities of each resample: (r, n).
        mult = np.bincount((idx + np.arange(r)[:, None] * n).ravel(), minlength=r * n).reshape(r, n)
        deltas[start:start + r] = delta_of(mult @ onehot)
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    pvalue = (1.0 + np.sum(deltas - observed >= observed)) / (1.0 + len(deltas))
    return BootstrapResult(observed, float(low), float(high), float(min(pvalue, 1.0)),
                           int(n_resamples), float(confidence_level))


# --------------------------------------------------------------------------- across seeds
@dataclass(frozen=True)
class SeedTestResult:
    """Across-seed comparison of arm A against B (scores = one value per seed).

    When either arm has fewer than ``min_seeds`` values every test field is
    None and ``note`` says "not enough seeds".
    """

    n_a: int
    n_b: int
    mean_diff: float
    welch_t: float | None = None
    welch_p: float | None = None
    welch_ci_low: float | None = None
    welch_ci_high: float | None = None
    mannwhitney_u: float | None = None
    mannwhitney_p: float | None = None
    p_superiority: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def probability_of_superiority(scores_a, scores_b) -> float:
    """P(A > B): the chance that a random seed of A beats a random seed of B.

    Ties count one half; this is the Mann-Whitney ``U / (n_a n_b)`` (the
    common-language effect size of McGraw and Wong 1992).

    Examples
    --------
    >>> probability_of_superiority([3, 4], [1, 3])
    0.875
    """
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if a.size == 0 or b.size == 0:
        raise ValueError("probability_of_superiority needs at least one score per arm")
    diff = a[:, None] - b[None, :]
    return float((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size)


def across_seed_tests(scores_a, scores_b, *, min_seeds: int = 3,
                      confidence_level: float = 0.95) -> SeedTestResult:
    """Welch's t-test, exact Mann-Whitney U and P(A > B) across seeds.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_seeds,)
        One score (e.g. test macro-F1) per seed of arm A and arm B.
    min_seeds : int, default=3
        Below this many seeds in either arm no test is run and the result
        says "not enough seeds".
    confidence_level : float, default=0.95
        Coverage of Welch's interval for the mean difference A - B.

    Returns
    -------
    result : SeedTestResult
        Two-sided p-values of Welch's t-test (``scipy.stats.ttest_ind(...,
        equal_var=False)``) and of the Mann-Whitney U test with the exact
        null distribution (``method="exact"``), Welch's interval of the mean
        difference and P(A > B).

    Notes
    -----
    When both arms have zero variance Welch's statistic is undefined: its
    fields are NaN and the note says so. The exact Mann-Whitney test cannot
    reach small p-values with few seeds (3 against 3: at least 0.1).

    References
    ----------
    B. L. Welch, Biometrika 34, 1947; H. B. Mann and D. R. Whitney, Annals of
    Mathematical Statistics 18(1), 1947.
    """
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if a.size == 0 or b.size == 0:
        raise ValueError("across_seed_tests needs at least one score per arm")
    mean_diff = float(a.mean() - b.mean())
    if min(a.size, b.size) < min_seeds:
        return SeedTestResult(a.size, b.size, mean_diff,
                              note=f"{NOT_ENOUGH_SEEDS} (need >= {min_seeds} per arm; "
                                   f"got {a.size} and {b.size})")
    note = ""
    if np.var(a) == 0 and np.var(b) == 0:
        t = p = low = high = float("nan")
        note = "zero variance in both arms: Welch's t is undefined"
    else:
        welch = stats.ttest_ind(a, b, equal_var=False)
        ci = welch.confidence_interval(confidence_level)
        t, p, low, high = float(welch.statistic), float(welch.pvalue), float(ci.low), float(ci.high)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    return SeedTestResult(a.size, b.size, mean_diff, t, p, low, high,
                          float(mw.statistic), float(mw.pvalue),
                          probability_of_superiority(a, b), note)


# --------------------------------------------------------------------------- Holm
def holm(pvalues, *, alpha: float = 0.05):
    """Holm's step-down correction of a family of p-values.

    Wraps ``statsmodels.stats.multitest.multipletests(method="holm")`` (its
    default would be Holm-Sidak). Missing values (None or NaN, e.g. "not
    enough seeds") are left out of the family and stay None.

    Parameters
    ----------
    pvalues : sequence of float or None
        One p-value per hypothesis (e.g. per arm against the reference).
    alpha : float, default=0.05
        Family-wise error rate.

    Returns
    -------
    reject : list of bool or None
        Whether each hypothesis is rejected at ``alpha`` after correction.
    p_adjusted : list of float or None
        Holm-adjusted p-values.

    Examples
    --------
    >>> holm([0.01, 0.04, None, 0.03])
    ([True, False, None, False], [0.03, 0.06, None, 0.06])
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    values = [None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
              for p in pvalues]
    present = [i for i, p in enumerate(values) if p is not None]
    reject: list = [None] * len(values)
    adjusted: list = [None] * len(values)
    if present:
        rej, padj, _, _ = multipletests([values[i] for i in present], alpha=alpha, method="holm")
        for i, r, q in zip(present, rej, padj):
            reject[i], adjusted[i] = bool(r), round(float(q), 12)
    return reject, adjusted
