"""The trainer pieces the cross-validated experiment needs: fold splits, the identity head, query-side top-k,
refresh geometry, and step-0 vectors taken from the starting checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis.data import cross_validation_splits
from dance_analysis.errors import DanceError
from dance_analysis.mining import NegativeSet
from dance_analysis.model import DualEncoder, EncoderHead
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.loop import train


def test_cross_validation_folds_partition_the_queries():
    qids = [f"q{i}" for i in range(23)]
    tests = []
    for fold in range(5):
        parts = cross_validation_splits(qids, 5, fold, seed=3)
        assert sorted(parts["train"] + parts["dev"] + parts["test"]) == sorted(qids)
        assert parts["dev"] == cross_validation_splits(qids, 5, (fold + 1) % 5, seed=3)["test"]
        assert len(parts["test"]) in (4, 5)
        tests += parts["test"]
    assert sorted(tests) == sorted(qids)
    assert cross_validation_splits(qids, 5, 0, seed=3) != cross_validation_splits(qids, 5, 0, seed=4)
    with pytest.raises(DanceError, match="folds must be"):
        cross_validation_splits(qids, 2, 0)
    with pytest.raises(DanceError, match="fold must be"):
        cross_validation_splits(qids, 5, 5)


def test_recipe_rejects_a_fold_outside_the_folds_and_a_zero_query_top_k():
    with pytest.raises(DanceError, match="data.fold"):
        recipe_from_dict({"data": {"folds": 5, "fold": 5}}).validate()
    with pytest.raises(DanceError, match="query_top_k"):
        recipe_from_dict({"mining": {"query_top_k": 0}}).validate()
    with pytest.raises(DanceError, match="head_init"):
        recipe_from_dict({"model": {"head_init": "zeros"}})


def test_identity_head_starts_at_the_backbone_vectors():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    head = EncoderHead("linear+layernorm", 8, init="identity")
    expected = torch.nn.functional.layer_norm(x, (8,), eps=1e-5)
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(EncoderHead("linear", 8, init="identity")(x), x)
    assert not torch.allclose(EncoderHead("linear", 8)(x), x)
    with pytest.raises(DanceError, match="out_dim"):
        EncoderHead("linear", 8, out_dim=4, init="identity")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pieces")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "manifest": ts.write_tiny_collection(root / "coll", n_train=24, n_dev=8),
           "backbone": ts.tiny_encoder(root / "model", dropout=0.0, head="none", pooling="mean")}
    torch.set_num_threads(threads)


def _train(tiny, name, **sections):
    recipe = recipe_from_dict(ts.recipe_dict(tiny["manifest"], tiny["backbone"], tiny["root"] / "cache",
                                             **sections)).validate()
    return train(recipe, tiny["root"] / name)


def test_dance_run_on_a_fold_mines_query_negatives_from_the_query_top_k(tiny):
    _train(tiny, "fold1", data={"folds": 4, "fold": 1}, mining={"query_top_k": 3, "n": 4},
           model={"head": "linear+layernorm", "head_init": "identity", "normalize": False}, optim={"max_steps": 6})
    ckpt0 = tiny["root"] / "fold1" / "checkpoint-0"
    negatives = NegativeSet.load(ckpt0 / "negatives")
    assert negatives.meta["query_top_k"] == 3
    # every query negative is among the 3 nearest training queries of its pair's passage
    corpus = np.load(ckpt0 / "embeddings" / "corpus.npy")
    queries = np.load(ckpt0 / "embeddings" / "queries.npy")
    all_ids = np.load(ckpt0 / "embeddings" / "queries.ids.npy", allow_pickle=False).astype(str)
    rows = {q: i for i, q in enumerate(all_ids)}
    train_vectors = queries[[rows[q] for q in negatives.train_query_ids]]
    checked = 0
    for (qrow, drow), negs in zip(negatives.pairs, negatives.query_negatives):
        top3 = np.argsort(-(train_vectors @ corpus[drow]), kind="stable")[:3]
        for neg in negs[negs >= 0]:
            assert neg in top3
            checked += 1
    assert checked > 0
    # the run trained on the fold's training part: none of fold 1's test or dev queries
    from dance_analysis.data import load_collection

    parts = cross_validation_splits(load_collection(str(tiny["manifest"])).queries, 4, 1)
    assert not set(negatives.train_query_ids.tolist()) & set(parts["test"] + parts["dev"])
    record = json.loads((ckpt0 / "refresh.json").read_text())
    assert {"queries.mean_cosine", "qd.mmd2", "negatives.above_positive"} <= set(record["geometry"])


def test_step0_vectors_come_from_the_start_only_when_they_are_exact(tiny):
    _train(tiny, "start", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={"refresh_every": 2},
           model={"head": "linear+layernorm", "head_init": "identity", "normalize": False})
    start = tiny["root"] / "start"
    # normalisation tuning from it: step 0 takes the start's vectors, L2-normalised, without encoding
    _train(tiny, "normalised", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={
        "refresh_every": 2, "cache_initial_embeddings": True}, model={"backbone": str(start), "normalize": True,
                                                                      "select": "last"})
    rec = json.loads((tiny["root"] / "normalised" / "checkpoint-0" / "refresh.json").read_text())
    assert rec.get("embeddings_from_cache") is True
    before = np.load(start / "checkpoint-2" / "embeddings" / "corpus.npy")
    after = np.load(tiny["root"] / "normalised" / "checkpoint-0" / "embeddings" / "corpus.npy")
    np.testing.assert_allclose(after, before / np.linalg.norm(before, axis=1, keepdims=True), atol=1e-6)
    fresh = DualEncoder.load(str(tiny["root"] / "normalised" / "checkpoint-0" / "encoder"))
    from dance_analysis.data import load_collection
    from dance_analysis.pipeline import embed_corpus

    encoded = embed_corpus(fresh, load_collection(str(tiny["manifest"])), progress=False).vectors
    np.testing.assert_allclose(after, encoded, atol=1e-5)
    # another pooling changes the vectors: the refresh encodes
    _train(tiny, "other", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={
        "refresh_every": 2, "cache_initial_embeddings": True}, model={"backbone": str(start), "pooling": "cls",
                                                                      "select": "last"})
    rec = json.loads((tiny["root"] / "other" / "checkpoint-0" / "refresh.json").read_text())
    assert not rec.get("embeddings_from_cache")
