"""Significance tests, bootstrap intervals, power, Holm and verdicts against independent references.

References: scipy.stats.permutation_test / bootstrap / ttest_1samp, exact rational enumeration, a brute-force
Holm procedure written from its definition, and hand-checked examples. Monte Carlo comparisons use tolerances of
about four standard errors of the difference between the two estimates.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from dance_analysis.analysis import stats as S


def _mean_diff(x, y, axis=-1):
    return np.mean(y - x, axis=axis)


def _scipy_perm_p(a, b, n_resamples, seed=12345):
    res = sps.permutation_test((a, b), _mean_diff, permutation_type="samples", alternative="two-sided",
                               n_resamples=n_resamples, vectorized=True, rng=np.random.default_rng(seed))
    return float(res.pvalue)


def _exact_p_rational(a, b):
    """Two-sided exact sign-flip p-value in exact rational arithmetic (scipy's definition, no rounding)."""
    d = [Fraction(str(y)) - Fraction(str(x)) for x, y in zip(a, b)]
    t = sum(d)
    ge = le = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        v = sum(s * x for s, x in zip(signs, d))
        ge += v >= t
        le += v <= t
    return min(1.0, 2 * min(ge, le) / 2 ** len(d))


# ------------------------------------------------------------------------------------------- randomisation


@pytest.mark.parametrize("seed", range(6))
def test_randomization_exact_equals_scipy_on_exactly_representable_scores(seed):
    # Reciprocal ranks 1, 1/2, 1/4, 1/8, 0 (sums are exact in float64): ties, zeros and equal pairs.
    rng = np.random.default_rng(seed)
    n = 8 + seed % 5
    levels = np.array([0.0, 0.125, 0.25, 0.5, 1.0])
    a = levels[rng.integers(0, 5, n)]
    b = np.where(rng.random(n) < 0.6, levels[np.minimum(rng.integers(0, 5, n) + 1, 4)], a)
    b[0] = a[0]                                   # a zero difference
    out = S.paired_randomization_test(a, b, n_resamples=10_000, seed=seed)
    assert out["exact"] and out["n_resamples"] == 2 ** n and out["n"] == n
    assert out["effect"] == pytest.approx(np.mean(b - a), abs=1e-15)
    assert out["p_value"] == _scipy_perm_p(a, b, 10_000)
    assert out["p_value"] == _exact_p_rational(a, b)


@pytest.mark.parametrize("seed", [1, 2, 3, 26, 128])
def test_randomization_exact_on_decimal_scores_matches_rational_enumeration(seed):
    # P@10-like scores (multiples of 0.1): the rounded sums of tied sign patterns differ in the last bit.
    # Seeds 26 and 128 have a mean difference that is 0 in exact arithmetic (true p = 1).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 13))
    a = np.round(rng.random(n), 1)
    b = np.round(np.clip(a + rng.normal(0.1, 0.2, n), 0, 1), 1)
    b[:2] = a[:2]
    out = S.paired_randomization_test(a, b, n_resamples=10_000)
    assert out["exact"]
    assert out["p_value"] == _exact_p_rational(a, b)


def test_randomization_exact_tiny_hand_example():
    # d = (1, 2, 3): 8 sign patterns, sums 6, 4, 2, 0, 0, -2, -4, -6; T = 6 reached once on each side.
    out = S.paired_randomization_test([0, 0, 0], [1, 2, 3], n_resamples=8)
    assert out["exact"] and out["p_value"] == pytest.approx(2 * 1 / 8)
    assert not S.paired_randomization_test([0, 0, 0], [1, 2, 3], n_resamples=7)["exact"]


@pytest.mark.parametrize("shift", [0.0, 0.03])
def test_randomization_randomised_within_monte_carlo_error_of_scipy(shift):
    rng = np.random.default_rng(7)
    n, B = 60, 10_000
    a = rng.random(n)
    b = np.clip(a + rng.normal(shift, 0.12, n), 0, 1)
    out = S.paired_randomization_test(a, b, n_resamples=B, seed=3)
    ref = _scipy_perm_p(a, b, B, seed=99)
    assert not out["exact"] and out["n_resamples"] == B
    p = (out["p_value"] + ref) / 2
    # each two-sided p is 2 x a one-sided share of B draws; two independent estimates are compared
    tol = 4 * math.sqrt(2) * 2 * math.sqrt((p / 2) * (1 - p / 2) / B) + 1e-3
    assert abs(out["p_value"] - ref) < tol
    if shift:
        assert 0.01 < out["p_value"] < 0.5          # a real but moderate effect: the comparison is informative
    else:
        assert out["p_value"] > 0.2


def test_randomization_large_shift_small_p_and_identical_arrays():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    out = S.paired_randomization_test(a, a + 0.2 + rng.normal(0, 0.05, 60), n_resamples=10_000)
    # no random sign pattern reaches T: p = 2 (0 + 1) / (B + 1), scipy's +1 correction
    assert out["p_value"] == pytest.approx(2 / 10_001) and out["p_value"] < 0.01
    assert _scipy_perm_p(a, a + 0.2 + rng.normal(0, 0.05, 60), 10_000) == pytest.approx(2 / 10_001)
    assert S.paired_randomization_test(a, a)["p_value"] == 1.0
    assert S.paired_randomization_test(a[:10], a[:10])["p_value"] == 1.0


def test_randomization_reproducible_and_checks_input():
    rng = np.random.default_rng(4)
    a, b = rng.random(40), rng.random(40)
    assert S.paired_randomization_test(a, b, seed=5) == S.paired_randomization_test(a, b, seed=5)
    with pytest.raises(ValueError, match="same length"):
        S.paired_randomization_test(a, b[:-1])
    with pytest.raises(ValueError, match="NaN"):
        S.paired_randomization_test(np.r_[a[:-1], np.nan], b)
    with pytest.raises(ValueError, match="at least 2"):
        S.paired_randomization_test([0.1], [0.2])
    with pytest.raises(ValueError, match="n_resamples"):
        S.paired_randomization_test(a, b, n_resamples=0)


# ------------------------------------------------------------------------------------------------ bootstrap


def test_paired_bootstrap_ci_matches_scipy_within_monte_carlo_error():
    rng = np.random.default_rng(11)
    n, B = 50, 10_000
    a = rng.random(n)
    b = a + rng.normal(0.04, 0.08, n)              # strongly paired: an unpaired resampling would be far wider
    out = S.paired_bootstrap_ci(a, b, n_resamples=B, seed=1)
    ref = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, method="percentile",
                        confidence_level=0.95, n_resamples=B, rng=np.random.default_rng(2))
    lo, hi = ref.confidence_interval
    width = hi - lo
    assert abs(out["low"] - lo) < 0.06 * width and abs(out["high"] - hi) < 0.06 * width
    assert out["low"] < out["effect"] < out["high"]
    assert out["effect"] == pytest.approx(np.mean(b - a))
    assert out["confidence"] == 0.95 and out["n_resamples"] == B

    out90 = S.paired_bootstrap_ci(a, b, confidence=0.9, n_resamples=B, seed=1)
    ref90 = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, method="percentile",
                          confidence_level=0.9, n_resamples=B, rng=np.random.default_rng(3))
    lo90, hi90 = ref90.confidence_interval
    assert abs(out90["low"] - lo90) < 0.06 * width and abs(out90["high"] - hi90) < 0.06 * width
    assert out["low"] < out90["low"] < out90["high"] < out["high"]


