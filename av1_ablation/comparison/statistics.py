"""Significance tests for comparing Stage-2 models (loss arms).

Three kinds of evidence, as in the ablation's design:

* **Paired across seeds** (the main evidence): a seed fixes initialisation,
  batch order, augmentation and dropout in every arm, so the arms of one seed
  are paired. :func:`paired_seed_tests` works on the per-seed differences
  ``d_s = F1(A, s) - F1(B, s)``: the paired t-test with the confidence
  interval of the mean difference, the exact sign-flip permutation test
  (:func:`sign_flip_test`), the Wilcoxon signed-rank test and an equivalence
  test (two one-sided tests, TOST). :func:`seeds_for_power` gives the number
  of seeds a paired t-test would need for a given power;
  :func:`friedman_test` compares all arms at once.
* **Unpaired across seeds** (secondary): Welch's t-test, the
  Mann-Whitney U test (exact, ties included, up to 200,000 splits) and P(A > B) (:func:`across_seed_tests`).
* **Paired, on the same test blocks**: McNemar's test on correct/incorrect
  (Dietterich 1998) and the paired bootstrap of the macro-F1 difference
  (Berg-Kirkpatrick et al. 2012), resampling clusters of blocks (test
  pictures) or single blocks. This measures test-set sampling noise, not
  retraining noise.

With fewer than ``min_seeds`` values the across-seed tests report
"not enough seeds", never a p-value; a set of identical values reports
"no variance" (an exact range test, not a floating-point variance).
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
J. Demsar, "Statistical Comparisons of Classifiers over Multiple Data Sets",
JMLR 7, 2006.
X. Bouthillier et al., "Accounting for Variance in Machine Learning
Benchmarks", MLSys 2021.
D. J. Schuirmann, "A comparison of the two one-sided tests procedure and the
power approach for assessing the equivalence of average bioavailability",
J. Pharmacokinetics and Biopharmaceutics 15(6), 1987.
A. C. Davison and D. V. Hinkley, "Bootstrap Methods and their Application",
Cambridge University Press, 1997 (the cluster bootstrap).
S. Holm, "A Simple Sequentially Rejective Multiple Test Procedure",
Scandinavian Journal of Statistics 6(2), 1979.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from av1_ablation.record.metrics import N_CLASSES

__all__ = [
    "bootstrap_macro_f1",
    "BootstrapResult",
    "FriedmanResult",
    "McNemarResult",
    "PairedSeedResult",
    "SeedTestResult",
    "across_seed_tests",
    "friedman_test",
    "holm",
    "macro_f1_from_confusion",
    "mann_whitney_test",
    "mcnemar_test",
    "paired_bootstrap",
    "paired_seed_tests",
    "probability_of_superiority",
    "MAX_SEEDS_FOR_POWER",
    "paired_t_power",
    "seeds_for_power",
    "sign_flip_test",
]

NOT_ENOUGH_SEEDS = "not enough seeds"
NO_VARIANCE = "no variance"
# Exact enumeration of sign patterns up to 2**16; beyond that a seeded Monte-Carlo draw.
EXACT_SIGN_FLIP_MAX = 16
# A range within this many units in the last place of the inputs is rounding, not variance.
ROUNDING_ULPS = 8
# Above this many splits of the pooled scores a tied Mann-Whitney test uses the normal
# approximation with the tie correction instead of enumerating them (10 vs 10 seeds: 184,756).
MANN_WHITNEY_MAX_SPLITS = 200_000


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
    """Paired bootstrap of the macro-F1 difference A - B on the same blocks.

    ``unit`` is what was resampled (``"clusters"`` or ``"blocks"``) and
    ``n_units`` how many of them there are.
    """

    delta: float
    ci_low: float
    ci_high: float
    pvalue: float
    n_resamples: int
    confidence_level: float
    unit: str = "blocks"
    n_units: int = 0

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


def _prediction_rows(y_pred_a, y_pred_b, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_2d(_as_labels(y_pred_a, "y_pred_a"))
    b = np.atleast_2d(_as_labels(y_pred_b, "y_pred_b"))
    if a.shape[1] != n or b.shape[1] != n or a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"predictions must have shape (n_samples,) or (n_seeds, n_samples) with n_samples={n}; "
            f"got {np.shape(y_pred_a)} and {np.shape(y_pred_b)}"
        )
    return a, b


def _cluster_codes(clusters, n: int) -> tuple[np.ndarray, int]:
    """Cluster index 0..G-1 of every block (each block its own cluster when None)."""
    if clusters is None:
        return np.arange(n), n
    clusters = np.asarray(clusters).ravel()
    if len(clusters) != n:
        raise ValueError(f"clusters must have one entry per block ({n}); got {len(clusters)}")
    _, codes = np.unique(clusters, return_inverse=True)
    n_units = int(codes.max()) + 1
    if n_units < 2:
        # Every resample would be the full set: a zero-width interval and a p-value of
        # 1 / (1 + n_resamples) that says nothing.
        raise ValueError("a cluster bootstrap needs at least 2 clusters; got 1")
    return codes.ravel(), n_units


def paired_bootstrap(
    y_true,
    y_pred_a,
    y_pred_b,
    *,
    clusters=None,
    n_resamples: int = 10_000,
    confidence_level: float = 0.95,
    random_state=None,
    chunk_elements: int = 4_000_000,
) -> BootstrapResult:
    """Paired bootstrap of the macro-F1 difference between two models.

    Each resample draws units with replacement: single blocks, or whole
    clusters of blocks (e.g. test pictures) when ``clusters`` is given. The
    *same* draw is applied to both models and macro-F1 is recomputed on the
    resample (it is not a mean of per-block scores). The statistic is

    .. math:: \\delta = \\overline{F1}(A) - \\overline{F1}(B)

    where :math:`\\overline{F1}` is the macro-F1, averaged over seeds when
    predictions of several seeds are given (pooled comparison: all seeds see
    the same resample).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class ids of the evaluation blocks.
    y_pred_a, y_pred_b : array-like of shape (n_samples,) or (n_seeds, n_samples)
        Predictions of A and B on the same blocks; 2-D arrays hold one row
        per seed (the numbers of seeds of A and B may differ).
    clusters : array-like of shape (n_samples,), default=None
        Cluster label of every block (blocks of one cluster are resampled
        together). None resamples single blocks, as if they were independent.
    n_resamples : int, default=10000
        Number of bootstrap resamples.
    confidence_level : float, default=0.95
        Coverage of the percentile interval.
    random_state : int, numpy.random.Generator or None, default=None
        Seed of the resampling, for reproducible intervals.
    chunk_elements : int, default=4_000_000
        Resamples are drawn in chunks of about this many block weights, to bound memory.

    Returns
    -------
    result : BootstrapResult
        ``delta`` on the full set, the percentile interval ``ci_low, ci_high``,
        the one-sided p-value of "A is not better than B", and the unit resampled.

    Raises
    ------
    ValueError
        Mismatched shapes, or ``clusters`` with a single cluster.

    Notes
    -----
    The p-value follows Berg-Kirkpatrick et al. (2012): the bootstrap
    distribution is shifted to the null (centred on 0), so
    ``p = (1 + #{delta* - delta >= delta}) / (1 + n_resamples)``; the +1
    keeps it away from an impossible 0 (Davison and Hinkley 1997). When
    ``delta <= 0`` it is at least about 0.5.

    Blocks of one cluster are not independent (the same picture, the same
    pixels at every QP); resampling single blocks then understates the
    variance of macro-F1. With few clusters the cluster bootstrap has few
    distinct resamples: its interval is coarse.

    Confusion counts of each resample come from one ``np.bincount`` of the
    unit draw (unit multiplicities, spread to the unit's blocks) times the
    one-hot confusion cell of each block, so there is no Python loop over
    resamples. With ``clusters=None`` the draw is the same as with every
    block its own cluster.

    References
    ----------
    T. Berg-Kirkpatrick, D. Burkett, D. Klein, EMNLP 2012; B. Efron and
    R. Tibshirani, "An Introduction to the Bootstrap", 1993; A. C. Davison
    and D. V. Hinkley, "Bootstrap Methods and their Application", 1997.

    Examples
    --------
    >>> y = [0, 1, 2, 0, 1, 2]
    >>> r = paired_bootstrap(y, y, [0, 1, 1, 0, 1, 1], n_resamples=200, random_state=0)
    >>> round(r.delta, 4), r.ci_high >= r.delta >= r.ci_low, r.unit
    (0.4444, True, 'blocks')
    """
    y_true = _as_labels(y_true, "y_true")
    n = len(y_true)
    a, b = _prediction_rows(y_pred_a, y_pred_b, n)
    _check_resampling(n_resamples, confidence_level)

    def delta_of(f1):  # (r, rows) macro-F1 of every model row -> (r,)
        return f1[:, : len(a)].mean(axis=1) - f1[:, len(a):].mean(axis=1)

    observed, deltas, n_units = _resampled_statistic(y_true, np.vstack([a, b]), delta_of, clusters=clusters,
                                                     n_resamples=n_resamples, random_state=random_state,
                                                     chunk_elements=chunk_elements)
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    pvalue = (1.0 + np.sum(deltas - observed >= observed)) / (1.0 + len(deltas))
    return BootstrapResult(observed, float(low), float(high), float(min(pvalue, 1.0)),
                           int(n_resamples), float(confidence_level),
                           "blocks" if clusters is None else "clusters", n_units)


def _check_resampling(n_resamples, confidence_level) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1); got {confidence_level!r}")


def _resampled_statistic(y_true: np.ndarray, models: np.ndarray, statistic, *, clusters, n_resamples: int,
                         random_state, chunk_elements: int) -> tuple[float, np.ndarray, int]:
    """``statistic`` of the (r, n_models) macro-F1s on the full set and on ``n_resamples``
    draws of units (blocks, or whole clusters) with replacement; also the number of units."""
    n = len(y_true)
    codes, n_units = _cluster_codes(clusters, n)
    cells = N_CLASSES * N_CLASSES
    # One-hot confusion cell of every block for every model row: (n, rows * 9).
    onehot = np.zeros((n, models.shape[0] * cells), dtype=np.float64)
    onehot[np.arange(n)[None, :], np.arange(models.shape[0])[:, None] * cells
           + y_true[None, :] * N_CLASSES + models] = 1.0

    def of(conf):  # conf: (r, rows * 9) -> (r,)
        shape = (len(conf), models.shape[0], N_CLASSES, N_CLASSES)
        return statistic(macro_f1_from_confusion(conf.reshape(shape)))

    observed = float(of(onehot.sum(axis=0, keepdims=True))[0])
    rng = np.random.default_rng(random_state)
    per_chunk = max(1, chunk_elements // max(n, n_units))
    draws = np.empty(int(n_resamples))
    for start in range(0, len(draws), per_chunk):
        r = min(per_chunk, len(draws) - start)
        idx = rng.integers(0, n_units, size=(r, n_units))
        # Unit multiplicities of each resample (r, n_units), spread to the blocks: (r, n).
        mult = np.bincount((idx + np.arange(r)[:, None] * n_units).ravel(),
                           minlength=r * n_units).reshape(r, n_units)[:, codes]
        draws[start:start + r] = of(mult @ onehot)
    return observed, draws, n_units


def bootstrap_macro_f1(y_true, y_pred, *, clusters=None, n_resamples: int = 2_000,
                       confidence_level: float = 0.95, random_state=None,
                       chunk_elements: int = 4_000_000) -> tuple[float, float]:
    """Percentile interval of one model's macro-F1 (averaged over the rows of a 2-D
    ``y_pred``, one per seed) when units are resampled as in :func:`paired_bootstrap`.

    Examples
    --------
    >>> lo, hi = bootstrap_macro_f1([0, 1, 2, 0, 1, 2], [0, 1, 1, 0, 1, 2], n_resamples=200, random_state=0)
    >>> bool(lo <= 0.7333 <= hi)
    True
    """
    y_true = _as_labels(y_true, "y_true")
    rows = np.atleast_2d(_as_labels(y_pred, "y_pred"))
    if rows.ndim != 2 or rows.shape[1] != len(y_true):
        raise ValueError(f"y_pred must have shape (n_samples,) or (n_seeds, n_samples) with "
                         f"n_samples={len(y_true)}; got {np.shape(y_pred)}")
    _check_resampling(n_resamples, confidence_level)
    _, draws, _ = _resampled_statistic(y_true, rows, lambda f1: f1.mean(axis=1), clusters=clusters,
                                       n_resamples=n_resamples, random_state=random_state,
                                       chunk_elements=chunk_elements)
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- across seeds
@dataclass(frozen=True)
class SeedTestResult:
    """Unpaired across-seed comparison of arm A against B (one value per seed).

    When either arm has fewer than ``min_seeds`` values every test field is
    None and ``note`` says "not enough seeds"; when both arms are constant
    Welch's fields are None and ``note`` says "no variance".
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
    #: False when ties and many seeds left Mann-Whitney on the normal approximation.
    mannwhitney_exact: bool | None = None

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


def _constant(x: np.ndarray, scale: float = 0.0) -> bool:
    """Whether every value of ``x`` is the same, by a range test.

    np.var of identical floats can come out as 1e-33 instead of 0, and a t statistic
    divided by that gave p = 1e-29 for two constant arms; the range of identical values is
    exactly 0. Differences of scores (``scale``: the scores' magnitude) carry the scores'
    rounding, e.g. (0.43 - 0.40) and (0.44 - 0.41) differ by 6e-17: a range within a few
    units in the last place of the inputs is no variance either. Any real difference of
    macro-F1 is orders of magnitude above that.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return False
    return bool(np.ptp(x) <= ROUNDING_ULPS * np.finfo(np.float64).eps * max(scale, float(np.max(np.abs(x)))))


def across_seed_tests(scores_a, scores_b, *, min_seeds: int = 3,
                      confidence_level: float = 0.95) -> SeedTestResult:
    """Welch's t-test, exact Mann-Whitney U and P(A > B) across seeds (unpaired).

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
        equal_var=False)``) and of the Mann-Whitney U test (:func:`mann_whitney_test`:
        exact, tied scores too, unless ``mannwhitney_exact`` is False),
        Welch's interval of the mean difference and P(A > B).

    Notes
    -----
    These tests treat the seeds of A and B as independent samples. In the
    ablation they are not (a seed fixes the same initialisation, batch order
    and augmentation in every arm), so :func:`paired_seed_tests` is the
    sharper test; these stay as a secondary check.

    When both arms are constant (``np.ptp == 0``, up to rounding) Welch's statistic is
    undefined: its fields are None and the note says "no variance". The
    exact Mann-Whitney test cannot reach small p-values with few seeds
    (3 against 3: at least 0.1).

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
    # Welch needs two values per arm whatever min_seeds says.
    if min(a.size, b.size) < max(min_seeds, 2):
        return SeedTestResult(a.size, b.size, mean_diff,
                              note=f"{NOT_ENOUGH_SEEDS} (need >= {max(min_seeds, 2)} per arm; "
                                   f"got {a.size} and {b.size})")
    note = ""
    t = p = low = high = None
    if _constant(a) and _constant(b):
        note = f"{NO_VARIANCE}: every seed of each arm scores the same, so Welch's t is undefined"
    else:
        welch = stats.ttest_ind(a, b, equal_var=False)
        ci = welch.confidence_interval(confidence_level)
        t, p, low, high = float(welch.statistic), float(welch.pvalue), float(ci.low), float(ci.high)
    u, mw_p, mw_exact = mann_whitney_test(a, b)
    return SeedTestResult(a.size, b.size, mean_diff, t, p, low, high, u, mw_p,
                          probability_of_superiority(a, b), note, mw_exact)


