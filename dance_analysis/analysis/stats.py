"""Significance tests, confidence intervals and verdicts for comparing DANCE (treatment) with ANCE (control).

Pure functions over per-query (or per-unit) scores: numpy arrays in, numbers and small dicts out. Every
difference is taken as treatment minus control, ``b - a`` (DANCE minus ANCE), and every random draw comes from
``np.random.default_rng(seed)``, so a result is reproducible from its seed.

- :func:`paired_randomization_test`: two-sided sign-flip randomisation test of the mean paired difference
  (Smucker, Allan & Carterette 2007), with the p-value convention of :func:`scipy.stats.permutation_test`.
- :func:`paired_bootstrap_ci`: percentile bootstrap confidence interval of the mean paired difference, pairs
  resampled together (the convention of :func:`scipy.stats.bootstrap` with ``paired=True``).
- :func:`min_detectable_difference`: the smallest true mean difference a paired t-test detects with a given
  power (noncentral t).
- :func:`holm`: Holm (1979) step-down adjusted p-values.
- :func:`fold_bootstrap`: stratified bootstrap (units resampled inside each cross-validation fold) of a
  statistic averaged over folds, with a percentile CI and a bootstrap p-value.
- :func:`cluster_bootstrap_ci`, :func:`cluster_randomization_test`: the same for units that come in clusters
  (e.g. the passages relevant to one query): whole clusters are resampled / sign-flipped.
- :func:`seed_unit_bootstrap`: two-stage bootstrap over units (clusters) and training seeds of a per-unit mean
  difference, folds as strata (units and seeds are crossed factors: Owen's pigeonhole bootstrap).
- :func:`seed_fold_bootstrap`: the same for a set statistic evaluated per fold and seed.
- :func:`seed_weights`, :func:`replicate_rule`, :func:`p_floor`: the seed stage's weights, the replicate rule of
  a geometry claim, and the smallest p-value a resampling test can show.
- :func:`verdict`, :func:`claim_verdict`: the decision rule for one metric and for a claim.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

from ._common import check_vector, rng_from

__all__ = [
    "paired_randomization_test", "paired_bootstrap_ci", "min_detectable_difference", "holm",
    "fold_bootstrap", "cluster_bootstrap_ci", "cluster_randomization_test", "seed_unit_bootstrap",
    "seed_fold_bootstrap", "seed_weights", "replicate_rule", "p_floor", "verdict", "claim_verdict",
    "REPRODUCED", "CONTRADICTED", "INCONCLUSIVE", "NOT_MEASURABLE", "VERDICTS",
]

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_MEASURABLE = "not measurable here"
#: Every verdict string, from best to worst agreement with the paper.
VERDICTS = (REPRODUCED, INCONCLUSIVE, CONTRADICTED, NOT_MEASURABLE)

#: Elements (rows x units) per block of resamples, 4M float64 = 32 MB.
_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------------- checks


def _paired(a, b) -> np.ndarray:
    """``b - a`` as float64 after checking both are finite 1-D arrays of the same length >= 2."""
    a = check_vector(a, "a")
    b = check_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b: expected paired arrays of the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"a and b: expected at least 2 pairs, got {a.size}")
    return b - a


def _check_resamples(n_resamples) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    return int(n_resamples)


def _check_level(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")
    return v


def _block_rows(n: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(n, 1))


# ---------------------------------------------------------------------------------------- randomisation test


def paired_randomization_test(a, b, *, n_resamples: int = 10_000, seed=0) -> dict:
    """Paired two-sided randomisation (sign-flip) test of the mean difference ``mean(b - a)``.

    Under the null hypothesis that the control and treatment labels of each pair are exchangeable, each
    difference :math:`d_i = b_i - a_i` keeps its magnitude and has a random sign (Fisher's randomisation test,
    recommended for IR evaluation by Smucker, Allan & Carterette 2007, "A comparison of statistical
    significance tests for information retrieval evaluation", CIKM). With the observed statistic
    :math:`T = \\frac{1}{n} \\sum_i d_i` and a sign vector :math:`s \\in \\{-1, +1\\}^n`,
    :math:`T_s = \\frac{1}{n} \\sum_i s_i d_i`.

    The p-value follows :func:`scipy.stats.permutation_test` with ``permutation_type="samples"``, statistic
    ``mean(b - a)`` and ``alternative="two-sided"`` (same exact / randomised switch, counts, +1 correction,
    doubling and clipping; only the tie tolerance :math:`\\gamma` differs, see below):

    - exact, when :math:`2^n \\le` ``n_resamples``: all :math:`2^n` sign vectors (the identity included),

      .. math:: p_{\\ge} = \\frac{\\#\\{s : T_s \\ge T - \\gamma\\}}{2^n}, \\quad
                p_{\\le} = \\frac{\\#\\{s : T_s \\le T + \\gamma\\}}{2^n};

    - randomised otherwise: ``n_resamples`` sign vectors :math:`s_1..s_B` drawn independently and uniformly,
      with the +1 correction that counts the observed arrangement (Phipson & Smyth 2010, "Permutation
      p-values should never be zero"),

      .. math:: p_{\\ge} = \\frac{1 + \\#\\{k : T_{s_k} \\ge T - \\gamma\\}}{B + 1}, \\quad
                p_{\\le} = \\frac{1 + \\#\\{k : T_{s_k} \\le T + \\gamma\\}}{B + 1};

    and :math:`p = \\min(1, 2 \\min(p_{\\ge}, p_{\\le}))`. :math:`\\gamma` treats null values within
    rounding error of :math:`T` as ties. scipy uses :math:`\\gamma = 100\\, \\epsilon\\, |T|`
    (:math:`\\epsilon` the float64 machine epsilon); here :math:`\\gamma = 100\\, \\epsilon\\,
    \\frac{1}{n} \\sum_i |d_i|`, the scale of the rounding error of the sums themselves, so that a mean
    difference that is 0 in exact arithmetic but rounds to a tiny non-zero :math:`T` (e.g. differences
    0.1, 0.2, -0.1, -0.2 ...) still ties with the null values that are 0 in exact arithmetic (p = 1 there,
    where scipy's count depends on summation order). The two agree whenever the sums are computed exactly
    (e.g. dyadic scores) and differ only for null values within :math:`\\gamma` of :math:`T`.

    ``a`` (control, ANCE) and ``b`` (treatment, DANCE) are finite 1-D arrays of the same length n >= 2 (one
    value per query); NaN / infinite values raise :class:`ValueError`. ``seed`` (int, None = 0, or a
    :class:`numpy.random.Generator`) drives ``np.random.default_rng`` in the randomised case. Returns
    ``{"effect": mean(b - a), "p_value", "n", "n_resamples" (null values used: 2^n when exact), "exact"}``.
    """
    d = _paired(a, b)
    B = _check_resamples(n_resamples)
    n = d.size
    observed = float(d.mean())
    gamma = 100.0 * np.finfo(np.float64).eps * float(np.abs(d).mean())
    exact = n < 63 and 2 ** n <= B
    count_ge = 0
    count_le = 0
    if exact:
        total = 2 ** n
        codes = np.arange(total, dtype=np.int64)
        bit = np.arange(n, dtype=np.int64)
        for start in range(0, total, _block_rows(n)):
            bits = (codes[start:start + _block_rows(n), None] >> bit) & 1
            null = ((1.0 - 2.0 * bits) * d).mean(axis=1)
            count_ge += int(np.count_nonzero(null >= observed - gamma))
            count_le += int(np.count_nonzero(null <= observed + gamma))
        p_ge, p_le = count_ge / total, count_le / total
        used = total
    else:
        rng = rng_from(seed)
        rows = _block_rows(n)
        for start in range(0, B, rows):
            bits = rng.integers(0, 2, size=(min(rows, B - start), n), dtype=np.int8)
            null = ((1.0 - 2.0 * bits) * d).mean(axis=1)
            count_ge += int(np.count_nonzero(null >= observed - gamma))
            count_le += int(np.count_nonzero(null <= observed + gamma))
        p_ge, p_le = (count_ge + 1) / (B + 1), (count_le + 1) / (B + 1)
        used = B
    p = min(1.0, 2.0 * min(p_ge, p_le))
    return {"effect": observed, "p_value": float(p), "n": int(n), "n_resamples": int(used), "exact": bool(exact)}


# -------------------------------------------------------------------------------------------- bootstrap CIs


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Two-sided percentile interval: linear-interpolation quantiles (numpy / scipy default, Hyndman & Fan
    type 7) at :math:`\\alpha/2` and :math:`1 - \\alpha/2` with :math:`\\alpha = 1 - confidence`."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap_ci(a, b, *, confidence: float = 0.95, n_resamples: int = 10_000, seed=0) -> dict:
    """Percentile bootstrap confidence interval of the mean paired difference ``mean(b - a)``.

    Each replicate draws n query indices :math:`i_1..i_n` uniformly with replacement (pairs stay together)
    and computes :math:`T^*_k = \\frac{1}{n} \\sum_j d_{i_j}` with :math:`d = b - a`; the interval is

    .. math:: [\\hat Q(\\alpha/2),\\ \\hat Q(1 - \\alpha/2)], \\quad \\alpha = 1 - \\text{confidence},

    :math:`\\hat Q` the linear-interpolation quantile of the B = ``n_resamples`` replicates (Efron &
    Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13, percentile interval). This is the interval of
    :func:`scipy.stats.bootstrap` with ``paired=True, method="percentile"``.

    ``a`` (control) and ``b`` (treatment) are finite 1-D arrays of the same length n >= 2. Returns
    ``{"effect": mean(b - a), "low", "high", "confidence", "n_resamples"}``.
    """
    d = _paired(a, b)
    conf = _check_level(confidence, "confidence")
    B = _check_resamples(n_resamples)
    n = d.size
    rng = rng_from(seed)
    reps = np.empty(B)
    rows = _block_rows(n)
    for start in range(0, B, rows):
        stop = min(start + rows, B)
        idx = rng.integers(0, n, size=(stop - start, n))
        reps[start:stop] = d[idx].mean(axis=1)
    low, high = _percentile_ci(reps, conf)
    return {"effect": float(d.mean()), "low": low, "high": high, "confidence": conf, "n_resamples": B}


# --------------------------------------------------------------------------------------------------- power


def _t_power(effect_size: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test at standardised effect :math:`\\delta/\\sigma`."""
    df = n - 1
    crit = sps.t.ppf(1.0 - alpha / 2.0, df)
    nc = effect_size * math.sqrt(n)
    lower = float(sps.nct.cdf(-crit, df, nc))
    if not math.isfinite(lower):
        # scipy's nct.cdf returns NaN deep in the left tail (lambda >~ 5); there the term is below
        # P(T < 0) = Phi(-lambda) < 3e-7, negligible next to the upper tail
        lower = 0.0
    return float(sps.nct.sf(crit, df, nc)) + lower


def min_detectable_difference(differences, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference that a two-sided paired t-test at level ``alpha`` detects with ``power``.

    With n paired differences of sample standard deviation :math:`s` (ddof = 1), the test statistic
    :math:`t = \\bar d / (s / \\sqrt n)` follows, when the true mean difference is :math:`\\delta` and the
    differences are normal with standard deviation :math:`\\sigma`, a noncentral t distribution with
    :math:`\\nu = n - 1` degrees of freedom and noncentrality :math:`\\lambda = \\sqrt n\\, \\delta / \\sigma`.
    The power is

    .. math:: \\pi(\\delta) = P(T_{\\nu,\\lambda} > t_{1-\\alpha/2,\\nu})
              + P(T_{\\nu,\\lambda} < -t_{1-\\alpha/2,\\nu})

    and the minimum detectable difference is the :math:`\\delta > 0` with :math:`\\pi(\\delta) =` ``power``
    (solved by Brent's method on the standardised effect :math:`\\delta/\\sigma`), with :math:`\\sigma`
    estimated by :math:`s` (Cohen 1988, "Statistical Power Analysis for the Behavioral Sciences", ch. 2;
    Webber, Moffat & Zobel 2008, "Statistical power in retrieval experimentation", CIKM). For large n it tends
    to the normal approximation

    .. math:: \\delta \\approx (z_{1-\\alpha/2} + z_{\\text{power}})\\, s / \\sqrt n.

    ``differences`` is a finite 1-D array with n >= 2; ``alpha`` in (0, 1) and ``power`` in (alpha, 1).
    Returns 0.0 when all differences are equal (s = 0).
    """
    d = check_vector(differences, "differences")
    if d.size < 2:
        raise ValueError(f"differences: expected at least 2 values, got {d.size}")
    alpha = _check_level(alpha, "alpha")
    target = _check_level(power, "power")
    if target <= alpha:
        raise ValueError(f"power: expected a value above alpha = {alpha}, got {power}")
    if np.ptp(d) == 0.0:
        return 0.0
    sd = float(np.std(d, ddof=1))
    n = d.size
    hi = (sps.norm.ppf(1.0 - alpha / 2.0) + sps.norm.ppf(target)) / math.sqrt(n)
    while _t_power(hi, n, alpha) < target:
        hi *= 2.0
        if hi > 1e12:  # pragma: no cover - power is reached long before for any n >= 2
            raise ValueError("min_detectable_difference: power not reached")
    es = optimize.brentq(lambda e: _t_power(e, n, alpha) - target, 0.0, hi, xtol=1e-13, rtol=1e-12)
    return float(es * sd)


# ------------------------------------------------------------------------------------- multiple comparisons


def holm(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, controlling the family-wise error rate.

    With the m non-NaN p-values sorted ascending, :math:`p_{(1)} \\le \\dots \\le p_{(m)}`,

    .. math:: \\tilde p_{(i)} = \\min\\Big(1,\\ \\max_{j \\le i}\\ (m - j + 1)\\, p_{(j)}\\Big),

    the smallest level at which Holm's procedure rejects the hypothesis (Holm 1979, "A simple sequentially
    rejective multiple test procedure", Scand. J. Statistics 6:65-70; Wright 1992, "Adjusted p-values for
    simultaneous inference", Biometrics). The adjusted values are monotone in the raw ones and capped at 1;
    tied p-values get the same adjusted value.

    ``p_values`` is an array of any shape with values in [0, 1]; NaN entries (tests that could not be run)
    stay NaN and do not count in m. Infinite or out-of-range values raise :class:`ValueError`. Returns a
    float64 array of the same shape.
    """
    p = np.array(p_values, dtype=np.float64)
    flat = p.reshape(-1)
    ok = ~np.isnan(flat)
    vals = flat[ok]
    bad = np.flatnonzero(ok)[(vals < 0) | (vals > 1) | ~np.isfinite(vals)]
    if bad.size:
        shown = ", ".join(str(int(i)) for i in bad[:10])
        raise ValueError(f"p_values: expected values in [0, 1] (or NaN), got others at flat position(s) {shown}")
    m = vals.size
    out = np.full(flat.shape, np.nan)
    if m:
        order = np.argsort(vals, kind="stable")
        scaled = (m - np.arange(m)) * vals[order]
        adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
        res = np.empty(m)
        res[order] = adjusted
        out[ok] = res
    return out.reshape(p.shape)


# ------------------------------------------------------------------------------------------- fold bootstrap


def _scalar(value, fold: int) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"diff_fns[{fold}]: expected a scalar difference, got an array of shape {arr.shape}")
    return float(arr.reshape(()))


def fold_bootstrap(diff_fns: Sequence[Callable[[np.ndarray], float]], sizes: Sequence[int], *,
                   confidence: float = 0.95, n_resamples: int = 1000, seed=0) -> dict:
    """Stratified bootstrap of a paired difference averaged over cross-validation folds.

    Fold f has ``sizes[f]`` resampling units (queries or documents); ``diff_fns[f](idx)`` returns the paired
    difference (treatment minus control, DANCE minus ANCE) of the statistic computed on the units ``idx`` of
    that fold (an int64 array of length ``sizes[f]``, repeated units allowed). With F folds:

    - effect :math:`\\hat\\theta = \\frac{1}{F} \\sum_f \\Delta_f(0..n_f-1)` (each fold weighs the same);
    - replicate k: inside every fold independently (stratified resampling), :math:`n_f` units drawn
      uniformly with replacement, :math:`\\theta^*_k = \\frac{1}{F} \\sum_f \\Delta_f(I^*_{f,k})`;
    - CI: percentile interval :math:`[\\hat Q(\\alpha/2), \\hat Q(1-\\alpha/2)]` of the valid replicates,
      :math:`\\alpha = 1 - \\text{confidence}` (Efron & Tibshirani 1993, ch. 13);
    - two-sided bootstrap p-value (the achieved significance level of the percentile interval: about the
      smallest :math:`\\alpha` whose percentile interval excludes 0; Efron & Tibshirani 1993, ch. 15-16)

      .. math:: p = \\min\\Big(1,\\ 2 \\min\\big(\\tfrac{1}{B'}\\#\\{k: \\theta^*_k \\le 0\\},
                \\ \\tfrac{1}{B'}\\#\\{k: \\theta^*_k \\ge 0\\}\\big)\\Big),

      over the :math:`B'` valid replicates (no +1 correction, so p can be 0 when no replicate reaches 0).

    A replicate whose value is NaN or infinite (e.g. a statistic undefined on a resample) is dropped and
    counted in ``"n_dropped"``; when every replicate is dropped, low / high / p_value are NaN with a
    :class:`RuntimeWarning`. When the effect itself is NaN (the statistic is undefined on a fold's full data)
    nothing is resampled and low / high / p_value are NaN. Returns ``{"effect", "low", "high", "p_value",
    "confidence", "n_resamples", "n_valid", "n_dropped", "per_fold" (array of the F full-data differences),
    "sizes"}``. Random draws: per replicate, fold by fold, ``rng.integers(0, n_f, n_f)``.
    """
    fns = list(diff_fns)
    try:
        sz = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise ValueError(f"sizes: expected a sequence of positive integers, got {sizes!r}") from None
    if not fns:
        raise ValueError("diff_fns: expected at least one fold")
    if len(sz) != len(fns):
        raise ValueError(f"sizes: expected one size per fold ({len(fns)}), got {len(sz)}")
    if any(s < 1 or s != orig for s, orig in zip(sz, sizes)):
        raise ValueError(f"sizes: expected positive integers, got {list(sizes)}")
    for f, fn in enumerate(fns):
        if not callable(fn):
            raise ValueError(f"diff_fns[{f}]: expected a callable, got {type(fn).__name__}")
    conf = _check_level(confidence, "confidence")
    B = _check_resamples(n_resamples)

    per_fold = np.array([_scalar(fn(np.arange(s, dtype=np.int64)), f) for f, (fn, s) in enumerate(zip(fns, sz))])
    effect = float(per_fold.mean())
    out = {"effect": effect, "low": float("nan"), "high": float("nan"), "p_value": float("nan"),
           "confidence": conf, "n_resamples": B, "n_valid": 0, "n_dropped": 0, "per_fold": per_fold,
           "sizes": list(sz)}
    if not np.isfinite(effect):
        return out
    rng = rng_from(seed)
    reps = np.empty(B)
    for k in range(B):
        total = 0.0
        for f, (fn, s) in enumerate(zip(fns, sz)):
            total += _scalar(fn(rng.integers(0, s, size=s)), f)
        reps[k] = total / len(fns)
    valid = reps[np.isfinite(reps)]
    out["n_valid"] = int(valid.size)
    out["n_dropped"] = int(B - valid.size)
    if valid.size == 0:
        warnings.warn(f"fold_bootstrap: all {B} bootstrap replicates are NaN or infinite; the CI and p-value "
                      "are NaN", RuntimeWarning, stacklevel=2)
        return out
    out["low"], out["high"] = _percentile_ci(valid, conf)
    share_le = np.count_nonzero(valid <= 0) / valid.size
    share_ge = np.count_nonzero(valid >= 0) / valid.size
    out["p_value"] = float(min(1.0, 2.0 * min(share_le, share_ge)))
    return out


# ---------------------------------------------------------------------------------- clusters and seeds


def p_floor(n_resamples: int) -> float:
    """The resolution of a p-value estimated from R = ``n_resamples`` random resamples: :math:`1 / (R + 1)`.

    A randomisation test with the +1 correction (Phipson & Smyth 2010) cannot give a two-sided p below
    :math:`2 / (R + 1)`, and a bootstrap p-value without it is 0 whenever no replicate reaches 0; either way a
    p-value below :math:`1 / (R + 1)` says only "smaller than the resampling can resolve", and is to be shown
    as ``p < 1/(R+1)`` with the real R, never as a finer number."""
    return 1.0 / (_check_resamples(n_resamples) + 1)


def _cluster_codes(clusters, n: int, name: str = "clusters") -> tuple[np.ndarray, int]:
    """Integer codes 0..C-1 of the cluster labels (any sortable labels, one per unit); None: one unit each."""
    if clusters is None:
        return np.arange(n, dtype=np.int64), n
    arr = np.asarray(clusters)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected one label per unit ({n}), got shape {arr.shape}")
    _, codes = np.unique(arr, return_inverse=True)
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    return codes, int(codes.max()) + 1 if n else 0


def _cluster_draws(rng: np.random.Generator, n_clusters: int, rows: int) -> np.ndarray:
    """[rows, C] float64: how often each cluster is drawn when C clusters are drawn with replacement."""
    idx = rng.integers(0, n_clusters, size=(rows, n_clusters))
    flat = (idx + (np.arange(rows, dtype=np.int64) * n_clusters)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_clusters).reshape(rows, n_clusters).astype(np.float64)


def cluster_bootstrap_ci(values, clusters=None, *, confidence: float = 0.95, n_resamples: int = 10_000,
                         seed=0) -> dict:
    """Percentile bootstrap CI of a mean over units that come in clusters, whole clusters resampled.

    With units :math:`x_i` in clusters :math:`c = 1..C` (cluster sums :math:`X_c`, sizes :math:`m_c`), the
    estimate is :math:`\\bar x = \\sum_c X_c / \\sum_c m_c`; replicate k draws C clusters uniformly with
    replacement (counts :math:`w_{kc}`) and computes the ratio

    .. math:: \\bar x^*_k = \\frac{\\sum_c w_{kc} X_c}{\\sum_c w_{kc} m_c},

    the cluster (first-stage) bootstrap for hierarchical data (Davison & Hinkley 1997, "Bootstrap Methods and
    their Application", section 3.8; Field & Welsh 2007, "Bootstrapping clustered data", JRSS B). The interval is
    the percentile interval of the B = ``n_resamples`` replicates. Units of one cluster are correlated (e.g. the
    passages relevant to one query, the statements of one topic), so resampling them one by one understates
    the variance; with one unit per cluster (``clusters`` None) this is the ordinary bootstrap of a mean
    (:func:`scipy.stats.bootstrap`, ``method="percentile"``).

    ``values`` is a finite 1-D array (n >= 2; pass paired differences ``b - a`` for a paired CI), ``clusters``
    one label per unit or None. Returns ``{"effect", "low", "high", "confidence", "n_resamples", "n",
    "n_clusters"}``.
    """
    x = check_vector(values, "values")
    if x.size < 2:
        raise ValueError(f"values: expected at least 2 units, got {x.size}")
    conf = _check_level(confidence, "confidence")
    B = _check_resamples(n_resamples)
    codes, C = _cluster_codes(clusters, x.size)
    sums = np.bincount(codes, weights=x, minlength=C)
    sizes = np.bincount(codes, minlength=C).astype(np.float64)
    rng = rng_from(seed)
    reps = np.empty(B)
    rows = _block_rows(C)
    for start in range(0, B, rows):
        stop = min(start + rows, B)
        w = _cluster_draws(rng, C, stop - start)
        reps[start:stop] = (w @ sums) / (w @ sizes)
    low, high = _percentile_ci(reps, conf)
    return {"effect": float(x.mean()), "low": low, "high": high, "confidence": conf, "n_resamples": B,
            "n": int(x.size), "n_clusters": int(C)}


def cluster_randomization_test(differences, clusters=None, *, n_resamples: int = 10_000, seed=0) -> dict:
    """Paired two-sided randomisation test of ``mean(differences)`` with the signs flipped per cluster.

    Under the null hypothesis the two arms are exchangeable within every cluster (all units of a cluster swap
    labels together), so the sign-flip test of :func:`paired_randomization_test` runs on the cluster totals
    :math:`D_c = \\sum_{i \\in c} d_i`: :math:`T_s = \\sum_c s_c D_c / n` for sign vectors :math:`s` over the
    C clusters, with n (the number of units) fixed, so the p-value is that of the mean of the cluster totals
    (cluster randomisation, Edgington & Onghena 2007, "Randomization Tests", ch. 6; Gail et al. 1996, "On
    design considerations and randomization-based inference for community intervention trials", Stat. Med.).
    Exact when :math:`2^C \\le` ``n_resamples``; with one unit per cluster (``clusters`` None) it is exactly
    :func:`paired_randomization_test`. Returns ``{"effect": mean(differences), "p_value", "n", "n_clusters",
    "n_resamples", "exact"}``.
    """
    d = check_vector(differences, "differences")
    if d.size < 2:
        raise ValueError(f"differences: expected at least 2 units, got {d.size}")
    codes, C = _cluster_codes(clusters, d.size)
    if C < 2:
        raise ValueError("clusters: expected at least 2 clusters")
    totals = np.bincount(codes, weights=d, minlength=C)
    res = paired_randomization_test(np.zeros(C), totals, n_resamples=n_resamples, seed=seed)
    return {"effect": float(d.mean()), "p_value": res["p_value"], "n": int(d.size), "n_clusters": int(C),
            "n_resamples": res["n_resamples"], "exact": res["exact"]}


def seed_weights(draws) -> np.ndarray:
    """Weights of the seed stage of :func:`seed_unit_bootstrap` and :func:`seed_fold_bootstrap`.

    ``draws`` is ``[B, S]``: how often each of the S seeds was drawn (S draws with replacement). A plain
    resample of the seed mean would give it the variance :math:`\\hat\\sigma^2_0 / S` (the divisor-S variance
    of the S seeds), short by the factor :math:`(S-1)/S` (one half for two seeds); the draws are therefore
    taken of the seeds' deviations from their mean rescaled by :math:`a = \\sqrt{S/(S-1)}` (Davison & Hinkley
    1997, section 3.8, the adjusted second stage), so that the replicate of the seed mean is

    .. math:: \\bar y + a\\Big(\\frac{1}{S}\\sum_s c_s y_s - \\bar y\\Big) = \\sum_s v_s y_s, \\quad
              v_s = \\frac{1 - a}{S} + \\frac{a\\, c_s}{S},

    whose variance over the draws is the unbiased :math:`\\hat\\sigma^2 / S`. Each row of weights sums to 1
    (a weight can be negative); with S = 1 every weight is 1 (nothing to resample). Returns float64 ``[B, S]``.
    """
    c = np.asarray(draws, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"draws: expected a 2-D array [resamples, seeds], got shape {c.shape}")
    S = c.shape[1]
    if S == 1:
        return np.ones_like(c)
    a = math.sqrt(S / (S - 1))
    return (1.0 - a) / S + a * c / S


def _seed_draws(rng: np.random.Generator, n_seeds: int, rows: int) -> np.ndarray:
    if n_seeds == 1:
        return np.ones((rows, 1))
    idx = rng.integers(0, n_seeds, size=(rows, n_seeds))
    flat = (idx + (np.arange(rows, dtype=np.int64) * n_seeds)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_seeds).reshape(rows, n_seeds).astype(np.float64)


def _seed_matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected an array [seeds, units], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: NaN or infinite values (leave out the units without a value in every seed)")
    return arr


def seed_unit_bootstrap(treatment, control=None, clusters=None, *, confidence: float = 0.95,
                        n_resamples: int = 10_000, seed=0) -> dict:
    """Two-stage bootstrap CI over units (or clusters of units) and training seeds of a per-unit mean
    difference, cross-validation folds as strata.

    Stratum (fold) f holds ``treatment[f]``, an array ``[S_T, n_f]`` (the per-unit values of each of the
    treatment's S_T training seeds on the fold's n_f test units), and ``control[f]`` ``[S_C, n_f]`` on the same
    units (S_C may differ from S_T; one seed is a 1-D array or one row); ``control`` None gives the level of the
    treatment alone. The estimate is the mean over all units of the seed-averaged differences,

    .. math:: \\hat\\theta = \\frac{1}{N}\\sum_f \\sum_{i \\le n_f} (\\bar T_{fi} - \\bar C_{fi}), \\quad
              \\bar T_{fi} = \\frac{1}{S_T}\\sum_s T_{fsi},

    and replicate k, in every fold independently: (1) draws the fold's clusters with replacement (counts
    :math:`w_{fc}`; ``clusters[f]`` labels each unit, None = every unit its own cluster), (2) draws the
    treatment's seeds and, independently, the control's seeds with replacement, with the weights :math:`v_s` of
    :func:`seed_weights`; then

    .. math:: \\theta^*_k = \\frac{\\sum_f \\sum_c w_{fc} \\big(\\sum_s v^T_{fs} T_{fsc} - \\sum_s v^C_{fs}
              C_{fsc}\\big)}{\\sum_f \\sum_c w_{fc} m_{fc}}

    (:math:`T_{fsc}` the sum over cluster c of seed s's values, :math:`m_{fc}` its size). Units and seeds are
    crossed factors (every seed scores every unit), and resampling both independently is the pigeonhole
    bootstrap of crossed random effects (Owen 2007, "The pigeonhole bootstrap", Annals of Applied Statistics
    1(2); McCullagh 2000, "Resampling and exchangeable arrays", Bernoulli), mildly conservative; the first
    stage is the cluster bootstrap of :func:`cluster_bootstrap_ci`. The interval is the percentile interval
    of the B = ``n_resamples`` replicates. With one seed per arm and one fold it reduces to
    :func:`cluster_bootstrap_ci` of the differences (and, without clusters, to :func:`scipy.stats.bootstrap`).

    Returns ``{"effect", "low", "high", "confidence", "n_resamples", "n", "n_clusters", "seeds"}`` (seeds:
    ``[S_T, S_C]`` per fold, S_C 0 without control).
    """
    conf = _check_level(confidence, "confidence")
    B = _check_resamples(n_resamples)
    t = [_seed_matrix(x, f"treatment[{f}]") for f, x in enumerate(treatment)]
    if not t:
        raise ValueError("treatment: expected at least one fold")
    c = None if control is None else [_seed_matrix(x, f"control[{f}]") for f, x in enumerate(control)]
    if c is not None and len(c) != len(t):
        raise ValueError(f"control: expected one array per fold ({len(t)}), got {len(c)}")
    cl = [None] * len(t) if clusters is None else list(clusters)
    if len(cl) != len(t):
        raise ValueError(f"clusters: expected one array per fold ({len(t)}), got {len(cl)}")
    folds = []
    total, n_units, n_clusters = 0.0, 0, 0
    for f, tf in enumerate(t):
        n = tf.shape[1]
        if c is not None and c[f].shape[1] != n:
            raise ValueError(f"control[{f}]: expected {n} units like treatment[{f}], got {c[f].shape[1]}")
        codes, C = _cluster_codes(cl[f], n, f"clusters[{f}]")
        sizes = np.bincount(codes, minlength=C).astype(np.float64)
        ts = np.stack([np.bincount(codes, weights=row, minlength=C) for row in tf])
        cs = None if c is None else np.stack([np.bincount(codes, weights=row, minlength=C) for row in c[f]])
        total += float(tf.mean(axis=0).sum() - (0.0 if c is None else c[f].mean(axis=0).sum()))
        n_units += n
        n_clusters += C
        folds.append((C, sizes, ts, cs))
    if n_units < 2:
        raise ValueError(f"treatment: expected at least 2 units, got {n_units}")
    rng = rng_from(seed)
    reps = np.empty(B)
    rows = _block_rows(max(f[0] for f in folds))
    for start in range(0, B, rows):
        stop = min(start + rows, B)
        num = np.zeros(stop - start)
        den = np.zeros(stop - start)
        for C, sizes, ts, cs in folds:
            w = _cluster_draws(rng, C, stop - start)
            num += ((w @ ts.T) * seed_weights(_seed_draws(rng, ts.shape[0], stop - start))).sum(axis=1)
            if cs is not None:
                num -= ((w @ cs.T) * seed_weights(_seed_draws(rng, cs.shape[0], stop - start))).sum(axis=1)
            den += w @ sizes
        reps[start:stop] = num / den
    low, high = _percentile_ci(reps, conf)
    return {"effect": total / n_units, "low": low, "high": high, "confidence": conf, "n_resamples": B,
            "n": int(n_units), "n_clusters": int(n_clusters),
            "seeds": [[int(f[2].shape[0]), 0 if f[3] is None else int(f[3].shape[0])] for f in folds]}


def seed_fold_bootstrap(treatment_fns: Sequence[Sequence[Callable[[np.ndarray], float]]],
                        control_fns: Sequence[Sequence[Callable[[np.ndarray], float]]] | None,
                        sizes: Sequence[int], *, confidence: float = 0.95, n_resamples: int = 1000,
                        seed=0) -> dict:
    """Bootstrap over units inside each fold and over training seeds of a set statistic's difference.

    ``treatment_fns[f][s](idx)`` is the statistic of the treatment's seed s on the units ``idx`` of fold f
    (``sizes[f]`` units; repeated units allowed), ``control_fns[f][s]`` the control's (None: the level of the
    treatment alone). The estimate is the mean over folds of the seed-averaged difference,

    .. math:: \\hat\\theta = \\frac{1}{F}\\sum_f \\Big(\\frac{1}{S_T}\\sum_s T_{fs}(1..n_f)
              - \\frac{1}{S_C}\\sum_s C_{fs}(1..n_f)\\Big).

    Replicate k, in every fold independently: draws :math:`n_f` units with replacement (:math:`I^*_{fk}`, the
    same units for every seed of both arms: the difference stays paired), draws the treatment's and the
    control's seeds with replacement (weights :math:`v_s` of :func:`seed_weights`), and computes
    :math:`\\theta^*_k = \\frac{1}{F}\\sum_f (\\sum_s v^T_{fs} T_{fs}(I^*_{fk}) - \\sum_s v^C_{fs}
    C_{fs}(I^*_{fk}))`: the stratified bootstrap of :func:`fold_bootstrap` with the seed stage of Owen's
    pigeonhole bootstrap (Owen 2007, Annals of Applied Statistics 1(2)). CI: percentile interval of the valid
    replicates; p-value: :math:`\\min(1, 2\\min(\\#\\{\\theta^* \\le 0\\}, \\#\\{\\theta^* \\ge 0\\}) / B')`
    (Efron & Tibshirani 1993, ch. 15-16; it can be 0: show it against :func:`p_floor`). The units are drawn
    from ``rng_from(seed)`` as in :func:`fold_bootstrap` (``rng.integers(0, n_f, n_f)`` per replicate, fold by
    fold), the seeds from a generator spawned from it, so the same seed draws the same units whatever the arms
    (a cache of statistics per resample is shared across contrasts).

    Non-finite replicates are dropped and counted. Returns ``{"effect", "low", "high", "p_value",
    "confidence", "n_resamples", "n_valid", "n_dropped", "per_fold" (seed-averaged full-sample differences),
    "per_seed" ([treatment values, control values] per fold, full sample), "sizes"}``.
    """
    conf = _check_level(confidence, "confidence")
    B = _check_resamples(n_resamples)
    t = [list(f) for f in treatment_fns]
    c = None if control_fns is None else [list(f) for f in control_fns]
    sz = [int(s) for s in sizes]
    if not t or len(sz) != len(t) or (c is not None and len(c) != len(t)):
        raise ValueError("treatment_fns, control_fns, sizes: expected one entry per fold, at least one fold")
    if any(s < 1 for s in sz) or any(not f for f in t) or (c is not None and any(not f for f in c)):
        raise ValueError("sizes: expected positive sizes and at least one seed per arm and fold")
    cc = c if c is not None else [[] for _ in t]
    full = [np.arange(s, dtype=np.int64) for s in sz]
    per_seed = [[[_scalar(fn(full[f]), f) for fn in t[f]], [_scalar(fn(full[f]), f) for fn in cc[f]]]
                for f in range(len(t))]
    per_fold = np.array([np.mean(ts) - (np.mean(cs) if cs else 0.0) for ts, cs in per_seed])
    effect = float(per_fold.mean())
    out = {"effect": effect, "low": float("nan"), "high": float("nan"), "p_value": float("nan"),
           "confidence": conf, "n_resamples": B, "n_valid": 0, "n_dropped": 0, "per_fold": per_fold,
           "per_seed": per_seed, "sizes": sz}
    if not np.isfinite(effect):
        return out
    rng = rng_from(seed)
    seed_rng = rng.spawn(1)[0]
    reps = np.empty(B)
    for k in range(B):
        total = 0.0
        for f in range(len(t)):
            idx = rng.integers(0, sz[f], size=sz[f])
            vt = seed_weights(_seed_draws(seed_rng, len(t[f]), 1))[0]
            total += float(vt @ np.array([_scalar(fn(idx), f) for fn in t[f]]))
            if cc[f]:
                vc = seed_weights(_seed_draws(seed_rng, len(cc[f]), 1))[0]
                total -= float(vc @ np.array([_scalar(fn(idx), f) for fn in cc[f]]))
        reps[k] = total / len(t)
    valid = reps[np.isfinite(reps)]
    out["n_valid"], out["n_dropped"] = int(valid.size), int(B - valid.size)
    if valid.size == 0:
        warnings.warn(f"seed_fold_bootstrap: all {B} bootstrap replicates are NaN or infinite; the CI and "
                      "p-value are NaN", RuntimeWarning, stacklevel=2)
        return out
    out["low"], out["high"] = _percentile_ci(valid, conf)
    out["p_value"] = float(min(1.0, 2.0 * min(np.count_nonzero(valid <= 0), np.count_nonzero(valid >= 0))
                               / valid.size))
    return out


def replicate_rule(treatment: Sequence[Sequence[float]], control: Sequence[Sequence[float]],
                   effect: float) -> dict:
    """The replicate rule of a geometry (set) claim: do the training replicates agree, beyond seed noise?

    ``treatment[f]`` holds the statistic's full-sample value for each treatment seed of fold f, ``control[f]``
    the control's. The replicates are the differences :math:`T_{fs} - C_{fs'}` of every fold f and every pair
    of a treatment seed s and a control seed s'; the seed gap is the largest :math:`|X_{fs} - X_{fs'}|` between
    two seeds of the same arm in the same fold (either arm with at least two seeds): how far training
    randomness alone moves the statistic. The rule holds when every replicate has the sign of ``effect``
    (strictly) and :math:`|\\text{effect}|` exceeds the seed gap; without two seeds of either arm the gap is
    unknown and the rule does not hold (a difference between two single runs cannot be told from seed noise;
    cf. Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks", MLSys). A metric
    failing the rule cannot be ``reproduced`` or ``contradicted`` (:func:`verdict`).

    Returns ``{"passed", "agree", "exceeds_gap", "seed_gap" (None without two seeds), "replicates",
    "min_replicate", "max_replicate", "reason" (None when passed)}``.
    """
    reps = [float(a) - float(b) for ts, cs in zip(treatment, control) for a in ts for b in cs]
    gaps = [abs(float(x) - float(y)) for f in (*treatment, *control) for i, x in enumerate(f) for y in f[i + 1:]]
    gap = max(gaps) if gaps else None
    eff = float(effect)
    finite = bool(reps) and all(math.isfinite(r) for r in reps) and math.isfinite(eff)
    agree = finite and eff != 0.0 and all(math.copysign(1.0, r) == math.copysign(1.0, eff) and r != 0.0
                                           for r in reps)
    exceeds = finite and gap is not None and abs(eff) > gap
    reason = None
    if not agree:
        reason = "the (fold, seed pair) replicates do not all have the sign of the effect"
    elif gap is None:
        reason = "no arm has two seeds in a fold: the seed gap is unknown"
    elif not exceeds:
        reason = f"|effect| {abs(eff):.3g} does not exceed the gap {gap:.3g} between two seeds of one arm"
    return {"passed": bool(agree and exceeds), "agree": bool(agree), "exceeds_gap": bool(exceeds),
            "seed_gap": gap, "replicates": len(reps), "min_replicate": min(reps) if reps else None,
            "max_replicate": max(reps) if reps else None, "reason": reason}


# ------------------------------------------------------------------------------------------------- verdicts


def _nan(x) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        raise ValueError(f"expected a number or NaN, got {x!r}") from None


def verdict(low, high, p_adjusted, direction: str, *, alpha: float = 0.05,
            replicates_ok: bool | None = None) -> str:
    """Verdict for one metric from its CI of (treatment - control) and its multiplicity-adjusted p-value.

    ``direction`` is the sign the paper predicts for treatment minus control: ``"higher"`` (predicted > 0) or
    ``"lower"`` (predicted < 0). With the interval [low, high]:

    - ``"not measurable here"`` when low, high or p_adjusted is NaN / None;
    - ``"reproduced"`` when the interval excludes 0 on the predicted side (low > 0 for "higher", high < 0 for
      "lower", strictly) and :math:`p_{adj} < \\alpha`;
    - ``"contradicted"`` when the interval excludes 0 on the other side and :math:`p_{adj} < \\alpha`;
    - ``"inconclusive"`` otherwise (the interval contains 0, or the adjusted p-value is not below alpha).

    Requiring both the interval and the adjusted test guards against either alone being fooled (e.g. a CI
    computed without the multiple-comparison correction that p_adjusted carries, Holm 1979).
    ``replicates_ok`` False (the :func:`replicate_rule` of a geometry metric does not hold) turns
    ``reproduced`` / ``contradicted`` into ``inconclusive``; None or True change nothing. Raises
    :class:`ValueError` for an unknown direction, alpha outside (0, 1) or low > high.
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction: expected 'higher' or 'lower', got {direction!r}")
    alpha = _check_level(alpha, "alpha")
    if _nan(low) or _nan(high) or _nan(p_adjusted):
        return NOT_MEASURABLE
    low, high, p = float(low), float(high), float(p_adjusted)
    if low > high:
        raise ValueError(f"low, high: expected low <= high, got [{low}, {high}]")
    if not p < alpha:
        return INCONCLUSIVE
    above, below = low > 0, high < 0
    predicted, other = (above, below) if direction == "higher" else (below, above)
    if (predicted or other) and replicates_ok is False:
        return INCONCLUSIVE
    if predicted:
        return REPRODUCED
    if other:
        return CONTRADICTED
    return INCONCLUSIVE


def claim_verdict(metric_verdicts: Iterable[str]) -> str:
    """Verdict for a claim from the verdicts (:func:`verdict`) of its primary metrics, symmetric in the two
    directions.

    Over the measurable metrics (those not ``"not measurable here"``):

    - none measurable (or no metric at all) -> ``"not measurable here"``;
    - at least one ``"reproduced"`` and none ``"contradicted"`` -> ``"reproduced"``;
    - at least one ``"contradicted"`` and none ``"reproduced"`` -> ``"contradicted"``;
    - otherwise (all inconclusive, or mixed evidence: some reproduced and some contradicted) ->
      ``"inconclusive"``.

    Each primary metric has already passed Holm's correction over the claim's primary metrics (family-wise
    error rate controlled), so one significant metric in a direction, with none in the other, supports the claim
    in that direction; the rule treats "reproduced" and "contradicted" alike, so it favours neither outcome.
    Unknown verdict strings raise :class:`ValueError`.
    """
    vs = list(metric_verdicts)
    unknown = [v for v in vs if v not in VERDICTS]
    if unknown:
        raise ValueError(f"metric_verdicts: unknown verdict(s) {unknown!r}, expected one of {VERDICTS}")
    measurable = [v for v in vs if v != NOT_MEASURABLE]
    if not measurable:
        return NOT_MEASURABLE
    if REPRODUCED in measurable and CONTRADICTED not in measurable:
        return REPRODUCED
    if CONTRADICTED in measurable and REPRODUCED not in measurable:
        return CONTRADICTED
    return INCONCLUSIVE
