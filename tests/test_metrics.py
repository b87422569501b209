"""Metrics equal ir-measures / trec_eval exactly: on real TF-IDF runs of the sample and on random runs with ties."""

from __future__ import annotations

import math

import ir_measures
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_measures import AP, RR, R, nDCG

from dance_analysis.errors import DanceError
from dance_analysis.index import Rankings, exact_topk
from dance_analysis.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query, parse_measure
from dance_analysis.runs import write_trec_run

TOL = 1e-9


def reference(rankings: Rankings, qrels, query_ids, min_relevance, cutoffs_rr=(10, 100), cutoffs_r=(100, 1000),
              ndcg_cutoffs=(10,), provider=None):
    """Per-query values from ir-measures (pytrec_eval), zero for evaluated queries missing from its output.

    RR@k comes from trec_eval's recip_rank (ir-measures RR(rel=r) without cutoff): RR@k = RR if its rank <= k.
    """
    run = {}
    for row, qid in enumerate(rankings.query_ids):
        pairs = rankings.top(row)
        if pairs:
            run[str(qid)] = {doc: float(score) for doc, score in pairs}
    measures = [RR(rel=min_relevance), AP(rel=min_relevance)]
    measures += [R(rel=min_relevance) @ c for c in cutoffs_r] + [nDCG @ c for c in ndcg_cutoffs]
    calc = (provider or ir_measures.pytrec_eval).iter_calc
    values: dict = {}
    for metric in calc(measures, qrels, run):
        values.setdefault(str(metric.measure), {})[metric.query_id] = metric.value
    out = {}
    for c in cutoffs_rr:
        rr = values.get(str(RR(rel=min_relevance)), {})
        out[f"MRR@{c}"] = [rr.get(q, 0.0) if rr.get(q, 0.0) > 0 and round(1 / rr[q]) <= c else 0.0
                           for q in query_ids]
    for c in cutoffs_r:
        out[f"R@{c}"] = [values.get(str(R(rel=min_relevance) @ c), {}).get(q, 0.0) for q in query_ids]
    for c in ndcg_cutoffs:
        out[f"nDCG@{c}"] = [values.get(str(nDCG @ c), {}).get(q, 0.0) for q in query_ids]
    out["MAP"] = [values.get(str(AP(rel=min_relevance)), {}).get(q, 0.0) for q in query_ids]
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}


def evaluable(qrels, query_ids, min_relevance):
    return [q for q in query_ids if any(g >= min_relevance for g in qrels.get(q, {}).values())]


# ------------------------------------------------------------------------------------------------ real sample runs


@pytest.fixture(scope="module")
def sample():
    from dance_analysis.data import load_collection

    return load_collection("rag24-sample")


