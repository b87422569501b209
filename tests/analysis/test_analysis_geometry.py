"""Geometry: every statistic against a brute-force numpy computation and against known cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from dance_analysis.analysis import geometry as G


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_mean_pairwise_cosine_matches_double_loop(rng):
    x = rng.normal(size=(25, 7)) + 0.5
    vals = [_cos(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j]
    assert G.mean_pairwise_cosine(x) == pytest.approx(np.mean(vals), abs=1e-12)
    assert G.mean_pairwise_cosine(x.astype(np.float32)) == pytest.approx(np.mean(vals), abs=1e-6)


def test_blocked_passes_agree_with_one_block(rng, monkeypatch):
    x = rng.normal(size=(1000, 5)) + 1.0
    whole = (G.mean_pairwise_cosine(x), G.covariance(x)[1], G.norm_stats(x)["mean"])
    import dance_analysis.analysis._common as C
    monkeypatch.setattr(G, "row_blocks", lambda n, block=7: C.row_blocks(n, 7))
    assert G.mean_pairwise_cosine(x) == pytest.approx(whole[0], abs=1e-12)
    np.testing.assert_allclose(G.covariance(x)[1], whole[1], atol=1e-12)
    assert G.norm_stats(x)["mean"] == pytest.approx(whole[2])


def test_mean_pairwise_cosine_known_cases(rng):
    iso = rng.normal(size=(20000, 64))
    assert abs(G.mean_pairwise_cosine(iso)) < 2e-3
    v = rng.normal(size=8)
    collapsed = np.outer(rng.uniform(0.5, 2.0, size=50), v)   # same direction, different norms
    assert G.mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-12)
    assert G.mean_pairwise_cosine(np.stack([v, -v])) == pytest.approx(-1.0)


def test_zero_rows_are_left_out(rng):
    x = rng.normal(size=(12, 4))
    with_zero = np.vstack([x[:5], np.zeros((3, 4)), x[5:]])
    assert G.mean_pairwise_cosine(with_zero) == pytest.approx(G.mean_pairwise_cosine(x), abs=1e-12)
    with pytest.warns(RuntimeWarning, match="needs 2"):
        assert np.isnan(G.mean_pairwise_cosine(np.vstack([x[:1], np.zeros((4, 4))])))
    d = rng.normal(size=(9, 4))
    assert G.cross_mean_cosine(with_zero, d) == pytest.approx(G.cross_mean_cosine(x, d), abs=1e-12)


def test_cross_mean_cosine_matches_double_loop(rng):
    q = rng.normal(size=(11, 6)) + 0.3
    d = rng.normal(size=(17, 6))
    ref = np.mean([_cos(a, b) for a in q for b in d])
    assert G.cross_mean_cosine(q, d) == pytest.approx(ref, abs=1e-12)


def test_covariance_and_spectrum_match_numpy_and_sklearn(rng):
    x = rng.normal(size=(300, 9)) @ rng.normal(size=(9, 9)) + 5.0
    mean, c = G.covariance(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(c, np.cov(x, rowvar=False), atol=1e-10)
    _, m = G.covariance(x, center=False)
    np.testing.assert_allclose(m, x.T @ x / len(x), atol=1e-9)
    spec = G.pca_spectrum(x.astype(np.float32))
    ref = PCA().fit(x).explained_variance_ratio_
    np.testing.assert_allclose(spec["ratio"], ref, atol=1e-6)
    np.testing.assert_allclose(spec["cumulative"], np.cumsum(ref), atol=1e-6)
    ve = G.variance_explained(spec, ks=(1, 3, 100))
    assert ve["pc1"] == pytest.approx(ref[0], abs=1e-6)
    assert ve["pc3"] == pytest.approx(ref[:3].sum(), abs=1e-6)
    assert ve["pc100"] == pytest.approx(1.0)
    assert G.variance_explained(x, ks=(2,))["pc2"] == pytest.approx(ref[:2].sum(), abs=1e-9)


def test_spectrum_known_cases(rng):
    rank1 = np.outer(rng.normal(size=500), rng.normal(size=16))
    assert G.variance_explained(rank1, ks=(1,))["pc1"] == pytest.approx(1.0, abs=1e-9)
    iso = rng.normal(size=(20000, 16))
    ratio = G.pca_spectrum(iso)["ratio"]
    assert np.all(np.abs(ratio - 1 / 16) < 0.01)


def test_norm_stats_and_mean_vector_ratio(rng):
    x = rng.normal(size=(101, 5)) * 3
    n = np.linalg.norm(x, axis=1)
    s = G.norm_stats(x, quantiles=(0.05, 0.5, 0.995))
    assert s["mean"] == pytest.approx(n.mean()) and s["std"] == pytest.approx(n.std())
    assert s["min"] == pytest.approx(n.min()) and s["max"] == pytest.approx(n.max())
    assert s["q05"] == pytest.approx(np.quantile(n, 0.05)) and s["q50"] == pytest.approx(np.median(n))
    assert s["q99.5"] == pytest.approx(np.quantile(n, 0.995))
    assert G.mean_vector_norm_ratio(x) == pytest.approx(np.linalg.norm(x.mean(0)) / n.mean())
    v = rng.normal(size=5)
    assert G.mean_vector_norm_ratio(np.outer([1, 2, 3], v)) == pytest.approx(1.0)
    assert G.mean_vector_norm_ratio(np.stack([v, -v])) == pytest.approx(0.0, abs=1e-12)


def test_centroid_distance(rng):
    q = rng.normal(size=(20, 4)) + 2
    d = rng.normal(size=(30, 4))
    assert G.centroid_distance(q, d, normalize=False) == pytest.approx(np.linalg.norm(q.mean(0) - d.mean(0)))
    uq = q / np.linalg.norm(q, axis=1, keepdims=True)
    ud = d / np.linalg.norm(d, axis=1, keepdims=True)
    assert G.centroid_distance(q, d) == pytest.approx(np.linalg.norm(uq.mean(0) - ud.mean(0)))
    assert G.centroid_distance(q, q * 7.0) == pytest.approx(0.0, abs=1e-12)


def test_negatives_to_pairs():
    neg = np.array([[3, -1, 5], [-1, -1, -1], [0, 2, -1]])
    np.testing.assert_array_equal(G.negatives_to_pairs(neg), [[0, 3], [0, 5], [2, 0], [2, 2]])
    np.testing.assert_array_equal(G.negatives_to_pairs(neg, rows=[7, 8, 9]), [[7, 3], [7, 5], [9, 0], [9, 2]])


def test_query_document_geometry_matches_loops(rng):
    q = rng.normal(size=(6, 5))
    d = rng.normal(size=(40, 5))
    pos = np.array([[0, 1], [0, 2], [1, 3], [3, 4], [5, 5]])
    neg = np.array([[0, 10], [1, 11], [1, 12], [1, 13], [2, 14]])
    out = G.query_document_geometry(q, d, pos, neg, n_random=4, seed=3, bins=10)
    for group, pairs in (("positive", pos), ("negative", neg)):
        per_q_cos, per_q_dist = {}, {}
        for i, j in pairs:
            per_q_cos.setdefault(i, []).append(_cos(q[i], d[j]))
            per_q_dist.setdefault(i, []).append(float(np.linalg.norm(q[i] - d[j])))
        assert out[group]["cosine_mean"] == pytest.approx(np.mean([np.mean(v) for v in per_q_cos.values()]))
        assert out[group]["distance_mean"] == pytest.approx(np.mean([np.mean(v) for v in per_q_dist.values()]))
        assert out[group]["cosine_pair_mean"] == pytest.approx(np.mean(sum(per_q_cos.values(), [])))
        assert out[group]["n_pairs"] == len(pairs) and out[group]["n_queries"] == len(per_q_cos)
        allcos = sum(per_q_cos.values(), [])
        np.testing.assert_array_equal(out["histogram"][group], np.histogram(allcos, bins=np.linspace(-1, 1, 11))[0])
    assert out["random"]["n_pairs"] == 4 * 4 and out["random"]["n_queries"] == 4  # queries 0, 1, 3, 5
    assert out["histogram"]["random"].sum() == 16
    again = G.query_document_geometry(q, d, pos, neg, n_random=4, seed=3, bins=10)
    assert again["random"] == out["random"]
    other = G.query_document_geometry(q, d, pos, neg, n_random=4, seed=4, bins=10)
    assert other["random"]["cosine_mean"] != out["random"]["cosine_mean"]


def test_query_document_geometry_known_case(rng):
    d = rng.normal(size=(500, 16))
    q = d[:50] * 2.0                       # each query points exactly at its positive
    pos = np.stack([np.arange(50), np.arange(50)], 1)
    out = G.query_document_geometry(q, d, pos, None, n_random=20, seed=0)
    assert out["positive"]["cosine_mean"] == pytest.approx(1.0)
    assert out["negative"]["n_pairs"] == 0 and np.isnan(out["negative"]["cosine_mean"])
    assert abs(out["random"]["cosine_mean"]) < 0.05
    assert out["histogram"]["positive"][-1] == 50


def test_bad_inputs_raise(rng):
    q = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="out of range"):
        G.query_document_geometry(q, q, [[0, 9]], None)
    with pytest.raises(ValueError, match="dimension"):
        G.cross_mean_cosine(q, rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="2-D"):
        G.mean_pairwise_cosine(np.ones(5))
