"""The project's ranking and geometry numbers for any encoder, on a small evaluation set: what
:class:`~dance_analysis.interop.st_evaluator.GeometryEvaluator` (sentence-transformers) and
:class:`~dance_analysis.interop.callback.GeometryCallback` (transformers ``Trainer``) report while someone else's
trainer runs.

:class:`EvaluationSet` holds the texts (queries, documents, graded judgments, optionally given negatives);
:func:`space_metrics` turns the vectors of one model into flat ``{key: float}`` numbers, each computed by the
project's own analysis functions (:mod:`dance_analysis.analysis`), ranking by exact inner-product search
(:func:`dance_analysis.index.search`) and :func:`dance_analysis.metrics.evaluate`:

==================================  ===========================================================================
key                                 value
==================================  ===========================================================================
``MRR@10``, ``nDCG@10``, ``R@100``  q2d ranking of the judged queries over the documents (the primary metric is
                                    ``MRR@10``, higher is better)
``queries_mean_cosine``             anisotropy: mean pairwise cosine (:func:`~dance_analysis.analysis.
``documents_mean_cosine``           mean_pairwise_cosine`)
``queries_uniformity``              Wang & Isola uniformity, t = 2 (:func:`~dance_analysis.analysis.uniformity`)
``documents_uniformity``
``alignment``                       Wang & Isola alignment of the positive pairs, alpha = 2
``qd_mmd2``                         linear-kernel MMD^2 between queries and documents (:func:`~dance_analysis.
                                    analysis.mmd2_linear_unbiased`)
``nearest_document_ratio``          :func:`~dance_analysis.analysis.nearest_document_ratio` with
                                    ``nearest_document_k`` = min(10, documents - 1)
``queries_norm_mean``, ...          mean vector norm of each side
``<side>_isoscore``,                IsoScore and effective rank in the top-k PCA subspace (k =
``<side>_effective_rank``           ``<side>_isotropy_k``), with ``<side>_effective_rank_cap``; the full-space
                                    values ``<side>_full_*`` with their caps ``<side>_full_*_cap``
                                    (:func:`~dance_analysis.analysis.subspace_isotropy`)
``negatives_above_positive``        share of the negatives that score at or above their query's positive
                                    (:func:`~dance_analysis.analysis.negative_score_margins`); ``negatives_count``
==================================  ===========================================================================

The negatives are the set's own (``negatives``: query id -> document ids, e.g. the hard negatives of the training
data) or, without them, mined as ANCE mines them from the model's own ranking: ``n_negatives`` drawn at random
(seeded) from the top ``negatives_top_k`` documents minus the judged ones
(:func:`dance_analysis.mining.mine_document_negatives`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import analysis as A
from ..data import load_collection
from ..errors import DanceError
from ..index import search
from ..metrics import PRIMARY_METRIC as _PRIMARY
from ..metrics import evaluate
from ..mining import mine_document_negatives, positive_pairs

logger = logging.getLogger(__name__)

__all__ = ["EvaluationSet", "space_metrics", "sentence_transformer_vectors", "PRIMARY_METRIC", "MEASURES"]

#: The metric that stands for an evaluation (higher is better): the project's primary metric
#: (:data:`dance_analysis.metrics.PRIMARY_METRIC`), as it selects checkpoints.
PRIMARY_METRIC = _PRIMARY.name
#: The ranking measures reported (names as :func:`dance_analysis.metrics.parse_measure` reads them).
MEASURES = (PRIMARY_METRIC, "nDCG@10", "R@100")
SIDES = ("queries", "documents")


@dataclass
class EvaluationSet:
    """Queries, documents and judgments to evaluate on (all small enough to encode at every evaluation).

    ``queries``: query id -> text; ``corpus``: document id -> text; ``qrels``: query id -> {document id: grade};
    a grade >= ``min_relevance`` is relevant. Only queries with a relevant document in ``corpus`` are ranked
    and analysed. ``negatives`` (optional): query id -> document ids, the negatives whose scores against the
    positives are reported; without them negatives are mined from the model's ranking (module docstring).
    """

    queries: Mapping[str, str]
    corpus: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]
    min_relevance: int = 1
    negatives: Mapping[str, Sequence[str]] | None = None
    query_ids: list[str] = field(init=False)
    doc_ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.doc_ids = [str(d) for d in self.corpus]
        in_corpus = set(self.doc_ids)
        self.query_ids = [str(q) for q in self.queries
                          if any(g >= self.min_relevance and d in in_corpus
                                 for d, g in (self.qrels.get(q) or {}).items())]
        if not self.query_ids:
            raise DanceError(f"no query has a document of grade >= {self.min_relevance} among the "
                             f"{len(self.doc_ids)} documents: nothing to evaluate")
        if len(self.doc_ids) < 3:
            raise DanceError(f"{len(self.doc_ids)} documents: the geometry needs at least 3")

    @classmethod
    def from_collection(cls, spec, *, split: str | None = None, sample: int | None = None, seed: int = 0,
                        min_relevance: int | None = None) -> EvaluationSet:
        """The queries of ``split`` of a collection (anything :func:`dance_analysis.data.load_collection` reads)
        with the whole corpus; with ``sample``, ``sample`` queries drawn with ``seed`` and a sub-corpus (their
        judged documents plus ``sample`` others), as ``dance-analyze --sample`` does."""
        collection = load_collection(spec, min_relevance=min_relevance)
        qids = collection.evaluable(collection.split_queries(split))
        rng = np.random.default_rng(seed)
        if sample is not None and sample < len(qids):
            qids = sorted(rng.choice(np.asarray(qids), size=sample, replace=False).tolist())
        if sample is None:
            corpus = dict(collection.corpus.iter_texts())
        else:
            judged = sorted({d for q in qids for d in collection.relevant(q) if d in collection.corpus})
            others = np.setdiff1d(np.asarray(collection.corpus.ids).astype(str), np.asarray(judged, dtype=str))
            extra = rng.choice(others, size=min(sample, len(others)), replace=False).tolist() if len(others) else []
            ids = judged + sorted(extra)
            corpus = dict(zip(ids, collection.corpus.texts(ids)))
        return cls(queries={q: collection.queries[q] for q in qids}, corpus=corpus,
                   qrels={q: dict(collection.qrels.get(q, {})) for q in qids},
                   min_relevance=collection.min_relevance)

    def query_texts(self) -> list[str]:
        return [self.queries[q] for q in self.query_ids]

    def doc_texts(self) -> list[str]:
        return [self.corpus[d] for d in self.doc_ids]


def sentence_transformer_vectors(model, eval_set: EvaluationSet, *, batch_size: int = 32,
                                 show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Query vectors (``encode_query``) and document vectors (``encode_document``) of a SentenceTransformer, as
    float32, L2-normalised when the model scores by cosine (``similarity_fn_name`` "cosine", the default), so
    that the numbers describe the space the model ranks in; the project reads a sentence-transformers folder the
    same way (:mod:`dance_analysis.st_folder`), so ``dance-analyze`` of a saved checkpoint gives these numbers."""
    cosine = (getattr(model, "similarity_fn_name", None) or "cosine") == "cosine"
    options = dict(batch_size=batch_size, convert_to_numpy=True, show_progress_bar=show_progress_bar,
                   normalize_embeddings=cosine)
    queries = model.encode_query(eval_set.query_texts(), **options)
    documents = model.encode_document(eval_set.doc_texts(), **options)
    return np.asarray(queries, dtype=np.float32), np.asarray(documents, dtype=np.float32)


