"""The dual task d2q: positive documents retrieving their queries (DANCE's query-retrieval direction).

For every document that has a positive pair, all queries are scored by inner product
:math:`s(d, q) = d \\cdot q` (the retrieval score of the dual encoder) and ranked; the document's positive
queries are its relevant items. Exact, blocked matrix products; no index needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_matrix, check_pairs

__all__ = ["d2q_ranks", "d2q_metrics"]


def d2q_ranks(q, d, pairs, *, block_size: int = 256) -> np.ndarray:
    """Rank (1-based) of each positive pair's query among all queries, for the pair's document.

    ``q [Nq, dim]`` and ``d [Nd, dim]`` are the query and document embeddings, ``pairs`` an int ``[m, 2]``
    array of positive (query row, document row). For pair (i, j):

    .. math:: \\mathrm{rank}(i \\mid j) = 1 + |\\{k : s_{jk} > s_{ji}\\}| + |\\{k < i : s_{jk} = s_{ji}\\}|,
              \\quad s_{jk} = d_j \\cdot q_k

    i.e. ties are broken by the lower query index (the same rule as the q2d search). Other positive queries
    of the same document count as ranked above when they score higher. Returns int64 ``[m]`` in the order of
    ``pairs`` (duplicate pairs get the same rank). Scores are float32 products, as the retrieval index uses.
    """
    q = check_matrix(q, "queries")
    d = check_matrix(d, "documents", dim=q.shape[1])
    p = check_pairs(pairs, q.shape[0], d.shape[0])
    ranks = np.empty(len(p), dtype=np.int64)
    if len(p) == 0:
        return ranks
    qt = np.ascontiguousarray(np.asarray(q, dtype=np.float32).T)
    order = np.argsort(p[:, 1], kind="stable")
    sp = p[order]
    docs, starts = np.unique(sp[:, 1], return_index=True)
    bounds = np.append(starts, len(sp))
    qidx = np.arange(q.shape[0])
    for b0 in range(0, len(docs), block_size):
        b1 = min(b0 + block_size, len(docs))
        scores = np.asarray(d[docs[b0:b1]], dtype=np.float32) @ qt  # [B, Nq]
        lo, hi = bounds[b0], bounds[b1]
        rows = np.repeat(np.arange(b1 - b0), np.diff(bounds[b0:b1 + 1]))
        cols = sp[lo:hi, 0]
        own = scores[rows, cols][:, None]
        srow = scores[rows]
        higher = (srow > own).sum(axis=1)
        ties_before = ((srow == own) & (qidx[None, :] < cols[:, None])).sum(axis=1)
        ranks[order[lo:hi]] = 1 + higher + ties_before
    return ranks


def d2q_metrics(q, d, pairs, *, ks: Sequence[int] = (1, 10, 100), mrr_cutoff: int = 10,
                block_size: int = 256) -> dict[str, float]:
    """MRR@cutoff and Recall@k of the dual task: each positive document ranks all queries.

    Per document j with relevant (positive) queries :math:`R_j` and ranks from :func:`d2q_ranks`:

    - reciprocal rank :math:`RR_j = 1 / \\min_{i \\in R_j} \\mathrm{rank}(i \\mid j)` when that rank is
      <= ``mrr_cutoff``, else 0; ``"MRR@10"`` is its mean over documents (TREC / MS MARCO definition);
    - :math:`R@k_j = |\\{i \\in R_j : \\mathrm{rank}(i \\mid j) \\le k\\}| / |R_j|` (all positive queries are
      relevant, as ir-measures' ``R@k``); ``"R@k"`` is its mean over documents.

    Duplicate pairs are counted once. Returns ``{"MRR@10": ..., "R@1": ..., "R@10": ..., "R@100": ...,
    "n_docs": ..., "n_pairs": ...}`` (NaN metrics when there is no pair).
    """
    q = check_matrix(q, "queries")
    d = check_matrix(d, "documents", dim=q.shape[1])
    p = check_pairs(pairs, q.shape[0], d.shape[0])
    p = np.unique(p, axis=0) if len(p) else p
    out: dict[str, float] = {}
    if len(p) == 0:
        out[f"MRR@{mrr_cutoff}"] = float("nan")
        for k in ks:
            out[f"R@{k}"] = float("nan")
        out["n_docs"] = 0
        out["n_pairs"] = 0
        return out
    ranks = d2q_ranks(q, d, p, block_size=block_size)
    docs, inv = np.unique(p[:, 1], return_inverse=True)
    first = np.full(docs.size, np.iinfo(np.int64).max)
    np.minimum.at(first, inv, ranks)
    rr = np.where(first <= mrr_cutoff, 1.0 / first, 0.0)
    out[f"MRR@{mrr_cutoff}"] = float(rr.mean())
    n_rel = np.bincount(inv, minlength=docs.size)
    for k in ks:
        hits = np.bincount(inv, weights=(ranks <= k).astype(np.float64), minlength=docs.size)
        out[f"R@{k}"] = float((hits / n_rel).mean())
    out["n_docs"] = int(docs.size)
    out["n_pairs"] = int(len(p))
    return out
