"""The retrieval pipeline in three calls: collection -> embeddings -> rankings -> metrics.

These glue the rooms together (token cache, encoder, index, metrics) for the commands that need the whole chain
(`dance-eval`, the trainer's refresh, `dance-mine`, and `dance-analyze` when a checkpoint has no saved embeddings:
:func:`encode_ids` encodes chosen ids of one side).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.collection import Collection
from .data.tokens import cached_tokens
from .embeddings import Embeddings
from .encode import encode_texts, encode_tokens
from .errors import DanceError
from .index import Rankings, search
from .model import DualEncoder


def load_model(name_or_path: str, **overrides) -> DualEncoder:
    """Load a model from a checkpoint folder (its ``encoder/``), a model folder, a hub name or an alias."""
    encoder_dir = Path(name_or_path) / "encoder"
    if encoder_dir.is_dir():
        return DualEncoder.load(str(encoder_dir), **overrides)
    return DualEncoder.load(name_or_path, **overrides)


def embed_corpus(model: DualEncoder, collection: Collection, *, batch_size: int = 64,
                 dtype=np.float32, out: str | None = None, device=None, progress: bool = True,
                 cache_dir: str | None = None) -> Embeddings:
    """Encode every document of ``collection`` with ``model`` (tokenised once, through the token cache)."""
    tokens = cached_tokens(collection, "doc", model.tokenizer, model.config.doc_max_length, cache_dir=cache_dir,
                           prompt=model.config.document_prompt)
    return encode_tokens(model, tokens, "doc", batch_size=batch_size, dtype=dtype, out=out, device=device,
                         progress=progress)


def embed_queries(model: DualEncoder, collection: Collection, query_ids: Sequence[str] | None = None, *,
                  batch_size: int = 256, dtype=np.float32, out: str | None = None, device=None,
                  progress: bool = True, cache_dir: str | None = None) -> Embeddings:
    """Encode the queries of ``collection`` (all of them, or ``query_ids`` in that order)."""
    tokens = cached_tokens(collection, "query", model.tokenizer, model.config.query_max_length,
                           cache_dir=cache_dir, prompt=model.config.query_prompt)
    indices = None
    if query_ids is not None:
        row = {qid: i for i, qid in enumerate(tokens.ids.tolist())}
        indices = np.asarray([row[q] for q in query_ids], dtype=np.int64)
    return encode_tokens(model, tokens, "query", batch_size=batch_size, dtype=dtype, out=out, device=device,
                         progress=progress, indices=indices)


def encode_ids(model: DualEncoder, collection: Collection, side: str, wanted: np.ndarray, *, batch_size: int = 64,
               device=None, progress: bool = True) -> Embeddings:
    """The vectors of the ``wanted`` ids of one side (``"query"`` or ``"doc"``), in that order. Queries, and
    documents when at most half of the corpus is wanted, are tokenised directly; a whole (or most of a) corpus goes
    through the collection's token cache. An id the collection lacks is a :class:`DanceError`."""
    if side == "query":
        missing = [key for key in wanted.tolist() if key not in collection.queries]
        if missing:
            raise DanceError(f"{len(missing)} query id(s) are not in {collection.name}, e.g. "
                             f"{', '.join(map(repr, missing[:5]))}")
        embeddings = encode_texts(model, wanted, [collection.queries[q] for q in wanted.tolist()], side,
                                  batch_size=batch_size, device=device, progress=progress)
    elif 2 * len(wanted) <= len(collection.corpus):
        embeddings = encode_texts(model, wanted, collection.corpus.texts(wanted.tolist()), side,
                                  batch_size=batch_size, device=device, progress=progress)
    else:
        tokens = cached_tokens(collection, side, model.tokenizer, model.config.doc_max_length,
                               prompt=model.config.document_prompt)
        row = {key: i for i, key in enumerate(np.asarray(tokens.ids).tolist())}
        missing = [key for key in wanted.tolist() if key not in row]
        if missing:
            raise DanceError(f"{len(missing)} document id(s) are not in the token cache of {collection.name}, "
                             f"e.g. {', '.join(map(repr, missing[:5]))}")
        indices = np.fromiter((row[key] for key in wanted.tolist()), dtype=np.int64, count=len(wanted))
        embeddings = encode_tokens(model, tokens, side, batch_size=batch_size, device=device, progress=progress,
                                   indices=indices)
    if not np.array_equal(np.asarray(embeddings.ids), wanted):
        embeddings = embeddings.subset(wanted)
    return embeddings


def rank(queries: Embeddings, corpus: Embeddings, k: int, *, device: str = "auto") -> Rankings:
    """Exact inner-product top-``k`` documents for every query."""
    return search(np.asarray(queries.vectors), corpus.vectors, k, query_ids=queries.ids, doc_ids=corpus.ids,
                  device=device)