def test_paired_bootstrap_ci_reproducible_and_checks_input():
    a, b = np.arange(10.0), np.arange(10.0) + np.linspace(-1, 2, 10)
    assert S.paired_bootstrap_ci(a, b, seed=3) == S.paired_bootstrap_ci(a, b, seed=3)
    assert S.paired_bootstrap_ci(a, b, seed=3) != S.paired_bootstrap_ci(a, b, seed=4)
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="confidence"):
            S.paired_bootstrap_ci(a, b, confidence=bad)
    with pytest.raises(ValueError, match="same length"):
        S.paired_bootstrap_ci(a, b[:3])


# ---------------------------------------------------------------------------------------------------- power


@pytest.mark.parametrize("n,alpha,power", [(25, 0.05, 0.8), (12, 0.01, 0.9)])
def test_min_detectable_difference_has_the_requested_power(n, alpha, power):
    rng = np.random.default_rng(n)
    d = rng.normal(0.02, 0.2, n)
    sd = np.std(d, ddof=1)
    mde = S.min_detectable_difference(d, alpha=alpha, power=power)
    reps = 20_000
    sims = rng.normal(mde, sd, size=(reps, n))
    rate = np.mean(sps.ttest_1samp(sims, 0.0, axis=1).pvalue < alpha)
    assert abs(rate - power) < 4 * math.sqrt(power * (1 - power) / reps) + 2e-3
    # at 0.8 x MDE the test has clearly less power (so the check above can fail)
    low_rate = np.mean(sps.ttest_1samp(rng.normal(0.8 * mde, sd, size=(reps, n)), 0.0, axis=1).pvalue < alpha)
    assert low_rate < power - 0.05


