"""rag24-statements: the statement-extraction rules, topic folds, and the collection built from the real files.

The rules are checked on hand-made responses; the real collection is checked against an independent re-read of
the raw responses file (every kept pair obeys the rules, every dropped citation breaks one).
"""

from __future__ import annotations

import gzip
import json
import re

import pytest

from dance_analysis.data import cross_validation_splits, fold_splits, load_collection, rag24
from dance_analysis.data.collection import Collection, InMemoryCorpus
from dance_analysis.data.statements import (
    SAME_DOCUMENT_GRADE,
    document_of,
    extract_statements,
    statement_qrels,
    with_statements,
    word_overlap,
)
from dance_analysis.errors import DanceError

PASSAGES = {
    "docA#1_1": "the white blood cell count rises during bacterial infection and inflammation",
    "docA#2_2": "a second segment of document A about blood cells",
    "docB#1_3": "leukemia can raise the count of white cells far above normal values",
    "docC#1_4": "unrelated passage on the history of the roman empire",
}
QRELS = {"T1": {"docA#1_1": 3, "docB#1_3": 2, "docC#1_4": 1}, "T2": {"docC#1_4": 2}}


def _response(topic, *statements):
    return {"topic": topic, "kind": "llm", "statements": [(text, list(cites)) for text, cites in statements]}


def test_word_overlap_against_a_hand_count():
    # statement words: {a, high, count, signals, infection} -> "count" and "infection" occur in the passage
    assert word_overlap("A high count signals infection", PASSAGES["docA#1_1"]) == pytest.approx(2 / 5)
    assert word_overlap("", "anything") == 0.0
    assert document_of("msmarco_v2.1_doc_46_999737599#2_2166757967") == "msmarco_v2.1_doc_46_999737599"


def test_extraction_rules():
    responses = [
        _response("T1",
                  ("- Infections often make the measured number of leukocytes go up.", ["docA#1_1", "docC#1_4"]),
                  ("Too short to keep.", ["docA#1_1"]),                                   # 4 words
                  ("the white blood cell count rises during bacterial infection", ["docA#1_1"]),  # copies it
                  ("Blood cancers may push leukocyte numbers well past typical ranges.", ["docB#1_3", "docX#9_9"]),
                  ("Nothing here is cited by this fairly long statement text.", [])),
        _response("T1", ("- Infections often make the measured number of leukocytes go up.", ["docB#1_3"])),
        _response("T2", ("An ancient empire ruled much of Europe for centuries.", ["docC#1_4"])),
        _response("T3", ("A topic without judgments cannot give a pair here.", ["docA#1_1"])),
    ]
    kept = extract_statements(responses, PASSAGES, QRELS)
    assert [s.qid for s in kept] == ["T1.s0", "T1.s1", "T2.s0"]
    first, second, third = kept
    assert first.text == "Infections often make the measured number of leukocytes go up."
    assert first.cited == {"docA#1_1": 3, "docB#1_3": 2}      # grade-1 passage dropped; the repeat merged
    assert second.cited == {"docB#1_3": 2}                    # the unknown passage dropped
    assert third.cited == {"docC#1_4": 2}
    documents = {"docA": ["docA#1_1", "docA#2_2"], "docB": ["docB#1_3"], "docC": ["docC#1_4"]}
    assert statement_qrels(first, documents) == {"docA#1_1": 3, "docA#2_2": SAME_DOCUMENT_GRADE, "docB#1_3": 2}


def _base():
    corpus = InMemoryCorpus(list(PASSAGES), list(PASSAGES.values()))
    return Collection(name="mini", corpus=corpus, queries={"T1": "wbc", "T2": "rome"}, qrels=QRELS,
                      splits={}, min_relevance=2)


def test_with_statements_adds_queries_qrels_and_topics():
    responses = [_response("T1", ("Blood cancers may push leukocyte numbers well past typical ranges.",
                                  ["docB#1_3"]))]
    collection = with_statements(_base(), responses)
    assert collection.queries["T1.s0"].startswith("Blood cancers")
    assert collection.topics == {"T1": "T1", "T2": "T2", "T1.s0": "T1"}
    assert collection.relevant("T1.s0") == {"docB#1_3": 2}
    assert collection.qrels["T1"] == QRELS["T1"]                 # the real queries' judgments are unchanged


