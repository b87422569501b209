"""Collections named by ir_datasets ids: ``irds:<dataset id>[,<dataset id>...]``.

``irds:msmarco-document/dev`` gives the MS MARCO document corpus, the dev queries and qrels, and one split named
after the last part of the id (``dev``). Several ids that share one corpus give one split each, e.g.
``irds:msmarco-document/train,msmarco-document/dev`` -> splits ``train`` and ``dev``.

Needs the optional ``ir_datasets`` package and its data (ir_datasets downloads or locates the files itself);
without them loading fails with a :class:`~dance_analysis.errors.DanceError` that says so. Documents stream
from ir_datasets (only ids are kept in memory); document texts follow the project's conventions: MS MARCO
documents are ``title + " " + body`` (FirstP), other documents ``title + " " + text`` when they have a title.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import DanceError
from .collection import Collection, Corpus, _IdAccumulator
from .formats import QrelsTable, join_title
from .loaders import _split_names, build_qrels

logger = logging.getLogger(__name__)
PREFIX = "irds:"


def _module() -> Any:
    try:
        return importlib.import_module("ir_datasets")
    except ImportError:
        raise DanceError("collection ids of the form irds:<id> need the ir_datasets package, which is not "
                         "installed (pip install ir_datasets), or give the files as a YAML manifest / BEIR "
                         "folder instead") from None


def _record_text(record: Any) -> str:
    fields = getattr(record, "_fields", ())
    title = getattr(record, "title", "") if "title" in fields else ""
    for body_field in ("body", "text"):
        if body_field in fields:
            return join_title(title or "", getattr(record, body_field) or "")
    if hasattr(record, "default_text"):
        return str(record.default_text())
    raise DanceError(f"ir_datasets record {type(record).__name__} has no text field (fields: {fields})")


def _load(ir_datasets: Any, dataset_id: str) -> Any:
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        raise DanceError(f"ir_datasets does not know the dataset id {dataset_id!r}") from None


class IrdsCorpus(Corpus):
    """The documents of an ir_datasets dataset: ids kept, texts streamed from ir_datasets."""

    def __init__(self, dataset_id: str, dataset: Any):
        self.dataset_id = dataset_id
        self._dataset = dataset
        ids = _IdAccumulator()
        for doc in self._docs():
            ids.append(str(doc.doc_id))
        self.ids = ids.finish()
        if len(np.unique(self.ids)) != len(self.ids):
            raise DanceError(f"ir_datasets {dataset_id}: document ids are not unique")

    def _docs(self) -> Iterator[Any]:
        try:
            yield from self._dataset.docs_iter()
        except DanceError:
            raise
        except Exception as exc:  # ir_datasets raises many kinds of errors when data is missing
            raise DanceError(f"ir_datasets could not provide the documents of {self.dataset_id}: "
                             f"{type(exc).__name__}: {exc}") from None

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        for doc in self._docs():
            yield str(doc.doc_id), _record_text(doc)

    def texts(self, ids: Sequence[str]) -> list[str]:
        ids = list(ids)
        self._rows_or_error(ids)
        store = getattr(self._dataset, "docs_store", None)
        if store is not None:
            docs = store().get_many(ids)
            return [_record_text(docs[i]) for i in ids]
        wanted = set(ids)
        found: dict[str, str] = {}
        for doc_id, text in self.iter_texts():
            if doc_id in wanted:
                found[doc_id] = text
                if len(found) == len(wanted):
                    break
        return [found[i] for i in ids]

    def fingerprint(self) -> str:
        """ir_datasets data is versioned by its id: hash of the dataset id and the ids."""
        digest = hashlib.sha256(self.dataset_id.encode())
        digest.update(str(len(self.ids)).encode())
        digest.update(self.ids[:1000].tobytes())
        return digest.hexdigest()


def parse_ids(spec: str) -> list[str]:
    """``"irds:a/b,a/c"`` -> ``["a/b", "a/c"]``."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    ids = [part.strip() for part in body.split(",") if part.strip()]
    if not ids:
        raise DanceError(f"{spec!r}: expected irds:<dataset id>[,<dataset id>...]")
    return ids


def load_irds(spec: str | Sequence[str], *, min_relevance: int | None = None,
              strict: bool = False) -> Collection:
    """Load ``irds:<id>[,<id>...]`` through ir_datasets (see module docstring)."""
    ids = parse_ids(spec) if isinstance(spec, str) else list(spec)
    ir_datasets = _module()
    datasets = {dataset_id: _load(ir_datasets, dataset_id) for dataset_id in ids}
    first_id = ids[0]
    first = datasets[first_id]
    if not first.has_docs():
        raise DanceError(f"ir_datasets {first_id} has no documents")
    parent = getattr(ir_datasets, "docs_parent_id", None)
    if parent is not None and len({parent(i) for i in ids}) > 1:
        raise DanceError(f"the ir_datasets ids {ids} do not share one document collection")

    corpus = IrdsCorpus(first_id, first)
    queries: dict[str, str] = {}
    split_qids: dict[str, list[str]] = {}
    tables: list[QrelsTable] = []
    names = [i.rstrip("/").split("/")[-1] for i in ids]
    if len(set(names)) != len(names):
        names = list(ids)
    for name, dataset_id in zip(names, ids):
        dataset = datasets[dataset_id]
        if not dataset.has_queries():
            raise DanceError(f"ir_datasets {dataset_id} has no queries")
        try:
            part = {str(q.query_id): (q.text if "text" in getattr(q, "_fields", ()) else str(q.default_text()))
                    for q in dataset.queries_iter()}
            table = QrelsTable(f"ir_datasets:{dataset_id}")
            if dataset.has_qrels():
                for i, qrel in enumerate(dataset.qrels_iter(), start=1):
                    table.qids.append(str(qrel.query_id))
                    table.docids.append(str(qrel.doc_id))
                    table.grades.append(int(qrel.relevance))
                    table.lines.append(i)
        except DanceError:
            raise
        except Exception as exc:
            raise DanceError(f"ir_datasets could not provide the queries / qrels of {dataset_id}: "
                             f"{type(exc).__name__}: {exc}") from None
        queries.update(part)
        split_qids[name] = list(part)
        tables.append(table)
    qrels = build_qrels(tables, queries, corpus, strict=strict)
    effective_min = 1 if min_relevance is None else min_relevance
    splits = {name: split_qids[name] for name in _split_names(split_qids)}
    collection_name = "irds:" + ",".join(ids)
    source = {"format": "irds", "name": collection_name, "ids": ids, "min_relevance": effective_min}
    return Collection(name=collection_name, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)
