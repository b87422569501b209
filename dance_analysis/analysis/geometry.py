"""Anisotropy and query-document geometry of embedding matrices.

All functions take ``[N, d]`` arrays (any float dtype, memmaps welcome), work in row blocks with float64
accumulators and return floats or small dicts. Rows with zero norm have no direction: they are left out of the
cosine statistics, never counted as cosine 0 (documented per function); :func:`zero_norm_rows` counts them. A
statistic left without any row to average returns NaN with a :class:`RuntimeWarning`, never silently.
NaN / infinite values raise :class:`ValueError` naming the rows.

References: Ethayarajh 2019, "How Contextual are Contextualized Word Representations?" (mean pairwise cosine as
anisotropy); Gao et al. 2019, "Representation Degeneration Problem in Training Natural Language Generation
Models"; Mu & Viswanath 2018, "All-but-the-Top" (mean vector and dominating principal directions).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ._common import check_matrix, check_pairs, rng_from, row_blocks, unit_block, work_dtype

__all__ = [
    "check_finite", "zero_norm_rows", "mean_pairwise_cosine", "cross_mean_cosine", "covariance", "pca_spectrum",
    "variance_explained", "norm_stats", "mean_vector_norm_ratio", "centroid_distance",
    "negatives_to_pairs", "query_document_geometry",
]


def check_finite(x, name: str = "embeddings") -> np.ndarray:
    """Check that ``x`` is a 2-D numeric array without NaN / infinite values and return it (no copy).

    Raises :class:`ValueError` whose message names ``name`` and the first offending rows, e.g.
    ``"queries: NaN or infinite values in row(s) 3, 17"``.
    """
    return check_matrix(x, name)


def undefined(what: str) -> float:
    """NaN with a :class:`RuntimeWarning` saying why (a statistic with nothing left to average)."""
    warnings.warn(f"{what}; the result is NaN", RuntimeWarning, stacklevel=3)
    return float("nan")


def zero_norm_rows(x, *, name: str = "embeddings") -> int:
    """How many rows of ``x`` have zero L2 norm: the rows that the cosine-based statistics leave out.

    A row counts as zero when its squared norm is 0 in the working precision (float32 for float16 / float32
    input, float64 otherwise; e.g. a float32 row whose entries are all below ~1e-23 in magnitude).
    """
    x = check_matrix(x, name)
    return x.shape[0] - _unit_sum(x)[1]


def _unit_sum(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of the L2-normalised non-zero rows of ``x`` (float64) and how many rows were non-zero."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    count = 0
    dt = work_dtype(x)
    for start, stop in row_blocks(x.shape[0]):
        units, nonzero = unit_block(x[start:stop], dt)
        total += units.sum(axis=0, dtype=np.float64)
        count += int(nonzero.sum())
    return total, count


def mean_pairwise_cosine(x, *, name: str = "embeddings") -> float:
    """Mean cosine similarity over all ordered pairs of distinct rows, exact, in O(N d).

    With :math:`u_i = x_i / \\lVert x_i \\rVert` over the M rows of non-zero norm,

    .. math:: \\frac{1}{M(M-1)} \\sum_{i \\ne j} u_i \\cdot u_j
              = \\frac{\\lVert \\sum_i u_i \\rVert^2 - M}{M(M-1)}

    since :math:`\\lVert \\sum_i u_i \\rVert^2 = \\sum_{i,j} u_i \\cdot u_j` and :math:`u_i \\cdot u_i = 1`.
    Near 0 for an isotropic distribution, 1 when all rows point the same way; large values signal the
    anisotropy of Ethayarajh (2019).

    Zero vectors: rows with zero norm (no direction) are left out, not taken as cosine 0: M counts only the
    other rows (:func:`zero_norm_rows` gives how many were left out). With M < 2 the mean is undefined: NaN,
    with a :class:`RuntimeWarning`.
    """
    x = check_matrix(x, name)
    total, m = _unit_sum(x)
    if m < 2:
        return undefined(f"{name}: mean pairwise cosine of {m} row(s) with non-zero norm (needs 2)")
    return float((total @ total - m) / (m * (m - 1)))


def cross_mean_cosine(q, d, *, names: tuple[str, str] = ("queries", "documents")) -> float:
    """Mean cosine similarity over all (query, document) pairs, exact, in O((Nq + Nd) dim).

    .. math:: \\frac{1}{N_q N_d} \\sum_{i, j} u^q_i \\cdot u^d_j = \\bar u^q \\cdot \\bar u^d

    with :math:`\\bar u` the mean of the L2-normalised non-zero rows of each side: zero vectors are left out
    (not taken as cosine 0), :math:`N_q, N_d` count the other rows (:func:`zero_norm_rows` gives how many were
    left out). NaN, with a :class:`RuntimeWarning`, when a side has no non-zero row.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    sq, mq = _unit_sum(q)
    sd, md = _unit_sum(d)
    if mq == 0 or md == 0:
        return undefined(f"{names[0] if mq == 0 else names[1]}: cross mean cosine without a row of non-zero norm")
    return float((sq / mq) @ (sd / md))


