"""Mined negatives as training data for other trainers, one JSON object per line (what ``datasets.load_dataset(
"json", data_files=...)`` reads), written atomically.

sentence-transformers (:func:`write_sentence_transformers`): the "n-tuple" layout of its ``mine_hard_negatives``,
one row per (query, positive) pair with the columns ``query``, ``positive``, ``negative_1`` ... ``negative_n``, for
losses such as MultipleNegativesRankingLoss, which take the columns in order. Every row of a dataset has the same
columns, so a pair whose query has fewer than n negatives is left out, as sentence-transformers does; the count of
such rows is returned.

Tevatron (:func:`write_tevatron`): its training JSONL, one line per query: ``{"query_id", "query",
"positive_passages": [{"docid", "title", "text"}], "negative_passages": [...]}`` (the layout its
``TrainDataset`` reads when a line has ``positive_passages``). The collections here keep a document's title
inside its text (``title + " " + body``, see :mod:`dance_analysis.data.formats`), so ``title`` is empty and
``text`` is the whole text; Tevatron joins them as ``title + " " + text``, which a tokenizer reads as the same
text. A query without any negative is left out (Tevatron samples its negatives from the list).

FlagEmbedding (:func:`write_flagembedding`): the fine-tuning JSONL of its embedder (``--train_data``), one line per
query: ``{"query": str, "pos": [texts], "neg": [texts]}``, its positives and its negatives in rank order. A query
without any negative is left out (FlagEmbedding draws ``train_group_size - 1`` negatives from ``neg``, repeating
them when there are fewer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_file

__all__ = ["write_sentence_transformers", "write_tevatron", "write_flagembedding", "FORMATS"]

#: Queries whose texts are fetched from the corpus at a time.
_CHUNK = 1024


def _chunks(result, collection) -> Iterator[tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]]:
    """(query id, query text, [(positive id, text)], [(negative id, text)]) per query, texts fetched per chunk."""
    rows = list(result.rows())
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        wanted = sorted({d for _, positives, negatives in chunk for d, _ in positives + negatives})
        texts = dict(zip(wanted, collection.corpus.texts(wanted)))
        for qid, positives, negatives in chunk:
            yield (qid, collection.queries[qid], [(d, texts[d]) for d, _ in positives],
                   [(d, texts[d]) for d, _ in negatives])


def write_sentence_transformers(path: str | os.PathLike, result, collection) -> dict[str, int]:
    """Write ``result`` (a :class:`~dance_analysis.hard_negatives.SplitNegatives`) as sentence-transformers
    n-tuples, one row per query and relevant passage; returns ``{"rows": written, "short": rows left out for want
    of n negatives, "short_queries": the queries those rows belong to}``."""
    n = result.n
    written = short = short_queries = 0
    with atomic_file(path, "w") as handle:
        for _, query, positives, negatives in _chunks(result, collection):
            if positives and len(negatives) < n:
                short += len(positives)
                short_queries += 1
                continue
            for _, positive in positives:
                row = {"query": query, "positive": positive}
                row.update({f"negative_{i}": text for i, (_, text) in enumerate(negatives, start=1)})
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    return {"rows": written, "short": short, "short_queries": short_queries}


def write_tevatron(path: str | os.PathLike, result, collection) -> dict[str, int]:
    """Write ``result`` as Tevatron training lines, one row per query; returns ``{"rows": written, "short": rows
    (queries) left out without negatives, "short_queries": the same count}``."""
    written = short = 0
    with atomic_file(path, "w") as handle:
        for qid, query, positives, negatives in _chunks(result, collection):
            if not negatives or not positives:
                short += 1
                continue
            handle.write(json.dumps({
                "query_id": qid, "query": query,
                "positive_passages": [{"docid": d, "title": "", "text": t} for d, t in positives],
                "negative_passages": [{"docid": d, "title": "", "text": t} for d, t in negatives],
            }, ensure_ascii=False) + "\n")
            written += 1
    return {"rows": written, "short": short, "short_queries": short}


def write_flagembedding(path: str | os.PathLike, result, collection) -> dict[str, int]:
    """Write ``result`` as FlagEmbedding training lines ``{"query", "pos", "neg"}``, one row per query; returns
    ``{"rows": written, "short": queries left out without negatives (or positives), "short_queries": the same}``."""
    written = short = 0
    with atomic_file(path, "w") as handle:
        for _, query, positives, negatives in _chunks(result, collection):
            if not negatives or not positives:
                short += 1
                continue
            handle.write(json.dumps({"query": query, "pos": [t for _, t in positives],
                                     "neg": [t for _, t in negatives]}, ensure_ascii=False) + "\n")
            written += 1
    return {"rows": written, "short": short, "short_queries": short}


def _write_ids(path: str | os.PathLike, result, collection) -> dict[str, int]:
    result.write_ids(path)
    return {"rows": len(result.query_ids), "short": 0, "short_queries": 0}


#: ``dance-mine --format`` -> writer(path, result, collection).
FORMATS = {"ids": _write_ids, "sentence-transformers": write_sentence_transformers, "tevatron": write_tevatron,
           "flagembedding": write_flagembedding}


def output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path whose folder exists (created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
