"""Numerics of the embedding metrics: zero vectors, and float16 against float32 embeddings.

Zero vectors (rows of norm 0) have no direction: the cosine-based metrics leave them out (never cosine 0), count
them (``zero_norm_rows``, ``excluded_zero``, ``alignment(..., return_excluded=True)``) and return NaN with a
RuntimeWarning only when nothing is left to average. Checked against brute-force numpy (all pairs, float64).

float16 embeddings (e.g. ``mining.embeddings_dtype: float16``) give the metrics of the float32 embeddings they were
rounded from, within FP16_TOLERANCE (the README's "Failure behaviour" states the same numbers).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dance_analysis.analysis import align_uniform as AU
from dance_analysis.analysis import geometry as G
from dance_analysis.analysis import isotropy as I
from dance_analysis.embeddings import Embeddings
from dance_analysis.index import search
from dance_analysis.metrics import evaluate


def _units(x: np.ndarray) -> np.ndarray:
    """Brute force: the non-zero rows of ``x`` (as float64), each divided by its norm."""
    rows = [r / np.linalg.norm(r) for r in np.asarray(x, dtype=np.float64) if np.linalg.norm(r) > 0]
    return np.array(rows)


def _with_zero_rows(seed: int = 3):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(40, 8)) + 0.5
    d = rng.normal(size=(60, 8)) - 0.2
    q[[0, 7, 39]] = 0.0
    d[[5, 6]] = 0.0
    return q, d


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_zero_vectors_are_left_out_and_counted(dtype):
    q64, d64 = _with_zero_rows()
    q, d = q64.astype(dtype), d64.astype(dtype)
    uq, ud = _units(q), _units(d)           # brute force from the same (rounded) values
    tol = 1e-12 if dtype == np.float64 else 2e-6
    pairs = np.array([[0, 1], [1, 5], [2, 2], [3, 3], [7, 6], [4, 10], [5, 11]])   # 3 pairs touch a zero row
    usable = [(i, j) for i, j in pairs if np.any(q[i]) and np.any(d[j])]
    nz_q = np.flatnonzero(np.any(q != 0, axis=1))
    nz_d = np.flatnonzero(np.any(d != 0, axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # rows are left: no warning, no NaN
        assert G.zero_norm_rows(q) == 3 and G.zero_norm_rows(d) == 2
        m = len(uq)
        cos = uq @ uq.T
        ref = (cos.sum() - np.trace(cos)) / (m * (m - 1))
        assert G.mean_pairwise_cosine(q) == pytest.approx(ref, abs=tol)
        assert G.mean_pairwise_cosine(q) == pytest.approx(G.mean_pairwise_cosine(q[nz_q]), abs=tol)
        assert G.cross_mean_cosine(q, d) == pytest.approx((uq @ ud.T).mean(), abs=tol)
        assert G.centroid_distance(q, d) == pytest.approx(np.linalg.norm(uq.mean(0) - ud.mean(0)), abs=tol)

        value, excluded = AU.alignment(q, d, pairs, return_excluded=True)
        ref = np.mean([np.sum((q[i] / np.linalg.norm(q[i].astype(np.float64))
                               - d[j] / np.linalg.norm(d[j].astype(np.float64))) ** 2) for i, j in usable])
        assert excluded == 3 and value == pytest.approx(ref, abs=tol)

        uni = AU.uniformity(q, t=2.0)
        iu = np.triu_indices(m, 1)
        sq = np.sum((uq[:, None, :] - uq[None, :, :]) ** 2, axis=-1)[iu]
        assert uni["excluded_zero"] == 3 and uni["n"] == m
        assert uni["value"] == pytest.approx(np.log(np.mean(np.exp(-2.0 * sq))), abs=1e-6)  # float32 inside

        second = uq.T @ uq / m
        _, vecs = np.linalg.eigh(second)
        signs = np.sign(vecs.T @ uq.sum(axis=0))  # each eigenvector pointed towards the rows' sum (one sign each)
        z = np.exp(uq @ (vecs * np.where(signs == 0, 1.0, signs))).sum(axis=0)
        assert I.partition_ratio(q, normalize=True) == pytest.approx(z.min() / z.max(), rel=10 * tol)
        assert I.partition_ratio(q, normalize=True) == pytest.approx(I.partition_ratio(q[nz_q], normalize=True),
                                                                     rel=10 * tol)
        # Spread statistics keep zero rows as points at the origin (finite, equal to numpy on all rows).
        assert I.isoscore(d) == pytest.approx(
            I.isoscore_from_variances(np.linalg.eigvalsh(np.cov(d.astype(np.float64), rowvar=False))), abs=1e-5)
        assert np.isfinite(I.effective_rank(d)) and len(nz_d) == 58


def test_nothing_left_to_average_is_nan_with_a_warning():
    q, d = _with_zero_rows()
    zeros = np.zeros((5, 8))
    one = np.vstack([zeros, q[1:2]])
    calls = {
        "mean_pairwise_cosine": lambda: G.mean_pairwise_cosine(one),
        "cross_mean_cosine": lambda: G.cross_mean_cosine(zeros, d),
        "centroid_distance": lambda: G.centroid_distance(q, zeros),
        "alignment": lambda: AU.alignment(q, d, np.array([[0, 1], [7, 2]])),   # q rows 0 and 7 are zero
        "uniformity": lambda: AU.uniformity(one)["value"],
        "partition_ratio": lambda: I.partition_ratio(zeros, normalize=True),
    }
    for name, call in calls.items():
        with pytest.warns(RuntimeWarning, match="non-zero norm|zero-norm"):
            assert np.isnan(call()), name


# ---------------------------------------------------------------------------------------------- float16

#: metric -> (kind, tolerance): "abs" |fp16 - fp32| <= tol, "rel" |fp16 - fp32| <= tol * |fp32|.
FP16_TOLERANCE = {
    "mean_cosine.queries": ("abs", 1e-4), "mean_cosine.documents": ("abs", 1e-4),
    "cross_mean_cosine": ("abs", 1e-4), "centroid_distance": ("abs", 1e-4),
    "centroid_distance_raw": ("rel", 1e-4), "mean_vector_norm_ratio": ("abs", 1e-4), "norm_mean": ("rel", 1e-4),
    "pc1": ("abs", 1e-4), "pc10": ("abs", 1e-4),
    "isoscore": ("abs", 1e-4), "effective_rank": ("rel", 1e-4),
    "partition_ratio": ("rel", 1e-3), "partition_ratio_normalized": ("rel", 1e-4),
    "alignment": ("abs", 1e-4), "uniformity.queries": ("abs", 1e-4), "uniformity.documents": ("abs", 1e-4),
    "uniformity.both": ("abs", 1e-4), "positive_cosine": ("abs", 1e-4), "negative_cosine": ("abs", 1e-4),
    "MRR@10": ("abs", 0.01), "nDCG@10": ("abs", 0.01), "R@100": ("abs", 0.01),
}


def _structured(seed: int = 11, nq: int = 300, nd: int = 3000, dim: int = 64):
    """Anisotropic embeddings with topics: a common direction, 30 topic centres, noise, norms around 10;
    query i is a noisy copy of its positive document (every tenth query has a second positive)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    centres = rng.normal(size=(30, dim)) * 0.8
    topic = rng.integers(0, 30, size=nd)
    d = common + centres[topic] + 0.6 * rng.normal(size=(nd, dim))
    pos = rng.integers(0, nd, size=nq)
    q = 0.7 * common + centres[topic[pos]] + 0.5 * (d[pos] - common - centres[topic[pos]]) \
        + 0.7 * rng.normal(size=(nq, dim))
    scale = lambda x: x * (10.0 / np.linalg.norm(x, axis=1, keepdims=True).mean())  # noqa: E731
    pairs = [(i, int(p)) for i, p in enumerate(pos)] + [(i, int((pos[i] + 1) % nd)) for i in range(0, nq, 10)]
    return scale(q).astype(np.float32), scale(d).astype(np.float32), np.array(pairs)


