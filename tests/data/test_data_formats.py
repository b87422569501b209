"""File readers: MS MARCO TSVs, TREC / MS MARCO / BEIR qrels, gzip, BOM, CRLF, and every bad-input case."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dance_analysis.data.collection import FileCorpus
from dance_analysis.data.formats import (
    iter_lines,
    parse_beir_query,
    read_beir_qrels,
    read_qrels,
    read_queries,
)
from dance_analysis.errors import DanceError, InputError


def write(path: Path, text: str | bytes, *, gz: bool = False) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


DOCS = ("D1\thttp://a.example/1\tTitle one\tBody of the first document.\n"
        "D2\thttp://a.example/2\t\tOnly a body here.\n"
        "D3\thttp://a.example/3\tOnly a title\t\n")


# -- good input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_msmarco_doc_firstp_text_plain_and_gzip(tmp_path, gz):
    path = write(tmp_path / "docs.tsv", DOCS, gz=gz)  # gzip told by magic bytes, not by the name
    corpus = FileCorpus.open(path, "msmarco-doc")
    assert corpus.ids.tolist() == ["D1", "D2", "D3"]
    assert list(corpus.iter_texts()) == [("D1", "Title one Body of the first document."),
                                         ("D2", "Only a body here."), ("D3", "Only a title")]
    assert corpus.texts(["D3", "D1"]) == ["Only a title", "Title one Body of the first document."]
    assert (corpus.offsets is None) == gz


def test_bom_and_crlf_are_accepted(tmp_path):
    text = "\ufeffP1\tfirst passage\r\nP2\tsecond passage\r\n"
    path = write(tmp_path / "collection.tsv", text)
    corpus = FileCorpus.open(path, "msmarco-passage")
    assert list(corpus.iter_texts()) == [("P1", "first passage"), ("P2", "second passage")]
    assert corpus.texts(["P1"]) == ["first passage"]  # random access from offset 0 skips the BOM too
    queries = write(tmp_path / "q.tsv", "\ufeff1\twhat is a bom\r\n2\tcrlf\r\n")
    assert read_queries(queries) == {"1": "what is a bom", "2": "crlf"}


def test_trailing_empty_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = write(tmp_path / "q.tsv", "1\tone\n\n2\ttwo\n\n")
    assert [(n, raw) for n, _o, raw in iter_lines(path)] == [(1, b"1\tone"), (3, b"2\ttwo")]
    assert read_queries(path) == {"1": "one", "2": "two"}


def test_unicode_text_and_tabs_only_split_fields(tmp_path):
    path = write(tmp_path / "p.tsv", "P1\tcafé \u2028 naïve – “quotes”\n")
    corpus = FileCorpus.open(path, "msmarco-passage")
    assert corpus.texts(["P1"]) == ["café \u2028 naïve – “quotes”"]


@pytest.mark.parametrize("text", [
    "174249 0 D1555982 1\n1 0 D2 0\n",        # MS MARCO document qrels: space separated
    "174249\t0\tD1555982\t1\n1\t0\tD2\t0\n",  # MS MARCO passage qrels: tab separated
    "174249 Q0 D1555982 1\r\n1  Q0\tD2 0\n",  # TREC 4-column, mixed whitespace, CRLF
])
def test_qrels_variants(tmp_path, text):
    table = read_qrels(write(tmp_path / "qrels", text))
    assert table.qids == ["174249", "1"] and table.docids == ["D1555982", "D2"] and table.grades == [1, 0]
    assert table.lines == [1, 2]


def test_qrels_gzip_and_negative_grades(tmp_path):
    table = read_qrels(write(tmp_path / "qrels.bin", "q1 0 d1 -1\nq1 0 d2 3\n", gz=True))
    assert table.grades == [-1, 3]


def test_beir_qrels_header_and_queries_jsonl(tmp_path):
    table = read_beir_qrels(write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t2\n"))
    assert (table.qids, table.docids, table.grades, table.lines) == (["q1", "q2"], ["d1", "d9"], [1, 2], [2, 3])
    queries = write(tmp_path / "queries.jsonl", json.dumps({"_id": "q1", "text": "hello", "metadata": {}})
                    + "\n" + json.dumps({"_id": 7, "text": "numeric id"}) + "\n")
    assert read_queries(queries, parse_beir_query) == {"q1": "hello", "7": "numeric id"}


def test_beir_corpus_title_and_text(tmp_path):
    lines = [{"_id": "d1", "title": "T", "text": "body"}, {"_id": "d2", "title": "", "text": "only text"},
             {"_id": "d3", "text": "no title key"}]
    path = write(tmp_path / "corpus.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    corpus = FileCorpus.open(path, "beir")
    assert list(corpus.iter_texts()) == [("d1", "T body"), ("d2", "only text"), ("d3", "no title key")]


# -- bad input: one clear message naming file, line and what was expected --------------------------------------

def assert_input_error(exc_info, path: Path, line: int | None, *fragments: str) -> None:
    error = exc_info.value
    assert isinstance(error, InputError)
    assert error.path == str(path)
    assert error.line == line
    message = str(error)
    assert message.startswith(f"{path}:{line}:" if line is not None else f"{path}:")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("fmt, text, line, fragments", [
    ("msmarco-doc", "D1\tu\tt\tb\nD2\tu\tt\n", 2, ("4 tab-separated fields", "docid, url, title, body", "3 field")),
    ("msmarco-doc", "D1\tu\tt\tb\textra\n", 1, ("4 tab-separated fields", "5 field")),
    ("msmarco-passage", "P1\tok\nP2 no tab\n", 2, ("2 tab-separated fields", "1 field")),
    ("msmarco-passage", "P1\tok\n\tmissing id\n", 2, ("non-empty pid",)),
    ("msmarco-passage", "P1\tok\nP2\t   \n", 2, ("non-empty text", "'P2'")),
    ("msmarco-doc", "D1\tu\t\t\n", 1, ("non-empty title or body",)),
    ("msmarco-passage", "P1\tok\nP2\tfine\nP1\tagain\n", 3, ("unique document ids", "'P1'", "line 1")),
    ("msmarco-passage", "P1\tx\nP2\ty\nP2\tz\nP1\tw\n", 3, ("unique document ids", "'P2'", "line 2")),
    ("beir", '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": \n', 2, ("one JSON object per line",)),
    ("beir", '{"_id": "", "text": "x"}\n', 1, ('non-empty string "_id"',)),
    ("beir", '["not", "an", "object"]\n', 1, ("one JSON object per line",)),
    ("beir", '{"_id": "d1", "text": 5}\n', 1, ('a string "text"',)),
])
def test_malformed_corpus_lines(tmp_path, fmt, text, line, fragments):
    path = write(tmp_path / "corpus", text)
    with pytest.raises(InputError) as exc_info:
        FileCorpus.open(path, fmt)
    assert_input_error(exc_info, path, line, *fragments)


@pytest.mark.parametrize("gz", [False, True])
def test_invalid_utf8_names_the_line(tmp_path, gz):
    data = b"P1\tfine\n" + b"P2\tbad \xff\xfe byte\n"
    path = write(tmp_path / "collection.tsv", data, gz=gz)
    with pytest.raises(InputError) as exc_info:
        FileCorpus.open(path, "msmarco-passage")
    assert_input_error(exc_info, path, 2, "UTF-8", "\\xff")


def test_invalid_utf8_in_qrels_names_the_line(tmp_path):
    path = write(tmp_path / "qrels", b"q1 0 d1 1\nq2 0 d\xc3 1\n")
    with pytest.raises(InputError) as exc_info:
        read_qrels(path)
    assert_input_error(exc_info, path, 2, "UTF-8")


def test_truncated_gzip_names_the_file(tmp_path):
    data = gzip.compress(("P1\t" + "word " * 20000 + "\n").encode() * 20)
    path = write(tmp_path / "collection.tsv.gz", data[: len(data) // 2])
    with pytest.raises(InputError) as exc_info:
        FileCorpus.open(path, "msmarco-passage")
    assert_input_error(exc_info, path, None, "gzip", "truncated")


def test_corrupt_gzip_names_the_file(tmp_path):
    data = bytearray(gzip.compress(b"P1\tsome text to compress\n" * 50))
    data[20:30] = b"\x00" * 10
    path = write(tmp_path / "collection.tsv.gz", bytes(data))
    with pytest.raises(InputError) as exc_info:
        FileCorpus.open(path, "msmarco-passage")
    assert exc_info.value.path == str(path) and "gzip" in str(exc_info.value)


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff", b"gz"])
def test_empty_files_are_errors(tmp_path, content):
    raw = gzip.compress(b"") if content == b"gz" else content
    for reader in (lambda p: FileCorpus.open(p, "msmarco-passage"), read_queries, read_qrels, read_beir_qrels):
        path = write(tmp_path / "empty", raw)
        with pytest.raises(InputError) as exc_info:
            reader(path)
        message = str(exc_info.value)
        assert exc_info.value.path == str(path)
        assert "non-empty" in message or "at least one judgment" in message, message


def test_beir_qrels_header_only_is_empty(tmp_path):
    path = write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match="at least one judgment"):
        read_beir_qrels(path)


@pytest.mark.parametrize("text, line, fragments", [
    ("q1 0 d1 1\nq1 0 d2\n", 2, ("4 whitespace-separated fields", "3 field")),
    ("q1 0 d1 1\nq1 0 d2 1 extra\n", 2, ("4 whitespace-separated fields", "5 field")),
    ("q1 0 d1 1\nq1 0 d2 high\n", 2, ("integer relevance grade", "high")),
    ("q1 0 d1 1.5\n", 1, ("integer relevance grade",)),
])
def test_malformed_qrels(tmp_path, text, line, fragments):
    path = write(tmp_path / "qrels.txt", text)
    with pytest.raises(InputError) as exc_info:
        read_qrels(path)
    assert_input_error(exc_info, path, line, *fragments)


@pytest.mark.parametrize("text, line, fragments", [
    ("query-id\tcorpus-id\tscore\nq1\td1\tx\n", 2, ("integer relevance grade",)),
    ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, ("3 tab-separated fields",)),
    ("query-id\tcorpus-id\tscore\n\td1\t1\n", 2, ("non-empty query-id",)),
])
def test_malformed_beir_qrels(tmp_path, text, line, fragments):
    path = write(tmp_path / "test.tsv", text)
    with pytest.raises(InputError) as exc_info:
        read_beir_qrels(path)
    assert_input_error(exc_info, path, line, *fragments)


@pytest.mark.parametrize("text, line, fragments", [
    ("1\tone\n2\n", 2, ("2 tab-separated fields (qid, text)",)),
    ("1\tone\n1\tagain\n", 2, ("unique query ids", "line 1")),
    ("1\tone\n2\t\n", 2, ("non-empty text",)),
    ("1\tone\n\ttext\n", 2, ("non-empty qid",)),
])
def test_malformed_queries(tmp_path, text, line, fragments):
    path = write(tmp_path / "queries.tsv", text)
    with pytest.raises(InputError) as exc_info:
        read_queries(path)
    assert_input_error(exc_info, path, line, *fragments)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="existing"):
        read_queries(tmp_path / "nope.tsv")
    with pytest.raises(InputError):
        read_qrels(tmp_path)
    with pytest.raises(DanceError, match="unknown corpus format"):
        FileCorpus.open(write(tmp_path / "x", "a\tb\n"), "msmarco-docs")


def test_one_registry_of_formats_is_what_every_reader_reads(tmp_path, monkeypatch):
    """A format added to FORMATS alone (here: pipe-separated files) loads through a manifest: corpus (FileCorpus),
    queries and qrels all come from its entry, and load_collection lists it among the known formats."""
    from dance_analysis.data import formats, load_collection

    def parse_pipe(path, lineno, raw):
        fields = formats.decode(path, lineno, raw).split("|")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise InputError(path, "2 '|'-separated fields (id, text)", line=lineno, got=raw.decode())
        return fields[0], fields[1]

    def read_pipe_qrels(path):
        table = formats.QrelsTable(str(path))
        for lineno, text in enumerate(Path(path).read_text().splitlines(), start=1):
            qid, docid, grade = text.split("|")
            table.qids.append(qid)
            table.docids.append(docid)
            table.grades.append(int(grade))
            table.lines.append(lineno)
        return table

    monkeypatch.setitem(formats.FORMATS, "pipe", formats.CollectionFormat(
        "pipe", parse_pipe, parse_pipe, read_pipe_qrels, "id|text lines; qrels qid|docid|grade"))
    (tmp_path / "docs.txt").write_text("d1|first document\nd2|second document\n")
    (tmp_path / "queries.txt").write_text("q1|which is first\n")
    (tmp_path / "qrels.txt").write_text("q1|d1|1\n")
    collection = load_collection({"format": "pipe", "corpus": str(tmp_path / "docs.txt"),
                                  "queries": {"test": str(tmp_path / "queries.txt")},
                                  "qrels": {"test": str(tmp_path / "qrels.txt")}})
    assert collection.corpus.ids.tolist() == ["d1", "d2"] and collection.corpus.text("d2") == "second document"
    assert collection.queries == {"q1": "which is first"} and collection.qrels == {"q1": {"d1": 1}}
    assert collection.splits == {"test": ["q1"]} and collection.source["format"] == "pipe"
    assert load_collection(collection.source).qrels == collection.qrels
    (tmp_path / "docs.txt").write_text("d1|first document\nd2\n")
    with pytest.raises(InputError, match="docs.txt:2"):
        load_collection(collection.source)
    with pytest.raises(DanceError, match="one of rag24-sample, irds, msmarco-doc, msmarco-passage, beir, pipe"):
        load_collection({"format": "nope"})
