"""One registry of the per-checkpoint numbers of a dance-analyze report: where each lives in a subject's results,
what a reader sees, which table it goes to, and whether it is drawn over the checkpoints of a run.

The tables of :mod:`dance_analysis.report.render` (one CSV each) and the trajectory figure of
:mod:`dance_analysis.report.figures` are built from :data:`COLUMNS`, so a new per-checkpoint statistic is its analysis
function, the line in :mod:`dance_analysis.report.compute` that stores it, and one :class:`Column` here. (The
statistics that decide the paper's claims have their own registry, :mod:`dance_analysis.comparison.measures`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..metrics import PRIMARY_METRIC
from .compute import D2Q_KS, Q2D_MEASURES

_PRIMARY = PRIMARY_METRIC.name

#: The tables, in page order: name -> title. The geometry table has one row per subject and side.
TABLES = {
    "ranking": "Ranking metrics",
    "geometry": "Anisotropy and isotropy",
    "query_document": "Query-document geometry",
    "alignment_uniformity": "Alignment and uniformity",
    "sampling": "Negative sampling",
}
SIDES = ("queries", "documents", "both")


@dataclass(frozen=True)
class Column:
    """A per-checkpoint number: ``path`` into a subject's results (``{side}`` is replaced by the row's side in the
    geometry table), its ``label``, its ``table``, and ``trajectory`` (the panel title when it is drawn over the
    checkpoints of a run)."""

    table: str
    label: str
    path: str
    trajectory: str | None = None

    def value(self, subject: dict, side: str | None = None) -> Any:
        node: Any = subject
        for key in self.path.format(side=side).split("/"):
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node


def _c(table: str, label: str, path: str, trajectory: str | None = None) -> Column:
    return Column(table, label, path, trajectory)


COLUMNS: tuple[Column, ...] = (
    _c("ranking", "embeddings", "embeddings_source"),
    _c("ranking", "queries", "ranking/q2d/queries"),
    *(_c("ranking", f"q2d {m}", f"ranking/q2d/{m}", f"q2d {m}" if m == _PRIMARY else None) for m in Q2D_MEASURES),
    _c("ranking", "d2q MRR@10", "ranking/d2q/MRR@10", "d2q MRR@10"),
    *(_c("ranking", f"d2q R@{k}", f"ranking/d2q/R@{k}") for k in D2Q_KS),
    _c("ranking", "d2q documents", "ranking/d2q/n_docs"),
    _c("ranking", f"dev {_PRIMARY} (trainer)", f"dev_metrics/{_PRIMARY}", f"dev {_PRIMARY} (trainer)"),
    _c("geometry", "rows", "geometry/{side}/rows"),
    _c("geometry", "mean pairwise cosine", "geometry/{side}/mean_cosine"),
    _c("geometry", "PC1 share", "geometry/{side}/pc1"),
    _c("geometry", "PC10 share", "geometry/{side}/pc10"),
    _c("geometry", "PC50 share", "geometry/{side}/pc50"),
    _c("geometry", "|mean| / mean norm", "geometry/{side}/mean_vector_norm_ratio"),
    _c("geometry", "IsoScore", "geometry/{side}/isoscore"),
    _c("geometry", "effective rank", "geometry/{side}/effective_rank"),
    _c("geometry", "I(W)", "geometry/{side}/partition_ratio"),
    _c("geometry", "norm mean", "geometry/{side}/norm/mean"),
    _c("geometry", "norm std", "geometry/{side}/norm/std"),
    _c("query_document", "centroid distance (unit)", "geometry/qd/centroid_distance", "q-d centroid distance"),
    _c("query_document", "centroid distance (raw)", "geometry/qd/centroid_distance_raw"),
    _c("query_document", "mean q-d cosine", "geometry/qd/cross_mean_cosine"),
    *(_c("query_document", f"cos {g}", f"geometry/qd/{g}/cosine_mean") for g in ("positive", "negative", "random")),
    *(_c("query_document", f"dist {g}", f"geometry/qd/{g}/distance_mean") for g in ("positive", "negative", "random")),
    _c("alignment_uniformity", "alignment", "alignment_uniformity/alignment", "alignment"),
    _c("alignment_uniformity", "uniformity queries", "alignment_uniformity/uniformity/queries/value"),
    _c("alignment_uniformity", "uniformity documents", "alignment_uniformity/uniformity/documents/value"),
    _c("alignment_uniformity", "uniformity both", "alignment_uniformity/uniformity/both/value", "uniformity (q+d)"),
    *(_c("alignment_uniformity", f"method {side}", f"alignment_uniformity/uniformity/{side}/method")
      for side in SIDES),
    _c("alignment_uniformity", "pairs", "alignment_uniformity/uniformity/both/pairs"),
    _c("sampling", "temperature", "sampling/temperature"),
    _c("sampling", "top K", "sampling/top_k"),
    _c("sampling", "q2d softmax entropy (norm.)", "sampling/q2d_softmax/entropy_norm_mean"),
    _c("sampling", "q2d max prob", "sampling/q2d_softmax/max_prob_mean"),
    _c("sampling", "q2d positive mass", "sampling/q2d_softmax/positive_mass_mean"),
    _c("sampling", "d2q softmax entropy (norm.)", "sampling/d2q_softmax/entropy_norm_mean", "d2q softmax entropy"),
    _c("sampling", "d2q max prob", "sampling/d2q_softmax/max_prob_mean"),
    _c("sampling", "doc draws entropy (norm.)", "sampling/split_counts/documents/entropy_norm"),
    _c("sampling", "doc draws Gini", "sampling/split_counts/documents/gini"),
    _c("sampling", "docs never drawn", "sampling/split_counts/documents/never_share"),
    _c("sampling", "query draws entropy (norm.)", "sampling/split_counts/queries/entropy_norm"),
    _c("sampling", "query draws Gini", "sampling/split_counts/queries/gini", "query draws Gini (d2q sampler)"),
    _c("sampling", "queries never drawn", "sampling/split_counts/queries/never_share"),
    _c("sampling", "refresh doc Gini", "sampling/trainer_counts/documents/gini"),
    _c("sampling", "refresh query entropy (norm.)", "sampling/trainer_counts/queries/entropy_norm"),
    _c("sampling", "refresh query Gini", "sampling/trainer_counts/queries/gini"),
    _c("sampling", "refresh queries never drawn", "sampling/trainer_counts/queries/never_share"),
)

#: Trajectory panels that are not table columns (a side of the geometry table).
EXTRA_TRAJECTORIES: tuple[Column, ...] = (
    _c("geometry", "query mean cosine", "geometry/queries/mean_cosine", "query mean cosine"),
    _c("geometry", "query IsoScore", "geometry/queries/isoscore", "query IsoScore"),
)


def table_columns(table: str) -> list[Column]:
    """The columns of ``table``, in order."""
    return [c for c in COLUMNS if c.table == table]


def trajectory_columns() -> list[Column]:
    """The numbers drawn over the checkpoints of a run, in panel order."""
    return [c for c in (*COLUMNS, *EXTRA_TRAJECTORIES) if c.trajectory]
