"""Collections: a corpus (ids in memory, texts streamed), queries, graded qrels and named query splits.

A :class:`Corpus` holds its document ids as an array and hands out texts either as one streaming pass in id
order (:meth:`Corpus.iter_texts`, what tokenisation uses) or for a few ids at a time (:meth:`Corpus.texts`).
:class:`InMemoryCorpus` keeps texts in lists (small collections such as the built-in sample);
:class:`FileCorpus` keeps only ids and line offsets and reads texts from its file on demand, so a collection of
millions of documents never has all its texts in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import building_dir
from ..errors import DanceError, InputError
from .cache import cache_root
from .formats import FORMATS, file_fingerprint, is_gzip, iter_records

logger = logging.getLogger(__name__)

#: Files at least this large keep their id / offset index in the cache, so that reopening them skips a pass.
INDEX_CACHE_MIN_BYTES = 64 << 20
_INDEX_VERSION = 1
_ID_CHUNK = 1 << 16


def _as_str_array(values: Iterable[str]) -> np.ndarray:
    array_ = np.asarray(list(values), dtype=str)
    if array_.ndim != 1:
        raise DanceError("ids must be a flat sequence of strings")
    return array_


class Corpus:
    """Abstract corpus: unique document ids (``ids``, collection order) and their texts, streamed.

    Subclasses set ``ids`` and implement :meth:`iter_texts` and :meth:`texts`.
    """

    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """Yield ``(docid, text)`` for every document, in ``ids`` order, streaming."""
        raise NotImplementedError

    def texts(self, ids: Sequence[str]) -> list[str]:
        """The texts of a few documents, in the order of ``ids``; an unknown id is a :class:`DanceError`."""
        raise NotImplementedError

    def text(self, doc_id: str) -> str:
        """The text of one document."""
        return self.texts([doc_id])[0]

    # -- id lookup ---------------------------------------------------------------------------------------------
    def _sorted_index(self) -> tuple[np.ndarray, np.ndarray]:
        cached = getattr(self, "_sorted_cache", None)
        if cached is None:
            order = np.argsort(self.ids, kind="stable")
            cached = (order, self.ids[order])
            self._sorted_cache = cached
        return cached

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each id in ``ids`` (int64), -1 for ids not in the corpus."""
        query = np.asarray(ids, dtype=str).reshape(-1)
        if len(self.ids) == 0 or len(query) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        order, sorted_ids = self._sorted_index()
        pos = np.searchsorted(sorted_ids, query)
        pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
        found = sorted_ids[pos_clipped] == query
        return np.where(found, order[pos_clipped], -1).astype(np.int64)

    def contains(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Boolean array: which of ``ids`` are in the corpus."""
        return self.rows(ids) >= 0

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.rows([doc_id])[0] >= 0)

    def _rows_or_error(self, ids: Sequence[str]) -> np.ndarray:
        rows = self.rows(ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows) if r < 0]
            shown = ", ".join(repr(m) for m in missing[:5])
            raise DanceError(f"{len(missing)} document id(s) not in the corpus: {shown}")
        return rows

    def fingerprint(self) -> str:
        """A hash that changes when ids or texts change (used to key caches of derived data)."""
        digest = hashlib.sha256()
        for doc_id, text in self.iter_texts():
            digest.update(doc_id.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\1")
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} documents)"


class InMemoryCorpus(Corpus):
    """A corpus held in memory: ``InMemoryCorpus({"d1": "text", ...})`` or ``InMemoryCorpus(ids, texts)``."""

    def __init__(self, ids: Mapping[str, str] | Sequence[str], texts: Sequence[str] | None = None):
        if texts is None:
            if not isinstance(ids, Mapping):
                raise DanceError("InMemoryCorpus needs a mapping {docid: text} or two sequences (ids, texts)")
            texts = list(ids.values())
            ids = list(ids.keys())
        ids_list = [str(i) for i in ids]
        texts_list = list(texts)
        if len(ids_list) != len(texts_list):
            raise DanceError(f"InMemoryCorpus: {len(ids_list)} ids but {len(texts_list)} texts")
        if any(not i for i in ids_list):
            raise DanceError("InMemoryCorpus: document ids must be non-empty")
        if len(set(ids_list)) != len(ids_list):
            raise DanceError("InMemoryCorpus: document ids must be unique")
        self.ids = _as_str_array(ids_list) if ids_list else np.zeros(0, dtype="<U1")
        self._texts = texts_list
        self._row: dict[str, int] | None = None

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        yield from zip(self.ids.tolist(), self._texts)

    def texts(self, ids: Sequence[str]) -> list[str]:
        if self._row is None:
            self._row = {doc_id: i for i, doc_id in enumerate(self.ids.tolist())}
        missing = [i for i in ids if i not in self._row]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise DanceError(f"{len(missing)} document id(s) not in the corpus: {shown}")
        return [self._texts[self._row[i]] for i in ids]


class _IdAccumulator:
    """Collects many short strings as numpy chunks (far smaller than a list of Python strings)."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._buffer: list[str] = []

    def append(self, value: str) -> None:
        self._buffer.append(value)
        if len(self._buffer) >= _ID_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._chunks.append(np.asarray(self._buffer, dtype=str))
            self._buffer = []

    def finish(self) -> np.ndarray:
        self._flush()
        if not self._chunks:
            return np.zeros(0, dtype="<U1")
        return np.concatenate(self._chunks)


class FileCorpus(Corpus):
    """A corpus read from one file (plain or gzip): ids and line offsets in memory, texts streamed from disk.

    Open with :meth:`FileCorpus.open`, which validates every line once (field count, UTF-8, non-empty id and
    text, unique ids). ``format`` names an entry of :data:`~dance_analysis.data.formats.FORMATS`.
    Random access (:meth:`texts`) seeks to stored offsets in a plain file; a gzip file is scanned from the start.
    """

    def __init__(self, path: str | os.PathLike, format: str, ids: np.ndarray, offsets: np.ndarray | None,
                 fingerprint: dict, doc_text: str | None = None):
        self.path = str(path)
        self.format = format
        self.doc_text = doc_text
        self._parser = FORMATS[format].corpus_parser(doc_text)
        self.ids = ids
        self.offsets = offsets
        self._file = fingerprint

    @classmethod
    def open(cls, path: str | os.PathLike, format: str, *, progress: bool | None = None,
             doc_text: str | None = None) -> FileCorpus:
        """Index ``path`` (one validating pass, or the cached index of an unchanged large file); ``doc_text``
        picks another document text of the format (:meth:`CollectionFormat.corpus_parser`)."""
        if format not in FORMATS:
            raise DanceError(f"unknown corpus format {format!r}; expected one of {', '.join(FORMATS)}")
        FORMATS[format].corpus_parser(doc_text)   # an unknown doc_text fails before the pass
        if not Path(path).is_file():
            raise InputError(path, "an existing corpus file")
        fingerprint = file_fingerprint(path)
        gz = is_gzip(path)
        cache_dir = _index_cache_dir(fingerprint, format) if fingerprint["size"] >= INDEX_CACHE_MIN_BYTES else None
        if cache_dir is not None and (cache_dir / "ids.npy").is_file():
            ids = np.load(cache_dir / "ids.npy", allow_pickle=False)
            offsets = None if gz else np.load(cache_dir / "offsets.npy", allow_pickle=False)
            return cls(path, format, ids, offsets, fingerprint, doc_text)
        corpus = cls._index(path, format, fingerprint, gz, progress)
        corpus.doc_text = doc_text
        corpus._parser = FORMATS[format].corpus_parser(doc_text)
        if cache_dir is not None:
            _save_index(cache_dir, corpus)
        return corpus

    @classmethod
    def _index(cls, path, format: str, fingerprint: dict, gz: bool, progress: bool | None) -> FileCorpus:
        from tqdm.auto import tqdm

        parser = FORMATS[format].corpus
        ids = _IdAccumulator()
        offsets = array("q")
        lines = array("q")
        disable = (not progress) if progress is not None else (None if fingerprint["size"] > (16 << 20) else True)
        with tqdm(desc=f"index {Path(path).name}", unit=" docs", disable=disable, leave=False) as bar:
            for lineno, offset, doc_id, _text in iter_records(path, parser):
                ids.append(doc_id)
                offsets.append(offset)
                lines.append(lineno)
                bar.update()
        id_array = ids.finish()
        order = np.argsort(id_array, kind="stable")
        sorted_ids = id_array[order]
        duplicated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(duplicated):
            # the duplicate that shows up earliest in the file
            second = order[duplicated + 1]
            pick = int(np.argmin(second))
            first_row, second_row = int(order[duplicated[pick]]), int(second[pick])
            dup = str(id_array[second_row])
            raise InputError(path, f"unique document ids (id {dup!r} is already on line {lines[first_row]})",
                             line=int(lines[second_row]), got=dup)
        corpus = cls(path, format, id_array, None if gz else np.frombuffer(offsets, dtype=np.int64).copy(),
                     fingerprint)
        corpus._sorted_cache = (order, sorted_ids)
        return corpus

    def _check_unchanged(self) -> None:
        try:
            now = file_fingerprint(self.path)
        except OSError:
            raise InputError(self.path, "the corpus file that was indexed (it is gone)") from None
        if now != self._file:
            raise InputError(self.path, "an unchanged corpus file (it was modified after it was indexed; "
                                        "load the collection again)")

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        self._check_unchanged()
        ids = self.ids
        n = len(ids)
        row = 0
        for lineno, _offset, doc_id, text in iter_records(self.path, self._parser):
            if row >= n or doc_id != ids[row]:
                expected = str(ids[row]) if row < n else "(none)"
                raise InputError(self.path, f"document {expected!r} on this line "
                                            "(the file changed after it was indexed)", line=lineno, got=doc_id)
            row += 1
            yield doc_id, text
        if row != n:
            raise InputError(self.path, f"{n} documents (the file changed after it was indexed)", got=str(row))

    def texts(self, ids: Sequence[str]) -> list[str]:
        ids = list(ids)
        rows = self._rows_or_error(ids)
        self._check_unchanged()
        found: dict[int, str] = {}
        wanted = set(int(r) for r in rows)
        if self.offsets is not None:
            with open(self.path, "rb") as handle:
                for r in sorted(wanted):
                    offset = int(self.offsets[r])
                    handle.seek(offset)
                    raw = handle.readline()
                    if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    raw = raw.rstrip(b"\n").rstrip(b"\r")
                    doc_id, text = self._parser(self.path, None, raw)
                    if doc_id != self.ids[r]:
                        raise InputError(self.path, "an unchanged corpus file (it changed after it was indexed)")
                    found[r] = text
        else:
            last = max(wanted) if wanted else -1
            for row, (_lineno, _offset, _doc_id, text) in enumerate(iter_records(self.path, self._parser)):
                if row in wanted:
                    found[row] = text
                if row >= last:
                    break
        return [found[int(r)] for r in rows]

    def fingerprint(self) -> str:
        """Hash of the file's path, size, modification time and format (no pass over the texts)."""
        described = {"file": self._file, "format": self.format}
        if self.doc_text not in (None, "title-body"):
            described["doc_text"] = self.doc_text
        blob = json.dumps(described, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"FileCorpus({self.path!r}, format={self.format!r}, {len(self)} documents)"


def _index_cache_dir(fingerprint: dict, format: str) -> Path:
    blob = json.dumps({"file": fingerprint, "format": format, "version": _INDEX_VERSION}, sort_keys=True)
    return cache_root() / "index" / hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save_index(final: Path, corpus: FileCorpus) -> None:
    try:
        with building_dir(final, replace=False) as tmp:
            np.save(tmp / "ids.npy", corpus.ids, allow_pickle=False)
            if corpus.offsets is not None:
                np.save(tmp / "offsets.npy", corpus.offsets, allow_pickle=False)
    except OSError as exc:  # a read-only cache only costs speed
        logger.info("could not cache the index of %s: %s", corpus.path, exc)


# -- Collection ------------------------------------------------------------------------------------------------

@dataclass
class Collection:
    """Corpus + queries + graded qrels + named query splits.

    ``qrels`` only names documents of the corpus. A document is relevant to a query when its grade is at least
    ``min_relevance``. ``source`` is a JSON-able description that :func:`dance_analysis.data.load_collection`
    accepts to load the same collection again (checkpoints record it). ``topics`` (``None``: every query is its
    own topic) maps each query id to its topic where several queries share one (``rag24-statements``); folds and
    splits then keep a topic's queries together (:func:`dance_analysis.data.splits.fold_splits`).
    """

    name: str
    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    splits: dict[str, list[str]]
    min_relevance: int = 1
    source: dict = field(default_factory=dict)
    topics: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.min_relevance, (int, np.integer)) or isinstance(self.min_relevance, bool):
            raise DanceError(f"min_relevance must be an integer grade, got {self.min_relevance!r}")
        self.min_relevance = int(self.min_relevance)
        for split, qids in self.splits.items():
            unknown = [q for q in qids if q not in self.queries]
            if unknown:
                raise DanceError(f"split {split!r} of {self.name} names {len(unknown)} unknown query id(s), "
                                 f"e.g. {unknown[0]!r}")

    def split_queries(self, split: str | None) -> list[str]:
        """The query ids of ``split``; ``None`` or ``"all"`` gives every query (collection order)."""
        if split is None or split == "all":
            return list(self.queries)
        if split not in self.splits:
            valid = ", ".join([*self.splits, "all"])
            raise DanceError(f"unknown split {split!r} of collection {self.name}; expected one of: {valid}")
        return list(self.splits[split])

    def with_splits(self, splits: dict[str, list[str]]) -> Collection:
        """The same collection with other named query splits (e.g. a cross-validation fold's)."""
        return dataclasses.replace(self, splits={name: list(qids) for name, qids in splits.items()})

    def relevant(self, qid: str) -> dict[str, int]:
        """``{docid: grade}`` of the documents with grade >= ``min_relevance`` for ``qid``."""
        return {d: g for d, g in self.qrels.get(qid, {}).items() if g >= self.min_relevance}

    def evaluable(self, qids: Iterable[str]) -> list[str]:
        """The ids among ``qids`` (kept in order) that have at least one relevant document."""
        return [q for q in qids if self.relevant(q)]

    def stats(self) -> dict:
        """Counts for a summary line: documents, queries, judgments, relevant judgments, split sizes."""
        judged = sum(len(v) for v in self.qrels.values())
        relevant = sum(1 for v in self.qrels.values() for g in v.values() if g >= self.min_relevance)
        return {"documents": len(self.corpus), "queries": len(self.queries), "judgments": judged,
                "relevant": relevant, "min_relevance": self.min_relevance,
                "splits": {k: len(v) for k, v in self.splits.items()}}

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (f"Collection({self.name!r}: {len(self.corpus)} documents, {len(self.queries)} queries, "
                f"{sum(len(v) for v in self.qrels.values())} judgments, splits [{splits}], "
                f"min_relevance={self.min_relevance})")
