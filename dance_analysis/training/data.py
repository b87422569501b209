"""The fixed inputs of a training run: the collection, its training / dev queries, the positive pairs and the two
token caches (:class:`TrainingData`, built by :func:`prepare_data`).

Every process of a run, ``dance-train --prepare`` and the async miner open the same inputs through
:func:`prepare_data`; only a single process (or ``--prepare``) may build a missing token cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import fold_splits, load_collection
from ..data.tokens import cached_tokens
from ..errors import DanceError
from ..mining import positive_pairs
from .config import Recipe
from .distributed import DistContext

__all__ = ["TrainingData", "prepare_data"]


@dataclass
class TrainingData:
    """The fixed inputs of a run: collection, query splits, positive pairs and the two token caches.

    ``corpus_ids`` is the collection order, which is also the row order of ``doc_tokens``; ``query_ids`` are all
    queries of the collection in the row order of ``query_tokens`` (sorted ids).
    """

    collection: Any
    corpus_ids: np.ndarray
    query_ids: np.ndarray
    train_qids: np.ndarray
    dev_qids: np.ndarray
    pairs: np.ndarray
    train_query_rows: np.ndarray       # row of each training query in query_tokens
    dev_query_rows: np.ndarray
    exclude: dict[str, dict[str, int]]  # training qid -> judged docs (never drawn as negatives)
    exclude_grade: int
    doc_tokens: Any
    query_tokens: Any

    @property
    def num_docs(self) -> int:
        """Documents in the corpus."""
        return len(self.corpus_ids)


def _subset(qids: list[str], limit: int | None, seed: int, salt: int) -> list[str]:
    if limit is None or limit >= len(qids):
        return list(qids)
    rng = np.random.default_rng([seed, salt])
    chosen = np.sort(rng.choice(len(qids), size=limit, replace=False))
    return [qids[i] for i in chosen]


def prepare_data(recipe: Recipe, tokenizer, query_max_length: int, doc_max_length: int,
                 dist: DistContext | None = None, collection=None, *, workers: int = 1,
                 build: bool | None = None, prompts: tuple[str, str] = ("", "")) -> TrainingData:
    """Load the collection, pick the training / dev queries and open (building once) the token caches.

    Training queries are those of ``data.train_split`` with at least one relevant document (``max_train_queries``
    keeps a seeded subset); likewise for the dev split; with ``data.folds`` set, the splits are those of the
    cross-validation fold ``data.fold``. ``workers`` processes tokenise a cache that has to be built. ``build``
    (default: only in a single-process run) allows building the caches; the ranks of a multi-process run only
    open those that ``dance-train --prepare`` built before the process group existed (a missing one is a
    :class:`DanceError`), so that no rank waits in a collective for a cache build. ``prompts``: the model's
    ``(query_prompt, document_prompt)``, put before every query / document text of the caches.
    """

    dist = dist or DistContext()
    data_cfg = recipe.data
    if collection is None:
        collection = load_collection(data_cfg.collection, min_relevance=data_cfg.min_relevance,
                                     doc_text=data_cfg.doc_text)
    if data_cfg.folds is not None:
        collection = collection.with_splits(fold_splits(collection, data_cfg.folds, data_cfg.fold,
                                                        seed=data_cfg.fold_seed))
    seed = recipe.optim.seed
    train_qids = _subset(collection.evaluable(collection.split_queries(data_cfg.train_split)),
                         data_cfg.max_train_queries, seed, 1)
    if not train_qids:
        raise DanceError(f"split {data_cfg.train_split!r} of {collection.name} has no query with a relevant "
                         f"document: nothing to train on")
    dev_qids: list[str] = []
    if data_cfg.dev_split:
        dev_qids = _subset(collection.evaluable(collection.split_queries(data_cfg.dev_split)),
                           data_cfg.max_dev_queries, seed, 2)
    overlap = set(train_qids) & set(dev_qids)
    if overlap:
        raise DanceError(f"the training split {data_cfg.train_split!r} and the dev split {data_cfg.dev_split!r} "
                         f"share {len(overlap)} queries, e.g. {sorted(overlap)[0]!r}")

    allowed = (not dist.enabled) if build is None else build

    def tokens(side: str, length: int):
        return cached_tokens(collection, side, tokenizer, length, cache_dir=data_cfg.cache_dir, workers=workers,
                             build=allowed, prompt=prompts[0] if side == "query" else prompts[1])

    doc_tokens, query_tokens = tokens("doc", doc_max_length), tokens("query", query_max_length)

    corpus_ids = np.asarray(collection.corpus.ids).astype(str)
    if len(doc_tokens.ids) != len(corpus_ids) or not np.array_equal(np.asarray(doc_tokens.ids).astype(str),
                                                                      corpus_ids):
        raise DanceError("the document token cache does not follow the corpus order; delete the token cache "
                         "folder and run again")
    query_ids = np.asarray(query_tokens.ids).astype(str)
    row_of = {qid: i for i, qid in enumerate(query_ids.tolist())}
    missing = [q for q in train_qids + dev_qids if q not in row_of]
    if missing:
        raise DanceError(f"query {missing[0]!r} is missing from the query token cache")
    exclude_grade = 1 if collection.min_relevance >= 1 else int(collection.min_relevance)
    if recipe.mining.exclude_grade is not None:
        exclude_grade = int(recipe.mining.exclude_grade)
    exclude = {q: dict(collection.qrels.get(q, {})) for q in train_qids}
    relevant = {q: set(collection.relevant(q)) for q in train_qids}
    pairs = positive_pairs(train_qids, corpus_ids, relevant)
    return TrainingData(
        collection=collection, corpus_ids=corpus_ids, query_ids=query_ids,
        train_qids=np.asarray(train_qids, dtype=str), dev_qids=np.asarray(dev_qids, dtype=str), pairs=pairs,
        train_query_rows=np.asarray([row_of[q] for q in train_qids], dtype=np.int64),
        dev_query_rows=np.asarray([row_of[q] for q in dev_qids], dtype=np.int64),
        exclude=exclude, exclude_grade=exclude_grade, doc_tokens=doc_tokens, query_tokens=query_tokens)
