"""Negative-sampling probability distributions.

(a) :func:`softmax_stats`: per query (q2d) or per positive document (d2q), the softmax over its top-K retrieval
    scores at the training temperature, the distribution that score-based negative sampling draws from.
(b) :func:`count_distribution_stats`, :func:`gini`, :func:`lorenz_curve`: how evenly the negatives drawn at a
    refresh are spread over the documents (q2d side) or the queries (d2q side), from the trainer's counts.

(c) :func:`negative_sampling_marginals`, :func:`sampling_uniformity`: the exact expected number of times each
    query is drawn as a negative by the uniform top-K sampler of the dual task (no Monte Carlo, no trainer run
    needed), and how evenly it is spread.

DANCE claims (its C4) that the query side receives more uniform sampling probabilities, so more queries are
optimised: higher normalised entropy, lower Gini coefficient, smaller share never drawn.
"""

from __future__ import annotations

import numpy as np

from ._common import _row_list, check_vector, row_blocks

__all__ = ["softmax_stats", "count_distribution_stats", "gini", "lorenz_curve", "negative_sampling_marginals",
           "sampling_uniformity"]


def _nan_stat(fn, a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(fn(a)) if a.size else float("nan")


def softmax_stats(scores, positive_mask=None, *, temperature: float = 1.0, drop_positives: bool = False) -> dict:
    """Entropy, largest probability and positive mass of the per-row softmax over top-K scores.

    ``scores`` is float ``[n, K]`` (row = one query's top-K document scores, or one document's top-K query
    scores); ``-inf`` marks padding (probability 0, not counted in K); NaN raises :class:`ValueError` naming
    the rows. With :math:`p_{k} = \\exp(s_k/\\tau) / \\sum_{l} \\exp(s_l/\\tau)` (computed stably):

    - entropy :math:`H = -\\sum_k p_k \\log p_k` (nats) and normalised entropy :math:`H / \\log K_{row}`
      (1 = uniform over the row's K finite candidates; NaN when K_row < 2);
    - largest probability :math:`\\max_k p_k`;
    - positive mass :math:`\\sum_{k \\in pos} p_k` when ``positive_mask`` (bool ``[n, K]``) is given.

    ``drop_positives=True`` (needs ``positive_mask``) removes the positives before the softmax: their scores
    are set to ``-inf`` (like padding), so p, K, the entropy and the largest probability are those of the
    distribution over the row's negative candidates only, and ``positive_mass`` is 0. Use it for the d2q
    negative-sampling distribution (row = one positive document's top-K query scores, mask = its positive
    queries): with the positives kept in, the own query usually holds most of the mass and the entropy mostly
    measures the model's confidence on it, not how evenly the query negatives would be drawn.

    Rows without any finite score get NaN everywhere and are left out of the summaries. Returns per-row arrays
    ``"entropy"``, ``"entropy_norm"``, ``"max_prob"``, ``"k"`` (and ``"positive_mass"``) plus the summaries
    ``"entropy_mean"``, ``"entropy_norm_mean"``, ``"entropy_norm_median"``, ``"max_prob_mean"``,
    ``"max_prob_median"`` (and ``"positive_mass_mean"``), ``"temperature"``, ``"n"``.
    Reference: Xiong et al. 2021 (ANCE), Li et al. (DANCE) for sampling negatives from retrieval scores.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array [n, K], got shape {s.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    mask = None
    if positive_mask is not None:
        mask = np.asarray(positive_mask, dtype=bool)
        if mask.shape != s.shape:
            raise ValueError(f"positive_mask: expected shape {s.shape}, got {mask.shape}")
    elif drop_positives:
        raise ValueError("drop_positives=True needs positive_mask (which entries are positives)")
    n = s.shape[0]
    entropy = np.empty(n)
    max_prob = np.empty(n)
    k = np.empty(n, dtype=np.int64)
    pos = np.empty(n) if mask is not None else None
    bad: list[np.ndarray] = []
    for start, stop in row_blocks(n, 8192):
        b = np.asarray(s[start:stop], dtype=np.float64)
        wrong = np.isnan(b).any(axis=1) | np.isposinf(b).any(axis=1)
        if wrong.any():
            bad.append(np.flatnonzero(wrong) + start)
            continue
        finite = np.isfinite(b)
        if drop_positives:
            finite &= ~mask[start:stop]
        kb = finite.sum(axis=1)
        has = kb > 0
        z = np.where(finite, b / temperature, -np.inf)
        zmax = np.where(has, z.max(axis=1, initial=-np.inf), 0.0)
        e = np.exp(z - zmax[:, None])                     # exp(-inf) = 0 for padding
        p = e / np.where(has, e.sum(axis=1), 1.0)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy[start:stop] = np.where(has, -plogp.sum(axis=1), np.nan)
        max_prob[start:stop] = np.where(has, p.max(axis=1), np.nan)
        k[start:stop] = kb
        if pos is not None:
            pos[start:stop] = np.where(has, (p * mask[start:stop]).sum(axis=1), np.nan)
    if bad:
        rows = np.concatenate(bad)
        shown = ", ".join(str(int(r)) for r in rows[:10])
        raise ValueError(f"scores: NaN or +inf values in row(s) {shown}"
                         + (f", ... ({rows.size} rows in all)" if rows.size > 10 else ""))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy_norm = np.where(k >= 2, entropy / np.log(np.maximum(k, 2)), np.nan)
    out = {"entropy": entropy, "entropy_norm": entropy_norm, "max_prob": max_prob, "k": k,
           "entropy_mean": _nan_stat(np.mean, entropy), "entropy_norm_mean": _nan_stat(np.mean, entropy_norm),
           "entropy_norm_median": _nan_stat(np.median, entropy_norm),
           "max_prob_mean": _nan_stat(np.mean, max_prob), "max_prob_median": _nan_stat(np.median, max_prob),
           "temperature": float(temperature), "n": int(n)}
    if pos is not None:
        out["positive_mass"] = pos
        out["positive_mass_mean"] = _nan_stat(np.mean, pos)
    return out


def _counts(counts, name: str = "counts") -> np.ndarray:
    c = check_vector(counts, name)
    if (c < 0).any():
        bad = np.flatnonzero(c < 0)
        raise ValueError(f"{name}: expected non-negative counts, got negative values at position(s) "
                         + ", ".join(str(int(i)) for i in bad[:10]))
    return c


def gini(counts) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, (n-1)/n = all on one item).

    .. math:: G = \\frac{\\sum_{i=1}^{n} (2i - n - 1)\\, x_{(i)}}{n \\sum_i x_i}

    with :math:`x_{(i)}` sorted ascending (equal to the mean absolute difference
    :math:`\\sum_{i,j} |x_i - x_j| / (2 n^2 \\bar x)`; Gini 1912). NaN when all counts are 0 or n = 0.
    """
    c = np.sort(_counts(counts))
    n = c.size
    total = c.sum()
    if n == 0 or total == 0:
        return float("nan")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * c).sum() / (n * total))


