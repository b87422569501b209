"""Collection API, corpora (in memory and streamed from files), manifests, BEIR folders, qrels checks."""

from __future__ import annotations

import gzip
import json
import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml

from dance_analysis.data import Collection, FileCorpus, InMemoryCorpus, load_collection, seeded_splits
from dance_analysis.data import collection as collection_module
from dance_analysis.errors import DanceError, InputError


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture()
def msmarco_files(tmp_path):
    """A small MS MARCO document collection: 5 docs, train/dev queries, qrels in two dialects."""
    docs = "".join(f"D{i}\thttp://x/{i}\ttitle {i}\tbody of document {i}\n" for i in range(5))
    write(tmp_path / "docs.tsv.gz", docs, gz=True)
    write(tmp_path / "train-queries.tsv", "10\tfirst train query\n11\tsecond train query\n12\tthird\n")
    write(tmp_path / "dev-queries.tsv", "20\tdev query\n21\tanother dev query\n")
    write(tmp_path / "train-qrels.tsv", "10 0 D1 1\n11 0 D2 1\n11 0 D3 0\n")   # space separated (doc qrels)
    write(tmp_path / "dev-qrels.tsv", "20\t0\tD4\t2\n21\t0\tD0\t1\n")          # tab separated
    return tmp_path


def manifest(folder: Path, **extra) -> dict:
    spec = {"format": "msmarco-doc", "corpus": str(folder / "docs.tsv.gz"),
            "queries": {"train": str(folder / "train-queries.tsv"), "dev": str(folder / "dev-queries.tsv")},
            "qrels": {"train": str(folder / "train-qrels.tsv"), "dev": str(folder / "dev-qrels.tsv")}}
    spec.update(extra)
    return spec


# -- Collection ------------------------------------------------------------------------------------------------

def small_collection(min_relevance: int = 1) -> Collection:
    corpus = InMemoryCorpus({"d1": "one", "d2": "two", "d3": "three"})
    queries = {"q1": "a", "q2": "b", "q3": "c"}
    qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 0}}
    return Collection("toy", corpus, queries, qrels, {"train": ["q1", "q2"], "test": ["q3"]}, min_relevance,
                      {"format": "toy"})


def test_collection_relevance_and_splits():
    c = small_collection()
    assert c.split_queries(None) == ["q1", "q2", "q3"] == c.split_queries("all")
    assert c.split_queries("train") == ["q1", "q2"]
    assert c.relevant("q1") == {"d1": 2, "d2": 1}
    assert c.relevant("q2") == {} and c.relevant("unknown") == {}
    assert c.evaluable(["q3", "q2", "q1"]) == ["q1"]
    c2 = small_collection(min_relevance=2)
    assert c2.relevant("q1") == {"d1": 2}
    assert c2.stats()["relevant"] == 1 and c.stats()["relevant"] == 2
    with pytest.raises(DanceError) as exc_info:
        c.split_queries("dev")
    assert "'dev'" in str(exc_info.value) and "train, test, all" in str(exc_info.value)
    assert "3 documents" in repr(c) and "train=2" in repr(c)


def test_collection_rejects_split_with_unknown_query():
    with pytest.raises(DanceError, match="unknown query"):
        Collection("bad", InMemoryCorpus({"d": "x"}), {"q": "x"}, {}, {"train": ["q", "zz"]})


def test_in_memory_corpus():
    corpus = InMemoryCorpus(["b", "a", "c"], ["text b", "text a", "text c"])
    assert corpus.ids.tolist() == ["b", "a", "c"] and len(corpus) == 3
    assert list(corpus.iter_texts()) == [("b", "text b"), ("a", "text a"), ("c", "text c")]
    assert corpus.texts(["c", "b"]) == ["text c", "text b"]
    assert corpus.rows(["c", "zz", "b", "a"]).tolist() == [2, -1, 0, 1]
    assert "a" in corpus and "zz" not in corpus
    with pytest.raises(DanceError, match="not in the corpus"):
        corpus.texts(["zz"])
    with pytest.raises(DanceError, match="unique"):
        InMemoryCorpus(["a", "a"], ["x", "y"])
    with pytest.raises(DanceError, match="2 ids but 1 texts"):
        InMemoryCorpus(["a", "b"], ["x"])
    assert InMemoryCorpus({"x": "1"}).fingerprint() != InMemoryCorpus({"x": "2"}).fingerprint()


