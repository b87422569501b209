"""The project's geometry during any transformers ``Trainer`` run: a ``TrainerCallback`` that, at every evaluation
and every checkpoint save, encodes an :class:`~dance_analysis.interop.geometry.EvaluationSet` with the model being
trained and logs the ranking and geometry numbers (:mod:`dance_analysis.interop.geometry`) through the trainer's
own ``log``: every logger ``report_to`` names (TensorBoard, W&B, ...) and ``trainer.state.log_history`` receive
them, under ``<name>/<key>`` (e.g. ``geometry/MRR@10``, ``geometry/queries_mean_cosine``).

    from dance_analysis.interop import EvaluationSet, GeometryCallback

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    trainer.add_callback(GeometryCallback(EvaluationSet(queries, corpus, qrels), trainer=trainer))
    trainer.train()

The model is encoded with ``encode_query`` / ``encode_document`` when it has them (a SentenceTransformer; normalised
when it scores by cosine), with
the project's encoder for a :class:`~dance_analysis.model.DualEncoder`, else with ``encode(model, texts, side)``
(``side`` "query" or "document", returning [n, d] vectors), which must then be given. Without ``trainer`` the
numbers are added to the metrics of the evaluation that triggered them (after the loggers have seen those) and
kept in :attr:`GeometryCallback.history`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from transformers import TrainerCallback

from ..encode import encode_texts
from ..errors import DanceError
from ..model import DualEncoder
from .geometry import EvaluationSet, sentence_transformer_vectors, space_metrics

logger = logging.getLogger(__name__)

__all__ = ["GeometryCallback"]


class GeometryCallback(TrainerCallback):
    """Log the geometry of ``eval_set`` at each evaluation (``on_evaluate``) and save (``on_save``); a step is
    measured once even when both happen at it.

    Args:
        eval_set: the queries, documents and judgments.
        trainer: the Trainer whose ``log`` receives the numbers (recommended; see the module docstring).
        name: prefix of the logged keys (``<name>/<key>``).
        encode: ``encode(model, texts, side) -> [n, d]`` for models that are neither a SentenceTransformer nor a
            DualEncoder.
        on_evaluate, on_save: which events measure.
        seed, n_negatives, negatives_top_k, batch_size: as for :class:`~dance_analysis.interop.GeometryEvaluator`.
    """

    def __init__(self, eval_set: EvaluationSet, *, trainer=None, name: str = "geometry",
                 encode: Callable | None = None, at_evaluate: bool = True, at_save: bool = True, seed: int = 0,
                 n_negatives: int = 10, negatives_top_k: int = 100, batch_size: int = 32):
        self.eval_set = eval_set
        self.trainer = trainer
        self.name = name
        self.encode_fn = encode
        self.at_evaluate = at_evaluate
        self.at_save = at_save
        self.seed = seed
        self.n_negatives = n_negatives
        self.negatives_top_k = negatives_top_k
        self.batch_size = batch_size
        self.history: list[dict] = []
        self._last_step: int | None = None

    def encode(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Query and document vectors of ``model`` (float32), as the module docstring describes."""
        queries, documents = self.eval_set.query_texts(), self.eval_set.doc_texts()
        if self.encode_fn is not None:
            pair = self.encode_fn(model, queries, "query"), self.encode_fn(model, documents, "document")
        elif hasattr(model, "encode_query") and hasattr(model, "encode_document"):
            pair = sentence_transformer_vectors(model, self.eval_set, batch_size=self.batch_size)
        else:
            inner = getattr(model, "module", model)          # DistributedDataParallel / DataParallel
            if not isinstance(inner, DualEncoder):
                raise DanceError(f"GeometryCallback cannot encode a {type(model).__name__}: give "
                                 f"encode=lambda model, texts, side: <[n, d] vectors>")
            was_training = inner.training
            inner.eval()
            try:
                pair = (encode_texts(inner, self.eval_set.query_ids, queries, "query", progress=False,
                                     batch_size=self.batch_size).vectors,
                        encode_texts(inner, self.eval_set.doc_ids, documents, "doc", progress=False,
                                     batch_size=self.batch_size).vectors)
            finally:
                inner.train(was_training)
        return np.asarray(pair[0], dtype=np.float32), np.asarray(pair[1], dtype=np.float32)

    def measure(self, model, step: int) -> dict[str, float]:
        """The prefixed numbers of ``model`` at ``step`` (also appended to :attr:`history`)."""
        queries, documents = self.encode(model)
        values = space_metrics(queries, documents, self.eval_set, seed=self.seed, n_negatives=self.n_negatives,
                               negatives_top_k=self.negatives_top_k)
        metrics = {f"{self.name}/{key}": value for key, value in values.items()}
        self.history.append({"step": int(step), **metrics})
        return metrics

    def _run(self, state, model, metrics: dict | None = None) -> None:
        if model is None or self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        values = self.measure(model, state.global_step)
        if self.trainer is not None:
            self.trainer.log(dict(values))
        elif metrics is not None:
            metrics.update(values)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if self.at_evaluate:
            self._run(state, model, metrics)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.at_save:
            self._run(state, model)
