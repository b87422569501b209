"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved document.

:func:`write_trec_run` writes :class:`~dance_analysis.index.Rankings` exactly: ids as they are, ranks 1..k in the
rankings' order, and each score as Python's ``repr`` of its exact value as a double (the shortest decimal that reads
back to the same double; a float32 score is written as the double it equals, e.g. ``0.10000000149011612``), so
that trec_eval, ir-measures and :func:`read_trec_run` all read back the very value, sign included (``-0.0``
stays ``-0.0``). Paths ending in ``.gz`` are gzip-compressed (reproducibly: no name or time in the header). The
file appears atomically (temp file in the same folder, then rename).

:func:`read_trec_run` reads such a file (plain or ``.gz``) back into Rankings. Fields are separated by runs of
ASCII whitespace, as trec_eval reads them; blank lines are skipped. A malformed line (not six fields, a rank that
is not an integer, a score that is not a number, an id that is not UTF-8) and a document listed twice for one
query stop with an :class:`~dance_analysis.errors.InputError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import gzip
import io
import os
from array import array
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import DanceError, InputError
from .index import Rankings

__all__ = ["write_trec_run", "read_trec_run"]

_FORMAT = "6 whitespace-separated fields 'qid Q0 docid rank score tag'"
# Code points below 0x3100 that Python's str.split() splits on (all of its whitespace; a superset of the ASCII
# whitespace trec_eval splits on), as a look-up table.
_WHITESPACE = np.array([chr(c).isspace() for c in range(0x3100)] + [False], dtype=bool)


def write_trec_run(path: str | os.PathLike, rankings: Rankings, tag: str = "dance") -> Path:
    """Write ``rankings`` as a TREC run file at ``path`` (gzip when it ends in ``.gz``); returns the path.

    Empty places (index -1) are left out. Raises DanceError when an id or the tag is empty or contains
    whitespace (the file could not be read back), or a score is NaN.
    """
    path = Path(path)
    tag = str(tag)
    if not tag or any(ch.isspace() for ch in tag):
        raise DanceError(f"run tag {tag!r} must be non-empty and contain no whitespace")
    indices = np.asarray(rankings.indices)
    scores = np.asarray(rankings.scores)
    valid = indices >= 0
    if np.isnan(scores[valid]).any():
        raise DanceError("rankings hold NaN scores: a run file needs numbers")
    query_ids = _as_str(rankings.query_ids)
    doc_ids = _as_str(rankings.doc_ids)
    _check_ids(query_ids, "query id")
    used = np.zeros(len(doc_ids), dtype=bool)
    used[indices[valid]] = True
    _check_ids(doc_ids[used], "document id")

    with atomic_file(path, "wb") as raw:
        if path.name.endswith(".gz"):
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        else:
            stream = raw
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        for row in range(len(query_ids)):
            keep = valid[row]
            names = doc_ids[indices[row, keep]].tolist()
            values = scores[row, keep].tolist()
            qid = query_ids[row]
            text.write("".join(f"{qid} Q0 {d} {r} {s!r} {tag}\n"
                               for r, (d, s) in enumerate(zip(names, values), start=1)))
        text.flush()
        text.detach()
        if stream is not raw:
            stream.close()
    return path


def read_trec_run(path: str | os.PathLike) -> Rankings:
    """Read a TREC run file into Rankings.

    ``query_ids`` follow the order of first appearance, ``doc_ids`` are the distinct document ids in order of
    first appearance, and each row is sorted by score descending, ties in file order; ``k`` is the longest list
    (shorter ones padded with -1 / -inf). Scores are float32 when every score is exactly a float32 value (as in
    files written from float32 rankings), float64 otherwise. The rank and tag columns are not
    used.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "a TREC run file (it does not exist)")
    query_index: dict[bytes, int] = {}
    doc_index: dict[bytes, int] = {}
    q_codes = array("q")
    d_codes = array("q")
    line_numbers = array("q")
    values = array("d")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                parts = raw.split()
                if len(parts) != 6:
                    if not parts:
                        continue
                    raise InputError(path, _FORMAT, line=number, got=_show(raw))
                qid, _, docid, rank, score, _ = parts
                try:
                    int(rank)
                    value = float(score)
                except ValueError:
                    _raise_field_error(path, number, raw)
                if value != value:
                    raise InputError(path, "a score that is a number, not NaN", line=number, got=_show(raw))
                q = query_index.get(qid)
                if q is None:
                    q = query_index[qid] = len(query_index)
                d = doc_index.get(docid)
                if d is None:
                    d = doc_index[docid] = len(doc_index)
                q_codes.append(q)
                d_codes.append(d)
                line_numbers.append(number)
                values.append(value)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(path, "a readable (gzip when named .gz) TREC run file", got=str(exc)) from None

    q = np.frombuffer(q_codes, dtype=np.int64) if len(q_codes) else np.zeros(0, np.int64)
    d = np.frombuffer(d_codes, dtype=np.int64) if len(d_codes) else np.zeros(0, np.int64)
    lines = np.frombuffer(line_numbers, dtype=np.int64) if len(line_numbers) else np.zeros(0, np.int64)
    scores = np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0, np.float64)
    n_docs = len(doc_index)
    query_names, bad_query_line = _decode_ids(query_index, q, lines)
    doc_names, bad_doc_line = _decode_ids(doc_index, d, lines)
    bad_lines = [line for line in (bad_query_line, bad_doc_line) if line is not None]
    if bad_lines:
        raise InputError(path, "UTF-8 ids", line=min(bad_lines))

    # A document listed twice for one query: report the first repeated line.
    codes = q * max(n_docs, 1) + d
    order = np.argsort(codes, kind="stable")
    repeated = order[1:][codes[order][1:] == codes[order][:-1]]
    if len(repeated):
        at = int(repeated[np.argmin(lines[repeated])])
        docid = doc_names[int(d[at])]
        qid = query_names[int(q[at])]
        raise InputError(path, f"each document at most once per query (document {docid!r} is listed again "
                         f"for query {qid!r})", line=int(lines[at]))

    # float32 when every score is exactly a float32 value (as written from float32 rankings).
    as32 = scores.astype(np.float32)
    if np.array_equal(as32.astype(np.float64), scores):
        scores = as32
    n_queries = len(query_index)
    order = np.lexsort((np.arange(len(q)), -scores.astype(np.float64), q))
    counts = np.bincount(q, minlength=n_queries)
    k = int(counts.max()) if n_queries else 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if n_queries else np.zeros(0, np.int64)
    q_sorted = q[order]
    place = np.arange(len(order)) - starts[q_sorted]
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=scores.dtype)
    indices[q_sorted, place] = d[order]
    out_scores[q_sorted, place] = scores[order]
    return Rankings(query_ids=np.asarray(query_names, dtype=str), doc_ids=np.asarray(doc_names, dtype=str),
                    indices=indices, scores=out_scores)


def _raise_field_error(path: Path, number: int, raw: bytes) -> None:
    parts = raw.split()
    try:
        int(parts[3])
    except ValueError:
        raise InputError(path, "an integer rank in field 4", line=number, got=_show(raw)) from None
    raise InputError(path, "a number as score in field 5", line=number, got=_show(raw))


def _decode_ids(index: dict[bytes, int], codes: np.ndarray, lines: np.ndarray) -> tuple[list[str], int | None]:
    """The ids of ``index`` (bytes -> code) as str in code order, and the first line of a non-UTF-8 id (or None)."""
    names = []
    bad: int | None = None
    for raw in index:
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            first = int(lines[np.flatnonzero(codes == index[raw])].min())
            bad = first if bad is None else min(bad, first)
            names.append("")
    return names, bad


def _as_str(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return ids if ids.dtype.kind == "U" else ids.astype(str)


def _show(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")


def _check_ids(ids: np.ndarray, what: str) -> None:
    """DanceError when an id is empty or contains whitespace (vectorised over the UCS4 code points)."""
    if len(ids) == 0:
        return
    lengths = np.char.str_len(ids)
    if (lengths == 0).any():
        raise DanceError(f"a {what} is empty: run files need non-empty ids")
    width = ids.dtype.itemsize // 4
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), width)
    bad = _WHITESPACE[np.minimum(codes, len(_WHITESPACE) - 1)].any(axis=1)
    if bad.any():
        raise DanceError(f"{what} {str(ids[int(np.argmax(bad))])!r} contains whitespace: run files separate "
                         f"fields by whitespace")