def covariance(x, *, center: bool = True, name: str = "embeddings") -> tuple[np.ndarray, np.ndarray]:
    """Mean vector and covariance (or second-moment) matrix of the rows, float64, in row blocks.

    Returns ``(mean [d], C [d, d])``. With ``center=True``,
    :math:`C = \\frac{1}{N-1} \\sum_i (x_i - \\mu)(x_i - \\mu)^\\top` (two passes: the mean, then the centred
    blocked :math:`X^\\top X`, so no cancellation when the mean dominates). With ``center=False``,
    :math:`C = \\frac{1}{N} X^\\top X` (the uncentred second moment). Memory: a few float64 row blocks plus
    the d x d matrix; fine for 1,000,000 x 384. Each block's product runs in the input precision (float32 for
    float32 / float16 input, float64 otherwise) and the blocks are summed in float64.
    """
    x = check_matrix(x, name, min_rows=2 if center else 1)
    n, dim = x.shape
    dt = work_dtype(x)
    mean = np.zeros(dim, dtype=np.float64)
    for start, stop in row_blocks(n):
        mean += np.asarray(x[start:stop]).sum(axis=0, dtype=np.float64)
    mean /= n
    acc = np.zeros((dim, dim), dtype=np.float64)
    shift = mean.astype(dt)
    for start, stop in row_blocks(n):
        b = np.asarray(x[start:stop], dtype=dt)
        if center:
            b = b - shift
        acc += b.T @ b
    acc = (acc + acc.T) / 2.0
    return mean, acc / ((n - 1) if center else n)


def _eigvalsh_desc(c: np.ndarray) -> np.ndarray:
    vals = np.linalg.eigvalsh(c)[::-1]
    return np.clip(vals, 0.0, None)


def pca_spectrum(x, *, cov: tuple[np.ndarray, np.ndarray] | None = None, name: str = "embeddings") -> dict:
    """PCA spectrum: eigenvalues of the (centred) covariance matrix in decreasing order.

    Returns ``{"eigenvalues": [d], "ratio": [d], "cumulative": [d]}`` where
    :math:`r_k = \\lambda_k / \\sum_j \\lambda_j` is the explained-variance ratio of the k-th principal
    component and ``cumulative[k-1]`` the variance explained by the first k components (Pearson 1901; the
    "dominating directions" of Mu & Viswanath 2018). Tiny negative eigenvalues from round-off are clipped
    to 0. All ratios are NaN when the total variance is 0 (all rows equal). ``cov`` may pass the result of
    ``covariance(x)`` computed once for several statistics (``x`` is then not read).
    """
    _, c = cov if cov is not None else covariance(x, center=True, name=name)
    vals = _eigvalsh_desc(c)
    total = vals.sum()
    if total > 0:
        ratio = vals / total
    else:
        ratio = np.full_like(vals, np.nan)
    return {"eigenvalues": vals, "ratio": ratio, "cumulative": np.cumsum(ratio)}