def test_rows_match_brute_force():
    rng = np.random.default_rng(0)
    ids = [f"doc{int(i)}" for i in rng.permutation(500)]
    corpus = InMemoryCorpus(ids, ["t"] * len(ids))
    queries = ids[::7] + ["missing", "doc", "doc5000"]
    expected = [ids.index(q) if q in ids else -1 for q in queries]
    assert corpus.rows(queries).tolist() == expected


# -- FileCorpus streaming --------------------------------------------------------------------------------------

def test_file_corpus_streams_without_holding_texts(tmp_path):
    body = "lorem ipsum dolor sit amet " * 150  # ~4 KB per document, ~40 MB in all
    path = tmp_path / "big.tsv"
    with open(path, "w") as out:
        for i in range(10_000):
            out.write(f"P{i}\t{i} {body}\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        corpus = FileCorpus.open(path, "msmarco-passage")
        total = 0
        for doc_id, text in corpus.iter_texts():
            total += len(text)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(corpus) == 10_000 and total > 0.9 * size
    assert peak < size / 8, f"peak {peak} bytes while streaming a {size}-byte file"
    assert not any(isinstance(v, list) and len(v) == 10_000 for v in vars(corpus).values())
    assert corpus.texts(["P9999", "P0"]) == [f"9999 {body}", f"0 {body}"]


def test_file_corpus_random_access_in_gzip(tmp_path):
    path = write(tmp_path / "c.tsv", "".join(f"P{i}\ttext {i}\n" for i in range(50)), gz=True)
    corpus = FileCorpus.open(path, "msmarco-passage")
    assert corpus.texts(["P7", "P2", "P7"]) == ["text 7", "text 2", "text 7"]
    with pytest.raises(DanceError, match="not in the corpus"):
        corpus.texts(["P99"])


def test_file_corpus_detects_changes_after_indexing(tmp_path):
    path = write(tmp_path / "c.tsv", "P1\tone\nP2\ttwo\n")
    corpus = FileCorpus.open(path, "msmarco-passage")
    write(path, "P1\tone\nP3\tthree!\n")
    os.utime(path, ns=(1, 1))
    with pytest.raises(InputError, match="modified after it was indexed"):
        list(corpus.iter_texts())


def test_index_cache_reused_for_large_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(collection_module, "INDEX_CACHE_MIN_BYTES", 0)
    path = write(tmp_path / "c.tsv", "".join(f"P{i}\ttext {i}\n" for i in range(30)))
    first = FileCorpus.open(path, "msmarco-passage")
    cached = list((tmp_path / "cache" / "index").iterdir())
    assert len(cached) == 1 and (cached[0] / "ids.npy").is_file()

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the index should come from the cache")

    monkeypatch.setattr(FileCorpus, "_index", classmethod(no_second_pass))
    again = FileCorpus.open(path, "msmarco-passage")
    assert again.ids.tolist() == first.ids.tolist() and again.offsets.tolist() == first.offsets.tolist()
    assert again.texts(["P29"]) == ["text 29"]
    write(path, "".join(f"P{i}\ttext {i}\n" for i in range(31)))  # a changed file is indexed afresh
    with pytest.raises(AssertionError, match="from the cache"):
        FileCorpus.open(path, "msmarco-passage")


# -- manifests -------------------------------------------------------------------------------------------------

def test_manifest_dict_loads_msmarco_doc_collection(msmarco_files):
    c = load_collection(manifest(msmarco_files))
    assert isinstance(c.corpus, FileCorpus) and c.corpus.ids.tolist() == [f"D{i}" for i in range(5)]
    assert c.corpus.text("D3") == "title 3 body of document 3"
    assert c.queries == {"10": "first train query", "11": "second train query", "12": "third",
                         "20": "dev query", "21": "another dev query"}
    assert c.splits == {"train": ["10", "11", "12"], "dev": ["20", "21"]}
    assert c.qrels == {"10": {"D1": 1}, "11": {"D2": 1, "D3": 0}, "20": {"D4": 2}, "21": {"D0": 1}}
    assert c.min_relevance == 1 and c.evaluable(c.split_queries("train")) == ["10", "11"]
    assert c.source["format"] == "msmarco-doc" and c.source["min_relevance"] == 1
    json.dumps(c.source)  # JSON-able, so checkpoints can record it


def test_source_round_trip_and_min_relevance(msmarco_files):
    c = load_collection(manifest(msmarco_files), min_relevance=2)
    again = load_collection(json.loads(json.dumps(c.source)))
    assert again.min_relevance == 2 and again.qrels == c.qrels and again.splits == c.splits
    assert again.corpus.ids.tolist() == c.corpus.ids.tolist()
    assert again.evaluable(again.split_queries("dev")) == ["20"]
    assert load_collection(c.source, min_relevance=1).min_relevance == 1


def test_yaml_manifest_with_relative_paths(msmarco_files, tmp_path, monkeypatch):
    spec = {"format": "msmarco-doc", "name": "tiny-docs", "corpus": "docs.tsv.gz",
            "queries": {"train": "train-queries.tsv"}, "qrels": {"train": "train-qrels.tsv"},
            "min_relevance": 1}
    path = msmarco_files / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path.parent)  # relative paths resolve against the manifest, not the cwd
    c = load_collection(str(path))
    assert c.name == "tiny-docs" and list(c.splits) == ["train"] and len(c.corpus) == 5
    assert Path(c.source["corpus"]).is_absolute()
    assert load_collection(c.source).queries == c.queries


