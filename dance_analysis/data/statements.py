"""``rag24-statements``: the rag24-sample plus the cited statements of its RAG answers as extra queries.

The source distribution that carries the rag24-sample (:mod:`dance_analysis.data.rag24`) also holds
``data/crowd/responses.jsonl.gz``: 1,806 RAG answers (903 written by people, 903 by LLMs) to the 301 topics,
split into statements, each citing passages of the sample. A statement that cites a passage judged relevant to
its topic is a (query, relevant passage) pair of the kind MS MARCO training data holds, so the statements of
training topics serve as training queries while the real queries of held-out topics are tested (the statements
of the held-out topics are a second, larger ranking test).

Which citations make a pair (:func:`extract_statements`; fixed before any training run, not tuned on the data):

* the statement has at least :data:`MIN_WORDS` words (``\\w+`` tokens of the lower-cased text);
* the cited passage is in the sample and judged grade >= :data:`MIN_TOPIC_GRADE` for the statement's topic;
  the pair gets that grade;
* the statement does not copy the passage: fewer than :data:`MAX_OVERLAP` of its distinct words occur in the
  passage (people's statements mostly copy the passage, median about 98 % overlap; LLM ones paraphrase it);
* a statement with no such citation is dropped; the same text twice in one topic is one statement.

Other segments of the same MS MARCO v2.1 document as a cited passage (ids share the part before ``#``) overlap
it heavily; they are judged grade :data:`SAME_DOCUMENT_GRADE` for the statement, so mining never draws them as
negatives (the default ``mining.exclude_grade`` is 1) and they never count as relevant at ``min_relevance`` 2.

Statement ids are ``<topic>.s<k>`` (``k`` counts a topic's statements from 0 in file order);
``collection.topics`` maps every query id to its topic (a real query is its own topic), and
:func:`dance_analysis.data.splits.fold_splits` makes folds over topics from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InputError
from .collection import Collection
from .formats import decode, iter_lines

NAME = "rag24-statements"
MIN_WORDS = 5
MIN_TOPIC_GRADE = 2
MAX_OVERLAP = 0.9
SAME_DOCUMENT_GRADE = 1
_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """The distinct lower-cased ``\\w+`` tokens of ``text``."""
    return set(_WORD.findall(text.lower()))


def word_overlap(statement: str, passage: str) -> float:
    """The share of the statement's distinct words that occur in the passage (0 for a statement with none)."""
    mine = words(statement)
    return len(mine & words(passage)) / len(mine) if mine else 0.0


def document_of(passage_id: str) -> str:
    """The MS MARCO v2.1 document of a segment id (``msmarco_v2.1_doc_46_999737599#2_2166757967`` -> the part
    before ``#``); an id without ``#`` is its own document."""
    return passage_id.split("#", 1)[0]


@dataclass(frozen=True)
class Statement:
    """One kept statement: its id, topic, text, the cited passages kept with their grades, and who wrote it."""

    qid: str
    topic: str
    text: str
    cited: dict[str, int]
    kind: str


def read_responses(path: str | os.PathLike) -> Iterable[dict]:
    """The records of ``responses.jsonl(.gz)``: ``{"topic", "kind", "statements": [{"text", "citations"}]}``."""
    name = str(path)
    for lineno, _offset, raw in iter_lines(path):
        try:
            record = json.loads(decode(name, lineno, raw))
            topic, statements = str(record["topic"]), record["statements"]
            items = [(str(s["text"]), [str(c) for c in s["citations"]]) for s in statements]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(name, 'a JSON object with "topic" and "statements" [{"text", "citations"}]',
                             line=lineno, got=str(exc)) from None
        yield {"topic": topic, "kind": str(record.get("kind", "")), "statements": items}


def extract_statements(responses: Iterable[Mapping], passages: Mapping[str, str],
                       topic_qrels: Mapping[str, Mapping[str, int]]) -> list[Statement]:
    """The statements that make (query, relevant passage) pairs, by the rules of the module docstring."""
    kept: dict[tuple[str, str], Statement] = {}
    counts: dict[str, int] = {}
    for response in responses:
        topic = response["topic"]
        judged = topic_qrels.get(topic, {})
        for raw_text, citations in response["statements"]:
            text = " ".join(raw_text.split()).lstrip("-*• ").strip()
            if len(_WORD.findall(text.lower())) < MIN_WORDS:
                continue
            cited = {c: judged[c] for c in citations
                     if c in passages and judged.get(c, -1) >= MIN_TOPIC_GRADE
                     and word_overlap(text, passages[c]) < MAX_OVERLAP}
            if not cited:
                continue
            key = (topic, text)
            if key in kept:
                kept[key].cited.update(cited)
                continue
            index = counts.get(topic, 0)
            counts[topic] = index + 1
            kept[key] = Statement(f"{topic}.s{index}", topic, text, dict(cited), response["kind"])
    return list(kept.values())


def statement_qrels(statement: Statement, documents: Mapping[str, list[str]]) -> dict[str, int]:
    """The statement's judgments: its cited passages with their grades, and every other segment of their
    documents at :data:`SAME_DOCUMENT_GRADE`."""
    judged = {}
    for passage in statement.cited:
        for segment in documents.get(document_of(passage), ()):
            judged[segment] = SAME_DOCUMENT_GRADE
    judged.update(statement.cited)
    return judged


def with_statements(base: Collection, responses: Iterable[Mapping]) -> Collection:
    """``base`` (the rag24-sample) with the kept statements added as queries, their qrels and ``topics``."""
    ids = list(base.corpus.ids)
    passages = dict(zip(ids, base.corpus.texts(ids)))
    statements = extract_statements(responses, passages, base.qrels)
    documents: dict[str, list[str]] = {}
    for doc_id in ids:
        documents.setdefault(document_of(doc_id), []).append(doc_id)
    queries = dict(base.queries)
    qrels = {q: dict(j) for q, j in base.qrels.items()}
    topics = {q: q for q in base.queries}
    for statement in statements:
        queries[statement.qid] = statement.text
        qrels[statement.qid] = statement_qrels(statement, documents)
        topics[statement.qid] = statement.topic
    source = {**base.source, "format": NAME, "name": NAME}
    return Collection(name=NAME, corpus=base.corpus, queries=queries, qrels=qrels, splits=dict(base.splits),
                      min_relevance=base.min_relevance, source=source, topics=topics)
