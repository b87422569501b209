"""The experiment's metrics on synthetic spaces, against brute-force computations and the analysis functions:

- each set statistic, evaluated on the full sample, equals its reference in dance_analysis.analysis (and a
  bootstrap resample leaves out the pairs of a unit with its own copy);
- d2q reciprocal ranks among all queries, the fold units, and the per-query ranking values.
"""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.analysis import claim_metrics as cm
from dance_analysis.analysis.align_uniform import uniformity
from dance_analysis.analysis.geometry import mean_pairwise_cosine
from dance_analysis.comparison import measures as M
from dance_analysis.comparison.spaces import build_space, d2q_reciprocal_ranks, fold_units
from dance_analysis.data.collection import Collection, InMemoryCorpus
from dance_analysis.embeddings import Embeddings


@pytest.fixture(scope="module")
def space():
    rng = np.random.default_rng(0)
    n_docs, n_q, dim = 120, 40, 12
    doc_ids = [f"d{i:03d}" for i in range(n_docs)]
    qids = [f"q{i:02d}" for i in range(n_q)]
    qrels = {}
    for i, q in enumerate(qids):
        rel = rng.choice(n_docs, size=4, replace=False)
        qrels[q] = {doc_ids[rel[0]]: 2, doc_ids[rel[1]]: 1, doc_ids[rel[2]]: 0, doc_ids[rel[3]]: 3 if i % 3 else 0}
    coll = Collection("synthetic", InMemoryCorpus(doc_ids, ["text"] * n_docs), {q: "query" for q in qids}, qrels,
                      {}, min_relevance=2)
    splits = {"test": qids[:12], "dev": qids[12:20], "train": qids[20:]}
    corpus = Embeddings(np.array(doc_ids), rng.normal(size=(n_docs, dim)).astype(np.float32) + 0.3)
    queries = Embeddings(np.array(sorted(qids)), rng.normal(size=(n_q, dim)).astype(np.float32))
    units = fold_units(coll, 0, splits, corpus.ids, queries.ids)
    return build_space("arm", units, corpus, queries, 0.05, coll), coll


def test_set_statistics_at_the_full_sample_equal_the_analysis_functions(space):
    s, _ = space
    full = np.arange(len(s.units.test_rows))
    q, d = s.test_queries, s.corpus
    sample = d[M.doc_sample(s)]
    by_key = M.METRIC_BY_KEY
    assert by_key["queries.mean_cosine"].compute(s, full) == pytest.approx(mean_pairwise_cosine(q), abs=1e-6)
    assert by_key["qd.mmd2"].compute(s, full) == pytest.approx(cm.mmd2_linear_unbiased(q, d), abs=1e-6)
    assert by_key["qd.energy"].compute(s, full) == pytest.approx(cm.energy_distance(q, sample)["value"], abs=1e-6)
    assert by_key["queries.uniformity"].compute(s, full) == pytest.approx(uniformity(q, t=2.0)["value"], abs=1e-5)
    assert by_key["joint.uniformity"].compute(s, full) == pytest.approx(
        cm.balanced_joint_uniformity(q, sample, t=2.0)["value"], abs=1e-5)
    docs = np.arange(len(M.doc_sample(s)))
    assert by_key["documents.uniformity"].compute(s, docs) == pytest.approx(uniformity(sample, t=2.0)["value"],
                                                                            abs=1e-5)


def test_a_resample_leaves_out_pairs_of_a_unit_with_its_copy(space):
    s, _ = space
    idx = np.array([0, 0, 1, 2, 2, 2, 5])
    x = s.test_queries.astype(np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = [float(u[a] @ u[b]) for i, a in enumerate(idx) for j, b in enumerate(idx) if i != j and a != b]
    assert M.METRIC_BY_KEY["queries.mean_cosine"].compute(s, idx) == pytest.approx(np.mean(cos), abs=1e-9)


def test_d2q_reciprocal_ranks_rank_among_all_queries():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(30, 6)).astype(np.float32)
    d = rng.normal(size=(10, 6)).astype(np.float32)
    anchors = np.array([1, 4, 7])
    positive = np.zeros((3, 30), dtype=bool)
    positive[0, [2, 9]] = True
    positive[1, 5] = True
    positive[2, [0, 1, 29]] = True
    rr = d2q_reciprocal_ranks(q, d, anchors, positive)
    for i, a in enumerate(anchors):
        order = np.argsort(-(q @ d[a]), kind="stable")
        first = next(r for r, j in enumerate(order, 1) if positive[i, j])
        assert rr[i] == pytest.approx(1 / first if first <= 10 else 0.0)


def test_fold_units_and_per_query_values(space):
    s, coll = space
    units = s.units
    assert units.test_qids == [q for q in [f"q{i:02d}" for i in range(12)] if coll.relevant(q)]
    # every relevant passage of a test query is an anchor, positive for every query that finds it relevant
    for q in units.test_qids:
        for d in coll.relevant(q):
            row = int(np.flatnonzero(units.anchors == int(np.flatnonzero(units.corpus_ids == d)[0]))[0])
            assert units.anchor_positive[row, int(np.flatnonzero(units.query_ids == q)[0])]
    # one pool row per positive pair of a training query; judged (grade >= 1) pool queries are excluded
    assert len(units.pool_anchors) == sum(len(coll.relevant(q)) for q in units.pool_qids)
    # RR@10 per test query by brute force
    for i, q in enumerate(units.test_qids):
        scores = s.corpus @ s.queries[units.test_rows[i]]
        order = np.argsort(-scores, kind="stable")
        rel = set(coll.relevant(q))
        first = next(r for r, j in enumerate(order, 1) if units.corpus_ids[j] in rel)
        assert s.per_query["MRR@10"][i] == pytest.approx(1 / first if first <= 10 else 0.0)


def test_covariance_statistics_in_row_space_coordinates_equal_the_full_space(space):
    s, _ = space
    idx = np.array([0, 1, 1, 3, 4, 5, 6, 7, 8, 9])
    x = s.test_queries[idx].astype(np.float64)
    by_key = M.METRIC_BY_KEY
    assert by_key["queries.pc1_share"].compute(s, idx) == pytest.approx(cm.first_component_share(x), abs=1e-10)
    full = cm.subspace_isotropy(x)
    assert by_key["queries.isoscore_sub"].compute(s, idx) == pytest.approx(full["isoscore"], abs=1e-10)
    assert by_key["queries.erank_sub"].compute(s, idx) == pytest.approx(full["effective_rank"], abs=1e-10)


def test_sampling_probabilities_of_a_resample_are_the_marginals_of_its_pairs(space):
    from dance_analysis.analysis.sampling import negative_sampling_marginals

    s, _ = space
    idx = np.array([0, 0, 2, 3, 3, 3, len(s.units.pool_anchors) - 1])
    for k in (5, 10):
        topk = s.pool_topk[idx, :k]
        excluded = np.take_along_axis(s.units.pool_excluded[idx], np.maximum(topk, 0), axis=1) & (topk >= 0)
        expected = negative_sampling_marginals(topk, excluded, n_queries=len(s.units.pool_rows), n=M.SAMPLING_N)
        np.testing.assert_allclose(M.sampling_probabilities(s, k, idx), expected, atol=1e-12)