def lorenz_curve(counts, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of the counts: share of all draws held by the least-drawn fraction x of the items.

    Items sorted ascending; the exact curve joins :math:`(i/n, \\sum_{k \\le i} x_{(k)} / \\sum_k x_k)` for
    i = 0..n; it is returned sampled at ``n_points`` evenly spaced x in [0, 1] by linear interpolation
    (exact at the joints). The diagonal y = x means perfect equality. y is NaN when all counts are 0.
    """
    c = np.sort(_counts(counts))
    if n_points < 2:
        raise ValueError(f"n_points: expected >= 2, got {n_points}")
    xs = np.linspace(0.0, 1.0, n_points)
    total = c.sum()
    if c.size == 0 or total == 0:
        return xs, np.full(n_points, np.nan)
    cx = np.arange(c.size + 1) / c.size
    cy = np.concatenate([[0.0], np.cumsum(c) / total])
    return xs, np.interp(xs, cx, cy)


def count_distribution_stats(counts) -> dict[str, float]:
    """How evenly negatives were drawn over items (documents or queries), from per-item draw counts.

    With :math:`p_i = c_i / \\sum_j c_j` over the n items: entropy :math:`H = -\\sum_i p_i \\log p_i` (nats),
    normalised entropy :math:`H / \\log n` (1 = every item drawn equally often), Gini coefficient
    (:func:`gini`), share of items never drawn :math:`|\\{i: c_i = 0\\}| / n`, and the largest share
    :math:`\\max_i p_i`. Returns ``{"n", "total", "entropy", "entropy_norm", "gini", "never_share",
    "max_share"}``; with no draws at all (e.g. ANCE's query counts) the distribution is undefined: entropy,
    entropy_norm, gini and max_share are NaN and never_share is 1.
    """
    c = _counts(counts)
    n = c.size
    total = float(c.sum())
    out: dict[str, float] = {"n": int(n), "total": total,
                             "never_share": float((c == 0).mean()) if n else float("nan")}
    if n == 0 or total == 0:
        out.update(entropy=float("nan"), entropy_norm=float("nan"), gini=float("nan"), max_share=float("nan"))
        return out
    p = c[c > 0] / total
    h = float(-(p * np.log(p)).sum())
    out["entropy"] = h
    out["entropy_norm"] = h / float(np.log(n)) if n > 1 else float("nan")
    out["gini"] = gini(c)
    out["max_share"] = float(p.max())
    return out


def _first_valid(ids: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Mask of the entries that are candidates: not -1 padding, the first occurrence of their value in the row,
    and not ``excluded`` (a later repeat of a value never counts, whatever its own mask says)."""
    order = np.argsort(ids, axis=1, kind="stable")          # equal values keep their column order
    srt = np.take_along_axis(ids, order, axis=1)
    first_sorted = np.ones(ids.shape, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first & (ids >= 0) & ~excluded


def negative_sampling_marginals(topk_ids, positive_mask, *, n_queries: int, n: int = 20) -> np.ndarray:
    """Expected number of times each query of the pool is drawn as a negative: the exact marginals of the
    uniform top-K sampler of the dual task (DANCE's query negatives, Li et al., ICTIR 2021; the document-side
    analogue is ANCE's, Xiong et al., ICLR 2021).

    ``topk_ids`` is int ``[R, K]``: row r = one anchor (a positive document), entries = rows of the query pool
    (``0 <= id < n_queries``) retrieved for it, -1 = padding; ``positive_mask`` is bool ``[R, K]``, True where
    the entry is a positive query of the anchor. The anchor's candidates cand(r) are its retrieved queries minus
    padding, minus its positives, minus repeats (a query is a candidate when its FIRST occurrence in the row is
    unmasked), and the sampler draws min(n, |cand(r)|) of them uniformly without replacement, so each candidate
    is drawn with probability min(n, |cand(r)|) / |cand(r)|:

    .. math:: \\pi(q) = \\sum_r \\mathbf 1[q \\in \\mathrm{cand}(r)] \\,
              \\frac{\\min(n, |\\mathrm{cand}(r)|)}{|\\mathrm{cand}(r)|}

    (a sum of per-anchor inclusion probabilities, each <= 1; anchors with no candidate add nothing). This is the
    rule of the project's trainer, which draws once per positive pair (q, d+) from d+'s top-K minus every query
    labelled positive for d+: pass one row per positive pair (repeat a document's row for each of its positive
    pairs) and :math:`\\pi` is the expected value of that refresh's per-query draw counts. Returns float64
    ``[n_queries]``; queries that are nobody's candidate get exactly 0.
    """
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise ValueError(f"topk_ids: expected a 2-D array [anchors, K], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"topk_ids: expected integer query rows, got dtype {ids.dtype}")
    mask = np.asarray(positive_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"positive_mask: expected shape {ids.shape}, got {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"positive_mask: expected a bool array, got dtype {mask.dtype}")
    if int(n_queries) != n_queries or n_queries < 1:
        raise ValueError(f"n_queries: expected a positive integer, got {n_queries}")
    if int(n) != n or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n}")
    bad = np.flatnonzero(((ids < -1) | (ids >= n_queries)).any(axis=1))
    if bad.size:
        raise ValueError(f"topk_ids: query row out of range [-1, {n_queries}) in row(s) "
                         f"{_row_list(bad, bad.size)}")
    pi = np.zeros(int(n_queries), dtype=np.float64)
    for start, stop in row_blocks(ids.shape[0], 65536):
        block = ids[start:stop].astype(np.int64)
        cand = _first_valid(block, mask[start:stop])
        size = cand.sum(axis=1)
        prob = np.minimum(n, size) / np.maximum(size, 1)     # inclusion probability of each candidate of the row
        pi += np.bincount(block[cand], weights=np.broadcast_to(prob[:, None], cand.shape)[cand],
                          minlength=pi.size)
    return pi


def sampling_uniformity(pi) -> dict[str, float]:
    """How evenly negative-sampling marginals (e.g. of :func:`negative_sampling_marginals`) spread over the pool.

    The statistics of :func:`count_distribution_stats` on :math:`\\pi` (expected draw counts instead of realised
    ones): Gini coefficient (:func:`gini`), share of the pool with :math:`\\pi(q) = 0` (never a candidate),
    normalised entropy :math:`-\\sum_q p_q \\log p_q / \\log n` of :math:`p = \\pi / \\sum \\pi`, and the largest
    share. Returns ``{"gini", "zero_share", "entropy_norm", "entropy", "max_share", "n", "total"}``; DANCE's C4
    predicts a lower Gini, a smaller zero share and a higher normalised entropy. With :math:`\\sum \\pi = 0`
    all but ``zero_share`` (1) and ``n`` are NaN or 0 as in :func:`count_distribution_stats`.
    """
    stats = count_distribution_stats(pi)
    return {"gini": stats["gini"], "zero_share": stats["never_share"], "entropy_norm": stats["entropy_norm"],
            "entropy": stats["entropy"], "max_share": stats["max_share"], "n": stats["n"], "total": stats["total"]}
