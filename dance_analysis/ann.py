"""Approximate (ANN) inner-product search with a faiss index, for corpora where exact search is too slow.

:func:`ann_search` builds a faiss index from an ``index_factory`` description (inner-product metric), trains it
on a seeded sample of the corpus, adds the corpus block by block, sets the search-time parameters and returns
the same :class:`~dance_analysis.index.Rankings` as the exact :func:`dance_analysis.index.search`. The results
are **approximate**: a true top-k document can be missing (lower recall), and with compressed codes (PQ) the
scores are estimates, not the exact inner products. ``"Flat"`` (or an empty description) means exact search and
is handed to :func:`dance_analysis.index.search` unchanged.

What the index families trade (N documents of dimension d, float32 vectors = 4 d bytes each):

* ``IVF<nlist>,Flat`` -- k-means into ``nlist`` lists (about sqrt(N) to 16 sqrt(N)), full vectors kept: the
  index holds a float32 copy of the corpus in RAM (4 d + 8 bytes per document, where exact search reads a memory
  map in place); build = one k-means on a sample (seconds to a minute); search scans
  ``nprobe`` lists per query: nlist / nprobe times fewer products than exact search, but computed vector by
  vector instead of as one matrix product, so the wall-clock gain is several times smaller (bench/ann.py, 2
  cores: 5.8x at N = 1M, nlist 1024, nprobe 32; none at N = 100k, nlist 256, nprobe 32). Recall grows with
  ``nprobe`` and is exact at ``nprobe = nlist``. Parameter: ``nprobe`` (faiss default 1: low recall).
* ``HNSW<M>`` -- a navigable small-world graph. Memory: a float32 copy of the vectors plus about 2 M x 4
  bytes of links per document; no training, but the slowest build (every insertion is a graph search; 39 s per
  100k 384-d documents on one thread); fast search at high recall@10. Parameter: ``efSearch`` (faiss default
  16; raised to k when k is larger).
* ``IVF<nlist>,PQ<m>`` -- lists as above, each vector compressed to ``m`` bytes (product quantisation; ``m``
  must divide d). Memory 4 d / m times smaller (plus 8-byte ids); build adds the training of the codebooks;
  scores are approximations, so recall stays below 1 even with ``nprobe = nlist`` (ranks among near documents
  are noisy). Parameter: ``nprobe``.
* ``OPQ<m>,IVF<nlist>,PQ<m>`` -- the same with a learnt rotation first that spreads the variance over the
  sub-quantisers: usually better recall than plain PQ at the same memory, for a longer training.

Order: every row is sorted by score descending, then by lower corpus index, and missing places (fewer than k
hits: an IVF search that visits too few lists, or k larger than the corpus) hold index ``-1`` and score
``-inf``, as in exact search. Ties are **not** settled as in exact search: which of several documents tied at the
k-th place is kept is faiss' choice (exact search keeps the lowest indices), and the scores of IVF-Flat / HNSW
are faiss' per-vector inner products, which can differ from the blocked exact scores in the last bit.

Determinism: the training sample is drawn with a fixed seed, and the faiss k-means (coarse centroids, PQ
codebooks) is seeded with it too, so two builds over the same corpus give identical results. An HNSW graph built
by several threads depends on the thread timing; with ``deterministic=True`` (the default) HNSW insertion runs on
one thread (slower build, same search speed). Indexes with PQ codes are trained on one thread: the k-means of
each sub-quantiser is too small a job for a thread team (measured on 2 busy cores: 48 sub-quantisers on 20k
vectors trained in 3.9 s on one thread, 28 s on two). The polysemous re-ordering of PQ codes that faiss' factory
turns on is skipped: it serves only the Hamming pre-filter (the ``ht`` parameter, off by default) and took 28 of
the 29 s of training an ``IVF64,PQ8`` index on 20k x 64 vectors.

Memory: the corpus may be a (float16) memory map. It is never converted as a whole: the training sample and
blocks of ``_ADD_BLOCK_BYTES`` are read and upcast to float32 one at a time; the index itself then holds what
its family stores (see above).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DanceError
from .index import Rankings, _as_matrix, _check_finite, _ids, import_faiss, search
from .runtime import faiss_threads

__all__ = ["ann_search", "build_index", "search_index", "check_index_spec", "is_exact", "index_nbytes"]

# Bytes of float32 corpus vectors converted and added to the index at a time.
_ADD_BLOCK_BYTES = 64 * 2**20
# Default training sample: at least this many vectors (enough for 256-centroid PQ codebooks, which faiss wants
# >= 39 x 256 points for), and 64 per IVF list (faiss warns below 39 and caps at 256), never more than N.
_MIN_TRAIN = 2**16
_TRAIN_PER_LIST = 64
# Dimensions tried by check_index_spec when the dimension is not known yet (a recipe is read before the model).
_PROBE_DIMS = (384, 768, 1024, 512, 256, 128, 96, 64, 32)
# Search-time parameters that faiss reads as integers (it would truncate 3.5 to 3 silently).
_INTEGER_PARAMS = {"nprobe", "efSearch", "ht", "max_codes", "quantizer_efSearch", "quantizer_nprobe"}
_EXAMPLES = "e.g. 'IVF1024,Flat', 'HNSW32', 'IVF1024,PQ48' or 'OPQ48,IVF1024,PQ48'"
_PARAM_EXAMPLES = "e.g. 'nprobe=32' (IVF) or 'efSearch=128' (HNSW)"


def is_exact(index: str | None) -> bool:
    """True when ``index`` asks for exact search ("Flat" or empty)."""
    return index is None or str(index).strip() in ("", "Flat")


def ann_search(queries: np.ndarray, corpus: np.ndarray, k: int, *, index: str, params: str = "",
               query_ids: Sequence[str] | None = None, doc_ids: Sequence[str] | None = None,
               progress: bool = False, train_size: int | None = None, seed: int = 0, batch_size: int = 4096,
               deterministic: bool = True, device: str = "auto") -> Rankings:
    """Approximate inner-product top-``k`` of ``queries`` [nq, d] over ``corpus`` [N, d] with a faiss index.

    Args:
        queries, corpus: float32 / float16 / float64 arrays (memory maps welcome; read and upcast block by block).
            NaN or infinite values raise DanceError.
        k: hits per query (>= 1); places beyond the hits found hold -1 / -inf.
        index: a faiss ``index_factory`` description ("IVF1024,Flat", "HNSW32", "IVF1024,PQ48", ...), built with
            the inner-product metric; "Flat" or "" runs the exact :func:`dance_analysis.index.search`.
        params: search-time parameters as faiss' ParameterSpace reads them, comma-separated ("nprobe=32",
            "efSearch=128"); empty keeps faiss' defaults (nprobe=1, efSearch=16), which give low recall.
        query_ids, doc_ids: the ids of the rows (default "0", "1", ...).
        progress: show a progress bar over the add and search blocks.
        train_size: corpus vectors sampled (seeded) to train the index (default: max(65,536, 64 x nlist), at
            most N); indexes that need no training (HNSW-Flat) skip it.
        seed: seeds the training sample and faiss' k-means.
        batch_size: queries per search block.
        deterministic: build HNSW graphs on one thread so that two builds are identical (see the module doc).
        device: only for the exact route ("Flat"); approximate indexes run on the CPU.

    Returns:
        :class:`Rankings`, rows sorted by score descending then lower index (ties at the cut: faiss' choice).

    Raises:
        DanceError: a description faiss cannot build for this dimension, unknown or malformed parameters, a
            corpus too small for the index's training, non-finite vectors, mismatched dimensions.
    """
    if is_exact(index):
        check_index_spec(index or "", params)   # exact search takes no parameters
        return search(queries, corpus, k, query_ids=query_ids, doc_ids=doc_ids, batch_size=batch_size,
                      device=device, progress=progress)
    queries = _as_matrix(queries, "queries")
    corpus = _as_matrix(corpus, "corpus")
    if corpus.shape[1] != queries.shape[1]:
        raise DanceError(f"queries have dimension {queries.shape[1]} but the corpus has dimension "
                         f"{corpus.shape[1]}")
    _check_k(k)
    query_ids = _ids(query_ids, len(queries), "query_ids")
    doc_ids = _ids(doc_ids, len(corpus), "doc_ids")
    # Check the description and parameters before any work on the corpus.
    check_index_spec(index, params, dim=corpus.shape[1])
    if len(corpus) == 0 or len(queries) == 0:
        return Rankings(query_ids, doc_ids, np.full((len(queries), k), -1, np.int64),
                        np.full((len(queries), k), -np.inf, np.float32))
    built = build_index(corpus, index, train_size=train_size, seed=seed, progress=progress,
                        deterministic=deterministic)
    return search_index(built, queries, k, params=params, query_ids=query_ids, doc_ids=doc_ids,
                        batch_size=batch_size, progress=progress, description=index)


def build_index(corpus: np.ndarray, index: str, *, train_size: int | None = None, seed: int = 0,
                progress: bool = False, deterministic: bool = True):
    """Build, train (on a seeded sample) and fill a faiss inner-product index from ``index``, a factory
    description; the corpus is read and upcast to float32 in blocks. Returns the faiss index."""
    faiss = import_faiss()

    corpus = _as_matrix(corpus, "corpus")
    n_docs, dim = corpus.shape
    built = _factory(index, dim)
    _seed_training(faiss, built, seed)
    if not built.is_trained:
        nlist = _nlist(faiss, built)
        wanted = train_size if train_size is not None else max(_MIN_TRAIN, _TRAIN_PER_LIST * (nlist or 0))
        if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or wanted < 1:
            raise DanceError(f"train_size must be a positive integer, got {train_size!r}")
        rows = min(int(wanted), n_docs)
        picked = np.sort(np.random.default_rng(seed).choice(n_docs, size=rows, replace=False))
        sample = np.empty((rows, dim), dtype=np.float32)
        step = max(1, _ADD_BLOCK_BYTES // (4 * dim))
        for s0 in range(0, rows, step):  # gathered in pieces: a memory map reads only the chosen rows
            sample[s0:s0 + step] = corpus[picked[s0:s0 + step]]
            finite = np.isfinite(sample[s0:s0 + step]).all(axis=1)
            if not finite.all():
                raise DanceError(f"corpus row {int(picked[s0 + int(np.argmin(finite))])} holds NaN or infinite "
                                 f"values: expected finite vectors")
        with faiss_threads(faiss, 1, enabled=_has_pq(faiss, built)):
            try:
                built.train(sample)
            except RuntimeError as exc:
                raise DanceError(f"index {index!r}: training on {rows:,} corpus vectors failed: "
                                 f"{_faiss_reason(exc)}; expected a corpus (or train_size) of at least as many "
                                 f"vectors as the index has lists / codebook entries") from None
        del sample
    hnsw = _is_hnsw(faiss, built)
    with faiss_threads(faiss, 1, enabled=hnsw and deterministic):
        from tqdm.auto import tqdm

        step = max(1, _ADD_BLOCK_BYTES // (4 * dim))
        for c0 in tqdm(range(0, n_docs, step), desc="index add", unit="block", disable=None if progress else True):
            block = np.ascontiguousarray(corpus[c0:c0 + step], dtype=np.float32)
            _check_finite(block, "corpus", c0)
            built.add(block)
    return built


def search_index(built, queries: np.ndarray, k: int, *, params: str = "", query_ids=None, doc_ids=None,
                 batch_size: int = 4096, progress: bool = False, description: str | None = None) -> Rankings:
    """Search a built faiss index (:func:`build_index`) with search-time ``params``; returns :class:`Rankings`
    (rows sorted by score descending then lower index; -1 / -inf at missing places)."""
    queries = _as_matrix(queries, "queries")
    _check_k(k)
    if queries.shape[1] != built.d:
        raise DanceError(f"queries have dimension {queries.shape[1]} but the index has dimension {built.d}")
    if batch_size < 1:
        raise DanceError(f"batch_size must be positive, got {batch_size}")
    n_docs, nq = int(built.ntotal), len(queries)
    name = description or type(built).__name__
    set_params(built, params, name)
    query_ids = _ids(query_ids, nq, "query_ids")
    doc_ids = _ids(doc_ids, n_docs, "doc_ids")
    kept = min(k, n_docs)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    indices = np.full((nq, k), -1, dtype=np.int64)
    if kept and nq:
        from tqdm.auto import tqdm

        for q0 in tqdm(range(0, nq, batch_size), desc="ann search", unit="block",
                       disable=None if progress else True):
            q = np.ascontiguousarray(queries[q0:q0 + batch_size], dtype=np.float32)
            _check_finite(q, "queries", q0)
            try:
                top_s, top_i = built.search(q, kept)
            except RuntimeError as exc:
                raise DanceError(f"index {name!r}: search failed: {_faiss_reason(exc)}; expected search "
                                 f"parameters in range ({_PARAM_EXAMPLES})") from None
            top_i = top_i.astype(np.int64, copy=False)
            top_s = np.where(top_i >= 0, top_s, -np.inf).astype(np.float32)
            order = np.lexsort((np.where(top_i >= 0, top_i, np.iinfo(np.int64).max), -top_s), axis=-1)
            scores[q0:q0 + len(q), :kept] = np.take_along_axis(top_s, order, axis=1)
            indices[q0:q0 + len(q), :kept] = np.take_along_axis(top_i, order, axis=1)
    return Rankings(query_ids, doc_ids, indices, scores)


def set_params(built, params: str, name: str = "index") -> None:
    """Set faiss ParameterSpace parameters ("nprobe=32,efSearch=64") on ``built``; DanceError naming the
    malformed item or the unknown parameter (with the ones this index has)."""
    faiss = import_faiss()

    items = _parse_params(params)
    space = faiss.ParameterSpace()
    for key, value in items:
        try:
            space.set_index_parameter(built, key, value)
        except RuntimeError:
            known = _param_names(faiss, built)
            listed = ", ".join(known) if known else "none"
            raise DanceError(f"index parameter {key!r} does not apply to index {name!r}: expected one of "
                             f"{listed}") from None


def check_index_spec(index: str, params: str = "", *, dim: int | None = None) -> None:
    """Raise DanceError unless faiss can build ``index`` (for dimension ``dim``; when not known, for at least
    one common embedding dimension) and ``params`` applies to it. Cheap: builds an empty index, trains nothing."""
    if not isinstance(index, str):
        raise DanceError(f"index must be a string (a faiss index_factory description, {_EXAMPLES}), "
                         f"got {index!r}")
    if not isinstance(params, str):
        raise DanceError(f"index parameters must be a string ({_PARAM_EXAMPLES}), got {params!r}")
    if is_exact(index):
        if params.strip():
            raise DanceError(f"index parameters {params!r} were given for exact search ('Flat'): expected no "
                             f"parameters, or an approximate index ({_EXAMPLES})")
        return
    _parse_params(params)
    dims = (dim,) if dim is not None else _PROBE_DIMS
    first = None
    for d in dims:
        try:
            built = _factory(index, int(d))
        except DanceError as exc:
            first = first or exc
            continue
        set_params(built, params, index)
        return
    if dim is None:
        raise DanceError(f"{first} (tried dimensions {', '.join(map(str, _PROBE_DIMS))})") from None
    raise first


def index_nbytes(built) -> int:
    """Bytes of the serialised index (about its memory footprint: vectors or codes, ids, centroids, links)."""
    faiss = import_faiss()

    return int(faiss.serialize_index(built).nbytes)


# --------------------------------------------------------------------------------------------------------------


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DanceError(f"k must be a positive integer, got {k!r}")


def _factory(index: str, dim: int):
    faiss = import_faiss()

    if not index.strip() or "\n" in index:
        raise DanceError(f"index {index!r}: expected a faiss index_factory description ({_EXAMPLES})")
    try:
        return faiss.index_factory(int(dim), index.strip(), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise DanceError(f"index {index!r} cannot be built for dimension {dim}: {_faiss_reason(exc)}; expected a "
                         f"faiss index_factory description ({_EXAMPLES}; PQ<m> needs m dividing the "
                         f"dimension)") from None


def _faiss_reason(exc: BaseException) -> str:
    """The useful end of a faiss C++ error ("Error in <signature> at <file>:<line>: Error: '<cond>' failed:
    <reason>"), on one line."""
    text = " ".join(str(exc).split())
    match = re.search(r"\.(?:cpp|h):\d+: (.*)$", text)
    reason = match.group(1) if match else text
    reason = re.sub(r"^Error: '.*?' failed:?\s*", "", reason)
    reason = re.sub(r"^[A-Za-z_:]+::[A-Za-z_]+:\s*", "", reason)  # "ParameterSpace::set_index_parameter:"
    reason = reason.strip() or text
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _parse_params(params: str) -> list[tuple[str, float]]:
    if not isinstance(params, str):
        raise DanceError(f"index parameters must be a string ({_PARAM_EXAMPLES}), got {params!r}")
    out = []
    for item in params.replace(" ", "").split(","):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        try:
            value = float(raw) if sep and key else None
        except ValueError:
            value = None
        if value is None or not np.isfinite(value):
            raise DanceError(f"index parameters {params!r}: cannot read {item!r}: expected name=number items "
                             f"separated by commas ({_PARAM_EXAMPLES})")
        if key in _INTEGER_PARAMS and (not value.is_integer() or value < 1):
            raise DanceError(f"index parameters {params!r}: {key} must be a positive integer, got {raw}")
        out.append((key, value))
    return out


def _param_names(faiss, built) -> list[str]:
    space = faiss.ParameterSpace()
    try:
        space.initialize(built)
    except RuntimeError:  # pragma: no cover - an index type faiss' auto-tuning does not know
        return []
    return [space.parameter_ranges.at(i).name for i in range(space.parameter_ranges.size())]


def _nlist(faiss, built) -> int | None:
    try:
        return int(faiss.extract_index_ivf(built).nlist)
    except (RuntimeError, AttributeError, TypeError):
        return None


def _seed_training(faiss, built, seed: int) -> None:
    """Seed faiss' k-means runs (coarse quantizer and PQ codebooks) with ``seed``, and skip the polysemous
    training of PQ codes (see the module doc)."""
    stack: list[Any] = [built]
    seen = 0
    while stack and seen < 8:
        seen += 1
        node = faiss.downcast_index(stack.pop())
        if isinstance(node, faiss.IndexPreTransform):
            stack.append(node.index)
        if isinstance(node, faiss.IndexIVF):
            node.cp.seed = int(seed)
        pq = getattr(node, "pq", None)
        if pq is not None and hasattr(pq, "cp"):
            pq.cp.seed = int(seed)
        if getattr(node, "do_polysemous_training", False):
            node.do_polysemous_training = False


def _core(faiss, built):
    """The index under ``built``'s transforms (OPQ, PCA, ...), downcast to its faiss class."""
    node = faiss.downcast_index(built)
    while isinstance(node, faiss.IndexPreTransform):
        node = faiss.downcast_index(node.index)
    return node


def _has_pq(faiss, built) -> bool:
    """True when ``built`` (or the index under its transforms) trains product-quantiser codebooks."""
    return getattr(_core(faiss, built), "pq", None) is not None


def _is_hnsw(faiss, built) -> bool:
    node = _core(faiss, built)
    if isinstance(node, faiss.IndexHNSW):
        return True
    if isinstance(node, faiss.IndexIVF):  # an HNSW coarse quantizer ("IVF4096_HNSW32,Flat")
        return isinstance(faiss.downcast_index(node.quantizer), faiss.IndexHNSW)
    return False