def _metrics(q: np.ndarray, d: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """The report's embedding metrics (analysis functions) and the q2d ranking metrics (search + evaluate)."""
    qids = np.array([f"q{i}" for i in range(len(q))])
    dids = np.array([f"d{j}" for j in range(len(d))])
    qrels: dict[str, dict[str, int]] = {}
    for i, j in pairs:
        qrels.setdefault(qids[i], {})[dids[j]] = 1
    rankings = search(q, d, 100, query_ids=qids, doc_ids=dids, device="cpu")
    ranking = evaluate(rankings, qrels, measures=["MRR@10", "nDCG@10", "R@100"])
    negatives = np.asarray(rankings.indices[:, 1:6])
    geo = G.query_document_geometry(q, d, pairs, G.negatives_to_pairs(negatives), n_random=5, seed=0)
    spectrum = G.pca_spectrum(d)
    iso = I.isotropy_stats(d)
    uni = AU.uniformity_sides(q, d, t=2.0, seed=0)
    return {
        "mean_cosine.queries": G.mean_pairwise_cosine(q), "mean_cosine.documents": G.mean_pairwise_cosine(d),
        "cross_mean_cosine": G.cross_mean_cosine(q, d), "centroid_distance": G.centroid_distance(q, d),
        "centroid_distance_raw": G.centroid_distance(q, d, normalize=False),
        "mean_vector_norm_ratio": G.mean_vector_norm_ratio(d), "norm_mean": G.norm_stats(d)["mean"],
        **G.variance_explained(spectrum, ks=(1, 10)),
        "isoscore": iso["isoscore"], "effective_rank": iso["effective_rank"],
        "partition_ratio": iso["partition_ratio"],
        "partition_ratio_normalized": I.partition_ratio(d, normalize=True),
        "alignment": AU.alignment(q, d, pairs),
        **{f"uniformity.{side}": uni[side]["value"] for side in ("queries", "documents", "both")},
        "positive_cosine": geo["positive"]["cosine_mean"], "negative_cosine": geo["negative"]["cosine_mean"],
        **{k: ranking[k] for k in ("MRR@10", "nDCG@10", "R@100")},
    }


def test_float16_embeddings_give_the_float32_metrics_within_tolerance(tmp_path):
    """Saved as float16 and as float32 embedding folders, loaded back (memory-mapped), the metrics agree within
    FP16_TOLERANCE: cosine, centroid, PCA share, IsoScore, uniformity and alignment metrics 1e-4 absolute, norm
    and effective-rank metrics 1e-4 relative, I(W) of the raw vectors 1e-3 relative (norms of ~10 enter the
    exponent), ranking metrics (MRR@10, nDCG@10, R@100 over 300 queries) 0.01 absolute (near-ties may swap).
    Measured here: at most 3e-5 absolute (negative cosine: a few mined negatives change), rankings identical."""
    q, d, pairs = _structured()
    loaded = {}
    for dtype in (np.float32, np.float16):
        folder = tmp_path / np.dtype(dtype).name
        folder.mkdir()
        Embeddings(ids=[f"q{i}" for i in range(len(q))], vectors=q.astype(dtype)).save(folder / "queries")
        Embeddings(ids=[f"d{j}" for j in range(len(d))], vectors=d.astype(dtype)).save(folder / "corpus")
        loaded[dtype] = (Embeddings.load(folder / "queries"), Embeddings.load(folder / "corpus"))
        assert loaded[dtype][1].vectors.dtype == dtype
    m32 = _metrics(loaded[np.float32][0].vectors, loaded[np.float32][1].vectors, pairs)
    m16 = _metrics(loaded[np.float16][0].vectors, loaded[np.float16][1].vectors, pairs)
    assert m32.keys() == m16.keys() == FP16_TOLERANCE.keys()
    assert 0.2 < m32["MRR@10"] < 0.95 and m32["mean_cosine.documents"] > 0.2   # a realistic, non-trivial set
    for key, (kind, tol) in FP16_TOLERANCE.items():
        a, b = m32[key], m16[key]
        assert np.isfinite(a) and np.isfinite(b), key
        limit = tol if kind == "abs" else tol * abs(a)
        assert abs(b - a) <= limit, f"{key}: float32 {a:.6g}, float16 {b:.6g} (tolerance {kind} {tol:g})"