@pytest.fixture(scope="module")
def tfidf_rankings(sample):
    """A real run: TF-IDF cosine of every sample query against the 6,011 passages, top 1,000."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    doc_ids, texts = zip(*sample.corpus.iter_texts())
    query_ids = sorted(sample.queries)
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    docs = vectorizer.fit_transform(texts)
    queries = vectorizer.transform([sample.queries[q] for q in query_ids])
    scores = (queries @ docs.T).toarray().astype(np.float32)
    top_scores, top_indices = exact_topk(scores, 1000)
    return Rankings(np.asarray(query_ids), np.asarray(doc_ids), top_indices, top_scores)


@pytest.mark.parametrize("min_relevance", [2, 1])
def test_real_sample_run_equals_ir_measures(sample, tfidf_rankings, min_relevance):
    qrels = sample.qrels
    query_ids = evaluable(qrels, sorted(sample.queries), min_relevance)
    ours = evaluate_per_query(tfidf_rankings, qrels, min_relevance=min_relevance, query_ids=query_ids)
    assert list(ours["query_ids"]) == query_ids and len(query_ids) > 250
    ref = reference(tfidf_rankings, qrels, query_ids, min_relevance)
    for name in DEFAULT_MEASURES:
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=TOL, err_msg=name)
    # The run is not trivial: zero-score ties hold relevant documents, and the metrics are far from 0 and 1.
    means = evaluate(tfidf_rankings, qrels, min_relevance=min_relevance, query_ids=query_ids)
    assert means["queries"] == len(query_ids)
    assert 0.2 < means["MRR@10"] < 0.95 and 0.1 < means["nDCG@10"] < 0.9


def test_real_sample_run_file_equals_ir_measures_default_pipeline(sample, tfidf_rankings, tmp_path):
    """Through a run file, as trec_eval users would score it, with ir-measures' default providers (msmarco for
    RR@k, pytrec_eval for the rest), on the queries whose top 100 holds no tie around a relevant document."""
    path = write_trec_run(tmp_path / "tfidf.run.gz", tfidf_rankings, tag="tfidf")
    run = list(ir_measures.read_trec_run(str(path)))
    qrels = sample.qrels
    query_ids = evaluable(qrels, sorted(sample.queries), 2)
    measures = [RR(rel=2) @ 10, RR(rel=2) @ 100, R(rel=2) @ 100, R(rel=2) @ 1000, nDCG @ 10, AP(rel=2)]
    names = ["MRR@10", "MRR@100", "R@100", "R@1000", "nDCG@10", "MAP"]
    theirs: dict = {}
    for metric in ir_measures.iter_calc(measures, qrels, run):
        theirs.setdefault(str(metric.measure), {})[metric.query_id] = metric.value
    ours = evaluate_per_query(tfidf_rankings, qrels, min_relevance=2, query_ids=query_ids)
    row = {q: i for i, q in enumerate(tfidf_rankings.query_ids)}
    checked = 0
    for e, q in enumerate(query_ids):
        scores = tfidf_rankings.scores[row[q], :101]
        tied_top = bool((scores[:-1] == scores[1:]).any())
        for measure, name in zip(measures, names):
            if name.startswith("MRR") and tied_top:
                continue  # the msmarco provider orders ties by doc id ascending, trec_eval descending
            expected = theirs.get(str(measure), {}).get(q, 0.0)
            assert abs(ours[name][e] - expected) < TOL, (q, name, ours[name][e], expected)
            checked += 1
    assert checked > 5 * len(query_ids)


# ------------------------------------------------------------------------------------------------ random runs


@st.composite
def random_case(draw):
    n_docs = draw(st.integers(1, 30))
    n_queries = draw(st.integers(1, 6))
    k = draw(st.integers(1, 25))
    numeric_ids = draw(st.booleans())
    # Ids whose string order differs from their index order (ties are broken by id in trec_eval).
    doc_ids = np.asarray([f"{i * 37 % 101}{i}" if numeric_ids else f"d{i * 7 % 31:02d}-{i}" for i in range(n_docs)])
    kept = min(k, n_docs)
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    for row in range(n_queries):
        length = draw(st.integers(0, kept))
        chosen = draw(st.permutations(range(n_docs)))[:length]
        values = draw(st.lists(st.sampled_from([-1.5, -0.0, 0.0, 0.25, 0.5, 1.0, 3.0]), min_size=length,
                               max_size=length))
        pairs = sorted(zip(values, chosen), key=lambda p: (-p[0], p[1]))
        indices[row, :length] = [d for _, d in pairs]
        scores[row, :length] = [v for v, _ in pairs]
    query_ids = [f"q{i}" for i in range(n_queries)]
    qrels = {}
    for qid in query_ids + ["unranked"]:
        if draw(st.booleans()) or qid == "q0":
            judged = draw(st.lists(st.integers(0, n_docs - 1), unique=True, max_size=n_docs))
            qrels[qid] = {str(doc_ids[d]): draw(st.integers(0, 3)) for d in judged}
            if draw(st.booleans()):
                qrels[qid]["not-in-corpus"] = draw(st.integers(0, 3))
    return Rankings(np.asarray(query_ids), doc_ids, indices, scores), qrels


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_case(), min_relevance=st.sampled_from([1, 2]))
def test_random_runs_with_ties_equal_trec_eval(case, min_relevance):
    rankings, qrels = case
    query_ids = evaluable(qrels, list(qrels), min_relevance)
    measures = ["MRR@3", "MRR@10", "R@2", "R@10", "nDCG@3", "nDCG@10", "MAP"]
    ours = evaluate_per_query(rankings, qrels, min_relevance=min_relevance, measures=measures)
    assert list(ours["query_ids"]) == query_ids
    ref = reference(rankings, qrels, query_ids, min_relevance, cutoffs_rr=(3, 10), cutoffs_r=(2, 10),
                    ndcg_cutoffs=(3, 10))
    for name in measures:
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=TOL, err_msg=name)
    if query_ids:
        means = evaluate(rankings, qrels, min_relevance=min_relevance, measures=measures)
        assert means["queries"] == len(query_ids)
        for name in measures:
            assert abs(means[name] - ref[name].mean()) < TOL


# ------------------------------------------------------------------------------------------------ hand-made cases


def test_hand_computed_values_and_tie_order():
    # Scores: d (2.0) first, then a, b, c tied at 1.0 -> trec_eval order d, c, b, a (doc id descending).
    rankings = Rankings(np.array(["q"]), np.array(["a", "b", "c", "d"]), np.array([[3, 0, 1, 2]]),
                        np.array([[2.0, 1.0, 1.0, 1.0]], np.float32))
    qrels = {"q": {"a": 1, "c": 2, "e": 3}}
    got = evaluate(rankings, qrels, min_relevance=1, measures=["MRR@10", "MRR@1", "R@2", "P@4", "MAP", "nDCG@2"])
    assert got["MRR@10"] == 0.5 and got["MRR@1"] == 0.0
    assert got["R@2"] == pytest.approx(1 / 3, abs=1e-15)
    assert got["P@4"] == 0.5
    assert got["MAP"] == pytest.approx((1 / 2 + 2 / 4) / 3, abs=1e-15)
    assert got["nDCG@2"] == pytest.approx((2 / math.log2(3)) / (3 + 2 / math.log2(3)), abs=1e-15)
    assert got["queries"] == 1


def test_averaging_convention_counts_unranked_queries_as_zero():
    rankings = Rankings(np.array(["q1"]), np.array(["a", "b"]), np.array([[0, 1]]),
                        np.array([[1.0, 0.5]], np.float32))
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"a": 0}}
    got = evaluate(rankings, qrels, measures=["MRR@10"])
    assert got == {"MRR@10": 0.5, "queries": 2}  # q3 has no relevant document: not evaluated
    got = evaluate(rankings, qrels, measures=["MRR@10"], query_ids=["q1", "q1"])
    assert got == {"MRR@10": 1.0, "queries": 1}
    per_query = evaluate_per_query(rankings, qrels, measures=["MRR@10"], query_ids=["q2", "q1", "q3"])
    assert list(per_query["query_ids"]) == ["q2", "q1"]
    np.testing.assert_array_equal(per_query["MRR@10"], [0.0, 1.0])
    with pytest.raises(DanceError, match="no query"):
        evaluate(rankings, qrels, measures=["MRR@10"], query_ids=["q3"])


@pytest.mark.parametrize("name,kind,cutoff", [("MRR@10", "RR", 10), ("rr@5", "RR", 5), ("Recall@100", "R", 100),
                                              ("nDCG@10", "nDCG", 10), ("NDCG", "nDCG", None), ("MAP", "AP", None),
                                              ("P@3", "P", 3), ("MRR", "RR", None)])
def test_parse_measure(name, kind, cutoff):
    parsed = parse_measure(name)
    assert (parsed.kind, parsed.cutoff, parsed.name) == (kind, cutoff, name)


@pytest.mark.parametrize("name", ["MRR@0", "R", "MAP@10", "foo@3", "nDCG@x", ""])
def test_parse_measure_rejects(name):
    with pytest.raises(DanceError, match="unknown measure"):
        parse_measure(name)


def test_duplicate_query_rows_rejected():
    rankings = Rankings(np.array(["q", "q"]), np.array(["a"]), np.zeros((2, 1), np.int64),
                        np.zeros((2, 1), np.float32))
    with pytest.raises(DanceError, match="more than one row"):
        evaluate(rankings, {"q": {"a": 1}})
