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