def _topic_collection(n_topics=9, per_topic=3):
    queries, topics, qrels = {}, {}, {}
    for t in range(n_topics):
        topic = f"T{t}"
        queries[topic], topics[topic], qrels[topic] = topic, topic, {"docA#1_1": 2}
        for k in range(per_topic):
            qid = f"{topic}.s{k}"
            queries[qid], topics[qid], qrels[qid] = qid, topic, {"docA#1_1": 2}
    corpus = InMemoryCorpus(list(PASSAGES), list(PASSAGES.values()))
    return Collection(name="topics", corpus=corpus, queries=queries, qrels=qrels, splits={}, topics=topics)


@pytest.mark.parametrize("folds", [2, 3])
def test_topic_folds_keep_topics_apart_and_test_every_real_query_once(folds):
    collection = _topic_collection()
    real = {q for q, t in collection.topics.items() if q == t}
    tested = []
    for fold in range(folds):
        parts = fold_splits(collection, folds, fold, seed=4)
        topic = collection.topics
        train_topics = {topic[q] for q in parts["train"]}
        test_topics = set(parts["test"])
        assert test_topics <= real and not train_topics & test_topics
        assert all(q not in real for q in parts["train"] + parts["test-statements"])
        assert {topic[q] for q in parts["test-statements"]} == test_topics
        assert not set(parts["dev"]) & test_topics
        if folds == 2:
            assert set(parts["dev"]) == train_topics            # select on the training topics' real queries
        else:
            assert not set(parts["dev"]) & train_topics
        tested += parts["test"]
    assert sorted(tested) == sorted(real)


def test_fold_splits_without_topics_are_the_plain_cross_validation():
    collection = _base()
    collection = Collection(name="plain", corpus=collection.corpus, queries={f"q{i}": "x" for i in range(7)},
                            qrels={}, splits={})
    assert fold_splits(collection, 3, 1, seed=5) == cross_validation_splits(collection.queries, 3, 1, seed=5)
    with pytest.raises(DanceError, match="folds must be an integer >= 3"):
        fold_splits(collection, 2, 0)


@pytest.fixture(scope="module")
def statements():
    return load_collection("rag24-statements")


def test_real_collection_against_the_raw_responses(statements):
    """Every kept pair obeys the rules, recomputed here from the raw file with an independent tokeniser."""
    sample = load_collection("rag24-sample")
    texts = dict(sample.corpus.iter_texts())
    assert statements.corpus.ids.tolist() == sample.corpus.ids.tolist()
    assert {q: statements.queries[q] for q in sample.queries} == sample.queries

    def tokens(text):
        return set(re.findall(r"\w+", text.lower()))

    raw_citations = {}
    with gzip.open(rag24.sample_dir() / rag24.RESPONSES_FILE, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for item in record["statements"]:
                text = " ".join(item["text"].split()).lstrip("-*• ").strip()
                raw_citations.setdefault((record["topic"], text), set()).update(item["citations"])
    kept = [q for q, t in statements.topics.items() if q != t]
    assert len(kept) > 5000
    for qid in kept[::7]:
        topic, text = statements.topics[qid], statements.queries[qid]
        assert qid.startswith(f"{topic}.s") and len(tokens(text)) >= 5
        relevant = statements.relevant(qid)
        assert relevant and set(relevant) <= raw_citations[topic, text]
        for passage, grade in relevant.items():
            assert grade == sample.qrels[topic][passage] >= 2
            words = tokens(text)
            assert len(words & tokens(texts[passage])) / len(words) < 0.9
        for passage, grade in statements.qrels[qid].items():
            if passage not in relevant:
                assert grade == 1 and any(passage.split("#")[0] == p.split("#")[0] for p in relevant)


def test_real_collection_splits_are_topic_folds(statements):
    parts = [fold_splits(statements, 2, f, seed=13) for f in range(2)]
    assert sorted(parts[0]["test"] + parts[1]["test"]) == sorted(q for q, t in statements.topics.items() if q == t)
    assert set(parts[0]["train"]) == set(parts[1]["test-statements"])
    assert statements.source["format"] == "rag24-statements"
    assert load_collection(dict(statements.source)).queries == statements.queries
