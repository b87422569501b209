"""The plain arrays behind the comparison figures (queries against documents, sampling, per-query differences).

Kept apart from the drawing (:mod:`dance_analysis.report.comparison_figures`), which reads this dict only:
``rr_differences`` (per tested query, RR@10 of treatment minus control, folds pooled) with ``difference_arms``;
``sampling`` (arm -> each pool query's expected draws as a negative, K = 10, folds pooled); ``projections`` (arm ->
(query xy, passage xy) of one fold, axes aligned across arms by :func:`~dance_analysis.analysis.projection.
aligned_pca`); ``nearest`` (arm -> (per query, per passage) mean cosine to the 10 nearest passages); ``norms``
(arm -> (query norms, passage norms)); ``projection_fold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis.projection import aligned_pca
from .measures import METRIC_BY_KEY, doc_sample, nearest_levels, sampling_probabilities
from .spaces import Space


def figure_arrays(folds: Sequence[dict[str, Space]], *, treatment: str = "dance", control: str = "ance",
                  projection_fold: int = 0) -> dict:
    """The figure inputs of arms compared on ``folds`` (see the module docstring)."""
    rr = METRIC_BY_KEY["q2d.MRR@10"]
    out: dict = {"projection_fold": projection_fold, "projections": {}, "nearest": {}, "norms": {}, "sampling": {},
                 "difference_arms": (treatment, control)}
    if treatment in folds[0] and control in folds[0]:
        out["rr_differences"] = np.concatenate([rr.values(f[treatment]) - rr.values(f[control]) for f in folds])
    fold = folds[projection_fold]
    sample = doc_sample(next(iter(fold.values())))
    coords = aligned_pca([s.corpus[sample] for s in fold.values()], [s.test_queries for s in fold.values()])
    for (arm, space), (d_xy, q_xy) in zip(fold.items(), coords):
        out["projections"][arm] = (q_xy, d_xy)
        near = nearest_levels(space)
        out["nearest"][arm] = (np.asarray(near["per_query"]), np.asarray(near["per_document"]))
        out["norms"][arm] = (np.linalg.norm(space.test_queries, axis=1), np.linalg.norm(space.corpus[sample], axis=1))
        out["sampling"][arm] = np.concatenate([sampling_probabilities(f[arm], 10) for f in folds])
    return out