def test_min_detectable_difference_normal_limit_and_small_n():
    rng = np.random.default_rng(5)
    d = rng.normal(0.0, 0.3, 20_000)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    approx = z * np.std(d, ddof=1) / math.sqrt(d.size)
    assert S.min_detectable_difference(d) == pytest.approx(approx, rel=1e-3)
    small = d[:5]
    assert S.min_detectable_difference(small) > 1.2 * z * np.std(small, ddof=1) / math.sqrt(5)
    # location-invariant, scale-equivariant, 0 without spread
    assert S.min_detectable_difference(small * 3 + 1) == pytest.approx(3 * S.min_detectable_difference(small))
    assert S.min_detectable_difference([0.1, 0.1, 0.1]) == 0.0
    with pytest.raises(ValueError, match="power"):
        S.min_detectable_difference(small, alpha=0.05, power=0.01)
    with pytest.raises(ValueError, match="at least 2"):
        S.min_detectable_difference([0.3])


# ----------------------------------------------------------------------------------------------------- Holm


def _holm_brute_force(p):
    """Smallest level at which Holm's step-down procedure rejects each hypothesis, by trying every level
    at which a decision can change (Holm 1979: reject H_(1..k-1), k the first with p_(k) > level/(m-k+1))."""
    p = np.asarray(p, dtype=float)
    keep = np.flatnonzero(~np.isnan(p))
    m = keep.size
    out = np.full(p.shape, np.nan)
    if m == 0:
        return out
    order = keep[np.argsort(p[keep], kind="stable")]
    levels = sorted({float(min(1.0, (m - k) * p[order[k]])) for k in range(m)} | {1.0})
    for i in keep:
        for level in levels:
            rejected = set()
            for k in range(m):
                if (m - k) * p[order[k]] <= level:
                    rejected.add(p[order[k]])            # tied values are rejected together
                else:
                    break
            if p[i] in rejected:
                out[i] = level
                break
        else:
            out[i] = 1.0                                 # not rejected even at level 1: capped at 1
    return out


def test_holm_hand_example():
    # Four tests: sorted 0.005, 0.01, 0.03, 0.04 -> 4x0.005, 3x0.01, 2x0.03, max(0.06, 1x0.04)
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(S.holm([0.5, np.nan, 0.6]), [1.0, np.nan, 1.0])
    assert S.holm([]).shape == (0,)


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.beta(0.4, 2.0, 12), 3)          # rounding makes ties
    p[rng.integers(0, 12, 2)] = np.nan
    p[3] = p[5] if not np.isnan(p[5]) else 0.02
    got = S.holm(p)
    np.testing.assert_allclose(got, _holm_brute_force(p), rtol=1e-12, equal_nan=True)
    ok = ~np.isnan(p)
    assert np.array_equal(np.isnan(got), ~ok) and (got[ok] <= 1).all() and (got[ok] >= p[ok]).all()
    order = np.argsort(p[ok])
    assert (np.diff(got[ok][order]) >= 0).all()
    np.testing.assert_allclose(S.holm(p.reshape(3, 4)), got.reshape(3, 4), equal_nan=True)