def variance_explained(spectrum, ks: Sequence[int] = (1, 10, 50)) -> dict[str, float]:
    """Share of the variance explained by the first k principal components, for each k in ``ks``.

    ``spectrum`` is the dict of :func:`pca_spectrum`, a 1-D array of covariance eigenvalues, or a 2-D data
    matrix (its spectrum is computed). Returns ``{"pc1": ..., "pc10": ..., "pc50": ...}`` with
    :math:`\\sum_{j \\le k} \\lambda_j / \\sum_j \\lambda_j`; k larger than the dimension gives 1.0.
    """
    if isinstance(spectrum, dict):
        vals = np.asarray(spectrum["eigenvalues"], dtype=np.float64)
    else:
        arr = np.asarray(spectrum)
        if arr.ndim == 2:
            vals = pca_spectrum(arr)["eigenvalues"]
        elif arr.ndim == 1:
            vals = np.sort(np.clip(arr.astype(np.float64), 0.0, None))[::-1]
        else:
            raise ValueError(f"spectrum: expected a dict, eigenvalues [d] or data [N, d], got shape {arr.shape}")
    total = vals.sum()
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"ks: expected positive component counts, got {k}")
        out[f"pc{k}"] = float(vals[:k].sum() / total) if total > 0 else float("nan")
    return out


def norm_stats(x, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), *,
               name: str = "embeddings") -> dict[str, float]:
    """Statistics of the row L2 norms :math:`\\lVert x_i \\rVert_2`.

    Returns ``{"mean", "std" (population, ddof=0), "min", "max", "q05", "q25", "q50", ...}`` (quantile keys
    are ``"q"`` + the percentage with two digits, e.g. 0.5 -> ``"q50"``, 0.995 -> ``"q99.5"``; linear
    interpolation as :func:`numpy.quantile`).
    """
    x = check_matrix(x, name)
    norms = np.empty(x.shape[0], dtype=np.float64)
    for start, stop in row_blocks(x.shape[0]):
        b = np.asarray(x[start:stop], dtype=np.float64)
        norms[start:stop] = np.sqrt(np.einsum("ij,ij->i", b, b))
    out = {"mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
           "max": float(norms.max())}
    qs = np.quantile(norms, list(quantiles)) if len(quantiles) else []
    for q, v in zip(quantiles, qs):
        pct = round(q * 100, 6)
        label = f"{pct:02.0f}" if float(pct).is_integer() else f"{pct:g}"
        out[f"q{label}"] = float(v)
    return out


def mean_vector_norm_ratio(x, *, name: str = "embeddings") -> float:
    """Norm of the mean vector relative to the mean norm: :math:`\\lVert \\frac1N \\sum_i x_i \\rVert /
    \\frac1N \\sum_i \\lVert x_i \\rVert`.

    In [0, 1]: 0 for a distribution centred at the origin, 1 when all rows are positive multiples of one
    vector (the common-mean-vector anisotropy removed by Mu & Viswanath 2018). NaN when every row is zero.
    """
    x = check_matrix(x, name)
    total = np.zeros(x.shape[1], dtype=np.float64)
    norm_sum = 0.0
    for start, stop in row_blocks(x.shape[0]):
        b = np.asarray(x[start:stop], dtype=np.float64)
        total += b.sum(axis=0)
        norm_sum += float(np.sqrt(np.einsum("ij,ij->i", b, b)).sum())
    if norm_sum == 0:
        return float("nan")
    return float(np.linalg.norm(total) / norm_sum)


