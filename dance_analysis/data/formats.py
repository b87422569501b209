"""The collection file formats: line-level readers and the one registry of formats (:data:`FORMATS`).

Every reader streams its file line by line (plain or gzip, told apart by the gzip magic bytes, not by the file
name), decodes each line as strict UTF-8, accepts a UTF-8 byte-order mark at the start of the file and CRLF line
ends, skips empty lines, and stops at the first malformed line with an :class:`~dance_analysis.errors.InputError`
naming the file, the line number and what was expected.

Formats:

==================  ====================================================================================
msmarco-doc         ``docid <TAB> url <TAB> title <TAB> body``; the text is FirstP's ``title + " " + body``, or
                    (manifest ``doc_text: url-title-body``) ``url <sep> title <sep> body`` as the reference code
msmarco-passage     ``pid <TAB> text``
beir                one JSON object per line: ``{"_id": ..., "title": ..., "text": ...}``; text = title + text
queries (TSV)       ``qid <TAB> text``
queries (BEIR)      one JSON object per line: ``{"_id": ..., "text": ...}``
qrels (TREC)        ``qid <ws> iteration <ws> docid <ws> grade`` (whitespace: spaces or tabs; this covers the
                    TREC 4-column form, MS MARCO's space-separated document qrels and its tab-separated
                    passage qrels)
qrels (BEIR)        ``query-id <TAB> corpus-id <TAB> score`` after a header line
==================  ====================================================================================

A required field that is missing (a BEIR record without ``"_id"`` or ``"text"``, a TSV line short of a column)
or of the wrong type (a numeric ``"text"``, a grade that is not an integer) is an :class:`InputError` naming
the file, the line and what was expected. An integer ``"_id"`` is read as its decimal text; a ``null`` or
missing ``"title"`` is an empty title.

:data:`FORMATS` maps each format name to its corpus parser, query parser and qrels reader (and, for a format
that comes as a folder, the folder's file names). Manifests (:func:`dance_analysis.data.loaders.load_manifest`),
folders, :class:`~dance_analysis.data.collection.FileCorpus` and ``load_collection`` all read it: adding a format
is adding its readers and one :class:`CollectionFormat` entry here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import DanceError, InputError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_BUFFER = 1 << 20

#: (path, line number or None, raw line without its line end) -> (id, text)
RecordParser = Callable[[str, "int | None", bytes], "tuple[str, str]"]


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with _open_raw(path) as handle:
        return handle.read(2) == GZIP_MAGIC


def _open_raw(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb", buffering=_BUFFER)
    except FileNotFoundError:
        raise InputError(path, "an existing file") from None
    except IsADirectoryError:
        raise InputError(path, "a file, not a directory") from None
    except OSError as exc:
        raise InputError(path, "a readable file", got=str(exc)) from None


@contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, transparently decompressing gzip (detected by magic bytes)."""
    raw = _open_raw(path)
    try:
        if raw.peek(2)[:2] == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw
    finally:
        raw.close()


def iter_lines(path: str | os.PathLike, *, start: int = 0, first_line: int = 1
               ) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line number, byte offset, line)`` for every non-empty line of ``path``.

    ``line`` is the raw bytes without ``\\n`` / ``\\r\\n`` (and without a UTF-8 BOM on the first line); the
    offset is where the line starts in the (decompressed) file. ``start`` / ``first_line`` resume reading a
    plain file from a known line start. A truncated or corrupt gzip file raises :class:`InputError`.
    """
    name = str(path)
    with open_binary(path) as handle:
        if start:
            handle.seek(start)
        offset = start
        lineno = first_line - 1
        try:
            for raw in handle:
                lineno += 1
                here = offset
                offset += len(raw)
                if here == 0 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if raw:
                    yield lineno, here, raw
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InputError(name, "a complete gzip file (it is truncated or corrupt)",
                             got=str(exc)) from None


def decode(path: str, lineno: int, raw: bytes) -> str:
    """Decode one line as strict UTF-8, or raise :class:`InputError` naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[max(exc.start - 10, 0):exc.end + 10]
        raise InputError(path, "UTF-8 text", line=lineno,
                         got=f"invalid byte(s) {raw[exc.start:exc.end]!r} near {bad!r}") from None


def _split_tsv(path: str, lineno: int, raw: bytes, names: tuple[str, ...]) -> list[str]:
    text = decode(path, lineno, raw)
    fields = text.split("\t")
    if len(fields) != len(names):
        raise InputError(path, f"{len(names)} tab-separated fields ({', '.join(names)})", line=lineno,
                         got=f"{len(fields)} field(s): {text}")
    if not fields[0].strip():
        raise InputError(path, f"a non-empty {names[0]}", line=lineno, got=text)
    return fields


