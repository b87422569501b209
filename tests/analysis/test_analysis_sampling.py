"""Negative-sampling distribution statistics against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from dance_analysis.analysis import sampling as S


def test_softmax_stats_matches_scipy():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(7, 12)) * 3
    mask = rng.random((7, 12)) < 0.2
    for tau in (1.0, 0.05, 20.0):
        out = S.softmax_stats(scores, mask, temperature=tau)
        p = softmax(scores / tau, axis=1)
        np.testing.assert_allclose(out["entropy"], entropy(p, axis=1), atol=1e-10)
        np.testing.assert_allclose(out["entropy_norm"], entropy(p, axis=1) / np.log(12), atol=1e-10)
        np.testing.assert_allclose(out["max_prob"], p.max(axis=1), atol=1e-12)
        np.testing.assert_allclose(out["positive_mass"], (p * mask).sum(axis=1), atol=1e-12)
        assert out["entropy_norm_mean"] == pytest.approx(np.mean(entropy(p, axis=1) / np.log(12)))
        assert out["positive_mass_mean"] == pytest.approx(np.mean((p * mask).sum(axis=1)))


def test_softmax_stats_padding_and_known_cases():
    s = np.array([[1.0, 1.0, 1.0, 1.0],          # uniform: normalised entropy 1
                  [1000.0, 0.0, -np.inf, -np.inf],  # nearly one-hot, K = 2
                  [2.0, 2.0, -np.inf, -np.inf],   # uniform over 2 finite candidates
                  [-np.inf] * 4])                 # no candidate
    out = S.softmax_stats(s, temperature=1.0)
    assert out["entropy_norm"][0] == pytest.approx(1.0) and out["max_prob"][0] == pytest.approx(0.25)
    assert out["entropy"][1] == pytest.approx(0.0, abs=1e-12) and out["max_prob"][1] == pytest.approx(1.0)
    assert out["entropy_norm"][2] == pytest.approx(1.0) and out["k"].tolist() == [4, 2, 2, 0]
    assert np.isnan(out["entropy"][3]) and np.isnan(out["max_prob"][3])
    assert out["entropy_norm_mean"] == pytest.approx((1 + 0 + 1) / 3, abs=1e-12)
    with pytest.raises(ValueError, match=r"row\(s\) 1"):
        S.softmax_stats(np.array([[0.0, 1.0], [np.nan, 0.0]]))


def test_gini_matches_mean_absolute_difference():
    rng = np.random.default_rng(4)
    c = rng.poisson(3, size=57)
    ref = np.abs(c[:, None] - c[None, :]).sum() / (2 * len(c) ** 2 * c.mean())
    assert S.gini(c) == pytest.approx(ref, abs=1e-12)
    assert S.gini(np.full(10, 4)) == pytest.approx(0.0)
    one = np.zeros(10)
    one[3] = 9
    assert S.gini(one) == pytest.approx(0.9)      # (n - 1) / n
    assert np.isnan(S.gini(np.zeros(5)))


def test_lorenz_curve():
    x, y = S.lorenz_curve(np.full(8, 2), n_points=11)
    np.testing.assert_allclose(y, x, atol=1e-12)
    x, y = S.lorenz_curve([0, 0, 0, 10], n_points=5)
    np.testing.assert_allclose(y, [0, 0, 0, 0, 1.0])
    x, y = S.lorenz_curve([1, 3], n_points=3)       # joints (0,0), (.5,.25), (1,1)
    np.testing.assert_allclose(y, [0, 0.25, 1.0])
    # area between the diagonal and the curve is G / 2 (exact joints)
    c = np.random.default_rng(5).poisson(2, size=40)
    x, y = S.lorenz_curve(c, n_points=41)
    area = np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)
    assert 1 - 2 * area == pytest.approx(S.gini(c), abs=1e-12)


def test_count_distribution_stats():
    c = np.array([0, 1, 1, 2, 0, 6])
    out = S.count_distribution_stats(c)
    p = c / c.sum()
    assert out["entropy"] == pytest.approx(entropy(p))
    assert out["entropy_norm"] == pytest.approx(entropy(p) / np.log(6))
    assert out["never_share"] == pytest.approx(2 / 6) and out["max_share"] == pytest.approx(0.6)
    assert out["gini"] == pytest.approx(S.gini(c)) and out["n"] == 6 and out["total"] == 10
    uniform = S.count_distribution_stats(np.full(50, 3))
    assert uniform["entropy_norm"] == pytest.approx(1.0) and uniform["gini"] == pytest.approx(0.0)
    ance = S.count_distribution_stats(np.zeros(20, dtype=np.int64))
    assert ance["never_share"] == 1.0 and np.isnan(ance["entropy_norm"]) and np.isnan(ance["gini"])
    with pytest.raises(ValueError, match="non-negative"):
        S.count_distribution_stats([1, -2])