def test_manifest_passage_format_single_files(tmp_path):
    write(tmp_path / "collection.tsv", "0\tpassage zero\n1\tpassage one\n")
    write(tmp_path / "queries.tsv", "5\tq five\n")
    write(tmp_path / "qrels.tsv", "5\t0\t1\t1\n")
    c = load_collection({"format": "msmarco-passage", "corpus": str(tmp_path / "collection.tsv"),
                         "queries": str(tmp_path / "queries.tsv"), "qrels": str(tmp_path / "qrels.tsv")})
    assert c.splits == {} and c.split_queries("all") == ["5"] and c.relevant("5") == {"1": 1}


def test_manifest_random_splits(msmarco_files):
    spec = manifest(msmarco_files)
    spec["queries"] = str(msmarco_files / "train-queries.tsv")
    spec["qrels"] = str(msmarco_files / "train-qrels.tsv")
    spec["random_splits"] = {"seed": 3, "train": 0.34, "test": 0.66}
    c = load_collection(spec)
    assert c.splits == seeded_splits(["10", "11", "12"], seed=3, fractions={"train": 0.34, "test": 0.66})
    assert sorted(c.splits["train"] + c.splits["test"]) == ["10", "11", "12"]


def test_unknown_qrels_ids_are_counted_dropped_and_strict_fails(msmarco_files, caplog):
    write(msmarco_files / "dev-qrels.tsv", "20\t0\tD4\t2\n20\t0\tD77\t1\n99\t0\tD1\t1\n98\t0\tD88\t1\n")
    with caplog.at_level(logging.WARNING):
        c = load_collection(manifest(msmarco_files))
    assert c.qrels["20"] == {"D4": 2} and "99" not in c.qrels and "98" not in c.qrels
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "dev-qrels.tsv" in message and "3 of 4 judgment(s)" in message
    assert "2 unknown query id(s)" in message and "2 unknown document id(s)" in message and "'D77'" in message
    with pytest.raises(InputError) as exc_info:
        load_collection(manifest(msmarco_files), strict=True)
    assert exc_info.value.line == 2 and exc_info.value.path.endswith("dev-qrels.tsv")
    assert "2 unknown query id(s)" in str(exc_info.value) and "2 unknown document id(s)" in str(exc_info.value)


