"""The candidate rules of negative mining (rank window, margins, maximum score, top sampling), each checked on a
small ranking whose expected candidates are written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.errors import DanceError
from dance_analysis.mining import (
    CandidateRules,
    MiningStats,
    document_positive_scores,
    mine_document_negatives,
    mine_query_negatives,
    negative_grades,
    pair_scores,
)
from test_mining import FakeRankings

DOCS = np.array(list("abcdefghij"))
#                     b     a     c     d     e     f     g     h     i     j
ORDER = np.array([[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]])
SCORES = np.array([[0.95, 0.90, 0.88, 0.85, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30]])
POSITIVES = {"q": {"a"}}          # the positive a is retrieved second, at 0.90
POS = np.array([0.90])


def ranking(order=ORDER, scores=SCORES, query_ids=("q",)) -> FakeRankings:
    return FakeRankings(np.asarray(query_ids), DOCS, np.asarray(order, dtype=np.int64),
                        np.asarray(scores, dtype=np.float32))


def drawn(rules: CandidateRules | None = None, n: int = 20, pos=POS, positives=POSITIVES, rank=None,
          stats: MiningStats | None = None, top_k=None) -> list[str]:
    """The letters drawn for the single query (all candidates when n is large), in drawing order."""
    negatives, counts = mine_document_negatives(rank or ranking(), positives, n, 0, top_k, rules=rules,
                                                positive_scores=pos, stats=stats)
    assert counts.sum() == (negatives >= 0).sum()
    return [str(DOCS[i]) for i in negatives[0] if i >= 0]


def test_default_rules_are_the_paper():
    """Every retrieved document but the judged positive, drawn at random: the same draw as without rules."""
    assert sorted(drawn()) == list("bcdefghij")
    assert drawn(CandidateRules()) == drawn(None)
    assert CandidateRules().is_default and not CandidateRules(sampling="top").is_default


def test_rank_window_counts_retrieved_positions():
    # columns 2..5 of b a c d e f g h i j: c d e f (FlagEmbedding's range_for_sampling 2-6)
    assert sorted(drawn(CandidateRules(range_min=2, range_max=6))) == list("cdef")
    # columns 0..2: b a c, minus the positive a
    assert sorted(drawn(CandidateRules(range_max=3))) == list("bc")
    # the window ends at the retrieved depth: top_k=4 and range_max=None keep b c d
    assert sorted(drawn(CandidateRules(), top_k=4)) == list("bcd")


def test_rank_window_counts_candidates_left():
    # the candidates without the positive: b c d e f g h i j; positions 2..4: d e f (sentence-transformers)
    assert sorted(drawn(CandidateRules(range_min=2, range_max=5, rank_window="candidates"))) == list("def")
    # after the absolute margin (skips b c d, see below) the candidates are e f g h i j: positions 1..2 = f g
    rules = CandidateRules(range_min=1, range_max=3, rank_window="candidates", absolute_margin=0.07)
    assert sorted(drawn(rules)) == list("fg")


def test_absolute_margin():
    # skipped when s > 0.90 - 0.07 = 0.83: b (0.95), c (0.88), d (0.85)
    assert sorted(drawn(CandidateRules(absolute_margin=0.07))) == list("efghij")
    # a margin of 0: never a negative scoring above the positive (b only)
    assert sorted(drawn(CandidateRules(absolute_margin=0.0))) == list("cdefghij")
    # a negative margin lets candidates up to 0.1 above the positive through: none is skipped here
    assert sorted(drawn(CandidateRules(absolute_margin=-0.1))) == list("bcdefghij")


def test_relative_margin():
    # skipped when s > 0.90 - 0.90 * 0.2 = 0.72: b c d e
    assert sorted(drawn(CandidateRules(relative_margin=0.2))) == list("fghij")
    # a negative positive score, pos = -0.5: threshold -0.5 - 0.5 * 0.2 = -0.6, below the positive
    scores = np.array([[-0.30, -0.50, -0.55, -0.58, -0.62, -0.70, -0.80, -0.85, -0.90, -0.95]])
    rules = CandidateRules(relative_margin=0.2)
    # skipped: b (-0.30), c (-0.55), d (-0.58); pos * (1 - 0.2) = -0.4 would have kept c and d
    assert sorted(drawn(rules, pos=np.array([-0.5]), rank=ranking(scores=scores))) == list("efghij")


def test_max_score():
    # skipped when s > 0.65: b c d e f
    assert sorted(drawn(CandidateRules(max_score=0.65))) == list("ghij")


def test_missing_positive_score_skips_nothing_by_margin():
    assert sorted(drawn(CandidateRules(absolute_margin=0.07), pos=np.array([np.nan]))) == list("bcdefghij")
    # max_score does not need the positive
    assert sorted(drawn(CandidateRules(max_score=0.65), pos=None)) == list("ghij")


def test_top_sampling_takes_rank_order():
    assert drawn(CandidateRules(sampling="top"), n=3) == ["b", "c", "d"]
    assert drawn(CandidateRules(sampling="top", absolute_margin=0.07), n=3) == ["e", "f", "g"]
    # fewer candidates than n: all of them, then -1 padding
    negatives, _ = mine_document_negatives(ranking(), POSITIVES, 12, 0, rules=CandidateRules(sampling="top"))
    assert negatives[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1, -1]
    # repeated documents count once, at their first place
    order = np.array([[1, 1, 0, 2, 2, 3]])
    rank = FakeRankings(np.array(["q"]), DOCS, order, np.zeros((1, 6), dtype=np.float32))
    assert drawn(CandidateRules(sampling="top"), n=5, rank=rank) == ["b", "c", "d"]


def test_random_sampling_draws_only_eligible_and_all_of_them_over_seeds():
    rules = CandidateRules(range_min=2, range_max=8, absolute_margin=0.07)   # columns c..h minus c d = e f g h
    seen = set()
    for seed in range(40):
        negatives, _ = mine_document_negatives(ranking(), POSITIVES, 2, seed, rules=rules, positive_scores=POS)
        letters = {str(DOCS[i]) for i in negatives[0]}
        assert len(letters) == 2 and letters <= set("efgh")
        seen |= letters
    assert seen == set("efgh")


def test_stats_count_each_rule():
    """retrieved 10, the positive a judged, 9 candidates; window [0, 8) skips i j; the absolute margin 0.07 skips
    b c d; max_score 0.65 skips e f; g h are left; 2 drawn of n=3: the query is short."""
    stats = MiningStats()
    rules = CandidateRules(range_max=8, absolute_margin=0.07, max_score=0.65)
    assert sorted(drawn(rules, n=3, stats=stats)) == list("gh")
    assert (stats.rows, stats.retrieved, stats.judged, stats.candidates) == (1, 10, 1, 9)
    assert stats.skipped == {"rank_window": 2, "absolute_margin": 3, "relative_margin": 0, "max_score": 2}
    assert (stats.eligible, stats.drawn, stats.rows_short, stats.rows_empty, stats.n) == (2, 2, 1, 0, 3)
    flat = stats.to_dict("negatives.")
    assert flat["negatives.skipped.max_score"] == 2 and flat["negatives.candidates"] == 9
    # counts add up over calls
    drawn(rules, n=3, stats=stats)
    assert stats.candidates == 18 and stats.skipped["absolute_margin"] == 6


def test_rules_per_row_use_their_own_positive():
    """Two queries with the same ranking and positives scoring 0.90 and 0.60: the margin 0.07 skips b c d for the
    first, and everything above 0.53 (b c d e f g) for the second."""
    rank = ranking(order=np.vstack([ORDER, ORDER]), scores=np.vstack([SCORES, SCORES]), query_ids=("q", "r"))
    negatives, _ = mine_document_negatives(rank, {"q": {"a"}, "r": {"a"}}, 20, 0,
                                           rules=CandidateRules(absolute_margin=0.07),
                                           positive_scores=np.array([0.90, 0.60]))
    assert sorted(str(DOCS[i]) for i in negatives[0] if i >= 0) == list("efghij")
    assert sorted(str(DOCS[i]) for i in negatives[1] if i >= 0) == list("hij")


def test_query_side_rules():
    """DANCE query negatives of the pair (q0, d0): candidate queries of d0 ranked q3 q0 q1 q2 q4 at
    0.9 0.8 0.7 0.5 0.1; q0 itself and q1 (also judged on d0) are excluded; s(q0, d0) = 0.8."""
    train_qids = np.array(["q0", "q1", "q2", "q3", "q4"])
    rank = FakeRankings(np.array(["d0"]), train_qids, np.array([[3, 0, 1, 2, 4]]),
                        np.array([[0.9, 0.8, 0.7, 0.5, 0.1]], dtype=np.float32))
    positives = {"q0": {"d0"}, "q1": {"d0"}}

    def queries(rules, n=5):
        stats = MiningStats()
        negatives, _ = mine_query_negatives(rank, [("q0", "d0")], positives, n, 0, rules=rules,
                                            positive_scores=np.array([0.8]), stats=stats)
        return [str(train_qids[i]) for i in negatives[0] if i >= 0], stats

    assert sorted(queries(None)[0]) == ["q2", "q3", "q4"]
    # skipped when s(q-, d0) > 0.8 - 0.2 = 0.6: q3
    got, stats = queries(CandidateRules(absolute_margin=0.2))
    assert sorted(got) == ["q2", "q4"] and stats.skipped["absolute_margin"] == 1 and stats.judged == 2
    assert queries(CandidateRules(max_score=0.3, sampling="top"))[0] == ["q4"]
    assert queries(CandidateRules(sampling="top"), n=2)[0] == ["q3", "q2"]
    # positions 1..2 of the retrieved list: q0 q1, both excluded: nothing left
    got, stats = queries(CandidateRules(range_min=1, range_max=3))
    assert got == [] and stats.rows_empty == 1


def test_rule_errors():
    with pytest.raises(DanceError, match="range_max"):
        CandidateRules(range_min=5, range_max=5)
    with pytest.raises(DanceError, match="sampling"):
        CandidateRules(sampling="hardest")
    with pytest.raises(DanceError, match="rank_window"):
        CandidateRules(rank_window="scores")
    with pytest.raises(DanceError, match="relative_margin"):
        CandidateRules(relative_margin=float("nan"))
    with pytest.raises(DanceError, match="positive_scores"):
        mine_document_negatives(ranking(), POSITIVES, 3, 0, rules=CandidateRules(absolute_margin=0.1))
    with pytest.raises(DanceError, match="positive scores"):
        mine_document_negatives(ranking(), POSITIVES, 3, 0, rules=CandidateRules(absolute_margin=0.1),
                                positive_scores=np.array([0.1, 0.2]))


def test_positive_scores_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    corpus = np.array([[0.9, 0.1], [0.5, 0.0], [0.0, 2.0]], dtype=np.float16)
    pairs = np.array([[0, 0], [0, 1], [2, 2]])
    assert pair_scores(queries, corpus, pairs).round(3).tolist() == [0.9, 0.5, 2.0]
    out = document_positive_scores(queries, corpus, pairs, 3)
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(2.0)


def test_negative_grades_by_hand():
    negatives = np.array([[0, 2, -1], [1, 0, 2]])
    qrels = {"q0": {"a": 1, "c": 3}, "q1": {"a": 0, "zz": 2}}
    grades = negative_grades(negatives, np.array(["q0", "q1"]), np.array(["a", "b", "c"]), qrels)
    assert grades.tolist() == [[1, 3, -1], [0, 0, 0]]