def test_holm_rejects_bad_values():
    for bad in ([0.1, 1.2], [-0.1], [np.inf]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            S.holm(bad)


# ---------------------------------------------------------------------------------------------- fold bootstrap


def test_fold_bootstrap_one_fold_mean_matches_scipy_bootstrap():
    rng = np.random.default_rng(21)
    n = 40
    a = rng.random(n)
    b = a + rng.normal(0.02, 0.1, n)
    d = b - a
    out = S.fold_bootstrap([lambda idx: d[idx].mean()], [n], n_resamples=4000, seed=8)
    ref = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, method="percentile",
                        n_resamples=10_000, rng=np.random.default_rng(9))
    lo, hi = ref.confidence_interval
    assert abs(out["low"] - lo) < 0.06 * (hi - lo) and abs(out["high"] - hi) < 0.06 * (hi - lo)
    dist = ref.bootstrap_distribution
    p_ref = min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0)))
    assert 0.05 < p_ref < 0.8                         # an informative p-value
    assert abs(out["p_value"] - p_ref) < 4 * math.sqrt(p_ref * (1 - p_ref / 2) * 2 * (1 / 4000 + 1 / 10_000))
    assert out["effect"] == pytest.approx(d.mean()) and out["per_fold"].tolist() == [pytest.approx(d.mean())]
    assert out["n_valid"] == 4000 and out["n_dropped"] == 0


def test_fold_bootstrap_resamples_inside_folds():
    sizes = [7, 12, 5]
    rng = np.random.default_rng(1)
    data = [rng.normal(3.0, 0.5, sizes[0]), rng.normal(-3.0, 0.5, sizes[1]), rng.normal(1.0, 0.5, sizes[2])]
    calls = [[] for _ in sizes]

    def make(f):
        def fn(idx):
            calls[f].append(np.array(idx))
            return data[f][idx].mean()
        return fn

    B = 3000
    out = S.fold_bootstrap([make(f) for f in range(3)], sizes, n_resamples=B, seed=2)
    for f, size in enumerate(sizes):
        assert len(calls[f]) == B + 1
        np.testing.assert_array_equal(calls[f][0], np.arange(size))
        for idx in calls[f]:
            assert np.issubdtype(idx.dtype, np.integer) and idx.shape == (size,)
            assert idx.min() >= 0 and idx.max() < size
        assert len({tuple(i) for i in calls[f][1:]}) > B // 2   # really resampled ...
        assert set(np.concatenate(calls[f][1:]).tolist()) == set(range(size))   # ... over the whole fold
    # each fold weighs the same (not the pooled mean over 24 units)
    assert out["effect"] == pytest.approx(np.mean([x.mean() for x in data]))
    np.testing.assert_allclose(out["per_fold"], [x.mean() for x in data])
    # stratified: the replicate spread is that of the average of three independent fold means, not inflated by
    # units moving between folds of very different means
    sd = math.sqrt(sum(x.var() / x.size for x in data)) / 3
    assert (out["high"] - out["low"]) == pytest.approx(2 * sps.norm.ppf(0.975) * sd, rel=0.1)
    assert out["p_value"] == 0.0 and out["low"] > 0     # no replicate reaches 0
    assert out["sizes"] == sizes


def test_fold_bootstrap_drops_and_counts_nan_replicates():
    rng = np.random.default_rng(3)
    d0, d1 = rng.normal(0.1, 1.0, 6), rng.normal(0.0, 1.0, 9)
    reps: list[float] = []

    def fold0(idx):
        reps.append(d0[idx].mean() if 0 in idx else np.nan)   # undefined without unit 0 (~ 1/3 of resamples)
        return reps[-1]

    def fold1(idx):
        reps[-1] = (reps[-1] + d1[idx].mean()) / 2
        return d1[idx].mean()

    B = 800
    out = S.fold_bootstrap([fold0, fold1], [6, 9], n_resamples=B, seed=4)
    values = np.array(reps[1:])
    valid = values[~np.isnan(values)]
    assert out["n_dropped"] == B - valid.size > 100 and out["n_valid"] == valid.size
    low, high = np.quantile(valid, [0.025, 0.975])
    assert out["low"] == pytest.approx(low) and out["high"] == pytest.approx(high)
    p = min(1.0, 2 * min(np.mean(valid <= 0), np.mean(valid >= 0)))
    assert out["p_value"] == pytest.approx(p)

    with pytest.warns(RuntimeWarning, match="all 50"):   # defined only on the full data (P = 8^-8 per replicate)
        none = S.fold_bootstrap([lambda idx: 1.0 if np.array_equal(idx, np.arange(8)) else np.nan], [8],
                                n_resamples=50)
    assert none["effect"] == 1.0 and none["n_dropped"] == 50
    assert np.isnan(none["low"]) and np.isnan(none["p_value"])
    undefined = S.fold_bootstrap([lambda idx: np.nan, lambda idx: 1.0], [3, 3], n_resamples=10)
    assert np.isnan(undefined["effect"]) and np.isnan(undefined["high"]) and undefined["n_valid"] == 0


