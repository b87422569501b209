"""Claims C1-C5 as data and the verdict rules."""

from __future__ import annotations

import math

import pytest

from dance_analysis.analysis import claims as C


def test_claims_cover_c1_to_c5_with_known_keys():
    assert [c.id for c in C.CLAIMS] == ["C1", "C2", "C3", "C4", "C5"]
    for claim in C.CLAIMS:
        assert claim.primary, claim.id
        for m in claim.metrics:
            assert m.key in C.METRIC_KEYS and m.direction in C.DIRECTIONS
    used = {m.key for c in C.CLAIMS for m in c.metrics}
    assert used == set(C.METRIC_KEYS)


@pytest.mark.parametrize("ance, dance, direction, expected", [
    (0.5, 0.3, "lower", C.REPRODUCED),
    (0.5, 0.3, "higher", C.NOT_REPRODUCED),
    (0.5, 0.5, "lower", C.NOT_REPRODUCED),                  # a tie does not reproduce
    ([0.30], [0.35], "higher", C.REPRODUCED),
    (None, 0.3, "lower", C.NOT_MEASURABLE),
    (math.nan, 0.3, "lower", C.NOT_MEASURABLE),
    ([0.5, None], [], "lower", C.NOT_MEASURABLE),
    ([0.50, 0.52, 0.48], [0.30, 0.31, 0.29], "lower", C.REPRODUCED),   # separated beyond the spread
    ([0.50, 0.60, 0.40], [0.45, 0.55, 0.35], "lower", C.NOT_REPRODUCED),  # mean difference 0.05 < spread
    ([0.5, math.nan, 0.5], [0.4], "lower", C.REPRODUCED),   # NaN seeds are dropped
])
def test_verdict(ance, dance, direction, expected):
    assert C.verdict(ance, dance, direction) == expected


def test_verdict_rule_threshold_is_combined_std():
    a = [1.0, 3.0]          # mean 2, std sqrt(2)
    d = [0.0, 2.0]          # mean 1, std sqrt(2); combined spread 2 > difference 1
    assert C.verdict(a, d, "lower") == C.NOT_REPRODUCED
    d = [-2.0, 0.0]         # mean -1: difference 3 > 2
    assert C.verdict(a, d, "lower") == C.REPRODUCED
    with pytest.raises(ValueError):
        C.verdict(1, 2, "smaller")


def test_evaluate_claims_and_claim_verdicts():
    ance = {"queries.mean_cosine": 0.6, "queries.isoscore": 0.1, "qd.centroid_distance": 0.4,
            "documents.uniformity": -2.0, "d2q.MRR@10": 0.2, "q2d.MRR@100": 0.30, "all.uniformity": -2.5,
            "sampling.query_counts.entropy_norm": math.nan, "sampling.d2q_softmax.entropy_norm_mean": 0.5}
    dance = {"queries.mean_cosine": 0.4, "queries.isoscore": 0.05, "qd.centroid_distance": 0.3,
             "documents.uniformity": -2.2, "d2q.MRR@10": 0.3, "q2d.MRR@100": [0.31, 0.33],
             "all.uniformity": -2.7, "sampling.query_counts.entropy_norm": 0.9,
             "sampling.d2q_softmax.entropy_norm_mean": 0.6}
    rows = C.evaluate_claims({"ance": ance, "dance": dance}, "ance", "dance")
    assert len(rows) == sum(len(c.metrics) for c in C.CLAIMS)
    by = {r["metric"]: r for r in rows}
    assert by["queries.mean_cosine"]["verdict"] == C.REPRODUCED
    assert by["queries.mean_cosine"]["predicted"] == "DANCE < ANCE"
    assert by["queries.isoscore"]["verdict"] == C.NOT_REPRODUCED
    assert by["queries.effective_rank"]["verdict"] == C.NOT_MEASURABLE and by["queries.effective_rank"]["ance"] == []
    assert by["q2d.MRR@100"]["dance"] == [0.31, 0.33]
    claims = {c["claim"]: c for c in C.claim_verdicts(rows)}
    assert claims["C1"]["verdict"] == C.NOT_REPRODUCED          # one primary metric fails
    assert claims["C2"]["verdict"] == C.REPRODUCED
    assert claims["C3"]["verdict"] == C.REPRODUCED
    assert claims["C4"]["verdict"] == C.REPRODUCED and claims["C4"]["decided_by"] == [
        "sampling.d2q_softmax.entropy_norm_mean"]                 # ANCE query counts undefined
    assert claims["C5"]["verdict"] == C.REPRODUCED
    empty = C.claim_verdicts(C.evaluate_claims({"a": {}, "b": {}}, "a", "b"))
    assert {c["verdict"] for c in empty} == {C.NOT_MEASURABLE}
    with pytest.raises(ValueError, match="no run named"):
        C.evaluate_claims({"a": {}}, "a", "b")
