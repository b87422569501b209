"""IsoScore, effective rank and I(W) against brute-force references and known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.decomposition import PCA

from dance_analysis.analysis import isotropy as I


def reference_isoscore(points: np.ndarray) -> float:
    """The published algorithm step by step (Rudman et al. 2022, reference implementation's structure)."""
    n = points.shape[1]
    pca_points = PCA(n_components=n).fit_transform(points).T          # step 2: reorient
    cov_diag = np.diag(np.cov(pca_points))                              # step 3: variance vector
    normalized = cov_diag * np.sqrt(n) / np.linalg.norm(cov_diag)       # step 4
    defect = np.linalg.norm(normalized - np.ones(n)) / np.sqrt(2 * (n - np.sqrt(n)))  # step 5
    return ((n - defect ** 2 * (n - np.sqrt(n))) ** 2 - n) / (n * (n - 1))           # step 6


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_isoscore_matches_reference(rng):
    for scale in ([1, 1, 1, 1, 1, 1], [5, 3, 1, 0.5, 0.1, 0.01], [1, 1, 1, 0.2, 0.2, 0.2]):
        x = rng.normal(size=(400, 6)) * np.asarray(scale)
        x = x @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 3.0   # rotate and shift: no effect on IsoScore
        assert I.isoscore(x) == pytest.approx(reference_isoscore(x), abs=1e-9)


def test_isoscore_known_cases(rng):
    assert I.isoscore(rng.normal(size=(20000, 16))) > 0.97
    rank1 = np.outer(rng.normal(size=300), rng.normal(size=16)) + 1.0
    assert I.isoscore(rank1) == pytest.approx(0.0, abs=1e-6)
    # k equal-variance directions out of n: IsoScore = (k - 1) / (n - 1) exactly
    for k in (1, 4, 10):
        v = np.zeros(16)
        v[:k] = 2.0
        assert I.isoscore_from_variances(v) == pytest.approx((k - 1) / 15, abs=1e-12)
    assert I.isoscore_from_variances(np.ones(8)) == pytest.approx(1.0)


def test_effective_rank_matches_svd(rng):
    x = rng.normal(size=(200, 12)) * np.linspace(0.1, 3, 12) + 1.0
    for center in (True, False):
        a = x - x.mean(0) if center else x
        s = np.linalg.svd(a, compute_uv=False)
        p = s / s.sum()
        ref = np.exp(-np.sum(p * np.log(p)))
        assert I.effective_rank(x, center=center) == pytest.approx(ref, rel=1e-9)


def test_effective_rank_known_cases(rng):
    assert I.effective_rank(rng.normal(size=(20000, 32))) > 0.97 * 32
    assert I.effective_rank(np.outer(rng.normal(size=100), rng.normal(size=32))) == pytest.approx(1.0, abs=1e-6)
    basis = np.linalg.qr(rng.normal(size=(32, 5)))[0]
    # 5 orthogonal directions with equal spread: exactly 5 (columns of a scaled Hadamard-like design)
    coef = np.kron(np.eye(5), np.array([[1.0], [-1.0]]))            # 10 points, centred, equal singular values
    assert I.effective_rank(coef @ basis.T) == pytest.approx(5.0, abs=1e-9)


def reference_partition_ratio(w: np.ndarray) -> float:
    """I(W) of Mu & Viswanath (ICLR 2018): C = the d eigenvectors of W^T W (one direction each), each oriented
    towards the sum of the rows (c . sum_i w_i >= 0), Z(c) = sum_i exp(c . w_i); a plain loop per direction."""
    _, vecs = np.linalg.eigh(w.T @ w)
    total = w.sum(axis=0)
    logz = []
    for c in vecs.T:
        if c @ total < 0:
            c = -c
        logz.append(logsumexp([c @ row for row in w]))
    return float(np.exp(min(logz) - max(logz)))


def test_partition_ratio_matches_loops(rng):
    w = rng.normal(size=(150, 5)) * [2, 1, 1, 0.5, 0.3] + 0.4
    assert I.partition_ratio(w) == pytest.approx(reference_partition_ratio(w), rel=1e-9)
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    assert I.partition_ratio(w, normalize=True) == pytest.approx(reference_partition_ratio(u), rel=1e-9)
    big = w * 400.0                                   # exp overflows without log-sum-exp
    assert I.partition_ratio(big) == pytest.approx(reference_partition_ratio(big), rel=1e-6)


def test_partition_ratio_known_cases(rng):
    assert I.partition_ratio(rng.normal(size=(20000, 16)) * 0.2) > 0.95
    # dominant common direction mu (|mu| = 12): Z is ~ n e^12 along mu (oriented towards the mean) and ~ n across,
    # so I(W) ~ e^-12 = 6.1e-6 with the d eigenvectors (the former 2d-direction variant gave ~ e^-24 < 1e-6)
    shifted = rng.normal(size=(2000, 16)) * 0.2 + 3.0
    assert I.partition_ratio(shifted) < 1e-4
    assert I.partition_ratio(shifted) == pytest.approx(np.exp(-12.0), rel=0.05)


def test_partition_ratio_uses_d_oriented_directions(rng):
    w = rng.normal(size=(300, 6)) * [1.5, 1, 1, 0.7, 0.5, 0.3] + 0.8
    _, vecs = np.linalg.eigh(w.T @ w)
    z_plus = np.array([logsumexp(w @ c) for c in vecs.T])
    z_minus = np.array([logsumexp(-(w @ c)) for c in vecs.T])
    both = float(np.exp(min(z_plus.min(), z_minus.min()) - max(z_plus.max(), z_minus.max())))
    value = I.partition_ratio(w)
    assert value > both * 1.5                         # not the 2d-direction (both signs) variant
    # each eigenvector contributes Z of exactly one sign: the one towards the rows' sum
    oriented = np.where(vecs.T @ w.sum(axis=0) >= 0, z_plus, z_minus)
    assert value == pytest.approx(float(np.exp(oriented.min() - oriented.max())), rel=1e-10)
    # the orientation rule rotates with the data: I(W R) = I(W) for an orthogonal R
    rot = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    assert I.partition_ratio(w @ rot) == pytest.approx(value, rel=1e-9)
    # exactly centred data (sum of rows = 0 up to round-off): deterministic fallback, independent of row order
    centred = np.vstack([w - w.mean(0), -(w - w.mean(0))])
    first = I.partition_ratio(centred)
    assert 0 < first <= 1 and I.partition_ratio(centred[::-1]) == pytest.approx(first, rel=1e-9)


def test_isotropy_stats_equals_separate_calls(rng):
    x = rng.normal(size=(500, 10)) * np.linspace(0.2, 2, 10) + 0.7
    s = I.isotropy_stats(x)
    assert s["isoscore"] == pytest.approx(I.isoscore(x), abs=1e-12)
    assert s["effective_rank"] == pytest.approx(I.effective_rank(x), rel=1e-12)
    assert s["partition_ratio"] == pytest.approx(I.partition_ratio(x), rel=1e-7)


def test_float32_input_agrees_with_float64(rng):
    x = (rng.normal(size=(3000, 24)) * np.linspace(0.1, 2, 24) + 0.5) * 3
    x32 = x.astype(np.float32)
    assert I.partition_ratio(x32) == pytest.approx(reference_partition_ratio(x32.astype(np.float64)), rel=1e-4)
    assert I.isoscore(x32) == pytest.approx(I.isoscore(x32.astype(np.float64)), abs=1e-6)
    assert I.effective_rank(x32) == pytest.approx(I.effective_rank(x32.astype(np.float64)), rel=1e-6)
