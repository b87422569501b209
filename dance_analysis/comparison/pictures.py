"""The plain arrays behind the comparison figures (queries against documents, sampling, per-query differences).

Kept apart from the drawing (:mod:`dance_analysis.report.comparison_figures`), which reads this dict only:
``rr_differences`` (per tested query, RR@10 of treatment minus control, each averaged over the arm's training
seeds, folds pooled) with ``difference_arms``; ``sampling`` (arm -> each pool query's expected draws as a negative,
K = ``PRIMARY_K``, averaged over seeds, folds pooled) with ``sampling_k``; ``projections`` (arm -> (query xy,
passage xy) of one fold and the arm's first seed, axes aligned across arms by
:func:`~dance_analysis.analysis.projection.aligned_pca`); ``nearest`` (arm -> (per query, per passage) mean cosine
to the 10 nearest passages); ``norms`` (arm -> (query norms, passage norms)); ``projection_fold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis.projection import aligned_pca
from .measures import METRIC_BY_KEY, PRIMARY_K, doc_sample, nearest_levels, sampling_probabilities
from .spaces import Space
from .statistics import Folds, as_seed_lists


def _seed_mean(fn, spaces: Sequence[Space]) -> np.ndarray:
    return np.mean([np.asarray(fn(s), dtype=np.float64) for s in spaces], axis=0)


def figure_arrays(folds: Folds, *, treatment: str = "dance", control: str = "ance", projection_fold: int = 0) -> dict:
    """The figure inputs of arms compared on ``folds`` (per fold, per arm, a list of spaces, one per training
    seed; see the module docstring)."""
    folds = as_seed_lists(folds)
    rr = METRIC_BY_KEY["q2d.MRR@10"]
    out: dict = {"projection_fold": projection_fold, "projections": {}, "nearest": {}, "norms": {}, "sampling": {},
                 "difference_arms": (treatment, control), "sampling_k": PRIMARY_K}
    if treatment in folds[0] and control in folds[0]:
        out["rr_differences"] = np.concatenate([_seed_mean(rr.values, f[treatment]) - _seed_mean(rr.values, f[control])
                                                for f in folds])
    fold = {arm: spaces[0] for arm, spaces in folds[projection_fold].items()}
    sample = doc_sample(next(iter(fold.values())))
    coords = aligned_pca([s.corpus[sample] for s in fold.values()], [s.test_queries for s in fold.values()])
    k = PRIMARY_K
    for (arm, space), (d_xy, q_xy) in zip(fold.items(), coords):
        out["projections"][arm] = (q_xy, d_xy)
        near = nearest_levels(space)
        out["nearest"][arm] = (np.asarray(near["per_query"]), np.asarray(near["per_document"]))
        out["norms"][arm] = (np.linalg.norm(space.test_queries, axis=1), np.linalg.norm(space.corpus[sample], axis=1))
        if all(len(f[arm][0].units.pool_rows) for f in folds):
            out["sampling"][arm] = np.concatenate(
                [_seed_mean(lambda s: sampling_probabilities(s, min(k, s.pool_topk.shape[1])), f[arm])
                 for f in folds])
    return out
