"""ir_datasets ids: a clear error without the package; the mapping through a small stand-in module."""

from __future__ import annotations

import sys
import types
from collections import namedtuple

import pytest

from dance_analysis.data import load_collection
from dance_analysis.errors import DanceError

MsMarcoDoc = namedtuple("MsMarcoDocument", ["doc_id", "url", "title", "body"])
Passage = namedtuple("GenericDoc", ["doc_id", "text"])
Query = namedtuple("GenericQuery", ["query_id", "text"])
Qrel = namedtuple("TrecQrel", ["query_id", "doc_id", "relevance", "iteration"])

DOCS = [MsMarcoDoc("D1", "u1", "Title one", "Body one"), MsMarcoDoc("D2", "u2", "", "Body two"),
        MsMarcoDoc("D3", "u3", "Title three", "")]


class FakeDataset:
    def __init__(self, queries=(), qrels=(), docs=DOCS, fail=False):
        self._queries, self._qrels, self._docs, self._fail = list(queries), list(qrels), list(docs), fail
        self.iterations = 0

    def has_docs(self):
        return bool(self._docs)

    def has_queries(self):
        return bool(self._queries)

    def has_qrels(self):
        return bool(self._qrels)

    def docs_iter(self):
        self.iterations += 1
        if self._fail:
            raise ConnectionError("no network to download msmarco-docs.tsv")
        return iter(self._docs)

    def queries_iter(self):
        return iter(self._queries)

    def qrels_iter(self):
        return iter(self._qrels)


def fake_module(datasets: dict) -> types.ModuleType:
    module = types.ModuleType("ir_datasets")

    def load(dataset_id):
        if dataset_id not in datasets:
            raise KeyError(dataset_id)
        return datasets[dataset_id]

    module.load = load
    module.docs_parent_id = lambda dataset_id: dataset_id.split("/")[0]
    return module


@pytest.fixture()
def fake_irds(monkeypatch):
    train = FakeDataset([Query("1", "train query one"), Query("2", "train query two")],
                        [Qrel("1", "D1", 1, "0"), Qrel("2", "D3", 1, "0"), Qrel("2", "D404", 1, "0")])
    dev = FakeDataset([Query("9", "dev query")], [Qrel("9", "D2", 1, "0"), Qrel("77", "D2", 1, "0")])
    datasets = {"msmarco-document/train": train, "msmarco-document/dev": dev,
                "other/dev": FakeDataset([Query("5", "x")], docs=[Passage("P1", "passage")]),
                "broken/dev": FakeDataset([Query("5", "x")], fail=True)}
    monkeypatch.setitem(sys.modules, "ir_datasets", fake_module(datasets))
    return datasets


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)  # import fails as when not installed
    with pytest.raises(DanceError) as exc_info:
        load_collection("irds:msmarco-document/dev")
    message = str(exc_info.value)
    assert "ir_datasets" in message and "not installed" in message and "pip install ir_datasets" in message


def test_single_id_maps_docs_queries_qrels(fake_irds):
    c = load_collection("irds:msmarco-document/dev")
    assert c.name == "irds:msmarco-document/dev"
    assert c.corpus.ids.tolist() == ["D1", "D2", "D3"]
    assert list(c.corpus.iter_texts()) == [("D1", "Title one Body one"), ("D2", "Body two"),
                                           ("D3", "Title three")]
    assert c.corpus.texts(["D3", "D1"]) == ["Title three", "Title one Body one"]
    assert c.queries == {"9": "dev query"}
    assert c.splits == {"dev": ["9"]}
    assert c.qrels == {"9": {"D2": 1}}  # the judgment of unknown query 77 is dropped
    assert c.source == {"format": "irds", "name": "irds:msmarco-document/dev", "ids": ["msmarco-document/dev"],
                        "min_relevance": 1}
    assert load_collection(c.source).qrels == c.qrels


def test_several_ids_give_one_split_each(fake_irds):
    c = load_collection("irds:msmarco-document/train,msmarco-document/dev", min_relevance=1)
    assert list(c.splits) == ["train", "dev"]
    assert c.splits == {"train": ["1", "2"], "dev": ["9"]}
    assert c.qrels == {"1": {"D1": 1}, "2": {"D3": 1}, "9": {"D2": 1}}
    with pytest.raises(DanceError):
        load_collection("irds:msmarco-document/train", strict=True)  # D404 is not in the corpus


def test_passage_texts_and_errors(fake_irds):
    c = load_collection("irds:other/dev")
    assert list(c.corpus.iter_texts()) == [("P1", "passage")]
    with pytest.raises(DanceError, match="does not know the dataset id 'nope/x'"):
        load_collection("irds:nope/x")
    with pytest.raises(DanceError, match="do not share one document collection"):
        load_collection("irds:msmarco-document/dev,other/dev")
    with pytest.raises(DanceError) as exc_info:
        load_collection("irds:broken/dev")
    assert "could not provide the documents of broken/dev" in str(exc_info.value)
    assert "ConnectionError" in str(exc_info.value)
    with pytest.raises(DanceError, match="expected irds:<dataset id>"):
        load_collection("irds:")