def mann_whitney_test(scores_a, scores_b) -> tuple[float, float, bool]:
    """Mann-Whitney U of A against B and its two-sided p-value, exact with ties too.

    Parameters
    ----------
    scores_a, scores_b : array-like of float, shape (n_a,) and (n_b,)
        One finite score per seed of each arm, at least two per arm.

    Returns
    -------
    u : float
        U of A: the pairs (a, b) with a > b, ties counting 1/2.
    p : float
        Two-sided p-value: twice the smaller tail of U's null distribution,
        at most 1.
    exact : bool
        False only when tied scores have more than
        :data:`MANN_WHITNEY_MAX_SPLITS` splits and ``p`` is scipy's
        tie-corrected normal approximation.

    Notes
    -----
    Without ties this is ``scipy.stats.mannwhitneyu(..., method="exact")``.
    That null distribution assumes distinct scores; with ties (scores logged
    to a few digits, arms that never move) it is not U's and its p-values are
    too small (0.032 instead of 0.048 for A = .5 .5 .6 .7 .7, B = .5 .4 .4 .5
    .3). With ties U is compared with every split of the pooled scores into
    arms of the same sizes (``scipy.stats.permutation_test``, exhaustive).

    Examples
    --------
    >>> mann_whitney_test([.5, .5, .6, .7, .7], [.5, .4, .4, .5, .3])
    (23.0, 0.047619047619047616, True)
    """
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if min(a.size, b.size) < 2:
        raise ValueError(f"mann_whitney_test needs at least two scores per arm; got {a.size} and "
                         f"{b.size}")
    if np.unique(np.concatenate([a, b])).size == a.size + b.size:
        mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
        return float(mw.statistic), float(mw.pvalue), True
    if math.comb(a.size + b.size, a.size) > MANN_WHITNEY_MAX_SPLITS:
        mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
        return float(mw.statistic), float(mw.pvalue), False

    def u_of(x, y, axis):
        # Only U is wanted per split; "asymptotic" keeps scipy from building its exact null each time.
        return stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic

    res = stats.permutation_test((a, b), u_of, permutation_type="independent", vectorized=True,
                                 n_resamples=np.inf, alternative="two-sided")
    return float(res.statistic), float(res.pvalue), True