def test_fold_bootstrap_p_value_counts_replicates_equal_to_zero_on_both_sides():
    d = np.array([1, -1, 0, 1, 0])                 # integer sums: many replicates are exactly 0
    values: list[float] = []

    def fn(idx):
        values.append(float(d[idx].sum()))
        return values[-1]

    out = S.fold_bootstrap([fn], [5], n_resamples=500, seed=6)
    reps = np.array(values[1:])
    assert np.mean(reps == 0) > 0.1
    # Efron & Tibshirani's two-sided ASL from the bootstrap distribution, ties at 0 counted on both sides
    assert out["p_value"] == pytest.approx(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
    assert out["effect"] == 1.0 and out["low"] < 0 < out["high"]


def test_fold_bootstrap_checks_input():
    with pytest.raises(ValueError, match="one size per fold"):
        S.fold_bootstrap([lambda i: 0.0], [3, 4])
    with pytest.raises(ValueError, match="positive integers"):
        S.fold_bootstrap([lambda i: 0.0], [0])
    with pytest.raises(ValueError, match="scalar"):
        S.fold_bootstrap([lambda i: np.zeros(2)], [3])
    with pytest.raises(ValueError, match="at least one fold"):
        S.fold_bootstrap([], [])


# ------------------------------------------------------------------------------------------------- verdicts


_CIS = {"above": (0.1, 0.3), "below": (-0.3, -0.1), "straddles": (-0.1, 0.2), "touches": (0.0, 0.2),
        "touches_below": (-0.2, 0.0)}


@pytest.mark.parametrize("direction", ["higher", "lower"])
@pytest.mark.parametrize("ci", list(_CIS))
@pytest.mark.parametrize("p", [0.001, 0.0499, 0.05, 0.3])
def test_verdict_truth_table(direction, ci, p):
    low, high = _CIS[ci]
    significant = p < 0.05
    predicted_side = {"higher": "above", "lower": "below"}[direction]
    other_side = {"higher": "below", "lower": "above"}[direction]
    if significant and ci == predicted_side:
        expected = "reproduced"
    elif significant and ci == other_side:
        expected = "contradicted"
    else:
        expected = "inconclusive"
    assert S.verdict(low, high, p, direction) == expected
    assert S.verdict(np.nan, high, p, direction) == "not measurable here"
    assert S.verdict(low, np.nan, p, direction) == "not measurable here"
    assert S.verdict(low, high, np.nan, direction) == "not measurable here"
    assert S.verdict(low, high, None, direction) == "not measurable here"


def test_verdict_alpha_and_bad_input():
    assert S.verdict(0.1, 0.2, 0.08, "higher") == "inconclusive"
    assert S.verdict(0.1, 0.2, 0.08, "higher", alpha=0.1) == "reproduced"
    assert S.verdict(0.1, 0.2, 0.08, "lower", alpha=0.1) == "contradicted"
    with pytest.raises(ValueError, match="direction"):
        S.verdict(0.1, 0.2, 0.01, "up")
    with pytest.raises(ValueError, match="low <= high"):
        S.verdict(0.3, 0.2, 0.01, "higher")


R, C, INC, N = "reproduced", "contradicted", "inconclusive", "not measurable here"


@pytest.mark.parametrize("verdicts,expected", [
    ([], N), ([N], N), ([N, N], N),
    ([R], R), ([R, N], R), ([R, R, N], R), ([R, INC], R), ([R, INC, N], R),
    ([C], C), ([C, N], C), ([C, INC], C), ([C, C], C), ([INC, C, N], C),
    ([INC], INC), ([INC, N], INC), ([INC, INC], INC), ([R, C], INC), ([R, C, INC, N], INC),
])
def test_claim_verdict_truth_table(verdicts, expected):
    for perm in itertools.permutations(verdicts):
        assert S.claim_verdict(perm) == expected
    assert S.claim_verdict(iter(verdicts)) == expected


def test_claim_verdict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown verdict"):
        S.claim_verdict(["reproduced", "not reproduced"])


def test_claim_verdict_is_symmetric_in_the_two_directions():
    swap = {R: C, C: R, INC: INC, N: N}
    for size in range(4):
        for verdicts in itertools.product((R, C, INC, N), repeat=size):
            assert S.claim_verdict([swap[v] for v in verdicts]) == swap[S.claim_verdict(verdicts)]


def test_verdict_replicate_rule_downgrades_only_decided_metrics():
    assert S.verdict(0.1, 0.3, 0.01, "higher", replicates_ok=False) == "inconclusive"
    assert S.verdict(-0.3, -0.1, 0.01, "higher", replicates_ok=False) == "inconclusive"
    assert S.verdict(0.1, 0.3, 0.01, "higher", replicates_ok=True) == "reproduced"
    assert S.verdict(0.1, 0.3, 0.01, "higher", replicates_ok=None) == "reproduced"
    assert S.verdict(np.nan, 0.3, 0.01, "higher", replicates_ok=False) == "not measurable here"


# ------------------------------------------------------------------------------------ clusters and seeds


def test_p_floor():
    assert S.p_floor(999) == 1 / 1000 and S.p_floor(10_000) == 1 / 10_001
    with pytest.raises(ValueError, match="n_resamples"):
        S.p_floor(0)
    # the randomisation test never goes below 2 / (R + 1), twice the floor
    out = S.paired_randomization_test(np.zeros(40), np.ones(40), n_resamples=999, seed=1)
    assert out["p_value"] == pytest.approx(2 / 1000) and out["p_value"] >= S.p_floor(999)


def test_cluster_bootstrap_without_clusters_matches_scipy_bootstrap():
    rng = np.random.default_rng(31)
    x = rng.normal(0.1, 1.0, 60)
    out = S.cluster_bootstrap_ci(x, n_resamples=10_000, seed=2)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=10_000, rng=np.random.default_rng(3))
    lo, hi = ref.confidence_interval
    assert abs(out["low"] - lo) < 0.06 * (hi - lo) and abs(out["high"] - hi) < 0.06 * (hi - lo)
    assert out["effect"] == pytest.approx(x.mean()) and out["n_clusters"] == 60
    # one unit per cluster, by label, is the same resampling
    same = S.cluster_bootstrap_ci(x, [f"c{i:02d}" for i in range(60)], n_resamples=10_000, seed=2)
    assert same["low"] == out["low"] and same["high"] == out["high"]


