"""The project's geometry as a sentence-transformers evaluator: pass it as ``evaluator=`` to
``SentenceTransformerTrainer`` (or call it on a model) and the ranking and geometry numbers of
:mod:`dance_analysis.interop.geometry` are logged at every evaluation, under the keys sentence-transformers gives
its evaluators' metrics: ``<name>_<key>`` (``eval_<name>_<key>`` in the trainer's logs), e.g.
``eval_geometry_MRR@10``, ``eval_geometry_queries_mean_cosine``.

    from dance_analysis.interop import EvaluationSet, GeometryEvaluator

    evaluator = GeometryEvaluator(EvaluationSet(queries, corpus, qrels), name="dev")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                         evaluator=evaluator)

Queries are encoded with ``model.encode_query`` and documents with ``model.encode_document`` (the model's query /
document prompts and routes apply), L2-normalised when the model scores by cosine (its default). The primary
metric is ``<name>_MRR@10`` (``greater_is_better``), so ``metric_for_best_model`` can name it.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DanceError
from .geometry import PRIMARY_METRIC, EvaluationSet, sentence_transformer_vectors, space_metrics

try:
    from sentence_transformers.evaluation import SentenceEvaluator
except ImportError as exc:                    # pragma: no cover - the extra is missing
    raise DanceError("GeometryEvaluator needs the package sentence-transformers (pip install "
                     "'dance-analysis[interop]')") from exc

logger = logging.getLogger(__name__)

__all__ = ["GeometryEvaluator"]


class GeometryEvaluator(SentenceEvaluator):
    """Ranking metrics and embedding-space geometry of a SentenceTransformer on an :class:`EvaluationSet`.

    Args:
        eval_set: the queries, documents and judgments (:meth:`EvaluationSet.from_collection` reads a collection).
        name: prefix of the metric keys (``<name>_MRR@10``, ...).
        batch_size: encoding batch size.
        seed: seed of the sampled statistics and of the mined negatives.
        n_negatives, negatives_top_k: negatives mined per query from the model's top documents when the set has
            none of its own.

    Returns from ``__call__``: ``{<name>_<key>: float}`` (keys in :mod:`dance_analysis.interop.geometry`).
    """

    def __init__(self, eval_set: EvaluationSet, *, name: str = "geometry", batch_size: int = 32, seed: int = 0,
                 n_negatives: int = 10, negatives_top_k: int = 100, show_progress_bar: bool = False):
        super().__init__()
        self.eval_set = eval_set
        self.name = name
        self.batch_size = batch_size
        self.seed = seed
        self.n_negatives = n_negatives
        self.negatives_top_k = negatives_top_k
        self.show_progress_bar = show_progress_bar
        self.greater_is_better = True
        self.primary_metric = PRIMARY_METRIC

    def encode(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Query and document vectors of ``model`` (:func:`~dance_analysis.interop.geometry.
        sentence_transformer_vectors`: normalised when the model scores by cosine)."""
        return sentence_transformer_vectors(model, self.eval_set, batch_size=self.batch_size,
                                            show_progress_bar=self.show_progress_bar)

    def compute(self, queries: np.ndarray, documents: np.ndarray) -> dict[str, float]:
        """The unprefixed numbers of given vectors (:func:`~dance_analysis.interop.geometry.space_metrics`)."""
        return space_metrics(queries, documents, self.eval_set, seed=self.seed, n_negatives=self.n_negatives,
                             negatives_top_k=self.negatives_top_k)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        queries, documents = self.encode(model)
        metrics = self.compute(queries, documents)
        logger.info("geometry of %s (epoch %s, step %s): %s %.4f", self.name, epoch, steps, PRIMARY_METRIC,
                    metrics[PRIMARY_METRIC])
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict:
        return {"queries": len(self.eval_set.query_ids), "documents": len(self.eval_set.doc_ids),
                "min_relevance": self.eval_set.min_relevance, "seed": self.seed}