def test_conflicting_grades_are_an_error(msmarco_files):
    write(msmarco_files / "dev-qrels.tsv", "20\t0\tD4\t2\n20\t0\tD4\t0\n")
    with pytest.raises(InputError, match="one grade per"):
        load_collection(manifest(msmarco_files))


@pytest.mark.parametrize("change, fragment", [
    ({"format": "trec"}, "format .trec.; expected one of"),
    ({"corpuss": "x"}, "unknown manifest key"),
    ({"min_relevance": "two"}, "integer grade"),
    ({"random_splits": {"train": 0.5, "test": 0.2}}, "either split-keyed"),
])
def test_manifest_errors(msmarco_files, change, fragment):
    with pytest.raises(DanceError, match=fragment):
        load_collection(manifest(msmarco_files, **change))


def test_bad_yaml_manifest_is_an_input_error(tmp_path):
    path = write(tmp_path / "bad.yaml", "format: [unclosed\n")
    with pytest.raises(InputError) as exc_info:
        load_collection(str(path))
    assert exc_info.value.path == str(path)
    with pytest.raises(InputError, match="YAML mapping"):
        load_collection(str(write(tmp_path / "list.yaml", "- a\n- b\n")))


def test_unknown_collection_spec_names_what_was_expected(tmp_path):
    with pytest.raises(DanceError) as exc_info:
        load_collection("no-such-collection")
    assert "rag24-sample" in str(exc_info.value) and "irds:" in str(exc_info.value)
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(DanceError, match="corpus.jsonl"):
        load_collection(str(tmp_path / "empty-folder"))
    with pytest.raises(DanceError, match="unknown collection format"):
        load_collection({"format": "nope"})
    with pytest.raises(DanceError, match="min_relevance"):
        load_collection("rag24-sample", min_relevance="2")


# -- BEIR ------------------------------------------------------------------------------------------------------

@pytest.fixture()
def beir_folder(tmp_path):
    folder = tmp_path / "scifact-mini"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"Text {i}.", "metadata": {}} for i in range(6)]
    write(folder / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}", "metadata": {}} for i in range(5)]
    write(folder / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    write(folder / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq1\td2\t1\n")
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq3\td3\t1\nq4\td5\t2\nq4\td9\t1\n")
    return folder


def test_beir_folder(beir_folder, caplog):
    with caplog.at_level(logging.WARNING):
        c = load_collection(str(beir_folder))
    assert c.name == "scifact-mini" and len(c.corpus) == 6 and len(c.queries) == 5
    assert c.corpus.text("d4") == "Title 4 Text 4."
    assert c.splits == {"train": ["q0", "q1"], "test": ["q3", "q4"]}
    assert c.qrels == {"q0": {"d0": 1}, "q1": {"d1": 1, "d2": 1}, "q3": {"d3": 1}, "q4": {"d5": 2}}
    assert any("1 unknown document id(s)" in r.getMessage() and "'d9'" in r.getMessage() for r in caplog.records)
    assert load_collection(c.source).qrels == c.qrels
    with pytest.raises(InputError) as exc_info:
        load_collection(str(beir_folder), strict=True)
    assert exc_info.value.path.endswith("test.tsv") and exc_info.value.line == 4


def test_beir_folder_without_qrels(beir_folder):
    for path in (beir_folder / "qrels").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="qrels"):
        load_collection(str(beir_folder))
