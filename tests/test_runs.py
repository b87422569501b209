"""TREC run files: exact round trip (signs, odd ids, float32 and float64 scores, gzip) and bad input."""

from __future__ import annotations

import gzip

import ir_measures
import numpy as np
import pytest

from dance_analysis.errors import DanceError, InputError
from dance_analysis.index import Rankings
from dance_analysis.runs import read_trec_run, write_trec_run

ODD_IDS = ["007", "1e5", "-3", "d:ü/é#1", "a,b", "Q0", "0.50", "x" * 40, "\"quoted\"", "NaN"]


def odd_rankings(dtype=np.float32) -> Rankings:
    rng = np.random.default_rng(0)
    n_docs, n_queries, k = len(ODD_IDS), 4, 7
    indices = np.stack([rng.permutation(n_docs)[:k] for _ in range(n_queries)])
    scores = (rng.standard_normal((n_queries, k)) * 10.0 ** rng.integers(-20, 20, (n_queries, k))).astype(dtype)
    scores[0, :3] = [0.0, -0.0, -0.0]
    scores[1, :] = -scores[1, :] ** 2  # all negative
    scores = -np.sort(-scores, axis=1)
    indices[3, 5:] = -1  # a shorter list
    scores[3, 5:] = -np.inf
    return Rankings(np.asarray(["1", "q 2".replace(" ", "_"), "-4", "0.5"]), np.asarray(ODD_IDS), indices, scores)


def as_lists(rankings: Rankings) -> dict:
    return {str(q): rankings.top(row) for row, q in enumerate(rankings.query_ids)}


@pytest.mark.parametrize("name", ["run.trec", "run.trec.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, name, dtype):
    original = odd_rankings(dtype)
    path = write_trec_run(tmp_path / name, original, tag="my-tag")
    back = read_trec_run(path)
    assert back.scores.dtype == dtype
    assert as_lists(back) == as_lists(original)
    # Bit-exact scores, sign of zero included.
    for row in range(len(original)):
        keep = original.indices[row] >= 0
        a = original.scores[row, keep]
        b = back.scores[row, :keep.sum()]
        assert a.tobytes() == b.tobytes()
    zeros = back.scores[0][back.scores[0] == 0]
    assert np.signbit(zeros).sum() == 2 and (~np.signbit(zeros)).sum() == 1
    assert list(back.query_ids) == ["1", "q_2", "-4", "0.5"]
    assert back.k == 7 and (back.indices[3, 5:] == -1).all()
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as handle:
            first = handle.readline().split()
    else:
        first = path.read_text().splitlines()[0].split()
    assert first[0] == "1" and first[1] == "Q0" and first[3] == "1" and first[5] == "my-tag"
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_file_reads_the_same_in_ir_measures(tmp_path):
    original = odd_rankings()
    path = write_trec_run(tmp_path / "run.txt", original)
    theirs = {}
    for doc in ir_measures.read_trec_run(str(path)):
        theirs.setdefault(doc.query_id, {})[doc.doc_id] = doc.score
    ours = {q: {d: float(s) for d, s in pairs} for q, pairs in as_lists(original).items()}
    assert {q: {d: float(np.float32(s)) for d, s in v.items()} for q, v in theirs.items()} == ours


def test_gzip_output_is_reproducible(tmp_path):
    a = write_trec_run(tmp_path / "a.gz", odd_rankings())
    b = write_trec_run(tmp_path / "b.gz", odd_rankings())
    assert a.read_bytes() == b.read_bytes()


def test_ties_keep_file_order_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "run"
    path.write_text("q1 Q0 b 1 1.0 t\n\nq1 Q0 a 2 1.0 t\nq2 Q0 a 1 -2 t\nq1\tQ0\tc 3 2.5 t\n")
    run = read_trec_run(path)
    assert as_lists(run) == {"q1": [("c", 2.5), ("b", 1.0), ("a", 1.0)], "q2": [("a", -2.0)]}
    assert run.scores.dtype == np.float32


@pytest.mark.parametrize("content,line,expected", [
    ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", 2, "6 whitespace-separated fields"),
    ("q1 Q0 d1 1 0.5 t extra\n", 1, "6 whitespace-separated fields"),
    ("q1 Q0 d1 one 0.5 t\n", 1, "integer rank"),
    ("q1 Q0 d1 1 high t\n", 1, "number as score"),
    ("q1 Q0 d1 1 nan t\n", 1, "not NaN"),
    ("q1 Q0 d1 1 0.5 t\nq2 Q0 d1 1 0.5 t\n\nq1 Q0 d1 2 0.4 t\n", 4, "at most once per query"),
])
def test_malformed_lines(tmp_path, content, line, expected):
    path = tmp_path / "bad.run"
    path.write_text(content)
    with pytest.raises(InputError, match=expected) as info:
        read_trec_run(path)
    assert info.value.line == line and info.value.path == str(path)
    assert f"{path}:{line}" in str(info.value)


def test_bad_encoding_and_missing_file(tmp_path):
    path = tmp_path / "latin1.run"
    path.write_bytes(b"q1 Q0 caf\xe9 1 0.5 t\n")
    with pytest.raises(InputError, match="UTF-8") as info:
        read_trec_run(path)
    assert info.value.line == 1
    with pytest.raises(InputError, match="does not exist"):
        read_trec_run(tmp_path / "missing.run")
    (tmp_path / "broken.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="gzip"):
        read_trec_run(tmp_path / "broken.gz")


@pytest.mark.parametrize("doc_ids,query_ids,tag,message", [
    (["a b", "c"], ["q"], "t", "whitespace"),
    (["a", "c"], ["q\t1"], "t", "whitespace"),
    (["a\u00a0b", "c"], ["q"], "t", "whitespace"),
    (["a", "c\u3000"], ["q"], "t", "whitespace"),
    (["", "c"], ["q"], "t", "empty"),
    (["a", "c"], ["q"], "my tag", "tag"),
])
def test_write_refuses_unreadable_ids(tmp_path, doc_ids, query_ids, tag, message):
    rankings = Rankings(np.asarray(query_ids), np.asarray(doc_ids), np.array([[0, 1]]),
                        np.array([[1.0, 0.5]], np.float32))
    with pytest.raises(DanceError, match=message):
        write_trec_run(tmp_path / "out.run", rankings, tag=tag)
    assert not list(tmp_path.iterdir())


def test_unused_odd_doc_ids_are_fine(tmp_path):
    rankings = Rankings(np.asarray(["q"]), np.asarray(["a", "has space"]), np.array([[0, -1]]),
                        np.array([[1.0, -np.inf]], np.float32))
    path = write_trec_run(tmp_path / "out.run", rankings)
    assert path.read_text() == "q Q0 a 1 1.0 dance\n"