# --------------------------------------------------------------------------- paired across seeds
@dataclass(frozen=True)
class PairedSeedResult:
    """Paired comparison of A against B on the seeds both share.

    ``n`` seeds with differences ``d_s = A_s - B_s``: their mean and standard
    deviation, the standardised effect ``d_z = mean / sd``, the paired t-test
    (``t``, ``df``, two-sided ``t_p``) with the interval of the mean
    difference, the exact sign-flip p (``sign_flip_min_p``: the smallest
    value it can take with ``n`` seeds), Wilcoxon's signed-rank test and the
    TOST equivalence p against ``+-margin``. Fields that cannot be computed
    are None and ``note`` says why.
    """

    n: int
    mean_diff: float
    sd_diff: float | None = None
    effect_size: float | None = None
    t: float | None = None
    df: int | None = None
    t_p: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    sign_flip_p: float | None = None
    sign_flip_min_p: float | None = None
    wilcoxon_stat: float | None = None
    wilcoxon_p: float | None = None
    tost_p: float | None = None
    margin: float = 0.005
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def sign_flip_test(differences, *, random_state=0) -> float:
    """Two-sided sign-flip permutation test of "the mean difference is 0".

    Under the null each paired difference is as likely to carry either sign,
    so the null distribution of the mean is that of all ``2**k`` sign
    patterns (``scipy.stats.permutation_test`` with one sample and
    ``permutation_type="samples"``).

    Parameters
    ----------
    differences : array-like of shape (k,)
        Paired differences ``d_s = A_s - B_s``.
    random_state : int, default=0
        Seed of the Monte-Carlo draw used above ``2**16`` sign patterns; below
        that every pattern is enumerated and the p-value is exact.

    Returns
    -------
    pvalue : float
        ``#{patterns with |mean| >= |observed mean|} / 2**k``. It cannot go
        below ``2 / 2**k``: 0.25 with 3 seeds, 0.0625 with 5, 0.031 with 6.

    Examples
    --------
    >>> sign_flip_test([.9, 1.4, -.6, 2.1, .3, 1.1, -.2, 1.7])
    0.046875
    >>> sign_flip_test([1.0, 2.0, 3.0])
    0.25
    """
    d = _as_scores(differences, "differences")
    if d.size == 0:
        raise ValueError("sign_flip_test needs at least one difference")
    if not np.any(d):
        return 1.0
    exact = d.size <= EXACT_SIGN_FLIP_MAX
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                 n_resamples=np.inf if exact else 99_999, alternative="two-sided",
                                 random_state=random_state)
    return float(min(res.pvalue, 1.0))


