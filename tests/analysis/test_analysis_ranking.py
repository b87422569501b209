"""The dual task d2q against a brute-force ranking with explicit sorting."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.analysis import ranking as R


def brute(q, d, pairs, ks=(1, 10, 100), cutoff=10):
    pairs = np.unique(np.asarray(pairs), axis=0)
    rel: dict[int, set] = {}
    for i, j in pairs:
        rel.setdefault(int(j), set()).add(int(i))
    rank_of = {}
    rrs, recalls = [], {k: [] for k in ks}
    for j, qs in rel.items():
        scores = [(float(np.float32(d[j]).astype(np.float32) @ np.float32(q[k])), k) for k in range(len(q))]
        order = sorted(range(len(q)), key=lambda k: (-scores[k][0], k))    # higher score first, ties: lower index
        ranks = {k: order.index(k) + 1 for k in qs}
        rank_of.update({(i, j): r for i, r in ranks.items()})
        first = min(ranks.values())
        rrs.append(1.0 / first if first <= cutoff else 0.0)
        for k in ks:
            recalls[k].append(sum(r <= k for r in ranks.values()) / len(qs))
    out = {f"MRR@{cutoff}": float(np.mean(rrs))}
    out.update({f"R@{k}": float(np.mean(v)) for k, v in recalls.items()})
    return out, rank_of


def test_d2q_matches_brute_force():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(60, 8)).astype(np.float32)
    d = rng.normal(size=(40, 8)).astype(np.float32)
    pairs = np.array([[i % 60, (i * 7) % 40] for i in range(50)] + [[5, 0], [5, 0]])
    ref, rank_of = brute(q, d, pairs, ks=(1, 5, 20))
    got = R.d2q_metrics(q, d, pairs, ks=(1, 5, 20), block_size=3)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-12), key
    assert got["n_docs"] == len({int(j) for _, j in pairs})
    ranks = R.d2q_ranks(q, d, pairs, block_size=4)
    assert [rank_of[(int(i), int(j))] for i, j in pairs] == ranks.tolist()


def test_d2q_ties_broken_by_lower_query_index():
    q = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    d = np.array([[1.0, 0.0]])
    ranks = R.d2q_ranks(q, d, [[2, 0], [0, 0], [1, 0], [3, 0]])
    assert ranks.tolist() == [3, 1, 2, 4]
    m = R.d2q_metrics(q, d, [[2, 0]], ks=(2, 3))
    assert m["MRR@10"] == pytest.approx(1 / 3) and m["R@2"] == 0.0 and m["R@3"] == 1.0


def test_d2q_known_cases():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(100, 32))
    pairs = np.stack([np.arange(100), np.arange(100)], 1)
    perfect = R.d2q_metrics(q, q * 5, pairs)          # every document is its query: retrieved first
    assert perfect["MRR@10"] == 1.0 and perfect["R@1"] == 1.0
    worst = R.d2q_metrics(q, -q, pairs, ks=(99, 100))  # own query scores lowest
    assert worst["MRR@10"] == 0.0 and worst["R@99"] == 0.0 and worst["R@100"] == 1.0
    empty = R.d2q_metrics(q, q, np.zeros((0, 2), int))
    assert np.isnan(empty["MRR@10"]) and empty["n_docs"] == 0
    with pytest.raises(ValueError, match="out of range"):
        R.d2q_metrics(q, q, [[0, 100]])
