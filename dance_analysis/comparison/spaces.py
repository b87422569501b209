"""What one arm's selected model gives on one fold: its vectors and the per-query / per-passage values.

Everything the statistics need is read from the arm's selected checkpoint (``embeddings/`` written at the refresh
that evaluated it on the dev fold, so nothing is encoded again) or, for the zero-shot arm, from the embeddings
folder encoded once. A :class:`FoldUnits` holds what the arms of a fold share (which queries are tested, which
passages anchor the query-retrieval task, which queries form the sampler's pool), so that every arm's values come
in the same order and differences are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.ranking import d2q_ranks
from ..embeddings import Embeddings
from ..errors import DanceError
from ..index import Rankings, search
from ..metrics import PRIMARY_METRIC, RANKING_MEASURES, evaluate_per_query

#: Ranking measures computed per held-out statement (the second ranking test, when the collection has topics): the
#: primary metric and nDCG@10. Per test query: :data:`dance_analysis.metrics.RANKING_MEASURES`.
STATEMENT_MEASURES = (PRIMARY_METRIC.name, "nDCG@10")
RUN_DEPTH = 100
#: How many nearest candidates define each passage's query candidates in the C4 statistics (the paper: 200 of
#: about 367,000 training queries; here a small part of a fold's pool of about 3,300 training statements: the
#: trainer's ``mining.query_top_k`` is 50). A K whose candidates cover the pool is reported as not measurable.
SAMPLING_KS = (20, 50, 200)
#: Queries drawn per passage by the sampler (the recipes' mining.n).
SAMPLING_N = 20


@dataclass
class FoldUnits:
    """The units of one fold, shared by its arms (and by all training seeds of an arm).

    test_qids: the fold's test queries with a relevant passage (the ranking and query-side units); with topics
        (``collection.topics``) these are real queries, each its own topic, so each is its own cluster.
    anchors: row (in the corpus) of each passage relevant to a test query (the d2q units), with
        ``anchor_positive`` [n_anchors, len(d2q_rows)] bool: which of the ranked queries it is relevant to.
        ``d2q_rows``: the rows (in ``query_ids``) of the queries a passage ranks: the real queries (ids that are
        their own topic) when the collection has topics, else every query. ``anchor_clusters``: the test query
        (connected component of passages and the test queries they are relevant to) of each anchor; passages
        relevant to one query are correlated units, resampled together.
    pool_qids: the fold's training queries with a relevant passage (the d2q sampler's query pool), with
        ``pool_anchors`` the corpus row of the passage of each of their positive pairs (the trainer draws query
        negatives once per pair) and ``pool_excluded`` [n_pool_pairs, n_pool] bool: pool queries the sampler never
        draws for that passage (judged grade >= the exclusion grade, 1 as in the trainer); ``pool_pair_queries``:
        each pair's query (position in ``pool_qids``); ``pool_clusters``: the topic of each pair's query.
    statement_qids / statement_rows / statement_clusters: the held-out statements of the test topics with a
        relevant passage (``splits["test-statements"]``, the second ranking test), their rows and topics; empty
        without such a split.
    judged: (test query row, corpus row, grade) of every judgment of a test query.
    """

    fold: int
    test_qids: list[str]
    query_ids: np.ndarray
    test_rows: np.ndarray
    anchors: np.ndarray
    anchor_positive: np.ndarray
    pool_qids: list[str]
    pool_rows: np.ndarray
    pool_anchors: np.ndarray
    pool_excluded: np.ndarray
    judged: np.ndarray
    min_relevance: int
    corpus_ids: np.ndarray = field(repr=False, default=None)
    d2q_rows: np.ndarray = field(repr=False, default=None)
    anchor_clusters: np.ndarray = field(repr=False, default=None)
    pool_clusters: np.ndarray = field(repr=False, default=None)
    pool_pair_queries: np.ndarray = field(repr=False, default=None)
    statement_qids: list[str] = field(repr=False, default_factory=list)
    statement_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    statement_clusters: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=object))


def _components(positive: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Connected component of each anchor in the graph of anchors and the query ``columns`` they are positive
    for (anchors relevant to one test query share its component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = positive.shape[0]
    rows, cols = np.nonzero(positive[:, columns])
    m = n + len(columns)
    graph = coo_matrix((np.ones(len(rows)), (rows, n + cols)), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    return labels[:n].astype(np.int64)


def fold_units(collection, fold: int, splits: dict[str, list[str]], corpus_ids: np.ndarray,
               query_ids: np.ndarray, exclude_grade: int = 1) -> FoldUnits:
    """The units of ``fold`` given its ``splits`` (``train`` / ``dev`` / ``test``, and ``test-statements`` when
    the collection has topics) and the id order of the vectors.

    ``corpus_ids`` may be a sub-corpus and ``query_ids`` a subset of the queries (dance-analyze with --sample):
    judgments of documents or queries without a vector are left out."""
    doc_row = {d: i for i, d in enumerate(corpus_ids.tolist())}
    query_row = {q: i for i, q in enumerate(query_ids.tolist())}
    topics = getattr(collection, "topics", None)
    test_qids = [q for q in collection.evaluable(splits["test"]) if q in query_row]
    pool_qids = [q for q in collection.evaluable(splits["train"]) if q in query_row]
    if not test_qids:
        raise DanceError(f"fold {fold}: no test query has a relevant passage")
    relevant_of = {q: [d for d in collection.relevant(q) if d in doc_row] for q in collection.queries
                   if q in query_row}
    # The queries a passage ranks in the d2q task: the real queries (not the statements) when there are topics.
    ranked = [q for q in query_ids.tolist() if topics is None or topics.get(q, q) == q]
    d2q_rows = np.array([query_row[q] for q in ranked], dtype=np.int64)
    d2q_col = {q: i for i, q in enumerate(ranked)}
    anchors = sorted({doc_row[d] for q in test_qids for d in relevant_of[q]})
    positive = np.zeros((len(anchors), len(ranked)), dtype=bool)
    anchor_index = {a: i for i, a in enumerate(anchors)}
    for q in ranked:
        for d in relevant_of.get(q, ()):
            i = anchor_index.get(doc_row[d])
            if i is not None:
                positive[i, d2q_col[q]] = True
    test_cols = np.array([d2q_col[q] for q in test_qids if q in d2q_col], dtype=np.int64)
    anchor_clusters = _components(positive, test_cols) if anchors else np.zeros(0, dtype=np.int64)
    # One row per positive pair of the pool, as the trainer draws once per pair (q, d+).
    pool_pairs = [(q, doc_row[d]) for q in pool_qids for d in sorted(relevant_of[q])]
    pool_anchors = [a for _, a in pool_pairs]
    pool_clusters = np.array([topics.get(q, q) if topics else q for q, _ in pool_pairs], dtype=object)
    pool_index = {q: i for i, q in enumerate(pool_qids)}
    pair_queries = np.array([pool_index[q] for q, _ in pool_pairs], dtype=np.int64)
    judged_by: dict[int, list[int]] = {}
    for q in pool_qids:
        for d, grade in collection.qrels.get(q, {}).items():
            if grade >= exclude_grade and d in doc_row:
                judged_by.setdefault(doc_row[d], []).append(pool_index[q])
    excluded = np.zeros((len(pool_anchors), len(pool_qids)), dtype=bool)
    for i, a in enumerate(pool_anchors):
        excluded[i, judged_by.get(a, [])] = True
    judged = np.array([(j, doc_row[d], g) for j, q in enumerate(test_qids)
                       for d, g in collection.qrels.get(q, {}).items() if d in doc_row], dtype=np.int64).reshape(-1, 3)
    statements = [q for q in collection.evaluable(splits.get("test-statements", ())) if q in query_row]
    return FoldUnits(fold=fold, test_qids=test_qids, query_ids=query_ids,
                     test_rows=np.array([query_row[q] for q in test_qids], dtype=np.int64),
                     anchors=np.array(anchors, dtype=np.int64), anchor_positive=positive, pool_qids=pool_qids,
                     pool_rows=np.array([query_row[q] for q in pool_qids], dtype=np.int64),
                     pool_anchors=np.array(pool_anchors, dtype=np.int64), pool_excluded=excluded, judged=judged,
                     min_relevance=collection.min_relevance, corpus_ids=corpus_ids, d2q_rows=d2q_rows,
                     anchor_clusters=anchor_clusters, pool_clusters=pool_clusters,
                     pool_pair_queries=pair_queries, statement_qids=statements,
                     statement_rows=np.array([query_row[q] for q in statements], dtype=np.int64),
                     statement_clusters=np.array([topics.get(q, q) if topics else q for q in statements],
                                                 dtype=object))


@dataclass
class Space:
    """One arm's vectors (one training seed) on one fold and what is computed from them once (rankings,
    per-unit ranking values).

    ``queries`` holds all queries of the collection (rows in ``units.query_ids`` order), ``corpus`` all passages;
    ``temperature`` is the arm's training temperature (its scores are inner products / temperature); ``seed``
    the training seed (None: not given; the statistics then number an arm's spaces 0, 1, ...).
    ``statement_rankings`` / ``statement_per_query``: the held-out statements' rankings and per-statement
    measures (empty without statements).
    """

    arm: str
    units: FoldUnits
    queries: np.ndarray
    corpus: np.ndarray
    temperature: float
    rankings: Rankings
    per_query: dict[str, np.ndarray]
    d2q_rr10: np.ndarray
    pool_topk: np.ndarray
    pool_topk_scores: np.ndarray
    statement_rankings: Rankings | None = None
    statement_per_query: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int | None = None

    @property
    def test_queries(self) -> np.ndarray:
        return self.queries[self.units.test_rows]

    @property
    def pool_queries(self) -> np.ndarray:
        return self.queries[self.units.pool_rows]


def load_vectors(folder: Path, corpus_ids: np.ndarray | None = None,
                 query_ids: np.ndarray | None = None) -> tuple[Embeddings, Embeddings]:
    """``corpus`` and ``queries`` embeddings of a checkpoint's or a saved ``embeddings/`` folder (float32, in
    memory), checked against the expected id orders when given."""
    corpus = Embeddings.load(folder / "corpus", mmap=False)
    queries = Embeddings.load(folder / "queries", mmap=False)
    for what, emb, ids in (("corpus", corpus, corpus_ids), ("queries", queries, query_ids)):
        if ids is not None and not np.array_equal(emb.ids, ids):
            raise DanceError(f"{folder / what}: expected the same {len(ids)} ids in the same order as the other "
                             f"arms, got {len(emb.ids)} ids in another order")
    return corpus, queries


def d2q_reciprocal_ranks(queries: np.ndarray, corpus: np.ndarray, anchors: np.ndarray, positive: np.ndarray,
                         cutoff: int = 10) -> np.ndarray:
    """Per anchor passage: 1 / rank of its best-ranked relevant query among all of ``queries`` (the ranked
    queries: ``positive`` has one column per row of ``queries``; 0 beyond ``cutoff``)."""
    rows, cols = np.nonzero(positive)
    ranks = d2q_ranks(queries, corpus[anchors], np.stack([cols, rows], axis=1))
    best = np.full(len(anchors), np.iinfo(np.int64).max)
    np.minimum.at(best, rows, ranks)
    return np.where(best <= cutoff, 1.0 / best, 0.0)


def build_space(arm: str, units: FoldUnits, corpus: Embeddings, queries: Embeddings, temperature: float,
                collection, *, seed: int | None = None) -> Space:
    """Rankings of the test queries (top ``RUN_DEPTH``) and of the held-out statements, their per-query measures,
    the d2q reciprocal ranks of the anchors among the ranked queries (``units.d2q_rows``), and each pool pair's
    top ``max(SAMPLING_KS)`` pool queries."""
    q = np.asarray(queries.vectors, dtype=np.float32)
    d = np.asarray(corpus.vectors, dtype=np.float32)
    rankings = search(q[units.test_rows], d, RUN_DEPTH, query_ids=units.test_qids, doc_ids=corpus.ids,
                      device="cpu")
    values = evaluate_per_query(rankings, collection.qrels, min_relevance=collection.min_relevance,
                                measures=RANKING_MEASURES, query_ids=units.test_qids)
    if list(values["query_ids"]) != list(units.test_qids):
        raise DanceError(f"fold {units.fold}, arm {arm}: per-query values came back for other queries")
    per_query = {m: np.asarray(values[m], dtype=np.float64) for m in RANKING_MEASURES}
    statement_rankings, statement_values = None, {}
    if len(units.statement_qids):
        statement_rankings = search(q[units.statement_rows], d, RUN_DEPTH, query_ids=units.statement_qids,
                                    doc_ids=corpus.ids, device="cpu")
        sv = evaluate_per_query(statement_rankings, collection.qrels, min_relevance=collection.min_relevance,
                                measures=STATEMENT_MEASURES, query_ids=units.statement_qids)
        if list(sv["query_ids"]) != list(units.statement_qids):
            raise DanceError(f"fold {units.fold}, arm {arm}: per-statement values came back for other queries")
        statement_values = {m: np.asarray(sv[m], dtype=np.float64) for m in STATEMENT_MEASURES}
    d2q_rows = units.d2q_rows if units.d2q_rows is not None else np.arange(len(q))
    d2q = d2q_reciprocal_ranks(q[d2q_rows], d, units.anchors, units.anchor_positive)
    k = min(max(SAMPLING_KS), len(units.pool_rows))
    if len(units.pool_anchors) and k > 0:
        pool = search(d[units.pool_anchors], q[units.pool_rows], k, device="cpu")
        topk, topk_scores = pool.indices, pool.scores
    else:
        topk, topk_scores = np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return Space(arm=arm, units=units, queries=q, corpus=d, temperature=float(temperature), rankings=rankings,
                 per_query=per_query, d2q_rr10=d2q, pool_topk=topk, pool_topk_scores=topk_scores,
                 statement_rankings=statement_rankings, statement_per_query=statement_values, seed=seed)
