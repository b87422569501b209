"""The embeddings cache of the initial refresh: runs that start from the same weights share its vectors.

The vectors of a refresh are stored under ``<cache>/embeddings/<key>/`` (``corpus`` and ``queries``, as
:class:`dance_analysis.embeddings.Embeddings`), where the key (:func:`embeddings_cache_key`) covers the encoder's
weights and options, both token caches, the dtype and the encoding setting. :func:`vectors_of_start` takes them
instead from the checkpoint the model was loaded from, when they are exact. Used by
:func:`dance_analysis.training.refresh.run_refresh` (single process, ``mining.cache_initial_embeddings``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import building_dir
from ..checkpoints import EMBEDDINGS_DIR, read_refresh_record
from ..data.cache import cache_root
from ..embeddings import Embeddings
from ..errors import DanceError
from .data import TrainingData

__all__ = ["cache_folder", "embeddings_cache_key", "load_cached", "store_cached", "vectors_of_start"]


def embeddings_cache_key(model, data: TrainingData, dtype, setting: str = "") -> str:
    """A content key of what a refresh encodes: the encoder's weights and options, both token caches, the dtype
    and ``setting`` (device type and batch size: they change the last bits of the vectors)."""
    import torch as _torch

    digest = hashlib.sha256(setting.encode())
    options = model.config.to_dict()
    if not options.get("lowercase"):
        options.pop("lowercase", None)   # keys of runs from before the option stay as they were
    digest.update(json.dumps(options, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(_torch.uint8).numpy().tobytes())
    for tokens in (data.doc_tokens, data.query_tokens):
        digest.update(Path(getattr(tokens, "path", "")).name.encode())
        digest.update(np.asarray(tokens.ids).astype(str).tobytes())
    digest.update(np.dtype(dtype).str.encode())
    return digest.hexdigest()[:32]


def cache_folder(key: str) -> Path:

    return cache_root() / "embeddings" / key


def load_cached(key: str, data: TrainingData) -> tuple[np.ndarray, np.ndarray] | None:

    folder = cache_folder(key)
    if not (folder / "corpus.npy").is_file() or not (folder / "queries.npy").is_file():
        return None
    try:
        corpus = Embeddings.load(folder / "corpus", mmap=False)
        queries = Embeddings.load(folder / "queries", mmap=False)
    except DanceError:
        return None
    if not (np.array_equal(corpus.ids, data.corpus_ids) and np.array_equal(queries.ids, data.query_ids)):
        return None
    return corpus.vectors, queries.vectors


def store_cached(key: str, data: TrainingData, corpus: np.ndarray, queries: np.ndarray) -> None:

    final = cache_folder(key)
    if final.exists():
        return
    try:
        with building_dir(final, replace=False) as tmp:  # another process may store it first: kept
            Embeddings(ids=data.corpus_ids, vectors=np.asarray(corpus)).save(tmp / "corpus")
            Embeddings(ids=data.query_ids, vectors=np.asarray(queries)).save(tmp / "queries")
    except OSError:
        pass  # the cache is read-only or full: the cache is an optimisation only


def vectors_of_start(model, data: TrainingData, start: Path | None, dtype,
                     precision: str = "fp32") -> tuple[np.ndarray, np.ndarray] | None:
    """The vectors ``model`` would encode, taken from the checkpoint it was loaded from, when that is exact.

    ``start`` is the ``encoder/`` folder the weights came from. Its checkpoint's ``embeddings/`` hold the vectors of
    those very weights when the checkpoint's encoder options equal the model's but for ``temperature`` (scores
    only) and ``normalize`` (false there, true here: the rows are L2-normalised, as the model does), and the ids
    and dtype match. Otherwise ``None`` (the refresh encodes). Vectors encoded with another batch size may differ
    in the last bits from a fresh encoding; the DANCE stages of the reproduction start this way. They must have been
    encoded in ``precision`` when the checkpoint's ``refresh.json`` records one (checkpoints from before the option
    record none and are taken as they are).
    """

    if start is None or not (start.parent / EMBEDDINGS_DIR / "corpus.npy").is_file():
        return None
    recorded = (read_refresh_record(start.parent) or {}).get("encode_precision") or {}
    if recorded.get("precision", precision) != precision:
        return None
    try:
        saved = json.loads((start / "encoder.json").read_text(encoding="utf-8"))
        corpus = Embeddings.load(start.parent / EMBEDDINGS_DIR / "corpus", mmap=False)
        queries = Embeddings.load(start.parent / EMBEDDINGS_DIR / "queries", mmap=False)
    except (OSError, ValueError, DanceError):
        return None
    now = model.config.to_dict()
    saved = {**{"lowercase": False}, **saved}   # encoder.json files from before the option
    differs = {k for k in set(now) | set(saved) if k != "format_version" and now.get(k) != saved.get(k)}
    if not differs <= {"temperature", "normalize"} or (saved.get("normalize") and not now["normalize"]):
        return None
    if not (np.array_equal(corpus.ids, data.corpus_ids) and np.array_equal(queries.ids, data.query_ids)):
        return None
    if corpus.vectors.dtype != np.dtype(dtype) or queries.vectors.dtype != np.dtype(dtype):
        return None
    out = []
    for vectors in (corpus.vectors, queries.vectors):
        if now["normalize"] and not saved.get("normalize"):
            v = vectors.astype(np.float32)
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            vectors = v.astype(dtype)
        out.append(vectors)
    return out[0], out[1]
