"""The paper's claims C1-C5 (Li et al., DANCE, ICTIR 2021: its abstract, shown in its evaluation section) as
data, and their verdicts computed from the numbers.

Each claim names the metric keys that test it and the direction the paper predicts for DANCE relative to
ANCE. The report computes the metrics per run (see :data:`METRIC_KEYS` for how each key is computed) and
calls :func:`evaluate_claims`; no verdict is ever written by hand.

Verdict rule for one metric (:func:`verdict`): values missing or NaN on either side -> "not measurable here";
otherwise, with the mean and sample standard deviation (ddof=1; 0 for a single value) of each side,
"reproduced" when the means differ in the predicted direction by more than the combined spread
:math:`\\sqrt{s_{ANCE}^2 + s_{DANCE}^2}` (strictly), else "not reproduced". With one value per side (one seed)
this reduces to a strict comparison of the two values.

Verdict rule for a claim (:func:`claim_verdicts`): over its primary metrics only; "not measurable here" when
no primary metric is measurable, "reproduced" when every measurable primary metric is reproduced, else
"not reproduced". Supporting metrics are reported with their own verdicts but do not decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["REPRODUCED", "NOT_REPRODUCED", "NOT_MEASURABLE", "VERDICTS", "DIRECTIONS", "ClaimMetric", "Claim",
           "CLAIMS", "METRIC_KEYS", "verdict", "evaluate_claims", "claim_verdicts"]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_MEASURABLE = "not measurable here"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_MEASURABLE)
#: "lower": the paper predicts a lower value for DANCE than for ANCE; "higher": a higher one.
DIRECTIONS = ("lower", "higher")

#: Every metric key a claim uses -> how the report computes it (Q = query embeddings of the analysed split,
#: D = corpus embeddings, pairs = positive (query row, doc row) pairs of that split).
METRIC_KEYS: dict[str, str] = {
    "queries.mean_cosine": "geometry.mean_pairwise_cosine(Q)",
    "queries.isoscore": "isotropy.isoscore(Q)",
    "queries.effective_rank": "isotropy.effective_rank(Q)",
    "queries.pc1": "geometry.variance_explained(Q, ks=(1,))['pc1']",
    "qd.centroid_distance": "geometry.centroid_distance(Q, D, normalize=True)",
    "qd.cross_mean_cosine": "geometry.cross_mean_cosine(Q, D)",
    "qd.alignment": "align_uniform.alignment(Q, D, pairs) (alpha=2)",
    "documents.uniformity": "align_uniform.uniformity(D, t=2)['value']",
    "documents.mean_cosine": "geometry.mean_pairwise_cosine(D)",
    "d2q.MRR@10": "ranking.d2q_metrics(Q, D, pairs)['MRR@10']",
    "sampling.query_counts.entropy_norm":
        "sampling.count_distribution_stats(query_counts)['entropy_norm'] (query_counts: how often each train "
        "query was drawn as a negative at the refresh; for ANCE recomputed with the DANCE sampler, else missing)",
    "sampling.query_counts.never_share": "sampling.count_distribution_stats(query_counts)['never_share']",
    "sampling.query_counts.gini": "sampling.count_distribution_stats(query_counts)['gini']",
    "sampling.d2q_softmax.entropy_norm_mean":
        "sampling.softmax_stats(top-K query scores of each positive document, temperature=training "
        "temperature)['entropy_norm_mean']",
    "q2d.MRR@100": "metrics.evaluate(rankings, qrels)['MRR@100'] on the analysed split",
    "q2d.nDCG@10": "metrics.evaluate(rankings, qrels)['nDCG@10'] on the analysed split",
    "q2d.MRR@10": "metrics.evaluate(rankings, qrels)['MRR@10'] on the analysed split",
    "all.uniformity": "align_uniform.uniformity([Q, D], t=2)['value'] (queries and documents together)",
}


@dataclass(frozen=True)
class ClaimMetric:
    """One metric that tests a claim: its key, the direction predicted for DANCE vs ANCE, and its role."""

    key: str
    direction: str          # "lower" | "higher" (DANCE relative to ANCE)
    primary: bool = True    # primary metrics decide the claim's verdict; others are supporting evidence
    label: str = ""         # short human-readable name

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {self.direction!r}")


@dataclass(frozen=True)
class Claim:
    """A claim of the paper (Li et al., DANCE, ICTIR 2021, abstract) and the metrics that test it."""

    id: str
    text: str
    metrics: tuple[ClaimMetric, ...] = field(default_factory=tuple)

    @property
    def primary(self) -> tuple[ClaimMetric, ...]:
        return tuple(m for m in self.metrics if m.primary)


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "ANCE queries, trained only to align to documents, are coarsely positioned: an anisotropic "
                "query space (DANCE's query space is more isotropic).", (
        ClaimMetric("queries.mean_cosine", "lower", True, "query mean pairwise cosine"),
        ClaimMetric("queries.isoscore", "higher", True, "query IsoScore"),
        ClaimMetric("queries.effective_rank", "higher", False, "query effective rank"),
        ClaimMetric("queries.pc1", "lower", False, "query variance on the first principal component"),
    )),
    Claim("C2", "DANCE concentrates query embeddings closer to the document representations.", (
        ClaimMetric("qd.centroid_distance", "lower", True, "query-document centroid distance (normalised)"),
        ClaimMetric("qd.cross_mean_cosine", "higher", False, "mean query-document cosine"),
        ClaimMetric("qd.alignment", "lower", False, "alignment of positive pairs"),
    )),
    Claim("C3", "DANCE makes the document distribution more discriminative.", (
        ClaimMetric("documents.uniformity", "lower", True, "document uniformity (t=2)"),
        ClaimMetric("d2q.MRR@10", "higher", True, "d2q MRR@10 (documents retrieving their queries)"),
        ClaimMetric("documents.mean_cosine", "lower", False, "document mean pairwise cosine"),
    )),
    Claim("C4", "DANCE's concentrated queries receive more uniform negative-sampling probabilities in the query "
                "retrieval task, so more queries get optimised.", (
        ClaimMetric("sampling.query_counts.entropy_norm", "higher", True,
                    "normalised entropy of query negative counts"),
        ClaimMetric("sampling.d2q_softmax.entropy_norm_mean", "higher", True,
                    "mean normalised entropy of the d2q sampling softmax"),
        ClaimMetric("sampling.query_counts.never_share", "lower", False, "share of queries never drawn"),
        ClaimMetric("sampling.query_counts.gini", "lower", False, "Gini coefficient of query negative counts"),
    )),
    Claim("C5", "Smoother, more uniform embedding space and better ranking (MS MARCO document dev MRR@100; "
                "TREC DL 2019 NDCG@10).", (
        ClaimMetric("q2d.MRR@100", "higher", True, "q2d MRR@100"),
        ClaimMetric("all.uniformity", "lower", True, "uniformity of queries and documents together (t=2)"),
        ClaimMetric("q2d.nDCG@10", "higher", False, "q2d nDCG@10"),
        ClaimMetric("q2d.MRR@10", "higher", False, "q2d MRR@10"),
    )),
)


def _values(v) -> list[float]:
    """Finite floats from a value, a list of values (one per seed) or None."""
    if v is None:
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        items = list(np.asarray(v, dtype=object).ravel())
    else:
        items = [v]
    out = []
    for item in items:
        if item is None:
            continue
        try:
            f = float(item)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def verdict(values_ance: Sequence[float] | float | None, values_dance: Sequence[float] | float | None,
            direction: str) -> str:
    """Verdict for one metric from the ANCE and the DANCE values (one per seed / run).

    NaN / None values are dropped; an empty side gives ``"not measurable here"``. Otherwise with means
    :math:`m_A, m_D` and sample standard deviations :math:`s_A, s_D` (ddof=1, 0 for a single value), the
    predicted difference :math:`\\Delta = m_A - m_D` for ``"lower"`` (:math:`m_D - m_A` for ``"higher"``)
    must exceed :math:`\\sqrt{s_A^2 + s_D^2}` strictly for ``"reproduced"``; otherwise ``"not reproduced"``.
    With one value per side this is a strict comparison of the two values.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    a = _values(values_ance)
    d = _values(values_dance)
    if not a or not d:
        return NOT_MEASURABLE
    ma, md = float(np.mean(a)), float(np.mean(d))
    sa = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    delta = (ma - md) if direction == "lower" else (md - ma)
    return REPRODUCED if delta > math.hypot(sa, sd) else NOT_REPRODUCED


