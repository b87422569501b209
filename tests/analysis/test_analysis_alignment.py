"""Alignment and uniformity (Wang & Isola 2020) against double loops and known limits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import gammaln, ive

from dance_analysis.analysis import align_uniform as AL


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_uniformity(x, t):
    u = _unit(x)
    vals = [np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i in range(len(u)) for j in range(i + 1, len(u))]
    return float(np.log(np.mean(vals)))


def sphere_uniformity_limit(d: int, t: float) -> float:
    """log E exp(-t ||u - v||^2) for u, v independent uniform on S^{d-1}.

    s = u.v has E exp(a s) = Gamma(d/2) (a/2)^{1-d/2} I_{d/2-1}(a); with a = 2t the value is
    -2t + log E exp(2t s).
    """
    a, nu = 2.0 * t, d / 2.0 - 1.0
    log_mgf = gammaln(nu + 1) - nu * np.log(a / 2) + np.log(ive(nu, a)) + a
    return -2.0 * t + float(log_mgf)


def test_l2_normalize(rng):
    x = rng.normal(size=(5, 3))
    x[2] = 0
    u = AL.l2_normalize(x, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(u[[0, 1, 3, 4]], axis=1), 1.0)
    np.testing.assert_array_equal(u[2], 0.0)


def test_alignment_matches_loop(rng):
    q = rng.normal(size=(10, 6))
    d = rng.normal(size=(20, 6))
    pairs = np.array([[0, 1], [0, 5], [3, 3], [9, 19]])
    for alpha in (2.0, 1.0):
        ref = np.mean([np.linalg.norm(_unit(q)[i] - _unit(d)[j]) ** alpha for i, j in pairs])
        assert AL.alignment(q, d, pairs, alpha=alpha) == pytest.approx(ref, rel=1e-12)
    assert AL.alignment(q, q * 3.0, np.stack([np.arange(10)] * 2, 1)) == pytest.approx(0.0, abs=1e-12)
    assert AL.alignment(q, -q, np.stack([np.arange(10)] * 2, 1)) == pytest.approx(4.0)
    assert np.isnan(AL.alignment(q, d, np.zeros((0, 2), int)))


@pytest.mark.parametrize("t", [2.0, 0.5, 30.0])
def test_uniformity_exact_matches_double_loop(rng, t):
    x = rng.normal(size=(40, 5)) + 0.3
    out = AL.uniformity(x, t=t)
    assert out["method"] == "exact" and out["pairs"] == 40 * 39 // 2 and out["t"] == t
    assert out["value"] == pytest.approx(brute_uniformity(x, t), abs=1e-5)


def test_uniformity_exact_blocks_cover_all_pairs(rng):
    x = rng.normal(size=(2500, 4))          # several 1024-row blocks
    sub = x[:2500]
    u = _unit(sub)
    s = u @ u.T
    iu = np.triu_indices(len(u), 1)
    ref = np.log(np.mean(np.exp(-2.0 * (2 - 2 * s[iu]))))
    assert AL.uniformity(x)["value"] == pytest.approx(ref, abs=1e-5)


def test_uniformity_sampled_close_to_exact_and_seeded(rng):
    x = rng.normal(size=(3000, 8)) + 0.5
    exact = AL.uniformity(x)
    sampled = AL.uniformity(x, max_exact=1000, n_pairs=200_000, seed=5)
    assert sampled["method"] == "sampled" and sampled["pairs"] == 200_000
    assert sampled["value"] == pytest.approx(exact["value"], abs=0.01)
    assert AL.uniformity(x, max_exact=1000, n_pairs=200_000, seed=5)["value"] == sampled["value"]
    assert AL.uniformity(x, max_exact=1000, n_pairs=200_000, seed=6)["value"] != sampled["value"]


def test_uniformity_known_cases(rng):
    v = rng.normal(size=16)
    collapsed = np.outer(rng.uniform(1, 3, size=100), v)
    assert AL.uniformity(collapsed)["value"] == pytest.approx(0.0, abs=1e-6)
    d = 128
    sphere = rng.normal(size=(6000, d))
    got = AL.uniformity(sphere, t=2.0)["value"]
    assert got == pytest.approx(sphere_uniformity_limit(d, 2.0), abs=5e-3)
    assert sphere_uniformity_limit(d, 2.0) == pytest.approx(-4 + 8 / d, abs=2e-3)   # high-d approximation
    two = np.array([[1.0, 0.0], [-1.0, 0.0]])     # antipodal pair: ||u - v||^2 = 4
    assert AL.uniformity(two, t=2.0)["value"] == pytest.approx(-8.0)


def test_uniformity_zero_rows_and_union(rng):
    q = rng.normal(size=(30, 6))
    d = rng.normal(size=(50, 6))
    withzero = np.vstack([q, np.zeros((2, 6))])
    out = AL.uniformity(withzero)
    assert out["excluded_zero"] == 2 and out["n"] == 30
    assert out["value"] == pytest.approx(AL.uniformity(q)["value"], abs=1e-9)
    sides = AL.uniformity_sides(q, d)
    assert sides["both"]["value"] == pytest.approx(brute_uniformity(np.vstack([q, d]), 2.0), abs=1e-5)
    assert sides["queries"]["value"] == pytest.approx(brute_uniformity(q, 2.0), abs=1e-5)
    assert sides["documents"]["value"] == pytest.approx(brute_uniformity(d, 2.0), abs=1e-5)
    # sampled union (no copy) agrees with sampling the stacked matrix
    a = AL.uniformity([q, d], max_exact=10, n_pairs=50_000, seed=1)["value"]
    b = AL.uniformity(np.vstack([q, d]), max_exact=10, n_pairs=50_000, seed=1)["value"]
    assert a == pytest.approx(b, abs=1e-12)
    with pytest.warns(RuntimeWarning, match="needs 2"):
        assert np.isnan(AL.uniformity(q[:1])["value"])