def _wilcoxon(d: np.ndarray) -> tuple[float | None, float | None, str]:
    if not np.any(d):
        return None, None, "Wilcoxon undefined: every difference is zero"
    with warnings.catch_warnings():
        # With ties or zeros scipy falls back to the normal approximation and says so; the
        # p-value is still the one to report, the warning would only clutter the output.
        warnings.simplefilter("ignore", (RuntimeWarning, UserWarning))
        res = stats.wilcoxon(d)
    return float(res.statistic), float(res.pvalue), ""


def paired_seed_tests(scores_a, scores_b, *, min_seeds: int = 3, confidence_level: float = 0.95,
                      margin: float = 0.005) -> PairedSeedResult:
    """Paired tests of A against B on the per-seed differences.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_seeds,)
        Scores of A and B (e.g. test macro-F1, as fractions) on the *same*
        seeds, in the same order.
    min_seeds : int, default=3
        Below this many shared seeds no test is run ("not enough seeds").
    confidence_level : float, default=0.95
        Coverage of the t-interval of the mean difference.
    margin : float, default=0.005
        Equivalence margin of the TOST test (0.005 = 0.5 pp of macro-F1).

    Returns
    -------
    result : PairedSeedResult
        Paired t-test (``scipy.stats.ttest_1samp`` on the differences, the
        same as ``ttest_rel``), its interval, the exact sign-flip p
        (:func:`sign_flip_test`), Wilcoxon's signed-rank p
        (``scipy.stats.wilcoxon``) and the TOST p
        (``statsmodels.stats.weightstats.ttost_paired``: the larger of the
        two one-sided p-values of ``mean > -margin`` and ``mean < +margin``;
        below alpha, A and B are equivalent within the margin).

    Notes
    -----
    If every difference is the same (``np.ptp(d) == 0``, allowing for the
    scores' floating-point rounding) the t-test, its interval, ``d_z`` and
    TOST are undefined: they are None and the note says "no variance" (never
    a tiny p from a rounding-level variance). The
    sign-flip and Wilcoxon tests stay defined unless every difference is 0.
    With 3 seeds neither rank/sign test can go below p = 0.25.

    Examples
    --------
    >>> r = paired_seed_tests([.4108, .4123, .4198], [.40, .41, .41])
    >>> round(r.t, 3), r.df, round(r.t_p, 4), r.sign_flip_p
    (2.846, 2, 0.1045, 0.25)
    """
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if a.size != b.size:
        raise ValueError(f"paired scores need the same seeds in both arms; got {a.size} and {b.size} values")
    d = a - b
    mean = float(d.mean()) if d.size else float("nan")
    if d.size < max(min_seeds, 2):
        return PairedSeedResult(d.size, mean, margin=margin,
                                note=f"{NOT_ENOUGH_SEEDS} (need >= {max(min_seeds, 2)} shared seeds; "
                                     f"got {d.size})")
    w_stat, w_p, w_note = _wilcoxon(d)
    flips = dict(sign_flip_p=sign_flip_test(d), sign_flip_min_p=2.0 / 2 ** d.size,
                 wilcoxon_stat=w_stat, wilcoxon_p=w_p)
    if _constant(d, scale=float(max(np.max(np.abs(a)), np.max(np.abs(b))))):
        return PairedSeedResult(d.size, mean, 0.0, margin=margin, **flips, note=(
            f"{NO_VARIANCE}: every shared seed gives the same difference ({100 * mean:+.2f} pp), "
            "so the paired t-test, its interval and TOST are undefined"
            + (f"; {w_note}" if w_note else "")))
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(confidence_level)
    sd = float(d.std(ddof=1))
    tost_p = float(ttost_paired(a, b, -margin, margin)[0])
    return PairedSeedResult(d.size, mean, sd, mean / sd, float(res.statistic), int(res.df),
                            float(res.pvalue), float(ci.low), float(ci.high), **flips,
                            tost_p=tost_p, margin=margin, note=w_note)