def evaluate_claims(metrics_by_run: Mapping[str, Mapping[str, object]], ance_key: str, dance_key: str,
                    claims: Iterable[Claim] | None = None) -> list[dict]:
    """One row per (claim, metric): the values of both runs, the predicted direction and the verdict.

    ``metrics_by_run[run][metric_key]`` is a float, a list of floats (one per seed) or missing / None / NaN.
    ``ance_key`` and ``dance_key`` name the ANCE and the DANCE entries of ``metrics_by_run``. Rows:
    ``{"claim", "text", "metric", "label", "primary", "direction", "predicted", "ance": [..], "dance": [..],
    "verdict"}`` where ``predicted`` reads e.g. ``"DANCE < ANCE"``. ``claims`` defaults to :data:`CLAIMS`.
    """
    for key in (ance_key, dance_key):
        if key not in metrics_by_run:
            raise ValueError(f"metrics_by_run: no run named {key!r} (runs: {', '.join(map(str, metrics_by_run))})")
    ance, dance = metrics_by_run[ance_key], metrics_by_run[dance_key]
    rows = []
    for claim in (CLAIMS if claims is None else claims):
        for m in claim.metrics:
            va, vd = _values(ance.get(m.key)), _values(dance.get(m.key))
            rows.append({"claim": claim.id, "text": claim.text, "metric": m.key, "label": m.label,
                         "primary": m.primary, "direction": m.direction,
                         "predicted": "DANCE < ANCE" if m.direction == "lower" else "DANCE > ANCE",
                         "ance": va, "dance": vd, "verdict": verdict(va, vd, m.direction)})
    return rows


def claim_verdicts(rows: Sequence[Mapping]) -> list[dict]:
    """Claim-level verdicts from the rows of :func:`evaluate_claims` (primary metrics decide).

    Returns ``[{"claim", "text", "verdict", "metrics": [primary keys], "decided_by": [measurable primary
    keys]}]`` in claim order: "not measurable here" when no primary metric is measurable, "reproduced" when
    all measurable primary metrics are reproduced, else "not reproduced".
    """
    out: list[dict] = []
    by_claim: dict[str, list[Mapping]] = {}
    for r in rows:
        by_claim.setdefault(r["claim"], []).append(r)
    for cid, rs in by_claim.items():
        prim = [r for r in rs if r["primary"]]
        measurable = [r for r in prim if r["verdict"] != NOT_MEASURABLE]
        if not measurable:
            v = NOT_MEASURABLE
        elif all(r["verdict"] == REPRODUCED for r in measurable):
            v = REPRODUCED
        else:
            v = NOT_REPRODUCED
        out.append({"claim": cid, "text": rs[0]["text"], "verdict": v, "metrics": [r["metric"] for r in prim],
                    "decided_by": [r["metric"] for r in measurable]})
    return out
