"""Metrics that can measure the DANCE claims C1-C5 on a small collection (e.g. ~60 test queries, N < d = 384).

Li, Liu, Xiong & Liu (2021), "More Robust Dense Retrieval with Contrastive Dual Learning", ICTIR 2021, claim
relative to ANCE: C1 queries less anisotropic, C2 queries concentrated closer to the documents, C3 documents
more discriminative, C4 more uniform query-negative sampling (see :mod:`.sampling`), C5 a smoother, more uniform
space. With fewer queries than dimensions the full-space isotropy statistics are capped by the sample size, so:

- C1: :func:`isotropic_reference` (what an isotropic Gaussian sample of the same N and d scores),
  :func:`first_component_share`, :func:`subspace_isotropy` (IsoScore / effective rank in a top-k PCA subspace,
  with the caps);
- C2: :func:`mmd2_linear_unbiased`, :func:`energy_distance`, :func:`nearest_document_ratio`;
- C3: :func:`judged_margin` (cosine margin and per-query AUC over judged documents);
- C5: :func:`balanced_joint_uniformity` (Wang & Isola uniformity of the equal mixture of queries and documents).

Pure functions, arrays in, numbers out, no I/O. Cosine-based statistics leave zero-norm rows out (they have no
direction), as :mod:`.geometry` does; a statistic with nothing left to average is NaN with a
:class:`RuntimeWarning`. NaN / infinite input raises :class:`ValueError` naming the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import check_matrix, check_pairs, rng_from, row_blocks, unit_block, work_dtype
from .align_uniform import MAX_EXACT, N_PAIRS, _logsumexp_update, uniformity
from .geometry import _pair_cos_dist, _unit_sum, pca_spectrum, undefined, variance_explained
from .isotropy import effective_rank_from_eigenvalues, isoscore_from_variances

__all__ = [
    "isotropic_reference", "first_component_share", "subspace_isotropy",
    "mmd2_linear_unbiased", "energy_distance", "nearest_document_ratio",
    "judged_margin", "balanced_joint_uniformity", "MAX_EXACT_PAIRS",
]

#: :func:`energy_distance` evaluates a term exactly when it has at most this many pairs (the 6,011-document
#: sample has 18,063,055 distinct document pairs: exact); above it, ``max_pairs`` sampled pairs.
MAX_EXACT_PAIRS = 20_000_000

_NAMES = ("queries", "documents")


def _pair_dtype(*arrays: np.ndarray) -> type:
    """float64 when any input computes in float64 (see :func:`work_dtype`), else float32."""
    return np.float64 if any(work_dtype(a) == np.float64 for a in arrays) else np.float32


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------- C1


def isotropic_reference(stat: Callable[[np.ndarray], float], n: int, dim: int, *, reps: int = 20,
                        seed=0) -> dict:
    """Monte Carlo reference of a statistic on isotropic samples of the same size: mean and sd of ``stat(X)``
    for X with n rows drawn i.i.d. from N(0, I_dim).

    With few rows (e.g. 60 queries in d = 384) the isotropy statistics are far from their population values even
    for a perfectly isotropic distribution (mean pairwise cosine ~ 0 +- 1/sqrt(d), first-component share well
    above 1/d, IsoScore and effective rank capped by N - 1 < d; see :func:`subspace_isotropy`). Comparing an
    observed value with this reference, e.g. as ``(observed - mean) / sd``, says how far the embeddings are from
    isotropic given N and d. ``stat`` is any function of an ``[n, dim]`` float64 array returning a number (e.g.
    :func:`~dance_analysis.analysis.geometry.mean_pairwise_cosine`, :func:`first_component_share`,
    :func:`~dance_analysis.analysis.isotropy.isoscore`, :func:`~dance_analysis.analysis.isotropy.effective_rank`).

    Draws: ``rng = numpy.random.default_rng(seed)`` (or the Generator passed as ``seed``), then for each of the
    ``reps`` repetitions ``X = rng.standard_normal((n, dim))``, in order. Returns ``{"mean", "sd" (sample standard
    deviation, ddof=1; NaN when reps = 1), "values" [reps], "n", "dim", "reps"}``.
    """
    if not callable(stat):
        raise ValueError(f"stat: expected a function of an [n, dim] array, got {type(stat).__name__}")
    n = _positive_int(n, "n")
    dim = _positive_int(dim, "dim")
    reps = _positive_int(reps, "reps")
    rng = rng_from(seed)
    values = np.empty(reps)
    for r in range(reps):
        values[r] = float(stat(rng.standard_normal((n, dim))))
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if reps > 1 else float("nan"),
            "values": values, "n": n, "dim": dim, "reps": reps}


def first_component_share(x, *, name: str = "embeddings") -> float:
    """Share of the variance on the first principal component (centred):
    :math:`\\lambda_1 / \\sum_j \\lambda_j` with :math:`\\lambda` the covariance eigenvalues (Pearson 1901; the
    dominating direction of Mu & Viswanath, ICLR 2018).

    1/d for an isotropic population, 1 for rank-1 data; with N < d rows an isotropic sample already has
    roughly :math:`(1 + \\sqrt{d/N})^2 / d` (see :func:`isotropic_reference`). Zero rows are points at the origin
    (a spread statistic). NaN when all rows are equal. Equal to
    ``geometry.variance_explained(x, ks=(1,))["pc1"]``.
    """
    return variance_explained(pca_spectrum(x, name=name), ks=(1,))["pc1"]


def subspace_isotropy(x, *, k: int | None = None, name: str = "embeddings") -> dict:
    """IsoScore and effective rank inside the top-k PCA subspace, with k well below N, and the caps that
    N <= d puts on the full-space values.

    With N rows the centred data has rank at most :math:`r = \\min(N - 1, d)`, so in the full space the
    effective rank (Roy & Vetterli, EUSIPCO 2007) is at most r and IsoScore (Rudman et al., Findings of ACL 2022)
    at most :math:`(r - 1)/(d - 1)` (IsoScore grows with :math:`\\lVert \\lambda \\rVert_1 / \\lVert \\lambda
    \\rVert_2` of the variance vector, which for r non-zero entries is largest when they are equal; e.g. 58/383
    = 0.15 for 60 queries in d = 384): such values measure the sample size, not the geometry. Restricted to the
    top-k principal directions, with the covariance eigenvalues :math:`\\lambda_1 \\ge \\dots \\ge \\lambda_k`:

    - ``isoscore`` = :func:`~dance_analysis.analysis.isotropy.isoscore_from_variances` (:math:`\\lambda_{1..k}`),
      range [0, 1] (1 = equal variance on the k directions);
    - ``effective_rank`` = :func:`~dance_analysis.analysis.isotropy.effective_rank_from_eigenvalues`
      (:math:`\\lambda_{1..k}`), range [1, ``effective_rank_cap`` = min(k, N - 1) = k].

    Default ``k = max(2, N // 4)``; 2 <= k <= min(N - 1, d) is required (ValueError otherwise: beyond N - 1 the
    eigenvalues are 0 by construction). Returns ``{"k", "n", "dim", "isoscore", "isoscore_range": (0.0, 1.0),
    "effective_rank", "effective_rank_cap", "variance_share" (share of the variance in the k directions),
    "full_isoscore", "full_isoscore_cap", "full_effective_rank", "full_effective_rank_cap"}``; the ``full_*``
    values are those of :func:`~dance_analysis.analysis.isotropy.isoscore` and
    :func:`~dance_analysis.analysis.isotropy.effective_rank` (centred).
    """
    x = check_matrix(x, name, min_rows=3)
    n, dim = x.shape
    rank_cap = min(n - 1, dim)
    if k is None:
        k = min(max(2, n // 4), rank_cap)
    k = _positive_int(k, "k", 2)
    if k > rank_cap:
        raise ValueError(f"k: expected 2 <= k <= min(N - 1, d) = {rank_cap} for {n} rows of dimension {dim}, "
                         f"got {k}")
    vals = pca_spectrum(x, name=name)["eigenvalues"]        # decreasing, clipped at 0
    top = vals[:k]
    total = vals.sum()
    return {"k": k, "n": int(n), "dim": int(dim),
            "isoscore": isoscore_from_variances(top), "isoscore_range": (0.0, 1.0),
            "effective_rank": effective_rank_from_eigenvalues(top), "effective_rank_cap": float(min(k, n - 1)),
            "variance_share": float(top.sum() / total) if total > 0 else float("nan"),
            "full_isoscore": isoscore_from_variances(vals),
            "full_isoscore_cap": float((rank_cap - 1) / (dim - 1)) if dim > 1 else float("nan"),
            "full_effective_rank": effective_rank_from_eigenvalues(vals),
            "full_effective_rank_cap": float(rank_cap)}


# ---------------------------------------------------------------------------------------------------------- C2


def _raw_sums(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Sum of the rows and sum of their squared norms, float64, in row blocks."""
    total = np.zeros(x.shape[1])
    sq = 0.0
    for start, stop in row_blocks(x.shape[0]):
        b = np.asarray(x[start:stop], dtype=np.float64)
        total += b.sum(axis=0)
        sq += float(np.einsum("ij,ij->", b, b))
    return total, sq