def _non_empty_text(path: str, lineno: int, doc_id: str, text: str, what: str = "text") -> str:
    if not text.strip():
        raise InputError(path, f"a non-empty {what} for id {doc_id!r}", line=lineno, got=text)
    return text


def join_title(title: str, body: str) -> str:
    """``title + " " + body``, without a dangling space when either is empty."""
    title, body = title.strip(), body.strip()
    if title and body:
        return f"{title} {body}"
    return title or body


def parse_msmarco_doc(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """``docid, url, title, body`` -> ``(docid, title + " " + body)`` (MS MARCO document TSV, FirstP text)."""
    doc_id, _url, title, body = _split_tsv(path, lineno, raw, ("docid", "url", "title", "body"))
    return doc_id, _non_empty_text(path, lineno, doc_id, join_title(title, body), "title or body")


#: Marks the boundaries between the fields of a document text that keeps them apart (``doc_text:
#: url-title-body``); tokenisation puts the tokenizer's separator token there (:func:`join_fields`).
FIELD_SEPARATOR = "\x1f"
#: The document texts a manifest can ask for (``doc_text``): FirstP's ``title body`` (the default) or the
#: reference code's ``url <sep> title <sep> body``.
DOC_TEXTS = ("title-body", "url-title-body")


def join_fields(text: str, separator: str | None) -> str:
    """``text`` with every :data:`FIELD_SEPARATOR` replaced by ``separator`` (a tokenizer's separator token, e.g.
    RoBERTa's ``</s>``), or by a space when there is none; texts without fields are returned unchanged."""
    if FIELD_SEPARATOR not in text:
        return text
    return text.replace(FIELD_SEPARATOR, separator if separator else " ")


def parse_msmarco_doc_url(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """``docid, url, title, body`` -> ``(docid, url <sep> title <sep> body)``: the document text of the ANCE and
    DANCE reference code, the fields kept apart by :data:`FIELD_SEPARATOR` until tokenisation puts the tokenizer's
    separator token there (Xiong et al., ANCE, ICLR 2021, MS MARCO document preprocessing)."""
    doc_id, url, title, body = _split_tsv(path, lineno, raw, ("docid", "url", "title", "body"))
    if FIELD_SEPARATOR in url + title + body:
        raise InputError(path, "no U+001F (unit separator) character in url, title or body", line=lineno,
                         got=doc_id)
    _non_empty_text(path, lineno, doc_id, join_title(title, body), "title or body")
    return doc_id, FIELD_SEPARATOR.join(part.strip() for part in (url, title, body))


def parse_msmarco_passage(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """``pid, text`` -> ``(pid, text)`` (MS MARCO passage TSV)."""
    pid, text = _split_tsv(path, lineno, raw, ("pid", "text"))
    return pid, _non_empty_text(path, lineno, pid, text)


def parse_query_tsv(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """``qid, text`` -> ``(qid, text)`` (MS MARCO / TREC query TSV)."""
    qid, text = _split_tsv(path, lineno, raw, ("qid", "text"))
    return qid, _non_empty_text(path, lineno, qid, text)


def _json_object(path: str, lineno: int, raw: bytes) -> dict:
    text = decode(path, lineno, raw)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, "one JSON object per line", line=lineno, got=f"{exc.msg}: {text}") from None
    if not isinstance(record, dict):
        raise InputError(path, "one JSON object per line", line=lineno, got=text)
    return record


def _json_id(path: str, lineno: int, record: dict, raw_text: bytes) -> str:
    value = record.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, 'a non-empty string "_id"', line=lineno,
                         got=raw_text.decode("utf-8", "replace"))
    return value


def _json_str(path: str, lineno: int, record: dict, key: str, doc_id: str, *, required: bool) -> str:
    """The string field ``key``; a missing or ``null`` optional field is ``""``, a required one an error."""
    if key not in record or record[key] is None:
        if not required:
            return ""
        what = "missing" if key not in record else "null"
        raise InputError(path, f'a string "{key}" for id {doc_id!r} (the field is required)', line=lineno,
                         got=f'"{key}" is {what}')
    value = record[key]
    if not isinstance(value, str):
        raise InputError(path, f'a string "{key}" for id {doc_id!r}', line=lineno, got=repr(value))
    return value


def parse_beir_doc(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """A BEIR ``corpus.jsonl`` line -> ``(_id, title + " " + text)``."""
    record = _json_object(path, lineno, raw)
    doc_id = _json_id(path, lineno, record, raw)
    text = join_title(_json_str(path, lineno, record, "title", doc_id, required=False),
                      _json_str(path, lineno, record, "text", doc_id, required=True))
    return doc_id, _non_empty_text(path, lineno, doc_id, text, "title or text")


def parse_beir_query(path: str, lineno: int, raw: bytes) -> tuple[str, str]:
    """A BEIR ``queries.jsonl`` line -> ``(_id, text)``."""
    record = _json_object(path, lineno, raw)
    qid = _json_id(path, lineno, record, raw)
    return qid, _non_empty_text(path, lineno, qid, _json_str(path, lineno, record, "text", qid, required=True))


def iter_records(path: str | os.PathLike, parser: RecordParser) -> Iterator[tuple[int, int, str, str]]:
    """Yield ``(line number, byte offset, id, text)`` for every record of ``path``; an empty file is an error."""
    name = str(path)
    seen_any = False
    for lineno, offset, raw in iter_lines(path):
        seen_any = True
        record_id, text = parser(name, lineno, raw)
        yield lineno, offset, record_id, text
    if not seen_any:
        raise InputError(name, "a non-empty file")


def read_queries(path: str | os.PathLike, parser: RecordParser = parse_query_tsv) -> dict[str, str]:
    """Read a query file into ``{qid: text}`` (file order); a duplicate qid is an :class:`InputError`."""
    name = str(path)
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, _offset, qid, text in iter_records(path, parser):
        if qid in queries:
            raise InputError(name, f"unique query ids (id {qid!r} is already on line {first_line[qid]})",
                             line=lineno, got=qid)
        queries[qid] = text
        first_line[qid] = lineno
    return queries


@dataclass
class QrelsTable:
    """The judgments of one qrels file, in file order (parallel lists)."""

    path: str
    qids: list[str] = field(default_factory=list)
    docids: list[str] = field(default_factory=list)
    grades: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.qids)


_GRADE = re.compile(r"[+-]?[0-9]+")


def _parse_grade(path: str, lineno: int, value: str, text: str) -> int:
    """An integer grade written with ASCII digits and an optional sign (not ``1_0``, ``1.0`` or ``١``)."""
    if not _GRADE.fullmatch(value):
        raise InputError(path, "an integer relevance grade in the last field", line=lineno, got=text)
    return int(value)


def _iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line)`` of the non-empty lines of a small file (qrels), read in one go.

    Decodes the whole file at once (much faster than line by line); when that fails, falls back to
    :func:`iter_lines` so that the error names the offending line.
    """
    name = str(path)
    try:
        with open_binary(path) as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(name, "a complete gzip file (it is truncated or corrupt)", got=str(exc)) from None
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for lineno, _offset, raw in iter_lines(path):
            decode(name, lineno, raw)
        raise AssertionError("unreachable: the file decodes line by line but not as a whole") from None
    del data
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line:
            yield lineno, line


def read_qrels(path: str | os.PathLike) -> QrelsTable:
    """Read a TREC-style qrels file: ``qid iteration docid grade`` per line, whitespace separated.

    This covers TREC's 4-column qrels, MS MARCO's space-separated document qrels and its tab-separated passage
    qrels. A line with another number of fields, or a grade that is not an integer, is an :class:`InputError`.
    """
    name = str(path)
    table = QrelsTable(name)
    qids, docids, grades, lines = table.qids, table.docids, table.grades, table.lines
    for lineno, text in _iter_text_lines(path):
        fields = text.split()
        if len(fields) != 4:
            raise InputError(name, "4 whitespace-separated fields (qid, iteration, docid, grade)", line=lineno,
                             got=f"{len(fields)} field(s): {text}")
        qid, _iteration, docid, grade = fields
        grades.append(_parse_grade(name, lineno, grade, text))
        qids.append(qid)
        docids.append(docid)
        lines.append(lineno)
    if not qids:
        raise InputError(name, "a non-empty qrels file")
    return table


_BEIR_HEADER = ("query-id", "corpus-id", "score")


def read_beir_qrels(path: str | os.PathLike) -> QrelsTable:
    """Read a BEIR ``qrels/<split>.tsv``: a header line, then ``query-id <TAB> corpus-id <TAB> score``."""
    name = str(path)
    table = QrelsTable(name)
    header_seen = False
    for lineno, text in _iter_text_lines(path):
        fields = text.split("\t")
        if not header_seen:
            header_seen = True
            if tuple(f.strip().lower() for f in fields) == _BEIR_HEADER:
                continue
            if len(fields) == 3 and not _GRADE.fullmatch(fields[2].strip()):
                continue  # some other header wording
        if len(fields) != 3:
            raise InputError(name, "3 tab-separated fields (query-id, corpus-id, score)", line=lineno,
                             got=f"{len(fields)} field(s): {text}")
        qid, docid = fields[0].strip(), fields[1].strip()
        if not qid or not docid:
            raise InputError(name, "non-empty query-id and corpus-id", line=lineno, got=text)
        table.qids.append(qid)
        table.docids.append(docid)
        table.grades.append(_parse_grade(name, lineno, fields[2].strip(), text))
        table.lines.append(lineno)
    if not table.qids:
        raise InputError(name, "a qrels file with at least one judgment after the header")
    return table


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Absolute path, size and modification time of a file: changes when the file is rewritten."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# -- the registry of collection formats ------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderLayout:
    """The files of a format that comes as a folder: the corpus and query files (first name found wins) and the
    qrels files, one per split named by its stem (a glob relative to the folder); ``label`` names the folder
    kind in messages."""

    label: str
    corpus: tuple[str, ...]
    queries: tuple[str, ...]
    qrels: str


@dataclass(frozen=True)
class CollectionFormat:
    """One collection format: how to read a corpus line, a query line and a qrels file.

    ``corpus`` and ``queries`` turn one raw line into ``(id, text)`` (:data:`RecordParser`); ``qrels`` reads a
    whole qrels file into a :class:`QrelsTable`. ``folder`` is set for formats that come as a folder (BEIR).
    Any registered format can be named in a manifest (``format: <name>``, files named by the manifest).
    """

    name: str
    corpus: RecordParser
    queries: RecordParser
    qrels: Callable[[str | os.PathLike], QrelsTable]
    description: str
    folder: FolderLayout | None = None
    #: Other document texts of the same lines (a manifest's ``doc_text``), by name: their corpus parsers.
    doc_texts: dict[str, RecordParser] = field(default_factory=dict)

    def corpus_parser(self, doc_text: str | None = None) -> RecordParser:
        """The corpus parser for the document text ``doc_text`` (``None`` or ``title-body``: :attr:`corpus`)."""
        if doc_text in (None, "title-body"):
            return self.corpus
        if doc_text not in self.doc_texts:
            valid = ", ".join(["title-body", *self.doc_texts])
            raise DanceError(f"doc_text {doc_text!r} is not available for the {self.name} format; expected "
                             f"one of {valid}")
        return self.doc_texts[doc_text]


#: Every collection format by name (the one list that manifests, folders and FileCorpus read).
FORMATS: dict[str, CollectionFormat] = {f.name: f for f in (
    CollectionFormat("msmarco-doc", parse_msmarco_doc, parse_query_tsv, read_qrels,
                     "MS MARCO documents: docid, url, title, body (TSV); queries qid, text; TREC qrels",
                     doc_texts={"url-title-body": parse_msmarco_doc_url}),
    CollectionFormat("msmarco-passage", parse_msmarco_passage, parse_query_tsv, read_qrels,
                     "MS MARCO passages: pid, text (TSV); queries qid, text; TREC qrels"),
    CollectionFormat("beir", parse_beir_doc, parse_beir_query, read_beir_qrels,
                     "BEIR: corpus.jsonl, queries.jsonl, qrels/<split>.tsv",
                     folder=FolderLayout(label="BEIR", corpus=("corpus.jsonl", "corpus.jsonl.gz"),
                                         queries=("queries.jsonl", "queries.jsonl.gz"), qrels="qrels/*.tsv")),
)}

def collection_format(name: object) -> CollectionFormat:
    """The registered format ``name``; an unknown one is a :class:`DanceError` listing the known ones."""
    if isinstance(name, str) and name in FORMATS:
        return FORMATS[name]
    raise DanceError(f"unknown collection format {name!r}; expected one of {', '.join(FORMATS)}")


def folder_format(path: str | os.PathLike) -> CollectionFormat | None:
    """The folder format whose corpus file ``path`` holds (e.g. a BEIR ``corpus.jsonl``), or ``None``."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    for fmt in FORMATS.values():
        if fmt.folder is not None and any((folder / name).is_file() for name in fmt.folder.corpus):
            return fmt
    return None
