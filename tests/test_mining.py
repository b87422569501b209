"""Negative mining: property-based checks against brute-force Python sets, sampling uniformity, rotation,
and the ``negatives/`` folder (round trip, corrupted files)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dance_analysis.errors import DanceError, InputError
from dance_analysis.mining import (
    NegativeSet,
    mine_document_negatives,
    mine_query_negatives,
    positive_pairs,
    rotation_slice,
    summary,
    summary_line,
)

SETTINGS = settings(max_examples=150, deadline=None)


@dataclass
class FakeRankings:
    """Any object with the fields of index.Rankings is accepted."""

    query_ids: np.ndarray
    doc_ids: np.ndarray
    indices: np.ndarray
    scores: np.ndarray


def make_rankings(query_ids, doc_ids, indices) -> FakeRankings:
    indices = np.asarray(indices, dtype=np.int64).reshape(len(query_ids), -1)
    return FakeRankings(np.asarray(query_ids), np.asarray(doc_ids), indices,
                        np.zeros(indices.shape, dtype=np.float32))


@st.composite
def doc_problem(draw):
    num_docs = draw(st.integers(1, 25))
    nq = draw(st.integers(1, 6))
    k = draw(st.integers(0, 12))
    indices = draw(st.lists(st.lists(st.integers(-1, num_docs - 1), min_size=k, max_size=k),
                            min_size=nq, max_size=nq))
    doc_ids = [f"d{i}" for i in range(num_docs)]
    query_ids = [f"q{i}" for i in range(nq)]
    positives = {}
    for qid in query_ids:
        chosen = draw(st.sets(st.integers(0, num_docs + 2), max_size=4))   # may name docs outside the corpus
        as_grades = draw(st.booleans())
        ids = {f"d{i}" for i in chosen}
        positives[qid] = {d: 1 for d in ids} if as_grades else ids
    n = draw(st.integers(0, 8))
    top_k = draw(st.one_of(st.none(), st.integers(1, k + 3)))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_rankings(query_ids, doc_ids, indices), positives, n, top_k, seed


def brute_doc_candidates(rankings, positives, top_k, row):
    cols = rankings.indices[row] if top_k is None else rankings.indices[row, :top_k]
    pos = set(positives.get(str(rankings.query_ids[row]), ()))
    return {int(i) for i in cols if i >= 0 and str(rankings.doc_ids[i]) not in pos}


def check_row(row_values, candidates, n):
    drawn = [int(v) for v in row_values if v >= 0]
    assert len(drawn) == len(set(drawn)), "duplicate negative in a row"
    assert set(drawn) <= candidates, "negative outside the candidates"
    assert len(drawn) == min(n, len(candidates)), "wrong number drawn"
    assert all(v == -1 for v in row_values[len(drawn):]), "-1 padding is not at the end"
    return drawn


@SETTINGS
@given(doc_problem())
def test_document_negatives_properties(problem):
    rankings, positives, n, top_k, seed = problem
    negatives, counts = mine_document_negatives(rankings, positives, n, np.random.default_rng(seed), top_k)
    assert negatives.shape == (len(rankings.query_ids), n) and negatives.dtype == np.int64
    for row in range(len(rankings.query_ids)):
        candidates = brute_doc_candidates(rankings, positives, top_k, row)
        drawn = check_row(negatives[row], candidates, n)
        pos = set(positives[str(rankings.query_ids[row])])
        assert not {str(rankings.doc_ids[i]) for i in drawn} & pos, "a labelled positive was drawn"
    assert counts.shape == (len(rankings.doc_ids),) and counts.dtype == np.int64
    assert counts.tolist() == np.bincount(negatives[negatives >= 0], minlength=len(rankings.doc_ids)).tolist()
    again, again_counts = mine_document_negatives(rankings, positives, n, seed, top_k)
    assert np.array_equal(again, negatives) and np.array_equal(again_counts, counts)


@st.composite
def query_problem(draw):
    nq = draw(st.integers(1, 10))
    num_anchor = draw(st.integers(1, 6))
    k = draw(st.integers(0, 12))
    train_qids = [f"q{i}" for i in range(nq)]
    anchor_ids = [f"d{i}" for i in range(num_anchor)]
    indices = draw(st.lists(st.lists(st.integers(-1, nq - 1), min_size=k, max_size=k),
                            min_size=num_anchor, max_size=num_anchor))
    positives = {}
    for qid in train_qids + ["q-not-training"]:
        chosen = draw(st.sets(st.integers(0, num_anchor + 1), max_size=3))
        positives[qid] = {f"d{i}" for i in chosen}
    pairs = [(q, d) for q in train_qids for d in sorted(positives[q]) if d in anchor_ids]
    # A pair whose query is not labelled with d+ in query_positives: q itself must still be excluded.
    pairs += draw(st.lists(st.tuples(st.sampled_from(train_qids), st.sampled_from(anchor_ids)), max_size=2))
    n = draw(st.integers(0, 8))
    top_k = draw(st.one_of(st.none(), st.integers(1, k + 3)))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_rankings(anchor_ids, train_qids, indices), pairs, positives, n, top_k, seed


@SETTINGS
@given(query_problem(), st.booleans())
def test_query_negatives_properties(problem, integer_pairs):
    rankings, pairs, positives, n, top_k, seed = problem
    train_qids = [str(x) for x in rankings.doc_ids]
    if integer_pairs:
        corpus_ids = np.asarray(sorted({d for _, d in pairs} | {"other"}))
        given_pairs = np.asarray([(train_qids.index(q), list(corpus_ids).index(d)) for q, d in pairs],
                                 dtype=np.int64).reshape(-1, 2)
        negatives, counts = mine_query_negatives(rankings, given_pairs, positives, n, seed, top_k,
                                                 corpus_ids=corpus_ids)
    else:
        negatives, counts = mine_query_negatives(rankings, pairs, positives, n, seed, top_k)
    assert negatives.shape == (len(pairs), n) and negatives.dtype == np.int64
    anchors = [str(x) for x in rankings.query_ids]
    for p, (q, d) in enumerate(pairs):
        row = anchors.index(d)
        cols = rankings.indices[row] if top_k is None else rankings.indices[row, :top_k]
        excluded = {qid for qid, docs in positives.items() if d in docs} | {q}
        candidates = {int(i) for i in cols if i >= 0 and train_qids[i] not in excluded}
        drawn = check_row(negatives[p], candidates, n)
        assert q not in {train_qids[i] for i in drawn}
        assert all(d not in positives[train_qids[i]] for i in drawn), "drew a query whose positive is d+"
    assert counts.tolist() == np.bincount(negatives[negatives >= 0], minlength=len(train_qids)).tolist()
    again, _ = mine_query_negatives(rankings, pairs, positives, n, np.random.default_rng(seed), top_k)
    assert np.array_equal(again, negatives)


def test_document_sampling_is_uniform_not_top_n():
    """20,000 queries with the same 10 candidates (1 positive among 11): each candidate is drawn equally often,
    at every position."""
    nq, n = 20000, 3
    rankings = make_rankings([f"q{i}" for i in range(nq)], [f"d{i}" for i in range(11)],
                             np.tile(np.arange(11), (nq, 1)))
    positives = {f"q{i}": {"d0"} for i in range(nq)}
    negatives, counts = mine_document_negatives(rankings, positives, n, 123, top_k=11)
    assert counts[0] == 0
    expected = nq * n / 10
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 27.9          # chi-square, 9 degrees of freedom, p = 0.001
    first = np.bincount(negatives[:, 0], minlength=11)[1:]
    chi2_first = float(((first - nq / 10) ** 2 / (nq / 10)).sum())
    assert chi2_first < 27.9
    different = mine_document_negatives(rankings, positives, n, 124, top_k=11)[0]
    assert not np.array_equal(different, negatives)


def test_document_negatives_respect_top_k_and_drop_duplicates():
    rankings = make_rankings(["q"], ["a", "b", "c", "d", "e"], [[0, 1, 1, 2, 3, 4]])
    negatives, _ = mine_document_negatives(rankings, {"q": {"a": 2, "c": 0}}, n=10, rng=0, top_k=4)
    # top 4 = a, b, b, c; a is positive, the grade-0 judgement of c is not; b once.
    assert sorted(negatives[0][negatives[0] >= 0].tolist()) == [1, 2]
    negatives, _ = mine_document_negatives(rankings, {"q": {"a": 2, "c": 0}}, n=10, rng=0, top_k=4, min_grade=0)
    assert negatives[0][negatives[0] >= 0].tolist() == [1]


def test_query_negatives_errors():
    rankings = make_rankings(["d0"], ["q0", "q1"], [[0, 1]])
    with pytest.raises(DanceError, match="d9"):
        mine_query_negatives(rankings, [("q0", "d9")], {"q0": {"d9"}}, 2, 0)
    with pytest.raises(DanceError, match="corpus_ids"):
        mine_query_negatives(rankings, np.array([[0, 0]]), {"q0": {"d0"}}, 2, 0)
    bad = make_rankings(["d0"], ["q0", "q1"], [[0, 5]])
    with pytest.raises(DanceError, match="indices"):
        mine_query_negatives(bad, [("q0", "d0")], {"q0": {"d0"}}, 2, 0)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.floats(0.01, 1.0), st.integers(0, 1000), st.integers(0, 50))
def test_rotation_slices_partition(n_queries, fraction, seed, start):
    n_chunks = math.ceil(1 / fraction - 1e-9)
    chunks = [rotation_slice(n_queries, fraction, start + i, seed) for i in range(n_chunks)]
    together = np.concatenate(chunks)
    assert sorted(together.tolist()) == list(range(n_queries))      # disjoint and covering
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) <= 1
    assert np.array_equal(rotation_slice(n_queries, fraction, start + n_chunks, seed), chunks[0])
    assert np.array_equal(rotation_slice(n_queries, fraction, start, seed), chunks[0])


def test_rotation_slice_fraction():
    assert len(rotation_slice(100, 0.2, 0, 0)) == 20
    assert np.array_equal(rotation_slice(7, 1.0, 3, 0), np.arange(7))
    assert not np.array_equal(rotation_slice(100, 0.2, 0, 0), rotation_slice(100, 0.2, 0, 1))
    with pytest.raises(DanceError, match="fraction"):
        rotation_slice(10, 0.0, 0, 0)


def test_positive_pairs():
    pairs = positive_pairs(["q1", "q0", "q2"], ["a", "b", "c"],
                           {"q0": {"c": 2, "a": 1}, "q1": ["b", "zz"], "q2": {"a": 0}}, min_grade=1)
    assert pairs.tolist() == [[0, 1], [1, 0], [1, 2]]
    assert positive_pairs(["q0"], ["a"], {}).shape == (0, 2)


# ---------------------------------------------------------------------- NegativeSet


def make_set(with_queries=True) -> NegativeSet:
    corpus_ids = np.array(["a", "b", "c", "d", "e", "f"])
    train_qids = np.array(["q0", "q1", "q2", "q3"])
    positives = {"q0": {"a"}, "q1": {"b", "c"}, "q2": {"a"}, "q3": {"f"}}
    doc_rank = make_rankings(train_qids, corpus_ids, [[0, 1, 2, 3], [1, 3, 4, 5], [3, 0, 4, 4], [0, 1, 2, 3]])
    doc_neg, doc_counts = mine_document_negatives(doc_rank, positives, 3, 0)
    doc_neg[3] = -1                                 # q3 not mined at this refresh
    doc_counts = np.bincount(doc_neg[doc_neg >= 0], minlength=6)
    pairs = positive_pairs(train_qids, corpus_ids, positives)
    query_neg, query_counts = None, np.zeros(4, dtype=np.int64)
    if with_queries:
        anchors = ["a", "b", "c", "f"]
        q_rank = make_rankings(anchors, train_qids, [[0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0]])
        query_neg, query_counts = mine_query_negatives(q_rank, pairs, positives, 3, 0, corpus_ids=corpus_ids)
    return NegativeSet(meta={"step": 500, "top_k": 4, "n": 3, "seed": 0}, corpus_ids=corpus_ids,
                       train_query_ids=train_qids, doc_negatives=doc_neg, pairs=pairs,
                       query_negatives=query_neg, doc_counts=doc_counts, query_counts=query_counts)


@pytest.mark.parametrize("with_queries", [True, False])
def test_negative_set_round_trip(tmp_path, with_queries):
    neg = make_set(with_queries)
    target = tmp_path / "checkpoint-500" / "negatives"
    neg.save(target)
    files = {p.name for p in target.iterdir()}
    expected = {"meta.json", "corpus_ids.npy", "train_query_ids.npy", "doc_negatives.npy", "pairs.npy",
                "doc_counts.npy", "query_counts.npy"} | ({"query_negatives.npy"} if with_queries else set())
    assert files == expected
    assert json.loads((target / "meta.json").read_text()) == {"step": 500, "top_k": 4, "n": 3, "seed": 0}
    back = NegativeSet.load(target)
    assert back.meta == neg.meta
    for name in ("corpus_ids", "train_query_ids", "doc_negatives", "pairs", "doc_counts", "query_counts"):
        assert np.array_equal(getattr(back, name), getattr(neg, name)), name
    assert (back.query_negatives is None) == (not with_queries)
    if with_queries:
        assert np.array_equal(back.query_negatives, neg.query_negatives)
    # Saving again replaces the folder and leaves no temporary folder behind.
    neg.meta["step"] = 600
    neg.save(target)
    assert NegativeSet.load(target).meta["step"] == 600
    assert [p.name for p in target.parent.iterdir()] == ["negatives"]


def test_negative_set_corrupted_files(tmp_path):
    good = tmp_path / "negatives"
    make_set().save(good)

    def broken(name, mutate):
        folder = tmp_path / name
        make_set().save(folder)
        mutate(folder)
        return folder

    truncated = broken("truncated", lambda f: (f / "doc_negatives.npy").write_bytes(
        (good / "doc_negatives.npy").read_bytes()[:90]))
    with pytest.raises(InputError, match="doc_negatives.npy"):
        NegativeSet.load(truncated)
    out_of_range = broken("range", lambda f: np.save(f / "query_negatives.npy",
                                                      np.full((5, 3), 99, dtype=np.int64)))
    with pytest.raises(InputError, match=r"query_negatives\.npy.*values in \[-1, 4\)"):
        NegativeSet.load(out_of_range)
    wrong_shape = broken("shape", lambda f: np.save(f / "doc_counts.npy", np.zeros(3, dtype=np.int64)))
    with pytest.raises(InputError, match="doc_counts.npy"):
        NegativeSet.load(wrong_shape)
    pickled = broken("pickled", lambda f: np.save(f / "pairs.npy", np.array([object()]), allow_pickle=True))
    with pytest.raises(InputError, match="pairs.npy"):
        NegativeSet.load(pickled)
    bad_meta = broken("meta", lambda f: (f / "meta.json").write_text('{"step": 1, "n": 3}'))
    with pytest.raises(InputError, match="meta.json.*top_k"):
        NegativeSet.load(bad_meta)
    missing = broken("missing", lambda f: (f / "corpus_ids.npy").unlink())
    with pytest.raises(InputError, match="corpus_ids.npy"):
        NegativeSet.load(missing)
    with pytest.raises(DanceError):
        NegativeSet.load(tmp_path / "nothing-here")
    bad = make_set()
    bad.pairs = np.array([[0, 9]], dtype=np.int64)
    with pytest.raises(DanceError, match="pairs"):
        bad.save(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_instances_unroll_repeat_and_skip():
    neg = make_set()
    quads = neg.instances(rng=None)
    assert quads.dtype == np.int64 and quads.shape[1] == 4
    n = neg.n
    lines = {}
    for p, (q_row, d_pos) in enumerate(neg.pairs.tolist()):
        doc = [int(x) for x in neg.doc_negatives[q_row] if x >= 0]
        qry = [int(x) for x in neg.query_negatives[p] if x >= 0]
        if doc and qry:
            lines[(q_row, d_pos)] = [(q_row, d_pos, doc[i % len(doc)], qry[i % len(qry)]) for i in range(n)]
    expected = [quad for quads_of_line in lines.values() for quad in quads_of_line]
    assert [tuple(x) for x in quads.tolist()] == expected
    # q3 (not mined: no doc negatives) is skipped; every other line gives exactly n quadruplets.
    assert 3 not in quads[:, 0].tolist() and len(quads) == n * len(lines) == n * 4
    shuffled = neg.instances(np.random.default_rng(5))
    assert not np.array_equal(shuffled, quads)
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, quads.tolist()))
    assert np.array_equal(shuffled, neg.instances(5))
    # Never a positive among the negatives of a line.
    for q_row, d_pos, d_neg, q_neg in quads.tolist():
        assert d_neg != d_pos and q_neg != q_row


def test_instances_short_rows_repeat():
    neg = NegativeSet(meta={"step": 0, "top_k": 5, "n": 4, "seed": 0}, corpus_ids=np.array(["a", "b", "c"]),
                      train_query_ids=np.array(["q0", "q1"]), doc_negatives=np.array([[-1, 2, -1, 1], [-1] * 4]),
                      pairs=np.array([[0, 0], [1, 2]]), query_negatives=None,
                      doc_counts=np.array([0, 1, 1]), query_counts=None)
    quads = neg.instances()
    assert quads.tolist() == [[0, 0, 2, -1], [0, 0, 1, -1], [0, 0, 2, -1], [0, 0, 1, -1]]


def test_summary():
    neg = make_set()
    s = summary(neg)
    assert s["queries"] == 4 and s["mined_queries"] == 3 and s["pairs"] == 5 and s["n"] == 3
    assert s["doc_negatives_drawn"] == int((neg.doc_negatives >= 0).sum())
    assert s["distinct_docs"] == len(set(neg.doc_negatives[neg.doc_negatives >= 0].tolist()))
    assert s["query_negatives_drawn"] == int((neg.query_negatives >= 0).sum())
    line = summary_line(neg)
    assert "\n" not in line and "negatives@500" in line
    assert "query_negatives_drawn" not in summary(make_set(with_queries=False))