def mmd2_linear_unbiased(q, d, *, normalize: bool = True, names: tuple[str, str] = _NAMES) -> float:
    """Squared maximum mean discrepancy with the linear kernel :math:`k(x, y) = x^\\top y`, unbiased
    U-statistic (Gretton, Borgwardt, Rasch, Schölkopf & Smola, "A Kernel Two-Sample Test", JMLR 2012, eq. 3):

    .. math:: \\mathrm{MMD}^2_u = \\frac{1}{n(n-1)} \\sum_{i \\ne j} q_i^\\top q_j
              + \\frac{1}{m(m-1)} \\sum_{k \\ne l} d_k^\\top d_l - \\frac{2}{nm} \\sum_{i,k} q_i^\\top d_k

    an unbiased estimate of :math:`\\lVert \\mu_Q - \\mu_D \\rVert^2` (how far apart the query and document
    distributions are on average: lower = queries concentrated nearer the documents, C2); it can be slightly
    negative. Exact in O((n + m) d) from sums: with :math:`S = \\sum_i x_i` and :math:`T = \\sum_i \\lVert x_i
    \\rVert^2`, :math:`\\sum_{i \\ne j} x_i^\\top x_j = \\lVert S \\rVert^2 - T` and
    :math:`\\sum_{i,k} q_i^\\top d_k = S_Q^\\top S_D`. ``normalize=True`` (default) uses the L2-normalised rows
    (cosine kernel; zero rows have no direction and are left out, n and m count the others); ``normalize=False``
    the raw vectors (all rows). NaN, with a :class:`RuntimeWarning`, when a side has fewer than 2 rows to use.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    sides = []
    for x, nm in ((q, names[0]), (d, names[1])):
        if normalize:
            total, count = _unit_sum(x)
            sq = float(count)
        else:
            (total, sq), count = _raw_sums(x), x.shape[0]
        if count < 2:
            return undefined(f"{nm}: linear MMD^2 with {count} row(s)"
                             + (" of non-zero norm" if normalize else "") + " (needs 2)")
        sides.append((total, sq, count))
    (sq_, tq, n), (sd_, td, m) = sides
    within_q = (sq_ @ sq_ - tq) / (n * (n - 1.0))
    within_d = (sd_ @ sd_ - td) / (m * (m - 1.0))
    return float(within_q + within_d - 2.0 * (sq_ @ sd_) / (n * float(m)))


def _rows_for_pairs(x: np.ndarray, normalize: bool, dt) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows a pair statistic uses (all, or the non-zero ones when normalising) and all row norms."""
    norms = np.empty(x.shape[0])
    for start, stop in row_blocks(x.shape[0]):
        b = np.asarray(x[start:stop], dtype=dt)
        norms[start:stop] = np.sqrt(np.einsum("ij,ij->i", b, b))
    good = np.flatnonzero(norms > 0) if normalize else np.arange(x.shape[0])
    return good, norms


