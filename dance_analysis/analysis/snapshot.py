"""Cheap statistics of the embedding space at a refresh: how the space moves while a model trains.

At every refresh the trainer holds fresh corpus and query vectors. :func:`refresh_geometry` summarises them in a
few numbers, each computable in time linear in the number of vectors (or on a fixed-size sample), so that logging
them costs a small share of a refresh (the encoding dominates): mean pairwise cosine of queries and of documents
(sum-of-unit-vectors identity), sampled uniformity (Wang & Isola, ICML 2020), the linear-kernel MMD² between
queries and documents (Gretton et al., JMLR 2012), mean norms, and how the mined negatives score against the
positives (false negatives and too-easy negatives show here: ANCE, Xiong et al., ICLR 2021, section 3), and, where
the judgments grade levels below the relevance threshold, how many drawn negatives were judged partly relevant
(likely false negatives: RocketQA, Qu et al., NAACL 2021, section 3.2, counts such unlabelled positives among the
hard negatives of MS MARCO).
"""

from __future__ import annotations

import numpy as np

from .align_uniform import uniformity
from .claim_metrics import mmd2_linear_unbiased
from .geometry import mean_pairwise_cosine, norm_stats

__all__ = ["refresh_geometry", "negative_score_margins", "partly_relevant_share"]

#: Pairs sampled for the uniformity of documents (exact below ``max_exact`` points, as in ``uniformity``).
UNIFORMITY_PAIRS = 20_000


def negative_score_margins(queries, corpus, pairs, doc_negatives) -> np.ndarray:
    """s(q, d-) - s(q, d+) for every positive pair (q, d+) and every mined negative d- of q (inner products).

    ``pairs`` is int [m, 2] of (query row, corpus row); ``doc_negatives`` int [n_queries, n] of corpus rows per
    query row (-1 = none). Returns float64 [m * n] without the empty places; a value >= 0 is a negative that
    scores at least as high as the positive (a likely false negative, or a hard one).
    """
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(corpus, dtype=np.float32)
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    neg = np.asarray(doc_negatives, dtype=np.int64)
    if len(p) == 0:
        return np.zeros(0)
    rows = neg[p[:, 0]]                                   # [m, n]
    valid = rows >= 0
    qv = q[p[:, 0]]
    pos = np.einsum("ij,ij->i", qv, d[p[:, 1]]).astype(np.float64)
    negs = np.einsum("ij,ikj->ik", qv, d[np.maximum(rows, 0)]).astype(np.float64)
    return (negs - pos[:, None])[valid]


#: Quantiles of s(q, d-) - s(q, d+) logged at each refresh (``negatives.margin_q10`` ...).
MARGIN_QUANTILES = {"q10": 0.1, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q90": 0.9}


def partly_relevant_share(negative_grades, min_relevance: int) -> float:
    """The share of drawn negatives judged partly relevant: 1 <= grade < ``min_relevance``.

    ``negative_grades`` int [rows, n]: the judged grade of each drawn negative for its query (0 unjudged, -1 an
    empty place, :func:`dance_analysis.mining.negative_grades`). NaN when nothing was drawn, or when
    ``min_relevance`` <= 1 (no grade lies between "judged" and "relevant").
    """
    grades = np.asarray(negative_grades)
    drawn = grades >= 0
    if min_relevance <= 1 or not drawn.any():
        return float("nan")
    return float(((grades >= 1) & (grades < min_relevance) & drawn).sum() / drawn.sum())


def refresh_geometry(queries, corpus, *, train_rows=None, pairs=None, doc_negatives=None, seed: int = 0,
                     negative_grades=None, min_relevance: int = 1) -> dict:
    """A handful of space statistics from the vectors of one refresh (float keys, JSON-able).

    ``queries`` [nq, dim] (all queries the refresh encoded), ``corpus`` [nd, dim]; with ``train_rows`` (rows of
    the training queries in ``queries``), ``pairs`` and ``doc_negatives`` (as the miner uses them, query rows
    relative to the training queries) the negatives' margins are summarised too: their quantiles and the share
    at or above the positive. Keys: ``queries.mean_cosine``, ``documents.mean_cosine``,
    ``documents.uniformity`` (t = 2, sampled), ``qd.mmd2``, ``queries.norm_mean``, ``documents.norm_mean``, and
    ``negatives.above_positive``, ``negatives.margin_q10/q25/q50/q75/q90`` when the negatives are given.
    With ``negative_grades`` (int like ``doc_negatives``: the judged grade of each drawn negative, 0 unjudged,
    -1 empty) and ``min_relevance`` >= 2: ``negatives.partly_relevant``, the share of drawn negatives with
    1 <= grade < min_relevance (:func:`partly_relevant_share`).
    """
    q = np.asarray(queries)
    d = np.asarray(corpus)
    out = {
        "queries.mean_cosine": float(mean_pairwise_cosine(q, name="queries")),
        "documents.mean_cosine": float(mean_pairwise_cosine(d, name="documents")),
        "documents.uniformity": float(uniformity(d, t=2.0, n_pairs=UNIFORMITY_PAIRS, seed=seed,
                                                 name="documents")["value"]),
        "qd.mmd2": float(mmd2_linear_unbiased(q, d)),
        "queries.norm_mean": float(norm_stats(q, (), name="queries")["mean"]),
        "documents.norm_mean": float(norm_stats(d, (), name="documents")["mean"]),
    }
    if pairs is not None and doc_negatives is not None and train_rows is not None:
        margins = negative_score_margins(np.asarray(q)[np.asarray(train_rows)], d, pairs, doc_negatives)
        if margins.size:
            out["negatives.above_positive"] = float((margins >= 0).mean())
            values = np.quantile(margins, list(MARGIN_QUANTILES.values()))
            for name, value in zip(MARGIN_QUANTILES, values):
                out[f"negatives.margin_{name}"] = float(value)
    if negative_grades is not None and min_relevance >= 2:
        share = partly_relevant_share(negative_grades, min_relevance)
        if np.isfinite(share):
            out["negatives.partly_relevant"] = share
    return out
