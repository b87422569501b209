"""Negative-sampling probability distributions.

(a) :func:`softmax_stats`: per query (q2d) or per positive document (d2q), the softmax over its top-K retrieval
    scores at the training temperature, the distribution that score-based negative sampling draws from.
(b) :func:`count_distribution_stats`, :func:`gini`, :func:`lorenz_curve`: how evenly the negatives drawn at a
    refresh are spread over the documents (q2d side) or the queries (d2q side), from the trainer's counts.

DANCE claims (its C4) that the query side receives more uniform sampling probabilities, so more queries are
optimised: higher normalised entropy, lower Gini coefficient, smaller share never drawn.
"""

from __future__ import annotations

import numpy as np

from ._common import check_vector, row_blocks

__all__ = ["softmax_stats", "count_distribution_stats", "gini", "lorenz_curve"]


def _nan_stat(fn, a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(fn(a)) if a.size else float("nan")


def softmax_stats(scores, positive_mask=None, *, temperature: float = 1.0) -> dict:
    """Entropy, largest probability and positive mass of the per-row softmax over top-K scores.

    ``scores`` is float ``[n, K]`` (row = one query's top-K document scores, or one document's top-K query
    scores); ``-inf`` marks padding (probability 0, not counted in K); NaN raises :class:`ValueError` naming
    the rows. With :math:`p_{k} = \\exp(s_k/\\tau) / \\sum_{l} \\exp(s_l/\\tau)` (computed stably):

    - entropy :math:`H = -\\sum_k p_k \\log p_k` (nats) and normalised entropy :math:`H / \\log K_{row}`
      (1 = uniform over the row's K finite candidates; NaN when K_row < 2);
    - largest probability :math:`\\max_k p_k`;
    - positive mass :math:`\\sum_{k \\in pos} p_k` when ``positive_mask`` (bool ``[n, K]``) is given.

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
