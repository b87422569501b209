"""Arms compared on the same queries: their vectors per fold (:mod:`.spaces`), the registry of metrics that test
the paper's claims (:mod:`.measures`), and the paired statistics and verdicts (:mod:`.statistics`).

Used by the cross-validated experiment (:mod:`dance_analysis.reproduce`, several folds) and by ``dance-analyze``
(one fold: the analysed split). Reference: Li et al., "More Robust Dense Retrieval with Contrastive Dual
Learning", ICTIR 2021 (DANCE), abstract and section 5 for the claims C1-C5.
"""

from .measures import METRIC_BY_KEY, METRICS, RANKING_KEYS, Metric
from .spaces import FoldUnits, Space, build_space, fold_units, load_vectors
from .statistics import CLAIM_TEXT, compare, decide_claims

__all__ = ["METRICS", "METRIC_BY_KEY", "RANKING_KEYS", "Metric", "FoldUnits", "Space", "build_space", "fold_units",
           "load_vectors", "compare", "decide_claims", "CLAIM_TEXT"]
