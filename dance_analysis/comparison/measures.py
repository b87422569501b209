"""The experiment's metrics, one registry: what each measures, which claim it tests, how it is computed.

Two kinds:

- ``unit`` metrics give one value per unit (a test query, a held-out statement, a passage relevant to a test
  query, a pool pair); an arm's value of a unit is the mean over its training seeds, the units of all folds are
  pooled, and two arms are compared by a paired randomisation test and a bootstrap CI over the pooled units and
  the seeds (:func:`dance_analysis.analysis.stats.cluster_randomization_test`, ``seed_unit_bootstrap``). Units
  that come in clusters (``cluster(space)``: the passages relevant to one query, the statements of one topic,
  the pool pairs of one topic) are resampled and sign-flipped by cluster.
- ``set`` metrics are statistics of a whole set of vectors (e.g. the mean pairwise cosine of a fold's test
  queries), computed per fold and seed; the effect is the mean over folds of the seed-averaged differences,
  and the CI and p-value come from a bootstrap over the units inside each fold and over the seeds
  (:func:`dance_analysis.analysis.stats.seed_fold_bootstrap`). ``compute(space, idx)`` evaluates the statistic on
  the units ``idx`` (with repetition) of the fold; ``units(space)`` says how many there are.

The claims are those of Li et al. (DANCE, ICTIR 2021, abstract and section 5), for DANCE relative to ANCE:
C1 ANCE's query space is anisotropic (DANCE's less so); C2 DANCE concentrates queries closer to the documents;
C3 DANCE's documents are more discriminative; C4 DANCE's queries receive more uniform negative-sampling
probabilities in query retrieval; C5 a smoother, more uniform space and better ranking.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..analysis import claim_metrics as cm
from ..analysis.geometry import mean_pairwise_cosine
from ..analysis.isotropy import effective_rank_from_eigenvalues, isoscore_from_variances
from ..analysis.sampling import sampling_uniformity, softmax_stats
from .spaces import SAMPLING_KS, SAMPLING_N, Space

#: The C4 softmax is compared at one temperature on L2-normalised vectors for every arm (see
#: :func:`_d2q_softmax_entropy`), over each pair's top ``SOFTMAX_K`` candidates (the trainer's query_top_k).
SOFTMAX_T = 0.05
SOFTMAX_K = 50
#: The K of the primary C4 sampling statistics (the trainer's query_top_k).
PRIMARY_K = 50

#: Passages sampled per fold for the document-set statistics (exact pairwise over this many, same rows for
#: every arm of the fold; the bootstrap resamples among them).
DOC_SAMPLE = 500
UNIFORMITY_T = 2.0


@dataclass(frozen=True)
class Metric:
    """One metric of the experiment.

    key: name in metrics.json; label: what a reader sees; claim: the claim it tests (None: ranking only);
    direction: the value the paper predicts for DANCE relative to ANCE (``higher`` / ``lower``); primary: decides
    the claim's verdict (else supporting evidence); kind: ``unit`` or ``set``; unit: what is resampled;
    values(space) -> per-unit array (unit kind); units(space) -> count and compute(space, idx) -> float (set kind);
    reference: what an isotropic Gaussian sample of the same size scores, when that is the natural baseline;
    cluster(space) -> one cluster label per unit (unit kind; None: every unit is its own cluster);
    bounds: the values the metric cannot pass (when every arm, the start included, sits at one of them, the
    design cannot move the metric: ``not measurable here``).
    """

    key: str
    label: str
    claim: str | None
    direction: str
    primary: bool
    kind: str
    unit: str
    values: Callable[[Space], np.ndarray] | None = None
    units: Callable[[Space], int] | None = None
    compute: Callable[[Space, np.ndarray], float] | None = None
    reference: Callable[[int, int], float] | None = None
    note: str = ""
    cluster: Callable[[Space], np.ndarray] | None = None
    bounds: tuple[float, float] | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def doc_sample(space: Space) -> np.ndarray:
    n = len(space.corpus)
    rng = np.random.default_rng([space.units.fold, 7])
    return np.sort(rng.choice(n, size=min(DOC_SAMPLE, n), replace=False))


# ------------------------------------------------------------------------------------------ set statistics
# Pairwise statistics are U-statistics (means over pairs of distinct points). On a bootstrap resample, a unit drawn
# twice would pair with its own copy (cosine 1, distance 0) and bias every replicate; those pairs are left out, as
# in the bootstrap of U-statistics (Arcones & Giné, Annals of Statistics 1992). The statistics are therefore
# computed from kernel matrices over the fold's units, cached per space; at the full sample (every unit once) each
# equals its reference function in dance_analysis.analysis (tests/comparison/test_comparison.py).
def _pair_mean(kernel: np.ndarray, idx: np.ndarray) -> float:
    """Mean of ``kernel[i, j]`` over the pairs of positions of ``idx`` holding different units.

    With c the multiplicity of each unit in ``idx``: sum over such pairs = c'Kc - sum_i c_i^2 K_ii, and their
    number (sum c)^2 - sum c_i^2 (one matrix-vector product instead of gathering a resampled matrix)."""
    c = np.bincount(idx, minlength=kernel.shape[0]).astype(np.float64)
    pairs = c.sum() ** 2 - float(c @ c)
    if pairs == 0:      # every position holds the same unit: no pair of distinct units
        return float("nan")
    return float((c @ kernel @ c - float((c * c) @ np.diag(kernel))) / pairs)


def _kernels(space: Space) -> dict:
    """Cosine and Gaussian kernels among the test queries, against the passage sample, and the constants of the
    passage side (computed once per space)."""
    cached = getattr(space, "_kernels", None)
    if cached is None:
        q = _unit(space.test_queries.astype(np.float64))
        d = _unit(space.corpus[doc_sample(space)].astype(np.float64))
        qq, qd, dd = q @ q.T, q @ d.T, d @ d.T
        dist = {name: np.sqrt(np.maximum(2.0 - 2.0 * g, 0.0)) for name, g in (("qq", qq), ("qd", qd), ("dd", dd))}
        off = ~np.eye(len(d), dtype=bool)
        all_d = _unit(space.corpus.astype(np.float64))
        centre = all_d.mean(axis=0)
        m = len(all_d)
        dd_all = (m * m * float(centre @ centre) - float((all_d * all_d).sum())) / (m * (m - 1))
        cached = {"qq_cos": qq, "qq_gauss": np.exp(-UNIFORMITY_T * dist["qq"] ** 2), "qq_dist": dist["qq"],
                  "qd_dist": dist["qd"], "qd_gauss": np.exp(-UNIFORMITY_T * dist["qd"] ** 2),
                  "dd_dist_mean": float(dist["dd"][off].mean()),
                  "dd_gauss_mean": float(np.exp(-UNIFORMITY_T * dist["dd"][off] ** 2).mean()),
                  "q_dot_centre": q @ centre, "dd_all_mean": dd_all}
        space._kernels = cached
    return cached


def _mmd2(space: Space, idx: np.ndarray) -> float:
    """Linear-kernel MMD² U-statistic of the test queries ``idx`` against the whole corpus (normalised vectors)."""
    k = _kernels(space)
    return _pair_mean(k["qq_cos"], idx) + k["dd_all_mean"] - 2.0 * float(k["q_dot_centre"][idx].mean())


def _energy(space: Space, idx: np.ndarray) -> float:
    """Energy distance of the test queries ``idx`` against the fold's passage sample (normalised vectors)."""
    k = _kernels(space)
    return 2.0 * float(k["qd_dist"][idx].mean()) - _pair_mean(k["qq_dist"], idx) - k["dd_dist_mean"]