def _prep(block: np.ndarray, normalize: bool, dt) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a block as used by :func:`energy_distance` (units of the non-zero rows, or raw) and their
    squared norms."""
    if normalize:
        u, ok = unit_block(block, dt)
        b = u[ok]
    else:
        b = np.asarray(block, dtype=dt)
    return b, np.einsum("ij,ij->i", b, b)


def _exact_mean_distance(a: np.ndarray, b: np.ndarray | None, normalize: bool, dt, block: int = 2048) -> float:
    """Mean Euclidean distance over all (a_i, b_k) pairs, or over the distinct pairs of ``a`` when ``b`` is None.

    Double row blocks; :math:`\\lVert x - y \\rVert^2 = \\lVert x \\rVert^2 + \\lVert y \\rVert^2 - 2 x^\\top y`
    (clipped at 0) from block products, summed in float64."""
    same = b is None
    other = a if same else b
    total = 0.0
    count = 0
    for s1, e1 in row_blocks(a.shape[0], block):
        x, nx = _prep(a[s1:e1], normalize, dt)
        for s2, e2 in row_blocks(other.shape[0], block):
            if same and s2 < s1:
                continue
            y, ny = _prep(other[s2:e2], normalize, dt)
            sq = (nx[:, None] + ny[None, :] - 2.0 * (x @ y.T)).astype(np.float64)
            dist = np.sqrt(np.clip(sq, 0.0, None))
            if same and s2 == s1:
                iu = np.triu_indices(len(x), 1)
                dist = dist[iu]
            total += float(dist.sum())
            count += dist.size
    return total / count


def _sampled_mean_distance(a: np.ndarray, ga: np.ndarray, b: np.ndarray | None, gb: np.ndarray | None,
                           norms_a: np.ndarray, norms_b: np.ndarray | None, normalize: bool, n_pairs: int,
                           rng: np.random.Generator, dt, chunk: int = 65536) -> float:
    """Mean distance over ``n_pairs`` pairs drawn uniformly with replacement: (i, k) independent over the used
    rows ``ga`` x ``gb``, or i != j over ``ga`` when ``b`` is None (j uniform among the other rows)."""
    total = 0.0
    for start in range(0, n_pairs, chunk):
        size = min(chunk, n_pairs - start)
        i = rng.integers(0, ga.size, size=size)
        if b is None:
            j = rng.integers(0, ga.size - 1, size=size)
            j = j + (j >= i)
            ri, rj, ni, nj = ga[i], ga[j], norms_a[ga[i]], norms_a[ga[j]]
            xa, xb = np.asarray(a[ri], dtype=dt), np.asarray(a[rj], dtype=dt)
        else:
            j = rng.integers(0, gb.size, size=size)
            ni, nj = norms_a[ga[i]], norms_b[gb[j]]
            xa, xb = np.asarray(a[ga[i]], dtype=dt), np.asarray(b[gb[j]], dtype=dt)
        if normalize:
            xa = xa / ni[:, None].astype(dt)
            xb = xb / nj[:, None].astype(dt)
        diff = (xa - xb).astype(np.float64)
        total += float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).sum())
    return total / n_pairs


def energy_distance(q, d, *, normalize: bool = True, max_pairs: int | None = None, seed=0,
                    names: tuple[str, str] = _NAMES) -> dict:
    """Energy distance between the query and the document distributions (Székely & Rizzo, "Energy statistics:
    A class of statistics based on distances", Journal of Statistical Planning and Inference, 2013):

    .. math:: \\mathcal E = 2\\, \\mathbb E \\lVert Q - D \\rVert - \\mathbb E \\lVert Q - Q' \\rVert
              - \\mathbb E \\lVert D - D' \\rVert

    with the cross expectation over all n m (query, document) pairs and the within-sample expectations over the
    distinct pairs (U-statistics, unbiased; so the estimate can be slightly negative). 0 iff the two
    distributions are equal (population value), unlike the linear MMD it sees every difference of distribution,
    not only of the means (C2: lower = queries concentrated nearer the documents). ``normalize=True`` (default)
    uses the L2-normalised rows (chord distances on the sphere, comparable across norm scales; zero rows have no
    point on the sphere and are left out); ``normalize=False`` the raw vectors (all rows).

    Exact or sampled, per term: a term with at most ``max_pairs`` pairs (default :data:`MAX_EXACT_PAIRS`) is
    summed exactly over all its pairs (double row blocks, distances from block products
    :math:`\\lVert x \\rVert^2 + \\lVert y \\rVert^2 - 2 x^\\top y`, clipped at 0, products in float64 for
    float64 input, else float32, where a near-duplicate pair's distance is off by up to ~1e-3; float64 sums);
    a larger term is the mean over ``max_pairs`` pairs drawn uniformly with replacement (distinct rows for the
    within terms) with ``numpy.random.default_rng(seed)`` (or the Generator passed), an unbiased estimate of it.
    The terms are drawn in the order Q-Q, D-D, Q-D from one generator.

    Returns ``{"value", "e_qd", "e_qq", "e_dd", "methods": {"qd", "qq", "dd"} ("exact" | "sampled"),
    "pairs": {"qd", "qq", "dd"} (pairs evaluated), "n_q", "n_d" (rows used), "excluded_zero": (q, d)}``;
    ``value`` is NaN with a :class:`RuntimeWarning` when a side has fewer than 2 rows to use.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    limit = MAX_EXACT_PAIRS if max_pairs is None else _positive_int(max_pairs, "max_pairs")
    dt = _pair_dtype(q, d)
    gq, nq_all = _rows_for_pairs(q, normalize, dt)
    gd, nd_all = _rows_for_pairs(d, normalize, dt)
    n, m = int(gq.size), int(gd.size)
    out: dict = {"n_q": n, "n_d": m, "excluded_zero": (int(q.shape[0] - n), int(d.shape[0] - m))}
    if n < 2 or m < 2:
        nm = names[0] if n < 2 else names[1]
        value = undefined(f"{nm}: energy distance with {min(n, m)} row(s)"
                          + (" of non-zero norm" if normalize else "") + " (needs 2)")
        return {"value": value, "e_qd": float("nan"), "e_qq": float("nan"), "e_dd": float("nan"),
                "methods": {}, "pairs": {}, **out}
    rng = rng_from(seed)
    counts = {"qq": n * (n - 1) // 2, "dd": m * (m - 1) // 2, "qd": n * m}
    methods = {key: ("exact" if c <= limit else "sampled") for key, c in counts.items()}
    expect = {}
    for key, a, ga, na, b, gb, nb in (("qq", q, gq, nq_all, None, None, None),
                                      ("dd", d, gd, nd_all, None, None, None),
                                      ("qd", q, gq, nq_all, d, gd, nd_all)):
        if methods[key] == "exact":
            a_rows = a if ga.size == a.shape[0] else a[ga]
            b_rows = None if b is None else (b if gb.size == b.shape[0] else b[gb])
            expect[key] = _exact_mean_distance(a_rows, b_rows, normalize, dt)
        else:
            expect[key] = _sampled_mean_distance(a, ga, b, gb, na, nb, normalize, limit, rng, dt)
    pairs = {key: (counts[key] if methods[key] == "exact" else limit) for key in counts}
    value = 2.0 * expect["qd"] - expect["qq"] - expect["dd"]
    return {"value": float(value), "e_qd": expect["qd"], "e_qq": expect["qq"], "e_dd": expect["dd"],
            "methods": methods, "pairs": pairs, **out}


def _top_k_mean_cosine(rows: np.ndarray, cols: np.ndarray, k: int, exclude_self: bool, dt,
                       row_block: int = 1024, col_block: int = 4096) -> np.ndarray:
    """Per row of ``rows``: mean of its k largest cosines to the non-zero rows of ``cols`` (NaN for a zero row);
    with ``exclude_self`` (rows is cols) the pair of a row with itself is left out. Exact: double row blocks and
    a running top-k per row."""
    out = np.full(rows.shape[0], np.nan)
    for s1, e1 in row_blocks(rows.shape[0], row_block):
        a, ok_a = unit_block(rows[s1:e1], dt)
        best = np.full((e1 - s1, k), -np.inf)
        for s2, e2 in row_blocks(cols.shape[0], col_block):
            b, ok_b = unit_block(cols[s2:e2], dt)
            sims = (a @ b.T).astype(np.float64)
            sims[:, ~ok_b] = -np.inf
            if exclude_self:
                lo, hi = max(s1, s2), min(e1, e2)
                if lo < hi:
                    idx = np.arange(lo, hi)
                    sims[idx - s1, idx - s2] = -np.inf
            both = np.concatenate([best, sims], axis=1)
            best = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
        out[s1:e1] = np.where(ok_a, best.mean(axis=1), np.nan)
    return out


def nearest_document_ratio(q, d, *, k: int = 10, names: tuple[str, str] = _NAMES) -> dict:
    """How close the queries sit to the document cloud, relative to how close documents sit to each other (C2).

    Per query i: :math:`c_i = \\frac1k \\sum_{j \\in N_k(i)} \\cos(q_i, d_j)`, the mean cosine to its k nearest
    documents (k largest cosines). Document level: :math:`\\bar c_D = \\frac1{m} \\sum_l \\frac1k
    \\sum_{j \\in N_k(l) \\setminus \\{l\\}} \\cos(d_l, d_j)`, the mean over documents of the mean cosine to their
    k nearest OTHER documents (the document itself excluded by index; an exact duplicate of it still counts).
    ``ratio`` = query level / document level, with query level :math:`\\bar c_Q` = mean of :math:`c_i`: about 1
    when a query is as close to its nearest documents as a typical document is to its neighbours, below 1 when
    the queries sit apart from the documents (higher = more concentrated around the documents).

    Exact (no approximate index): double row blocks of cosine products (float64 for float64 input, else float32)
    with a running top-k per row. Zero rows have no direction: a zero query gets NaN and is left out of the query
    level; zero documents are neither neighbours nor counted in the document level. Requires
    1 <= k <= (non-zero documents) - 1. Returns ``{"per_query" [Nq], "query_level", "per_document" [Nd],
    "document_level", "ratio", "k", "n_queries", "n_documents"}`` (counts of rows used); ``query_level`` and
    ``ratio`` are NaN with a :class:`RuntimeWarning` when no query has non-zero norm.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    k = _positive_int(k, "k")
    m = _unit_sum(d)[1]
    if k > m - 1:
        raise ValueError(f"k: expected <= {m - 1} ({names[1]} with non-zero norm minus the document itself), "
                         f"got {k}")
    dt = _pair_dtype(q, d)
    per_q = _top_k_mean_cosine(q, d, k, False, dt)
    per_d = _top_k_mean_cosine(d, d, k, True, dt)
    doc_level = float(np.nanmean(per_d))
    used_q = int(np.isfinite(per_q).sum())
    if used_q == 0:
        q_level = undefined(f"{names[0]}: nearest-document level without a row of non-zero norm")
    else:
        q_level = float(np.nanmean(per_q))
    return {"per_query": per_q, "query_level": q_level, "per_document": per_d, "document_level": doc_level,
            "ratio": q_level / doc_level if doc_level != 0 else float("nan"), "k": k,
            "n_queries": used_q, "n_documents": int(m)}


# ---------------------------------------------------------------------------------------------------------- C3


def _pair_rows(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique query rows of the pairs and the start of each one's run (pairs sorted by query)."""
    queries, starts = np.unique(p[:, 0], return_index=True)
    return queries, np.append(starts, len(p))


def _inner_products(q: np.ndarray, d: np.ndarray, p: np.ndarray, block: int = 65536) -> np.ndarray:
    out = np.empty(len(p))
    for start, stop in row_blocks(len(p), block):
        a = np.asarray(q[p[start:stop, 0]], dtype=np.float64)
        b = np.asarray(d[p[start:stop, 1]], dtype=np.float64)
        out[start:stop] = np.einsum("ij,ij->i", a, b)
    return out


def judged_margin(q, d, positive_pairs, negative_pairs, *, names: tuple[str, str] = _NAMES) -> dict:
    """How well each query separates its judged-relevant from its judged-non-relevant documents (C3: DANCE makes
    the documents more discriminative).

    ``positive_pairs`` / ``negative_pairs`` are int ``[m, 2]`` arrays of (query row, document row) for judged
    relevant / judged non-relevant documents (duplicates counted once; a pair in both raises
    :class:`ValueError`). For every query that has both kinds, with :math:`P_i`, :math:`N_i` its relevant and
    non-relevant documents:

    - ``margin`` (cosine): :math:`\\frac{1}{|P_i|} \\sum_{j \\in P_i} \\cos(q_i, d_j) - \\frac{1}{|N_i|}
      \\sum_{j \\in N_i} \\cos(q_i, d_j)`; pairs with a zero-norm row have no cosine and are left out (NaN
      margin when a side is left empty);
    - ``auc`` (the model's retrieval score, the inner product :math:`s_{ij} = q_i^\\top d_j`, float64):
      :math:`\\frac{1}{|P_i||N_i|} \\sum_{j \\in P_i} \\sum_{l \\in N_i} \\big(\\mathbf 1[s_{ij} > s_{il}]
      + \\tfrac12 \\mathbf 1[s_{ij} = s_{il}]\\big)`, the probability that a relevant document outscores a
      non-relevant one, ties 1/2 (Hanley & McNeil, Radiology 1982); 0.5 = no separation (a zero-norm query
      scores 0 everywhere: 0.5).

    Returns ``{"queries" (int rows, ascending), "margin", "auc" (arrays per query), "margin_mean", "auc_mean"
    (means over the queries, NaN margins left out), "n_queries", "n_positive_pairs", "n_negative_pairs"}``.
    With no query having both kinds the arrays are empty and the means NaN (nothing to measure, no warning).
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    pos = check_pairs(positive_pairs, q.shape[0], d.shape[0], "positive_pairs")
    neg = check_pairs(negative_pairs, q.shape[0], d.shape[0], "negative_pairs")
    pos = np.unique(pos, axis=0) if len(pos) else pos        # sorted by query row, then document row
    neg = np.unique(neg, axis=0) if len(neg) else neg
    if len(pos) and len(neg):
        n_doc = d.shape[0]
        clash = np.intersect1d(pos[:, 0] * n_doc + pos[:, 1], neg[:, 0] * n_doc + neg[:, 1])
        if clash.size:
            shown = ", ".join(f"({c // n_doc}, {c % n_doc})" for c in clash[:5])
            raise ValueError(f"positive_pairs / negative_pairs: {clash.size} (query, document) pair(s) judged "
                             f"both relevant and non-relevant: {shown}")
    queries = np.intersect1d(pos[:, 0], neg[:, 0]) if len(pos) and len(neg) else np.zeros(0, dtype=np.int64)
    base = {"queries": queries.astype(np.int64), "n_queries": int(queries.size),
            "n_positive_pairs": int(len(pos)), "n_negative_pairs": int(len(neg))}
    if queries.size == 0:
        return {**base, "margin": np.zeros(0), "auc": np.zeros(0), "margin_mean": float("nan"),
                "auc_mean": float("nan")}
    pos = pos[np.isin(pos[:, 0], queries)]
    neg = neg[np.isin(neg[:, 0], queries)]
    cos_p, _, _ = _pair_cos_dist(q, d, pos)               # NaN for a pair with a zero-norm row
    cos_n, _, _ = _pair_cos_dist(q, d, neg)
    s_p, s_n = _inner_products(q, d, pos), _inner_products(q, d, neg)
    _, bp = _pair_rows(pos)
    _, bn = _pair_rows(neg)
    margin = np.empty(queries.size)
    auc = np.empty(queries.size)
    for r in range(queries.size):
        cp, cn = cos_p[bp[r]:bp[r + 1]], cos_n[bn[r]:bn[r + 1]]
        cp, cn = cp[np.isfinite(cp)], cn[np.isfinite(cn)]
        margin[r] = cp.mean() - cn.mean() if cp.size and cn.size else np.nan
        sp, sn = s_p[bp[r]:bp[r + 1]], np.sort(s_n[bn[r]:bn[r + 1]])
        below = np.searchsorted(sn, sp, side="left")       # non-relevant scores strictly below each relevant one
        ties = np.searchsorted(sn, sp, side="right") - below
        auc[r] = (below.sum() + 0.5 * ties.sum()) / (sp.size * sn.size)
    if np.isfinite(margin).any():
        margin_mean = float(np.nanmean(margin))
    else:
        margin_mean = undefined(f"{names[0]}/{names[1]}: judged margin where every pair has a zero-norm row")
    return {**base, "margin": margin, "auc": auc, "margin_mean": margin_mean, "auc_mean": float(auc.mean())}


# ---------------------------------------------------------------------------------------------------------- C5


def _cross_log_potential(q: np.ndarray, d: np.ndarray, t: float, exact: bool, n_pairs: int,
                         rng: np.random.Generator, block: int = 2048) -> tuple[float, str, int, int, int]:
    """log E_{u ~ Q, v ~ D} exp(-t ||u - v||^2) over the unit vectors of the non-zero rows: all pairs (double row
    blocks, streamed log-sum-exp) or ``n_pairs`` pairs drawn uniformly with replacement.
    Returns (value, method, pairs, non-zero q rows, non-zero d rows)."""
    dt = _pair_dtype(q, d)
    gq, norms_q = _rows_for_pairs(q, True, dt)
    gd, norms_d = _rows_for_pairs(d, True, dt)
    n, m = int(gq.size), int(gd.size)
    if n == 0 or m == 0:
        return float("nan"), "exact", 0, n, m
    state = (-np.inf, 0.0)
    if exact:
        for s1, e1 in row_blocks(q.shape[0], block):
            a, ok_a = unit_block(q[s1:e1], dt)
            a = a[ok_a]
            for s2, e2 in row_blocks(d.shape[0], block):
                b, ok_b = unit_block(d[s2:e2], dt)
                state = _logsumexp_update(state, ((2.0 * t) * ((a @ b[ok_b].T) - 1.0)).ravel())
        total = float(n) * m
        method, pairs = "exact", n * m
    else:
        for start in range(0, n_pairs, 65536):
            size = min(65536, n_pairs - start)
            i = gq[rng.integers(0, n, size=size)]
            j = gd[rng.integers(0, m, size=size)]
            dots = np.einsum("ij,ij->i", np.asarray(q[i], dtype=dt), np.asarray(d[j], dtype=dt)).astype(np.float64)
            s = np.clip(dots / (norms_q[i] * norms_d[j]), -1.0, 1.0)
            state = _logsumexp_update(state, (2.0 * t) * (s - 1.0))
        total = float(n_pairs)
        method, pairs = "sampled", int(n_pairs)
    value = state[0] + np.log(state[1]) - np.log(total)
    return float(min(value, 0.0)), method, pairs, n, m


def balanced_joint_uniformity(q, d, *, t: float = 2.0, max_exact: int = MAX_EXACT, n_pairs: int = N_PAIRS,
                              seed=0, names: tuple[str, str] = _NAMES) -> dict:
    """Uniformity (Wang & Isola, ICML 2020, section 4) of the space shared by queries and documents, each set
    weighted equally whatever its size (C5: DANCE gives a smoother, more uniform space; lower = more uniform):

    .. math:: \\mathcal L = \\log \\mathbb E_{x, y \\sim M} e^{-t \\lVert x - y \\rVert^2}
              = \\log\\big(\\tfrac14 E_{QQ} + \\tfrac14 E_{DD} + \\tfrac12 E_{QD}\\big),
              \\quad M = \\tfrac12 Q + \\tfrac12 D

    over the L2-normalised rows, with :math:`E_{QQ}`, :math:`E_{DD}` the mean Gaussian potential over distinct
    pairs of one set (exactly :func:`~dance_analysis.analysis.align_uniform.uniformity` of that set) and
    :math:`E_{QD}` its mean over all (query, document) pairs. Unlike ``uniformity([Q, D])``, whose pairs are
    ~all document pairs when there are 100x more documents, the queries weigh half here. Zero rows are left out.

    Exact or sampled as :func:`~dance_analysis.analysis.align_uniform.uniformity`: each within term is that
    function's result (exact up to ``max_exact`` points, with its float32 products; else ``n_pairs`` sampled
    pairs), and the cross term is exact (double row blocks, float64 for float64 input) when the two sets together
    have at most ``max_exact`` points, else the mean over ``n_pairs`` (query, document) pairs drawn uniformly with
    replacement. Randomness: three independent streams spawned from ``seed``
    (``numpy.random.SeedSequence(seed).spawn(3)``: Q-Q, D-D, Q-D), or the Generator passed, used in that order.

    Returns ``{"value", "queries", "documents", "cross" (the three logs: log E_QQ, log E_DD, log E_QD), "methods":
    {"queries", "documents", "cross"}, "pairs": {...}, "t", "n_q", "n_d", "excluded_zero": (q, d)}``; ``value``
    is NaN (with a :class:`RuntimeWarning`) when a set has fewer than 2 non-zero rows.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    if not t > 0:
        raise ValueError(f"t: expected > 0, got {t}")
    if isinstance(seed, np.random.Generator):
        rngs = [seed] * 3
    else:
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(0 if seed is None else seed).spawn(3)]
    kw = dict(t=t, max_exact=max_exact, n_pairs=n_pairs)
    uq = uniformity(q, seed=rngs[0], name=names[0], **kw)
    ud = uniformity(d, seed=rngs[1], name=names[1], **kw)
    exact = uq["n"] + ud["n"] <= max_exact
    cross, method, pairs, n, m = _cross_log_potential(q, d, t, exact, n_pairs, rngs[2])
    logs = np.array([uq["value"], ud["value"], cross])
    if np.isnan(logs).any():
        value = float("nan")                                 # uniformity() has warned for a set with < 2 rows
    else:
        w = np.log([0.25, 0.25, 0.5]) + logs
        top = w.max()
        value = float(min(top + np.log(np.exp(w - top).sum()), 0.0))
    return {"value": value, "queries": uq["value"], "documents": ud["value"], "cross": cross,
            "methods": {"queries": uq["method"], "documents": ud["method"], "cross": method},
            "pairs": {"queries": uq["pairs"], "documents": ud["pairs"], "cross": pairs}, "t": float(t),
            "n_q": n, "n_d": m, "excluded_zero": (uq["excluded_zero"], ud["excluded_zero"])}