# Beyond this many seeds a planning figure says nothing useful (and the search stays short).
MAX_SEEDS_FOR_POWER = 10_000


def paired_t_power(effect_size: float, n: int, *, alpha: float) -> float:
    """Power of a two-sided one-sample (paired) t-test with ``n`` pairs.

    ``P(|T| > t_crit)`` with ``T`` noncentral t (``n - 1`` degrees of freedom,
    noncentrality ``effect_size * sqrt(n)``), as ``TTestPower.power`` computes
    it, but safe for large effects: there scipy's ``nct.cdf`` returns NaN in
    the far lower tail (a probability that is 0 to double precision), which
    made statsmodels' power, and its solver, NaN.

    Parameters
    ----------
    effect_size : float
        Standardised effect ``d_z = mean / sd`` of the paired differences.
    n : int
        Number of pairs (at least 2).
    alpha : float
        Two-sided significance level.

    Returns
    -------
    power : float

    Examples
    --------
    >>> round(paired_t_power(1.0, 10, alpha=0.05), 3)
    0.803
    """
    df = n - 1
    nc = abs(effect_size) * math.sqrt(n)
    crit = float(stats.t.isf(alpha / 2, df))
    # The normal approximation of the noncentral t, P(T > c) ~ Phi((nc - c) / sqrt(1 + c^2 /
    # (2 df))): where it puts c forty standard units below nc the power is 1 to double
    # precision, and scipy's series there is slow (tens of seconds) or fails to converge.
    z = (nc - crit) / math.sqrt(1.0 + crit * crit / (2.0 * df))
    if z > 40.0:
        return 1.0
    with warnings.catch_warnings():  # scipy warns where its series does not converge; handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        upper = float(stats.nct.sf(crit, df, nc))
        if not math.isfinite(upper):
            upper = 1.0 - float(stats.nct.cdf(crit, df, nc))
        lower = float(stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(upper):  # both forms failed to converge: the approximation above
        upper = float(stats.norm.sf(-z))
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def seeds_for_power(mean_diff: float, sd_diff: float | None, *, alpha: float,
                    power: float = 0.8) -> int | None:
    """Seeds a two-sided paired t-test needs to detect ``mean_diff`` with ``power``.

    The smallest whole number of pairs whose exact power
    (:func:`paired_t_power`) at the standardised effect
    ``d_z = |mean_diff| / sd_diff`` and level ``alpha`` reaches ``power``
    (pass the multiplicity-adjusted level, e.g. ``alpha / m`` for the first
    step of Holm over ``m`` comparisons). It equals ``ceil`` of
    ``statsmodels.stats.power.TTestPower().solve_power`` wherever that is
    finite; unlike it, it stays right for large effects.

    Parameters
    ----------
    mean_diff : float
        Mean of the paired differences (the effect to detect).
    sd_diff : float or None
        Their standard deviation (ddof=1).
    alpha : float
        Two-sided significance level.
    power : float, default=0.8
        Target power.

    Returns
    -------
    n_seeds : int or None
        The smallest whole number of seeds (at least 2) reaching ``power``;
        None when there is no effect or no spread to compute ``d_z`` from, or
        when more than :data:`MAX_SEEDS_FOR_POWER` seeds would be needed.

    Notes
    -----
    Computed from the *observed* effect, this is a planning figure ("a
    lead this size would need n seeds"), not evidence for or against the
    lead: observed power is a function of the p-value (Hoenig and Heisey,
    The American Statistician 55(1), 2001).

    Examples
    --------
    >>> seeds_for_power(0.01, 0.01, alpha=0.05)
    10
    >>> seeds_for_power(0.10, 0.01, alpha=0.05)
    3
    """
    if sd_diff is None or not sd_diff > 0 or not math.isfinite(mean_diff) or mean_diff == 0:
        return None
    d_z = abs(mean_diff) / sd_diff
    reaches = lambda n: paired_t_power(d_z, n, alpha=alpha) >= power  # noqa: E731
    if not reaches(MAX_SEEDS_FOR_POWER):
        return None
    # Power grows with n, so bisect for the first n that reaches the target.
    low, high = 1, MAX_SEEDS_FOR_POWER  # reaches(high) holds; low is below the search range
    while high - low > 1:
        mid = (low + high) // 2
        if reaches(mid):
            high = mid
        else:
            low = mid
    return high


# --------------------------------------------------------------------------- Friedman
@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's test of "all arms score the same" over seeds shared by every arm.

    ``pvalue``: chi-square approximation (scipy); ``permutation_p``: the
    permutation p over within-seed shuffles of the arms, ``exact`` when every
    shuffle was enumerated. None (with a note) when the test is undefined.
    """

    n_seeds: int
    n_arms: int
    statistic: float | None = None
    pvalue: float | None = None
    permutation_p: float | None = None
    exact: bool = False
    n_resamples: int = 0
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _rank_sum_statistic(*arms, axis=-1):
    # Sum of squared rank sums: monotone in Friedman's chi-square for a fixed table, and
    # its tie correction is unchanged by within-seed shuffles, so the permutation p agrees.
    table = np.stack(arms, axis=-1)  # (..., n_seeds, n_arms)
    return np.sum(stats.rankdata(table, axis=-1).sum(axis=-2) ** 2, axis=-1)


def friedman_test(scores, *, min_seeds: int = 3, n_resamples: int = 9_999,
                  random_state=0) -> FriedmanResult:
    """Friedman's rank test over all arms, blocking on seeds (Demsar 2006).

    Parameters
    ----------
    scores : array-like of shape (n_seeds, n_arms)
        One score per seed (rows, the seeds every arm has) and arm (columns).
    min_seeds : int, default=3
        Below this many seeds the result says "not enough seeds".
    n_resamples : int, default=9999
        Within-seed shuffles for the permutation p; when the
        ``(n_arms!) ** n_seeds`` shuffles are no more than this, all are
        enumerated and the p-value is exact.
    random_state : int, default=0
        Seed of the Monte-Carlo shuffles.

    Returns
    -------
    result : FriedmanResult
        ``scipy.stats.friedmanchisquare``'s statistic and chi-square p, and
        the permutation p (``scipy.stats.permutation_test`` with
        ``permutation_type="samples"``: arms shuffled within each seed).

    Notes
    -----
    The chi-square approximation needs many seeds (scipy: more than 10);
    with 3 seeds read the permutation p. Needs at least 3 arms (with 2 it
    is the sign test, i.e. the pairwise comparison itself). When every seed
    ranks all arms equal the test is undefined ("no variance").
    """
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim != 2 or not np.all(np.isfinite(table)):
        raise ValueError("scores must be a finite (n_seeds, n_arms) table")
    n, k = table.shape
    if k < 3:
        return FriedmanResult(n, k, note=f"Friedman needs at least 3 arms; got {k}")
    if n < max(min_seeds, 2):
        return FriedmanResult(n, k, note=f"{NOT_ENOUGH_SEEDS} shared by every arm "
                                         f"(need >= {max(min_seeds, 2)}; got {n})")
    if all(_constant(row) for row in table):
        return FriedmanResult(n, k, note=f"{NO_VARIANCE}: every arm scores the same within each seed")
    chi2 = stats.friedmanchisquare(*table.T)
    exact = math.factorial(k) ** n <= n_resamples
    perm = stats.permutation_test(tuple(table.T), _rank_sum_statistic, permutation_type="samples",
                                  vectorized=True, alternative="greater", random_state=random_state,
                                  n_resamples=np.inf if exact else n_resamples)
    return FriedmanResult(n, k, float(chi2.statistic), float(chi2.pvalue), float(min(perm.pvalue, 1.0)),
                          exact, len(perm.null_distribution))


# --------------------------------------------------------------------------- Holm
def holm(pvalues, *, alpha: float = 0.05, missing: str = "drop"):
    """Holm's step-down correction of a family of p-values.

    Wraps ``statsmodels.stats.multitest.multipletests(method="holm")`` (its
    default would be Holm-Sidak). Missing values (None or NaN, e.g. "not
    enough seeds") stay None in the output.

    Parameters
    ----------
    pvalues : sequence of float or None
        One p-value per hypothesis (e.g. per arm against the reference).
    alpha : float, default=0.05
        Family-wise error rate.
    missing : {"drop", "one"}, default="drop"
        ``"drop"`` leaves missing values out of the family (it shrinks);
        ``"one"`` keeps them in as untestable hypotheses with p = 1 (never
        rejected), so the family size is fixed by design and one untestable
        comparison cannot loosen the correction of the others.

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
    >>> holm([0.01, 0.04, None, 0.03], missing="one")
    ([True, False, None, False], [0.04, 0.09, None, 0.09])
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    if missing not in ("drop", "one"):
        raise ValueError(f"missing must be 'drop' or 'one'; got {missing!r}")
    values = [None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
              for p in pvalues]
    present = [i for i, p in enumerate(values) if p is not None]
    family = present if missing == "drop" else list(range(len(values)))
    reject: list = [None] * len(values)
    adjusted: list = [None] * len(values)
    if present:
        ps = [1.0 if values[i] is None else values[i] for i in family]
        rej, padj, _, _ = multipletests(ps, alpha=alpha, method="holm")
        for i, r, q in zip(family, rej, padj):
            if values[i] is not None:
                reject[i], adjusted[i] = bool(r), round(float(q), 12)
    return reject, adjusted