def _joint_uniformity(space: Space, idx: np.ndarray) -> float:
    """log(E_QQ / 4 + E_DD / 4 + E_QD / 2) of the Gaussian kernel (t = 2): queries and passages weighted equally."""
    k = _kernels(space)
    return float(np.log(0.25 * _pair_mean(k["qq_gauss"], idx) + 0.25 * k["dd_gauss_mean"]
                        + 0.5 * float(k["qd_gauss"][idx].mean())))


def _test_queries(space: Space, idx: np.ndarray) -> np.ndarray:
    """The test queries ``idx`` in coordinates of their own row space (N x r, r = rank <= N).

    The rows span at most N dimensions, and an orthonormal basis of that span is an isometry on it, so every
    covariance statistic (eigenvalues, PCA shares, IsoScore and effective rank in a top-k subspace with k < N) is
    the same in these coordinates as in the d-dimensional space, at the cost of an N x N eigenproblem instead of
    a d x d one (what makes a thousand bootstrap resamples cheap)."""
    cached = getattr(space, "_query_coords", None)
    if cached is None:
        q = space.test_queries.astype(np.float64)
        _, _, vt = np.linalg.svd(q, full_matrices=False)
        cached = q @ vt.T
        space._query_coords = cached
    return cached[idx]


def _spectrum(space: Space, idx: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Covariance eigenvalues (decreasing) of the test queries ``idx`` (with repetition), their number of rows
    and their dimension in row-space coordinates, computed once per resample for the three C1 statistics.

    A unit drawn c times weighs c: with Y the centred distinct rows scaled by sqrt(c / n), the covariance Y'Y and
    the m x m Gram matrix YY' (m distinct units, about 63 % of N) have the same non-zero eigenvalues, so the
    smaller eigenproblem gives the spectrum (padded with zeros to the dimension). Every statistic read from it is
    a ratio of eigenvalues, so the divisor (n or n - 1) does not matter."""
    cache = space.__dict__.setdefault("_spectra", {})
    key = hashlib.blake2b(np.ascontiguousarray(idx).tobytes(), digest_size=12).digest()
    if key not in cache:
        if len(cache) > 4096:
            cache.clear()
        x = _test_queries(space, slice(None))
        c = np.bincount(idx, minlength=len(x)).astype(np.float64)
        keep = c > 0
        xs, w = x[keep], c[keep]
        n = float(w.sum())
        y = (xs - (w @ xs) / n) * np.sqrt(w / n)[:, None]
        vals = np.clip(np.linalg.eigvalsh(y @ y.T)[::-1], 0.0, None)
        dim = x.shape[1]
        vals = np.concatenate([vals[:dim], np.zeros(max(0, dim - len(vals)))])
        cache[key] = (vals, int(len(idx)), int(dim))
    return cache[key]


def _pc1(space: Space, idx: np.ndarray) -> float:
    """Share of the variance on the first principal component (:func:`~dance_analysis.analysis.claim_metrics.
    first_component_share`)."""
    vals, _, _ = _spectrum(space, idx)
    total = vals.sum()
    return float(vals[0] / total) if total > 0 else float("nan")


def _subspace(space: Space, idx: np.ndarray, what: str) -> float:
    """IsoScore or effective rank in the top-k PCA subspace, k = max(2, N // 4) (:func:`~dance_analysis.analysis.
    claim_metrics.subspace_isotropy`)."""
    vals, n, dim = _spectrum(space, idx)
    k = min(max(2, n // 4), min(n - 1, dim))
    if k < 2:
        return float("nan")
    top = vals[:k]
    return float(isoscore_from_variances(top) if what == "isoscore" else effective_rank_from_eigenvalues(top))


def _pc1_of(x: np.ndarray) -> float:
    return float(cm.first_component_share(x))


def _isoscore_of(x: np.ndarray) -> float:
    return float(cm.subspace_isotropy(x)["isoscore"])


def _erank_of(x: np.ndarray) -> float:
    return float(cm.subspace_isotropy(x)["effective_rank"])


def _pair_contributions(space: Space, k: int):
    """The sampler's candidates at ``k`` as a sparse [pool queries, pool pairs] matrix of inclusion
    probabilities: pair r adds min(n, |cand(r)|) / |cand(r)| to each of its candidates (its top ``k`` pool queries
    minus the passage's judged ones), as :func:`~dance_analysis.analysis.sampling.negative_sampling_marginals`
    (the exact search returns each query at most once per row, so there are no repeats to drop)."""
    from scipy.sparse import csr_matrix

    cache = space.__dict__.setdefault("_pair_contributions", {})
    if k not in cache:
        topk = space.pool_topk[:, :k]
        excluded = np.take_along_axis(space.units.pool_excluded, np.maximum(topk, 0), axis=1)
        cand = (topk >= 0) & ~excluded
        size = cand.sum(axis=1)
        prob = np.minimum(SAMPLING_N, size) / np.maximum(size, 1)
        rows, cols = np.nonzero(cand)
        cache[k] = csr_matrix((prob[rows], (topk[rows, cols].astype(np.int64), rows)),
                              shape=(len(space.units.pool_rows), len(topk)))
    return cache[k]


def sampling_probabilities(space: Space, k: int, idx: np.ndarray | None = None) -> np.ndarray:
    """Each pool query's expected draws as a negative when the pool pairs ``idx`` (default: all, with repetition
    counted) mine from their passage's top ``k`` pool queries: the sum of the pairs' rows of
    :func:`~dance_analysis.analysis.sampling.negative_sampling_marginals` (pi is a sum over pairs)."""
    matrix = _pair_contributions(space, k)
    if idx is None:
        counts = np.ones(matrix.shape[1])
    else:
        counts = np.bincount(idx, minlength=matrix.shape[1]).astype(np.float64)
    return np.asarray(matrix @ counts, dtype=np.float64).reshape(-1)


def _sampling(space: Space, idx: np.ndarray, k: int, what: str) -> float:
    cache = space.__dict__.setdefault("_sampling_cache", {})
    key = (k, hashlib.blake2b(np.ascontiguousarray(idx).tobytes(), digest_size=12).digest())
    if key not in cache:
        if len(cache) > 8192:
            cache.clear()
        cache[key] = sampling_uniformity(sampling_probabilities(space, k, idx))
    return float(cache[key][what])


def _d2q_softmax_entropy(space: Space) -> np.ndarray:
    """Per pool pair: normalised entropy of the softmax over its top-``SOFTMAX_K`` candidate queries (the
    passage's judged queries removed) of :math:`\\cos(d, q) / \\tau` with :math:`\\tau` = ``SOFTMAX_T`` = 0.05
    for every arm, on L2-normalised vectors.

    Why a fixed temperature on normalised vectors: the arms train at different score scales (ANCE: dot products
    of LayerNorm outputs of norm about sqrt(384), logits in the hundreds; DANCE: cos / 0.01), so the entropy at
    each arm's own temperature follows its scale, not its geometry: a sharper softmax says nothing about how
    evenly the candidate queries sit around the passage. With the same cos / 0.05 for every arm the entropy
    measures only the spread of the candidates' angles (0.05 is the usual contrastive temperature, e.g. SimCSE;
    at top-50 cosine spreads of 0.05-0.3 it keeps the entropy away from both 0 and 1). The candidates are the
    arm's own top ``SOFTMAX_K`` by its own score: the set its sampler draws from."""
    cached = getattr(space, "_softmax_entropy", None)
    if cached is not None:
        return cached
    topk = space.pool_topk[:, :SOFTMAX_K]
    if topk.size == 0:
        space._softmax_entropy = np.zeros(0)
        return space._softmax_entropy
    q = _unit(space.pool_queries.astype(np.float32))
    cos = np.empty(topk.shape, dtype=np.float64)
    for start in range(0, len(topk), 1024):
        d = _unit(space.corpus[space.units.pool_anchors[start:start + 1024]].astype(np.float32))
        block = topk[start:start + 1024]
        cos[start:start + 1024] = np.take_along_axis(d @ q.T, np.maximum(block, 0), axis=1)
    excluded = np.take_along_axis(space.units.pool_excluded, np.maximum(topk, 0), axis=1) | (topk < 0)
    s = np.where(excluded, -np.inf, cos)
    space._softmax_entropy = np.asarray(softmax_stats(s, temperature=SOFTMAX_T)["entropy_norm"], dtype=np.float64)
    return space._softmax_entropy


def _isotropic(stat: Callable[[np.ndarray], float]) -> Callable[[int, int], float]:
    @functools.cache
    def reference(n: int, dim: int) -> float:
        return float(cm.isotropic_reference(stat, n, dim, reps=20, seed=0)["mean"])
    return reference


def _sampling_metric(k: int, what: str, direction: str, primary: bool, label: str) -> Metric:
    return Metric(f"sampling.pi_{what}@{k}", label.format(k=k), "C4", direction, primary, "set", "pool pair",
                  units=lambda s: len(s.units.pool_anchors),
                  compute=lambda s, idx: _sampling(s, idx, k, what), bounds=(0.0, 1.0),
                  note="pi(q) = sum over the pool's passages d of 1[q in top-K(d) minus d's judged queries] x "
                       "min(n, |cand(d)|) / |cand(d)|, n = 20; pool = the fold's training queries")


def _statement_values(space: Space, measure: str) -> np.ndarray:
    return space.statement_per_query.get(measure, np.zeros(0))


METRICS: tuple[Metric, ...] = (
    # C1: anisotropy of the query space (test queries of the fold).
    Metric("queries.mean_cosine", "query mean pairwise cosine", "C1", "lower", True, "set", "test query",
           units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _pair_mean(_kernels(s)["qq_cos"], idx),
           reference=_isotropic(mean_pairwise_cosine)),
    Metric("queries.pc1_share", "query variance share of the first principal component", "C1", "lower", True,
           "set", "test query", units=lambda s: len(s.units.test_rows),
           compute=_pc1, reference=_isotropic(_pc1_of)),
    Metric("queries.isoscore_sub", "query IsoScore in the top-k PCA subspace (k = N/4)", "C1", "higher", False,
           "set", "test query", units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _subspace(s, idx, "isoscore"), reference=_isotropic(_isoscore_of)),
    Metric("queries.erank_sub", "query effective rank in the top-k PCA subspace (k = N/4)", "C1", "higher",
           False, "set", "test query", units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _subspace(s, idx, "erank"), reference=_isotropic(_erank_of)),
    # C2: queries closer to the documents.
    Metric("qd.mmd2", "query-document MMD² (linear kernel, unbiased, normalised vectors)", "C2", "lower", True,
           "set", "test query", units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _mmd2(s, idx)),
    Metric("qd.nearest_ratio", "query-to-nearest-documents cosine / documents' own nearest-neighbour cosine",
           "C2", "higher", True, "unit", "test query",
           values=lambda s: _nearest_ratio(s)),
    Metric("qd.energy", "query-document energy distance (normalised vectors)", "C2", "lower", False, "set",
           "test query", units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _energy(s, idx)),
    # C3: discriminative documents.
    Metric("qd.judged_margin", "per-query cosine margin: judged relevant minus judged non-relevant passages", "C3",
           "higher", True, "unit", "test query with both", values=lambda s: _judged(s, "margin")),
    Metric("d2q.RR@10", "d2q RR@10: a relevant passage ranks all real queries", "C3", "higher", True, "unit",
           "relevant passage", values=lambda s: s.d2q_rr10, cluster=lambda s: s.units.anchor_clusters,
           bounds=(0.0, 1.0), note="units: the passages relevant to a test query, resampled by query"),
    Metric("qd.judged_auc", "per-query AUC of judged relevant over judged non-relevant passages", "C3", "higher",
           False, "unit", "test query with both", values=lambda s: _judged(s, "auc")),
    Metric("documents.uniformity", "document uniformity (t = 2)", "C3", "lower", False, "set", "passage",
           units=lambda s: len(doc_sample(s)), compute=lambda s, idx: _doc_uniformity(s, idx)),
    # C4: uniform negative-sampling probabilities of the queries (d2q side).
    _sampling_metric(PRIMARY_K, "gini", "lower", True, "Gini of the queries' probability of being drawn (K = {k})"),
    _sampling_metric(PRIMARY_K, "zero_share", "lower", True, "share of queries never drawn (K = {k})"),
    _sampling_metric(SAMPLING_KS[0], "gini", "lower", False,
                     "Gini of the queries' probability of being drawn (K = {k})"),
    _sampling_metric(SAMPLING_KS[-1], "gini", "lower", False,
                     "Gini of the queries' probability of being drawn (K = {k})"),
    Metric("sampling.d2q_softmax_entropy", f"normalised entropy of the d2q softmax over candidates, cos / "
           f"{SOFTMAX_T} on normalised vectors for every arm (own queries removed, K = {SOFTMAX_K})", "C4",
           "higher", False, "unit", "pool pair", values=_d2q_softmax_entropy,
           cluster=lambda s: s.units.pool_clusters, bounds=(0.0, 1.0),
           note="a fixed temperature on L2-normalised vectors, so that the arms' different score scales do not "
                "decide the entropy"),
    # C5: smoother space and better ranking.
    Metric("q2d.MRR@100", "q2d MRR@100", "C5", "higher", True, "unit", "test query",
           values=lambda s: s.per_query["MRR@100"], bounds=(0.0, 1.0)),
    Metric("queries.uniformity", "query uniformity (t = 2)", "C5", "lower", True, "set", "test query",
           units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: float(np.log(_pair_mean(_kernels(s)["qq_gauss"], idx)))),
    Metric("joint.uniformity", "uniformity of queries and documents weighted equally (t = 2)", "C5", "lower",
           False, "set", "test query", units=lambda s: len(s.units.test_rows),
           compute=lambda s, idx: _joint_uniformity(s, idx)),
    Metric("q2d.nDCG@10", "q2d nDCG@10", "C5", "higher", False, "unit", "test query",
           values=lambda s: s.per_query["nDCG@10"], bounds=(0.0, 1.0)),
    Metric("s2d.nDCG@10", "held-out statements nDCG@10", "C5", "higher", False, "unit", "test statement",
           values=lambda s: _statement_values(s, "nDCG@10"), cluster=lambda s: s.units.statement_clusters,
           bounds=(0.0, 1.0), note="the statements of the test topics as queries, resampled by topic"),
    # Ranking only.
    Metric("q2d.MRR@10", "q2d MRR@10", None, "higher", False, "unit", "test query",
           values=lambda s: s.per_query["MRR@10"], bounds=(0.0, 1.0)),
    Metric("s2d.MRR@10", "held-out statements MRR@10", None, "higher", False, "unit", "test statement",
           values=lambda s: _statement_values(s, "MRR@10"), cluster=lambda s: s.units.statement_clusters,
           bounds=(0.0, 1.0), note="the statements of the test topics as queries, resampled by topic"),
    Metric("q2d.R@100", "q2d Recall@100", None, "higher", False, "unit", "test query",
           values=lambda s: s.per_query["R@100"], bounds=(0.0, 1.0)),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
#: The ranking table's rows (per-query measures), in order.
RANKING_KEYS = ("q2d.MRR@10", "q2d.MRR@100", "q2d.nDCG@10", "q2d.R@100", "d2q.RR@10", "s2d.MRR@10", "s2d.nDCG@10")


def nearest_levels(space: Space) -> dict:
    """:func:`~dance_analysis.analysis.claim_metrics.nearest_document_ratio` of the fold's test queries against
    the whole corpus, computed once per space."""
    cached = getattr(space, "_nearest", None)
    if cached is None:
        cached = cm.nearest_document_ratio(space.test_queries, space.corpus, k=10)
        space._nearest = cached
    return cached


def _nearest_ratio(space: Space) -> np.ndarray:
    r = nearest_levels(space)
    return np.asarray(r["per_query"], dtype=np.float64) / r["document_level"]


def _doc_kernel(space: Space) -> np.ndarray:
    cached = getattr(space, "_doc_kernel", None)
    if cached is None:
        u = _unit(space.corpus[doc_sample(space)].astype(np.float64))
        sq = np.maximum(2.0 - 2.0 * (u @ u.T), 0.0)
        cached = np.exp(-UNIFORMITY_T * sq)
        space._doc_kernel = cached
    return cached


def _doc_uniformity(space: Space, idx: np.ndarray) -> float:
    """log of the mean Gaussian kernel over pairs of distinct sampled passages (Wang & Isola, ICML 2020), on the
    rows ``idx`` of the fold's passage sample; pairs of a row with itself (bootstrap repeats) are left out."""
    return float(np.log(_pair_mean(_doc_kernel(space), idx)))


def _judged(space: Space, what: str) -> np.ndarray:
    j = space.units.judged
    positive, negative = j[j[:, 2] >= space.units.min_relevance][:, :2], j[j[:, 2] == 0][:, :2]
    out = cm.judged_margin(space.test_queries, space.corpus, positive, negative)
    values = np.full(len(space.units.test_rows), np.nan)
    values[np.asarray(out["queries"], dtype=np.int64)] = np.asarray(out[what], dtype=np.float64)
    return values
