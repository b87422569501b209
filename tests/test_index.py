"""search() against brute-force numpy: random data, exact ties, blocking, float16, padding, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.errors import DanceError
from dance_analysis.index import Rankings, exact_topk, search


def brute_force(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 score matrix, sorted by (score desc, index asc) with a lexsort, cut at k."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    columns = np.broadcast_to(np.arange(corpus.shape[0]), scores.shape)
    order = np.lexsort((columns, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def integer_data(rng, nq, n, dim, low=-2, high=3):
    """Small-integer vectors: every dot product is exact in float32, and many scores tie."""
    return (rng.integers(low, high, (nq, dim)).astype(np.float32),
            rng.integers(low, high, (n, dim)).astype(np.float32))


def test_random_float_data_matches_brute_force():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((150, 24)).astype(np.float32)
    corpus = rng.standard_normal((3000, 24)).astype(np.float32)
    result = search(queries, corpus, 20)
    ref_scores, ref_indices = brute_force(queries, corpus, 20)
    np.testing.assert_allclose(result.scores, ref_scores, rtol=0, atol=1e-4)
    # Float32 rounding may only swap documents whose exact scores are closer than the rounding error.
    mismatch = result.indices != ref_indices
    assert mismatch.mean() < 0.01
    gaps = np.abs(np.diff(ref_scores, axis=1)).min(axis=1)
    assert (gaps[mismatch.any(axis=1)] < 1e-4).all()
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.float32
    assert (np.diff(result.scores, axis=1) <= 0).all()


@pytest.mark.parametrize("corpus_batch_size,batch_size", [(None, 4096), (97, 13), (1000, 64), (1, 7)])
def test_exact_ties_break_by_lower_index_in_every_blocking(corpus_batch_size, batch_size):
    rng = np.random.default_rng(1)
    queries, corpus = integer_data(rng, 60, 1500 if corpus_batch_size != 1 else 120, 6)
    ref_scores, ref_indices = brute_force(queries, corpus, 30)
    result = search(queries, corpus, 30, corpus_batch_size=corpus_batch_size, batch_size=batch_size)
    np.testing.assert_array_equal(result.indices, ref_indices)
    np.testing.assert_array_equal(result.scores, ref_scores.astype(np.float32))
    # The data really has ties at the cut, so the tie rule is exercised.
    assert (ref_scores[:, -1] == np.sort(queries.astype(np.float64) @ corpus.T, axis=1)[:, -31]).any()


def test_duplicate_documents_keep_the_first_copies():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    corpus = np.concatenate([base, base, base])  # every document three times
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    for blocks in (None, 30, 50):
        result = search(queries, corpus, 5, corpus_batch_size=blocks)
        # Each copy has the same score; the copies are listed in index order right after each other.
        assert (result.indices[:, 0] < 50).all()
        first = result.indices[:, 0]
        np.testing.assert_array_equal(result.indices[:, 1], first + 50)
        np.testing.assert_array_equal(result.indices[:, 2], first + 100)
        np.testing.assert_array_equal(result.scores[:, 0], result.scores[:, 2])


def test_all_equal_scores():
    queries = np.zeros((5, 4), np.float32)
    corpus = np.ones((40, 4), np.float32)
    result = search(queries, corpus, 7, corpus_batch_size=9)
    np.testing.assert_array_equal(result.indices, np.tile(np.arange(7), (5, 1)))
    assert (result.scores == 0).all()


def test_float16_input_is_upcast_per_block():
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((40, 32)).astype(np.float16)
    corpus = rng.standard_normal((2000, 32)).astype(np.float16)
    result = search(queries, corpus, 10, corpus_batch_size=300)
    ref_scores, ref_indices = brute_force(queries.astype(np.float32), corpus.astype(np.float32), 10)
    np.testing.assert_allclose(result.scores, ref_scores, atol=1e-4)
    assert (result.indices == ref_indices).mean() > 0.99
    same = search(queries.astype(np.float32), corpus.astype(np.float32), 10, corpus_batch_size=300)
    np.testing.assert_array_equal(result.indices, same.indices)
    np.testing.assert_array_equal(result.scores, same.scores)


def test_blocked_equals_unblocked_on_memmap(tmp_path):
    rng = np.random.default_rng(4)
    queries, corpus = integer_data(rng, 33, 2500, 8, -3, 4)
    stored = np.lib.format.open_memmap(tmp_path / "corpus.npy", mode="w+", dtype=np.float16, shape=corpus.shape)
    stored[:] = corpus
    stored.flush()
    mapped = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    whole = search(queries, corpus, 50)
    blocked = search(queries, mapped, 50, corpus_batch_size=211, batch_size=10)
    np.testing.assert_array_equal(whole.indices, blocked.indices)
    np.testing.assert_array_equal(whole.scores, blocked.scores)


def test_k_larger_than_corpus_pads():
    rng = np.random.default_rng(5)
    queries, corpus = integer_data(rng, 4, 6, 3)
    result = search(queries, corpus, 10, query_ids=["a", "b", "c", "d"], doc_ids=list("uvwxyz"))
    ref_scores, ref_indices = brute_force(queries, corpus, 6)
    np.testing.assert_array_equal(result.indices[:, :6], ref_indices)
    assert (result.indices[:, 6:] == -1).all() and np.isneginf(result.scores[:, 6:]).all()
    assert len(result.top(0)) == 6
    assert result.top(1, 2) == [(str("uvwxyz"[j]), float(s)) for j, s in zip(ref_indices[1, :2], ref_scores[1, :2])]
    assert list(result.query_ids) == ["a", "b", "c", "d"] and result.k == 10 and len(result) == 4


def test_exact_topk_helper():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    values, cols = exact_topk(scores, 2)
    np.testing.assert_array_equal(cols, [[1, 2], [0, 1]])
    np.testing.assert_array_equal(values, [[3.0, 3.0], [0.0, 0.0]])


def test_rankings_helpers():
    result = search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1, query_ids=["x", "y", "z"])
    assert result.row_of("y") == 1
    sub = result.subset(["z", "x"])
    np.testing.assert_array_equal(sub.indices[:, 0], [2, 0])
    with pytest.raises(DanceError):
        result.subset(["nope"])
    with pytest.raises(DanceError):
        Rankings(np.array(["a"]), np.array(["d"]), np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32))


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, "positive"),
    ({"queries": np.zeros((2, 5), np.float32)}, "dimension"),
    ({"corpus": np.full((3, 4), np.nan, np.float32)}, "NaN"),
    ({"queries": np.zeros((2, 4), np.int64)}, "floating"),
    ({"doc_ids": ["a"]}, "one id per row"),
    ({"device": "tpu"}, "device"),
])
def test_bad_input(kwargs, message):
    args = {"queries": np.zeros((2, 4), np.float32), "corpus": np.zeros((3, 4), np.float32), "k": 2}
    args.update(kwargs)
    with pytest.raises(DanceError, match=message):
        search(args.pop("queries"), args.pop("corpus"), args.pop("k"), **args)


def test_empty_inputs():
    result = search(np.zeros((0, 4), np.float32), np.zeros((3, 4), np.float32), 2)
    assert result.indices.shape == (0, 2)
    result = search(np.zeros((2, 4), np.float32), np.zeros((0, 4), np.float32), 2)
    assert (result.indices == -1).all()


def test_torch_backend_logic_on_cpu(monkeypatch):
    """The torch.mm + topk path (used on CUDA when faiss has no GPU support), run here on the CPU."""
    import torch

    from dance_analysis import index

    monkeypatch.setattr(index, "_pick_backend", lambda device, k, *rest: index._TorchCUDA(torch.device("cpu")))
    monkeypatch.setattr(index, "_SCORE_BYTES", 4 * 700)  # several query sub-blocks per product
    rng = np.random.default_rng(6)
    queries, corpus = integer_data(rng, 25, 900, 5)
    result = search(queries, corpus, 40, corpus_batch_size=250, batch_size=11)
    ref_scores, ref_indices = brute_force(queries, corpus, 40)
    np.testing.assert_array_equal(result.indices, ref_indices)
    np.testing.assert_array_equal(result.scores, ref_scores.astype(np.float32))
