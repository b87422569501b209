"""The recipe's mining rules in a real refresh: a DANCE run on the tiny collection whose negatives must obey the
rank window, the margin and top sampling against an exact numpy search over the checkpoint's embeddings, with the
rules' counts and the false-negative diagnostics in metrics.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_support as ts
from dance_analysis.errors import DanceError
from dance_analysis.mining import NegativeSet
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.loop import train


def _recipe(tiny_env, **mining):
    raw = ts.recipe_dict(tiny_env["manifest"], tiny_env["encoder"], tiny_env["cache"],
                         optim={"max_steps": 1}, mining={"refresh_every": 6, **mining})
    return recipe_from_dict(raw).validate()


def test_rules_are_obeyed_by_a_refresh(tiny_env):
    window, n = 10, 4
    run_dir = tiny_env["root"] / "run"
    train(_recipe(tiny_env, range_max=window, absolute_margin=0.0, sampling="top", n=n), run_dir)
    folder = run_dir / "checkpoint-0"
    negatives = NegativeSet.load(folder / "negatives")
    assert negatives.meta["rules"]["sampling"] == "top" and negatives.meta["rules"]["range_max"] == window
    corpus = np.load(folder / "embeddings" / "corpus.npy").astype(np.float64)
    qids = np.load(folder / "embeddings" / "queries.ids.npy")
    qvec = np.load(folder / "embeddings" / "queries.npy").astype(np.float64)
    row = {q: i for i, q in enumerate(qids)}
    train_vec = qvec[[row[q] for q in negatives.train_query_ids]]
    scores = train_vec @ corpus.T
    tol = 1e-5
    pos_min = np.full(len(train_vec), np.inf)
    for q_row, d in negatives.pairs:
        pos_min[q_row] = min(pos_min[q_row], scores[q_row, d])
    kth = -np.sort(-scores, axis=1)[:, window - 1]
    for i in range(len(train_vec)):
        drawn = negatives.doc_negatives[i][negatives.doc_negatives[i] >= 0]
        assert (scores[i, drawn] >= kth[i] - tol).all(), "a negative outside the rank window"
        assert (scores[i, drawn] <= pos_min[i] + tol).all(), "a negative scoring above the positive"
        # top sampling: in rank order, and nothing eligible was passed over
        assert (np.diff(scores[i, drawn]) <= tol).all()
    pair_score = scores[negatives.pairs[:, 0], negatives.pairs[:, 1]]
    for p, (q_row, d) in enumerate(negatives.pairs):
        drawn = negatives.query_negatives[p][negatives.query_negatives[p] >= 0]
        assert (scores[drawn, d] <= pair_score[p] + tol).all(), "a query negative scoring above its pair"
    record = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("step") == 0 and "negatives" in json.loads(line))
    counts = record["negatives"]
    assert counts["candidates.total"] >= counts["candidates.eligible"] > 0
    assert counts["candidates.skipped.rank_window"] > 0 and "candidates.skipped.absolute_margin" in counts
    skipped = sum(v for k, v in counts.items() if k.startswith("candidates.skipped."))
    assert counts["candidates.total"] - skipped == counts["candidates.eligible"]
    assert "query_candidates.total" in counts
    geometry = record["geometry"]
    # absolute_margin 0: no negative scores above its positive (only ties can score equal)
    assert geometry["negatives.above_positive"] < 0.05
    for name in ("q10", "q25", "q50", "q75", "q90"):
        assert f"negatives.margin_{name}" in geometry
    # the tiny collection judges with grade 1 = relevant: no partly relevant level, no key
    assert "negatives.partly_relevant" not in geometry


def test_recipe_rule_errors(tiny_env):
    with pytest.raises(DanceError, match="range_max"):
        _recipe(tiny_env, range_max=30)                # deeper than top_k 20: never retrieved
    with pytest.raises(DanceError, match="sampling"):
        _recipe(tiny_env, sampling="hardest")
    with pytest.raises(DanceError, match="query_top_k"):
        _recipe(tiny_env, range_min=5, query_top_k=5)  # the query side keeps no candidate
    with pytest.raises(DanceError, match="exclude_grade"):
        _recipe(tiny_env, exclude_grade=0)
