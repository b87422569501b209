"""The experiment's metrics on synthetic spaces, against brute-force computations and the analysis functions:

- each set statistic, evaluated on the full sample, equals its reference in dance_analysis.analysis (and a
  bootstrap resample leaves out the pairs of a unit with its own copy);
- d2q reciprocal ranks among all queries, the fold units, and the per-query ranking values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reproduce_support as rs
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


# ------------------------------------------------------------------------ topics, statements and seeds
def _topic_splits(coll, fold):
    from dance_analysis.data.splits import topic_splits

    real = sorted(q for q, t in coll.topics.items() if q == t)
    test, train = (real[:8], real[8:]) if fold == 0 else (real[8:], real[:8])
    return topic_splits({"train": train, "dev": train, "test": test}, coll.topics)


@pytest.fixture(scope="module")
def seeded():
    """Two folds; arms start (one seed), ance and dance (two seeds each): vectors of a common base plus an arm
    shift plus seed noise."""
    rng = np.random.default_rng(7)
    coll, doc_ids = rs.topic_collection()
    qids = np.array(sorted(coll.queries))
    dim = 10
    docs = rng.normal(size=(len(doc_ids), dim)).astype(np.float32)
    base_q = np.stack([docs[[int(d[1:]) for d, g in coll.qrels[q].items() if g >= 2]].mean(axis=0)
                       for q in qids]) + rng.normal(0, 0.8, (len(qids), dim)).astype(np.float32)
    corpus_ids = np.array(doc_ids)
    folds = []
    for fold in range(2):
        units = fold_units(coll, fold, _topic_splits(coll, fold), corpus_ids, qids)
        per_arm = {}
        for arm, shift, seeds in (("start", 0.0, [0]), ("ance", 0.3, [1, 2]), ("dance", 0.6, [1, 2])):
            spaces = []
            for s in seeds:
                noise = np.random.default_rng([fold, s, int(shift * 10)]).normal(0, 0.2, base_q.shape)
                q = (base_q + shift * base_q + noise).astype(np.float32)
                spaces.append(build_space(arm, units, Embeddings(corpus_ids, docs), Embeddings(qids, q), 1.0, coll,
                                          seed=s))
            per_arm[arm] = spaces
        folds.append(per_arm)
    return coll, folds


def test_fold_units_with_topics(seeded):
    coll, folds = seeded
    units = folds[0]["start"][0].units
    real = [q for q in units.query_ids.tolist() if coll.topics[q] == q]
    # d2q: the anchors rank the real queries only
    assert units.query_ids[units.d2q_rows].tolist() == real
    assert units.anchor_positive.shape == (len(units.anchors), len(real))
    # anchors relevant to one test query share a cluster, and clusters follow the test queries
    for q in units.test_qids:
        rows = [int(np.flatnonzero(units.anchors == int(d[1:]))[0]) for d in coll.relevant(q)]
        assert len(set(units.anchor_clusters[rows].tolist())) == 1
    assert len(set(units.anchor_clusters.tolist())) == len(units.test_qids)
    # the pool: statements of the training topics, clustered by topic; statements of test topics are a test
    test_topics = set(units.test_qids)
    assert all(coll.topics[q] not in test_topics and coll.topics[q] != q for q in units.pool_qids)
    assert set(units.pool_clusters.tolist()) == {coll.topics[q] for q in units.pool_qids}
    assert units.statement_qids and all(coll.topics[q] in test_topics for q in units.statement_qids)
    assert units.statement_clusters.tolist() == [coll.topics[q] for q in units.statement_qids]
    # per-statement MRR@10 by brute force
    s = folds[0]["ance"][0]
    for i, q in enumerate(units.statement_qids):
        order = np.argsort(-(s.corpus @ s.queries[units.statement_rows[i]]), kind="stable")
        rel = set(coll.relevant(q))
        first = next(r for r, j in enumerate(order, 1) if units.corpus_ids[j] in rel)
        assert s.statement_per_query["MRR@10"][i] == pytest.approx(1 / first if first <= 10 else 0.0)


def test_d2q_softmax_entropy_is_scale_free_and_matches_brute_force(seeded):
    _, folds = seeded
    s = folds[0]["ance"][0]
    values = M._d2q_softmax_entropy(s)
    k = min(M.SOFTMAX_K, s.pool_topk.shape[1])
    q = s.pool_queries / np.linalg.norm(s.pool_queries, axis=1, keepdims=True)
    for r in range(0, len(values), 7):
        anchor = s.corpus[s.units.pool_anchors[r]]
        cand = [c for c in s.pool_topk[r, :k] if c >= 0 and not s.units.pool_excluded[r, c]]
        logits = (q[cand] @ (anchor / np.linalg.norm(anchor))) / M.SOFTMAX_T
        p = np.exp(logits - logits.max())
        p /= p.sum()
        expected = -(p * np.log(p)).sum() / np.log(len(cand)) if len(cand) >= 2 else np.nan
        assert values[r] == pytest.approx(expected, abs=1e-6, nan_ok=True)
    # the same vectors at ten times the norm and another training temperature: the same entropies
    import dataclasses

    scaled = dataclasses.replace(s, queries=s.queries * 10, corpus=s.corpus * 10, temperature=0.01)
    np.testing.assert_allclose(M._d2q_softmax_entropy(scaled), values, atol=1e-6)


def test_compare_averages_seeds_and_reports_the_new_fields(seeded, monkeypatch):
    from dance_analysis.analysis import stats
    from dance_analysis.comparison import statistics as st

    monkeypatch.setattr(st, "UNIT_RESAMPLES", 2000)
    monkeypatch.setattr(st, "SET_RESAMPLES", 60)
    _, folds = seeded
    contrasts = [("dance", "ance", "main"), ("ance", "start", "vs start")]
    out = st.compare(folds, ["start", "ance", "dance"], contrasts, log=lambda m: None)
    assert out["seeds"] == {"start": [1, 1], "ance": [2, 2], "dance": [2, 2]}
    mrr = M.METRIC_BY_KEY["q2d.MRR@10"]
    # unit level: seed means per unit, pooled over folds; per seed: that seed's pooled mean
    per_unit = {arm: np.concatenate([np.mean([mrr.values(s) for s in f[arm]], axis=0) for f in folds])
                for arm in ("ance", "dance")}
    lv = out["levels"]["q2d.MRR@10"]["ance"]
    assert lv["value"] == pytest.approx(per_unit["ance"].mean())
    assert [p["seed"] for p in lv["per_seed"]] == [1, 2]
    assert lv["per_seed"][0]["value"] == pytest.approx(np.concatenate([mrr.values(f["ance"][0]) for f in folds]).mean())
    row = out["contrasts"][0]["metrics"]["q2d.MRR@10"]
    assert row["effect"] == pytest.approx((per_unit["dance"] - per_unit["ance"]).mean())
    assert row["p_resamples"] in (2000, 2 ** row["n"]) and row["seeds"] == [[2, 2], [2, 2]]
    assert "two training seeds of ance" in row["mde_basis"] and row["mde"] > 0
    # the detectable difference from the control's two seeds, by hand (singleton clusters)
    noise = np.concatenate([mrr.values(f["ance"][1]) - mrr.values(f["ance"][0]) for f in folds])
    assert row["mde"] == pytest.approx(stats.min_detectable_difference(noise) * math.sqrt(0.5))
    # against a one-seed control, the treatment's seeds give the noise
    vs_start = out["contrasts"][1]["metrics"]["q2d.MRR@10"]
    assert "two training seeds of ance" in vs_start["mde_basis"]
    # clustered units: d2q passages by test query, statements by topic
    d2q = out["contrasts"][0]["metrics"]["d2q.RR@10"]
    assert d2q["n_clusters"] == sum(len(f["start"][0].units.test_qids) for f in folds) < d2q["n"]
    s2d = out["contrasts"][0]["metrics"]["s2d.MRR@10"]
    assert s2d["n_clusters"] == 16 and s2d["n"] == sum(len(f["start"][0].units.statement_qids) for f in folds)
    assert "s2d.MRR@10" in out["ranking_keys"]
    # set metric: mean over folds of the seed-mean differences; replicates over (fold, seed pair)
    cos = out["contrasts"][0]["metrics"]["queries.mean_cosine"]
    metric = M.METRIC_BY_KEY["queries.mean_cosine"]
    per_fold = []
    for f in folds:
        t = [metric.compute(s, np.arange(metric.units(s))) for s in f["dance"]]
        c = [metric.compute(s, np.arange(metric.units(s))) for s in f["ance"]]
        per_fold.append(np.mean(t) - np.mean(c))
        assert cos["per_fold_seed"][len(per_fold) - 1]["treatment"] == [pytest.approx(v) for v in t]
    assert cos["effect"] == pytest.approx(np.mean(per_fold))
    assert cos["replicates"]["replicates"] == 8 and cos["p_resamples"] <= 60
    # every claim row carries what the report needs
    for claim in out["claims"]:
        for r in claim["rows"]:
            assert {"p_resamples", "replicates", "seed_gap", "kind"} <= set(r)


def test_not_measurable_at_the_bound_stays_out_of_holm(seeded):
    from dance_analysis.comparison import statistics as st

    _, folds = seeded
    at_zero = M.Metric("x.zero", "always 0", "C4", "lower", True, "set", "pool pair",
                       units=lambda s: len(s.units.pool_anchors), compute=lambda s, idx: 0.0, bounds=(0.0, 1.0))
    reason = st.not_measurable(at_zero, folds)
    assert reason and "bound 0" in reason
    moving = M.Metric("x.moves", "moves", "C4", "lower", True, "set", "pool pair",
                      units=lambda s: len(s.units.pool_anchors), compute=lambda s, idx: 0.1 * (s.arm == "dance"),
                      bounds=(0.0, 1.0))
    assert st.not_measurable(moving, folds) is None
    # a primary metric not measurable here has no p and does not count in Holm's m
    rows = {"sampling.pi_gini@50": {"effect": -0.1, "low": -0.2, "high": -0.05, "p": 0.02, "p_resamples": 1000,
                                    "replicates": {"passed": True}},
            "sampling.pi_zero_share@50": {"not_measurable": reason}}
    c4 = next(c for c in st.decide_claims(rows) if c["claim"] == "C4")
    gini = next(r for r in c4["rows"] if r["key"] == "sampling.pi_gini@50")
    assert gini["p_holm"] == pytest.approx(0.02) and gini["verdict"] == "reproduced"
    assert c4["verdict"] == "reproduced"
    # the replicate rule: a set metric whose replicates disagree cannot be reproduced
    rows["sampling.pi_gini@50"]["replicates"] = {"passed": False}
    c4 = next(c for c in st.decide_claims(rows) if c["claim"] == "C4")
    assert c4["verdict"] == "inconclusive"


def test_a_k_covering_the_pool_is_not_measurable(seeded):
    from dance_analysis.comparison import statistics as st

    _, folds = seeded
    pool = len(folds[0]["start"][0].units.pool_rows)
    assert pool < 200
    reason = st.not_measurable(M.METRIC_BY_KEY["sampling.pi_gini@200"], folds)
    assert reason and "whole pool" in reason
