"""The refresh snapshot statistics against brute-force numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.analysis.snapshot import negative_score_margins, refresh_geometry


def _data(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    d = rng.normal(size=(80, 16)).astype(np.float32) + 0.5
    pairs = np.array([(i, int(rng.integers(0, 80))) for i in range(20) for _ in range(2)])
    neg = rng.integers(0, 80, size=(20, 5))
    neg[3, 2:] = -1
    return q, d, pairs, neg


def test_negative_margins_are_every_negative_minus_its_pair_positive():
    q, d, pairs, neg = _data()
    expected = []
    for qi, pos in pairs:
        for nd in neg[qi]:
            if nd >= 0:
                expected.append(float(q[qi] @ d[nd]) - float(q[qi] @ d[pos]))
    np.testing.assert_allclose(negative_score_margins(q[:20], d, pairs, neg), expected, rtol=1e-5, atol=1e-5)


def test_refresh_geometry_matches_brute_force():
    q, d, pairs, neg = _data(1)
    train_rows = np.arange(20)
    g = refresh_geometry(q, d, train_rows=train_rows, pairs=pairs, doc_negatives=neg)
    uq = q / np.linalg.norm(q, axis=1, keepdims=True)
    ud = d / np.linalg.norm(d, axis=1, keepdims=True)
    off = ~np.eye(len(q), dtype=bool)
    assert g["queries.mean_cosine"] == pytest.approx((uq @ uq.T)[off].mean(), abs=1e-6)
    offd = ~np.eye(len(d), dtype=bool)
    assert g["documents.mean_cosine"] == pytest.approx((ud @ ud.T)[offd].mean(), abs=1e-6)
    sq = np.maximum(2 - 2 * (ud @ ud.T), 0)[offd]
    assert g["documents.uniformity"] == pytest.approx(np.log(np.exp(-2 * sq).mean()), abs=1e-5)
    mmd = (uq @ uq.T)[off].mean() + (ud @ ud.T)[offd].mean() - 2 * (uq @ ud.T).mean()
    assert g["qd.mmd2"] == pytest.approx(mmd, abs=1e-6)
    assert g["queries.norm_mean"] == pytest.approx(np.linalg.norm(q, axis=1).mean(), rel=1e-6)
    margins = [float(q[a] @ d[n]) - float(q[a] @ d[p]) for a, p in pairs for n in neg[a] if n >= 0]
    assert g["negatives.above_positive"] == pytest.approx(np.mean(np.array(margins) >= 0))
    assert g["negatives.margin_q50"] == pytest.approx(np.quantile(margins, 0.5), abs=1e-5)
    assert "negatives.above_positive" not in refresh_geometry(q, d)


def test_margin_quantiles_and_above_positive_by_hand():
    """One query with the positive at 0.5 and four negatives at 0.9, 0.5, 0.3, 0.1: margins 0.4, 0, -0.2, -0.4;
    two of four score at or above the positive; numpy's linear quantiles of (-0.4, -0.2, 0, 0.4)."""
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)     # the second query has no pair
    d = np.array([[0.5, 0], [0.9, 0], [0.5, 1], [0.3, 0], [0.1, 0]], dtype=np.float32)
    g = refresh_geometry(q, d, train_rows=np.array([0, 1]), pairs=np.array([[0, 0]]),
                         doc_negatives=np.array([[1, 2, 3, 4, -1], [-1] * 5]))
    assert g["negatives.above_positive"] == pytest.approx(0.5)
    assert g["negatives.margin_q50"] == pytest.approx(-0.1, abs=1e-6)    # halfway between -0.2 and 0
    assert g["negatives.margin_q25"] == pytest.approx(-0.25, abs=1e-6)   # -0.4 + 0.75 * 0.2
    assert g["negatives.margin_q75"] == pytest.approx(0.1, abs=1e-6)     # 0 + 0.25 * 0.4
    assert g["negatives.margin_q10"] == pytest.approx(-0.34, abs=1e-6)   # -0.4 + 0.3 * 0.2
    assert g["negatives.margin_q90"] == pytest.approx(0.28, abs=1e-6)    # 0 + 0.7 * 0.4


def test_partly_relevant_share_by_hand():
    """Grades of the drawn negatives (-1 = empty place): with relevance threshold 2, grade 1 is partly relevant:
    3 of the 7 drawn negatives."""
    from dance_analysis.analysis.snapshot import partly_relevant_share

    grades = np.array([[1, 0, 0, -1], [1, 1, 3, 0]])
    assert partly_relevant_share(grades, 2) == pytest.approx(3 / 7)
    assert partly_relevant_share(grades, 4) == pytest.approx(4 / 7)        # grades 1..3 lie below 4
    assert np.isnan(partly_relevant_share(grades, 1))                      # no level between judged and relevant
    assert np.isnan(partly_relevant_share(np.full((2, 3), -1), 2))         # nothing drawn
    q, d, pairs, neg = _data(2)
    g = refresh_geometry(q, d, train_rows=np.arange(20), pairs=pairs, doc_negatives=neg,
                         negative_grades=np.where(neg >= 0, 1, -1), min_relevance=2)
    assert g["negatives.partly_relevant"] == 1.0
    g = refresh_geometry(q, d, train_rows=np.arange(20), pairs=pairs, doc_negatives=neg,
                         negative_grades=np.where(neg >= 0, 1, -1), min_relevance=1)
    assert "negatives.partly_relevant" not in g