def test_cluster_bootstrap_matches_a_brute_force_loop_and_covers_clustered_data():
    rng = np.random.default_rng(32)
    labels = np.repeat(np.arange(12), rng.integers(1, 6, 12))
    x = rng.normal(0, 1, 12)[labels] + rng.normal(0, 0.3, labels.size)
    out = S.cluster_bootstrap_ci(x, labels, n_resamples=20_000, seed=1)
    # brute force: draw 12 cluster labels, gather their units, average (an independent loop)
    draws = np.random.default_rng(5)
    reps = []
    for _ in range(20_000):
        chosen = draws.integers(0, 12, 12)
        reps.append(np.concatenate([x[labels == c] for c in chosen]).mean())
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert abs(out["low"] - lo) < 0.04 * (hi - lo) and abs(out["high"] - hi) < 0.04 * (hi - lo)
    # coverage on synthetic clustered data (true mean 0): the cluster bootstrap covers about 95 %, resampling
    # the correlated units one by one much less
    cover_cluster = cover_units = 0
    sims = 200
    for k in range(sims):
        lab = np.repeat(np.arange(25), 4)
        y = rng.normal(0, 1, 25)[lab] + rng.normal(0, 0.5, lab.size)
        c = S.cluster_bootstrap_ci(y, lab, n_resamples=1000, seed=k)
        u = S.cluster_bootstrap_ci(y, None, n_resamples=1000, seed=k)
        cover_cluster += c["low"] <= 0 <= c["high"]
        cover_units += u["low"] <= 0 <= u["high"]
    assert 0.88 <= cover_cluster / sims <= 0.99
    assert cover_units / sims < 0.75