def centroid_distance(q, d, *, normalize: bool = True, names: tuple[str, str] = ("queries", "documents")) -> float:
    """Euclidean distance between the query centroid and the document centroid.

    .. math:: \\lVert \\bar q - \\bar d \\rVert_2, \\quad \\bar q = \\frac{1}{N_q} \\sum_i q_i

    With ``normalize=True`` (default) the rows are L2-normalised first, so the value is in [0, 2] and
    comparable across models with different norm scales; zero vectors have no unit vector and are left out of
    the centroids (:func:`zero_norm_rows` counts them); NaN, with a :class:`RuntimeWarning`, when a side has no
    non-zero row. With ``normalize=False`` the raw vectors are averaged (zero rows included).
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    if normalize:
        sq, mq = _unit_sum(q)
        sd, md = _unit_sum(d)
        if mq == 0 or md == 0:
            return undefined(f"{names[0] if mq == 0 else names[1]}: normalised centroid without a row of "
                             f"non-zero norm")
        return float(np.linalg.norm(sq / mq - sd / md))
    cq = np.zeros(q.shape[1])
    cd = np.zeros(q.shape[1])
    for start, stop in row_blocks(q.shape[0]):
        cq += np.asarray(q[start:stop], dtype=np.float64).sum(axis=0)
    for start, stop in row_blocks(d.shape[0]):
        cd += np.asarray(d[start:stop], dtype=np.float64).sum(axis=0)
    return float(np.linalg.norm(cq / q.shape[0] - cd / d.shape[0]))


def negatives_to_pairs(negatives, rows=None) -> np.ndarray:
    """Turn a padded negatives matrix into ``[m, 2]`` index pairs.

    ``negatives`` is an int ``[R, n]`` array with -1 padding (e.g. the trainer's ``doc_negatives.npy``: row r =
    train query r, entries = corpus indices). ``rows`` gives the left index of each row (default
    ``arange(R)``). Returns the pairs ``(rows[r], negatives[r, j])`` for every entry ``>= 0``, row-major.
    """
    neg = np.asarray(negatives)
    if neg.ndim != 2:
        raise ValueError(f"negatives: expected a 2-D [rows, n] array, got shape {neg.shape}")
    if not np.issubdtype(neg.dtype, np.integer):
        raise ValueError(f"negatives: expected integer indices, got dtype {neg.dtype}")
    left = np.arange(neg.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if left.shape != (neg.shape[0],):
        raise ValueError(f"rows: expected {neg.shape[0]} entries, got shape {left.shape}")
    r, c = np.nonzero(neg >= 0)
    return np.stack([left[r], neg[r, c]], axis=1).astype(np.int64)


def _pair_cos_dist(q: np.ndarray, d: np.ndarray, pairs: np.ndarray, block: int = 65536):
    """Cosine and Euclidean distance of each pair (float64) and a mask of pairs with two non-zero rows."""
    cos = np.empty(len(pairs))
    dist = np.empty(len(pairs))
    ok = np.empty(len(pairs), dtype=bool)
    for start, stop in row_blocks(len(pairs), block):
        p = pairs[start:stop]
        a = np.asarray(q[p[:, 0]], dtype=np.float64)
        b = np.asarray(d[p[:, 1]], dtype=np.float64)
        na = np.sqrt(np.einsum("ij,ij->i", a, a))
        nb = np.sqrt(np.einsum("ij,ij->i", b, b))
        dot = np.einsum("ij,ij->i", a, b)
        good = (na > 0) & (nb > 0)
        cos[start:stop] = np.where(good, dot / np.where(good, na * nb, 1.0), np.nan)
        diff = a - b
        dist[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        ok[start:stop] = good
    return cos, dist, ok


def _group_summary(qidx: np.ndarray, cos: np.ndarray, dist: np.ndarray) -> dict:
    """Per-query means, then the mean over queries (macro average)."""
    if qidx.size == 0:
        return {"cosine_mean": float("nan"), "distance_mean": float("nan"), "cosine_pair_mean": float("nan"),
                "distance_pair_mean": float("nan"), "n_pairs": 0, "n_queries": 0}
    uq, inv = np.unique(qidx, return_inverse=True)
    cnt = np.bincount(inv, minlength=uq.size)
    cos_q = np.bincount(inv, weights=cos, minlength=uq.size) / cnt
    dist_q = np.bincount(inv, weights=dist, minlength=uq.size) / cnt
    return {"cosine_mean": float(cos_q.mean()), "distance_mean": float(dist_q.mean()),
            "cosine_pair_mean": float(cos.mean()), "distance_pair_mean": float(dist.mean()),
            "n_pairs": int(qidx.size), "n_queries": int(uq.size)}


def query_document_geometry(q, d, positive_pairs, negative_pairs=None, *, n_random: int = 10, seed=0,
                            bins: int | Sequence[float] = 40) -> dict:
    """How far a query is from its positives, from its mined negatives and from random documents.

    Inputs: query matrix ``q [Nq, dim]``, document matrix ``d [Nd, dim]``, ``positive_pairs`` and
    ``negative_pairs`` as int ``[m, 2]`` arrays of (row in ``q``, row in ``d``) (see :func:`negatives_to_pairs`
    for the trainer's padded negatives). The random group draws, for every query that has a positive pair,
    ``n_random`` documents uniformly with replacement from all of ``d`` with ``numpy.random.default_rng(seed)``
    (they may occasionally hit a positive; negligible for a real corpus).

    For each group g in {positive, negative, random} and each pair (i, j): cosine
    :math:`\\cos(q_i, d_j)` and Euclidean distance :math:`\\lVert q_i - d_j \\rVert_2` on the raw vectors.
    ``cosine_mean`` / ``distance_mean`` average per query first, then over the queries that have pairs in the
    group (macro average); ``*_pair_mean`` average over pairs. Pairs involving a zero-norm row are left out
    (counted in ``"excluded_pairs"``). The three cosine groups are histogrammed on shared bins: ``bins`` is a
    bin count (equal-width bins over [-1, 1]) or explicit edges.

    Returns ``{"positive": {...}, "negative": {...}, "random": {...}, "histogram": {"edges": [B+1],
    "positive": [B], "negative": [B], "random": [B]}, "excluded_pairs": int, "n_random": int, "seed": ...}``.
    Cf. the query-document distance analysis of DANCE (Li et al.) and the hard-negative statistics of
    sentence-transformers' ``mine_hard_negatives``.
    """
    q = check_matrix(q, "queries")
    d = check_matrix(d, "documents", dim=q.shape[1])
    pos = check_pairs(positive_pairs, q.shape[0], d.shape[0], "positive_pairs")
    neg = check_pairs(negative_pairs if negative_pairs is not None else np.zeros((0, 2), np.int64),
                      q.shape[0], d.shape[0], "negative_pairs")
    if n_random < 0:
        raise ValueError(f"n_random: expected >= 0, got {n_random}")
    rng = rng_from(seed)
    pos_queries = np.unique(pos[:, 0])
    rnd = np.stack([np.repeat(pos_queries, n_random),
                    rng.integers(0, d.shape[0], size=pos_queries.size * n_random)], axis=1).astype(np.int64)
    edges = np.linspace(-1.0, 1.0, int(bins) + 1) if np.ndim(bins) == 0 else np.asarray(bins, dtype=np.float64)
    out: dict = {"histogram": {"edges": edges}, "excluded_pairs": 0, "n_random": int(n_random),
                 "seed": seed if not isinstance(seed, np.random.Generator) else None}
    for group, pairs in (("positive", pos), ("negative", neg), ("random", rnd)):
        cos, dist, ok = _pair_cos_dist(q, d, pairs)
        out["excluded_pairs"] += int((~ok).sum())
        out[group] = _group_summary(pairs[ok, 0], cos[ok], dist[ok])
        out["histogram"][group] = np.histogram(np.clip(cos[ok], edges[0], edges[-1]), bins=edges)[0]
    return out