def _given_negatives(eval_set: EvaluationSet) -> np.ndarray:
    """The set's negatives as corpus rows per query row, -1 padded (unknown ids are left out)."""
    row = {d: i for i, d in enumerate(eval_set.doc_ids)}
    lists = [[row[d] for d in (eval_set.negatives.get(q) or ()) if d in row] for q in eval_set.query_ids]
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), width), -1, dtype=np.int64)
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out


def space_metrics(queries: np.ndarray, corpus: np.ndarray, eval_set: EvaluationSet, *, seed: int = 0,
                  n_negatives: int = 10, negatives_top_k: int = 100, isotropy_k: int | None = None
                  ) -> dict[str, float]:
    """The numbers of the module docstring for query vectors ``queries`` [nq, d] (rows in
    ``eval_set.query_ids`` order) and document vectors ``corpus`` [nd, d] (``eval_set.doc_ids`` order)."""
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(corpus, dtype=np.float32)
    if q.shape[0] != len(eval_set.query_ids) or d.shape[0] != len(eval_set.doc_ids):
        raise DanceError(f"expected {len(eval_set.query_ids)} query and {len(eval_set.doc_ids)} document vectors, "
                         f"got {q.shape[0]} and {d.shape[0]}")
    k = max(100, negatives_top_k)
    rankings = search(q, d, k, query_ids=eval_set.query_ids, doc_ids=eval_set.doc_ids, device="cpu")
    out: dict[str, float] = {}
    ranking = evaluate(rankings, eval_set.qrels, min_relevance=eval_set.min_relevance, measures=MEASURES,
                       query_ids=eval_set.query_ids)
    out.update({name: float(ranking[name]) for name in MEASURES})

    pairs = positive_pairs(eval_set.query_ids, eval_set.doc_ids, eval_set.qrels, min_grade=eval_set.min_relevance)
    for side, x in zip(SIDES, (q, d)):
        out[f"{side}_mean_cosine"] = float(A.mean_pairwise_cosine(x, name=side))
        out[f"{side}_uniformity"] = float(A.uniformity(x, t=2.0, seed=seed, name=side)["value"]) \
            if x.shape[0] >= 2 else math.nan
        out[f"{side}_norm_mean"] = float(A.norm_stats(x, (), name=side)["mean"])
        if x.shape[0] >= 3 and min(x.shape[0] - 1, x.shape[1]) >= 2:
            iso = A.subspace_isotropy(x, k=isotropy_k if isotropy_k is None else min(isotropy_k, x.shape[0] - 1),
                                      name=side)
            for key in ("isoscore", "effective_rank", "effective_rank_cap", "full_isoscore", "full_isoscore_cap",
                        "full_effective_rank", "full_effective_rank_cap"):
                out[f"{side}_{key}"] = float(iso[key])
            out[f"{side}_isotropy_k"] = float(iso["k"])
    out["alignment"] = float(A.alignment(q, d, pairs, alpha=2.0))
    out["qd_mmd2"] = float(A.mmd2_linear_unbiased(q, d))
    nd_k = min(10, d.shape[0] - 1)
    out["nearest_document_ratio"] = float(A.nearest_document_ratio(q, d, k=nd_k)["ratio"])
    out["nearest_document_k"] = float(nd_k)

    if eval_set.negatives is not None:
        negatives = _given_negatives(eval_set)
    else:
        negatives, _ = mine_document_negatives(rankings, eval_set.qrels, n_negatives, seed, top_k=negatives_top_k,
                                               min_grade=1)
    margins = A.negative_score_margins(q, d, pairs, negatives) if negatives.size else np.zeros(0)
    out["negatives_count"] = float(margins.size)
    out["negatives_above_positive"] = float((margins >= 0).mean()) if margins.size else math.nan
    return out