def test_cluster_randomization_test_flips_whole_clusters():
    rng = np.random.default_rng(33)
    d = rng.normal(0.2, 1.0, 30)
    # one unit per cluster: exactly the paired randomisation test
    plain = S.paired_randomization_test(np.zeros(30), d, n_resamples=5000, seed=4)
    same = S.cluster_randomization_test(d, None, n_resamples=5000, seed=4)
    assert same["p_value"] == plain["p_value"] and same["effect"] == pytest.approx(d.mean())
    # 9 clusters: exact enumeration of the 2^9 cluster sign vectors, by brute force
    labels = np.repeat(np.arange(9), [1, 2, 3, 4, 3, 2, 5, 4, 6])
    x = rng.normal(0.3, 1.0, labels.size)
    out = S.cluster_randomization_test(x, labels, n_resamples=10_000, seed=0)
    assert out["exact"] and out["n_resamples"] == 2 ** 9 and out["n_clusters"] == 9
    observed = x.mean()
    null = [sum(s * x[labels == c].sum() for s, c in zip(signs, range(9))) / x.size
            for signs in itertools.product((1, -1), repeat=9)]
    ge = sum(v >= observed - 1e-12 for v in null) / len(null)
    le = sum(v <= observed + 1e-12 for v in null) / len(null)
    assert out["p_value"] == pytest.approx(min(1.0, 2 * min(ge, le)))
    with pytest.raises(ValueError, match="2 clusters"):
        S.cluster_randomization_test(x, np.zeros(labels.size))


def test_seed_weights_give_the_unbiased_variance_of_the_seed_mean():
    y = np.array([0.3, 1.1, -0.4])
    S_ = y.size
    draws = []
    for combo in itertools.product(range(S_), repeat=S_):       # every draw of 3 seeds with replacement
        draws.append(np.bincount(combo, minlength=S_))
    w = S.seed_weights(np.array(draws))
    reps = w @ y
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert reps.mean() == pytest.approx(y.mean())
    assert reps.var() == pytest.approx(np.var(y, ddof=1) / S_)   # not the divisor-S variance / S
    np.testing.assert_array_equal(S.seed_weights(np.ones((4, 1))), np.ones((4, 1)))


def test_seed_unit_bootstrap_one_seed_reduces_to_the_unit_and_cluster_bootstraps():
    rng = np.random.default_rng(34)
    a, b = rng.random(50), rng.random(50) + 0.05
    out = S.seed_unit_bootstrap([b[None, :]], [a], n_resamples=10_000, seed=1)
    ref = sps.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, method="percentile",
                        n_resamples=10_000, rng=np.random.default_rng(2))
    lo, hi = ref.confidence_interval
    assert abs(out["low"] - lo) < 0.06 * (hi - lo) and abs(out["high"] - hi) < 0.06 * (hi - lo)
    assert out["effect"] == pytest.approx(np.mean(b - a)) and out["seeds"] == [[1, 1]]
    labels = np.repeat(np.arange(10), 5)
    c1 = S.seed_unit_bootstrap([b], [a], [labels], n_resamples=10_000, seed=3)
    c2 = S.cluster_bootstrap_ci(b - a, labels, n_resamples=10_000, seed=4)
    width = c2["high"] - c2["low"]
    assert abs(c1["low"] - c2["low"]) < 0.06 * width and abs(c1["high"] - c2["high"]) < 0.06 * width
    level = S.seed_unit_bootstrap([b], None, n_resamples=2000, seed=3)
    assert level["effect"] == pytest.approx(b.mean()) and level["low"] < b.mean() < level["high"]


def _seeded_folds(rng, n_seeds, seed_sd, effect=0.0, clusters=20, size=3):
    """Two folds of clustered units scored by n_seeds training seeds of two arms; the true difference of the
    methods (expected over seeds and units) is ``effect``."""
    tr, co, cl = [], [], []
    for _ in range(2):
        lab = np.repeat(np.arange(clusters), size)
        base = rng.normal(0, 1, clusters)[lab] + rng.normal(0, 0.5, lab.size)
        tr.append(base + effect + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, 0.3, (n_seeds, lab.size)))
        co.append(base + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, 0.3, (n_seeds, lab.size)))
        cl.append(lab)
    return tr, co, cl


def test_seed_unit_bootstrap_covers_the_method_difference_with_seed_variance():
    # Simulation: each training seed shifts all of an arm's scores (a model a bit better or worse) and adds
    # per-unit noise. The interval must cover the method difference (0) about 95 % of the time; resampling the
    # seed-averaged units alone (the trained models held fixed) covers far less.
    rng = np.random.default_rng(35)
    sims, both, units_only = 150, 0, 0
    for k in range(sims):
        tr, co, cl = _seeded_folds(rng, 3, 0.05)
        out = S.seed_unit_bootstrap(tr, co, cl, n_resamples=1000, seed=k)
        both += out["low"] <= 0 <= out["high"]
        d = np.concatenate([t.mean(0) - c.mean(0) for t, c in zip(tr, co)])
        labels = np.concatenate([lab + 1000 * f for f, lab in enumerate(cl)])
        u = S.cluster_bootstrap_ci(d, labels, n_resamples=1000, seed=k)
        units_only += u["low"] <= 0 <= u["high"]
    assert 0.9 <= both / sims <= 0.995, both / sims
    assert units_only / sims < 0.85, units_only / sims


def test_seed_fold_bootstrap_with_one_seed_is_fold_bootstrap_and_resamples_seeds():
    rng = np.random.default_rng(36)
    data = [rng.normal(0.5, 1, 15), rng.normal(0.2, 1, 9)]
    base = [rng.normal(0, 1, 15), rng.normal(0, 1, 9)]
    t_fns = [[lambda idx, f=f: data[f][idx].mean()] for f in range(2)]
    c_fns = [[lambda idx, f=f: base[f][idx].mean()] for f in range(2)]
    out = S.seed_fold_bootstrap(t_fns, c_fns, [15, 9], n_resamples=500, seed=3)
    ref = S.fold_bootstrap([lambda idx, f=f: data[f][idx].mean() - base[f][idx].mean() for f in range(2)],
                           [15, 9], n_resamples=500, seed=3)
    for key in ("effect", "low", "high", "p_value"):
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    # two seeds per arm: the effect is the mean over folds of the seed-mean differences, and the interval
    # widens with the gap between seeds
    shift = {0: 0.0, 1: 0.4}
    t2 = [[lambda idx, f=f, s=s: data[f][idx].mean() + shift[s] for s in (0, 1)] for f in range(2)]
    out2 = S.seed_fold_bootstrap(t2, c_fns, [15, 9], n_resamples=500, seed=3)
    assert out2["effect"] == pytest.approx(ref["effect"] + 0.2)
    assert out2["per_seed"][0][0] == [pytest.approx(data[0].mean()), pytest.approx(data[0].mean() + 0.4)]
    assert out2["high"] - out2["low"] > ref["high"] - ref["low"]
    level = S.seed_fold_bootstrap(t2, None, [15, 9], n_resamples=200, seed=3)
    assert level["effect"] == pytest.approx(np.mean([d.mean() for d in data]) + 0.2)


@pytest.mark.parametrize("treatment,control,effect,passed,reason", [
    ([[1.0, 1.1], [0.9, 1.2]], [[0.5, 0.55], [0.4, 0.5]], 0.6, True, None),
    ([[1.0, 1.1], [0.9, 1.2]], [[0.5, 0.55], [0.4, 1.0]], 0.45, False, "sign"),    # one pair crosses 0
    ([[1.0, 1.5], [0.9, 1.4]], [[0.5, 0.55], [0.4, 0.5]], 0.45, False, "gap"),      # seeds of one arm 0.5 apart
    ([[1.0], [0.9]], [[0.5], [0.4]], 0.5, False, "two seeds"),                    # no seed gap to compare with
    ([[-1.0, -1.1]], [[0.1, 0.0]], -1.1, True, None),
])
def test_replicate_rule(treatment, control, effect, passed, reason):
    out = S.replicate_rule(treatment, control, effect)
    assert out["passed"] is passed
    assert out["replicates"] == sum(len(t) * len(c) for t, c in zip(treatment, control))
    gaps = [abs(x - y) for arm in (*treatment, *control) for i, x in enumerate(arm) for y in arm[i + 1:]]
    assert out["seed_gap"] == (pytest.approx(max(gaps)) if gaps else None)
    if reason is None:
        assert out["reason"] is None
    else:
        assert reason in out["reason"]
