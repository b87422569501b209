"""Exact inner-product search: top-k documents for every query, as arrays.

:func:`search` scores every query against every corpus vector (``q . d``, no approximation) and keeps the ``k``
best per query. It runs in blocks so that memory does not grow with the corpus beyond the (possibly memory-mapped)
input arrays: the corpus is read one block of rows at a time (float16 input is upcast to float32 one block at a
time), each block is searched for every block of queries, and a running top-k is merged block by block.

Backends, chosen by ``device``:

* faiss on the GPU (``IndexFlatIP`` copied to all GPUs with ``faiss.index_cpu_to_all_gpus``, sharded) when
  ``faiss.get_num_gpus() > 0``;
* ``torch.mm`` + ``torch.topk`` on CUDA when torch sees a GPU but the installed faiss has no GPU support
  (TF32 matmul is switched off for the duration so that scores stay float32-exact);
* faiss on the CPU otherwise: ``faiss.knn`` with the inner-product metric, the exhaustive kernel that
  ``IndexFlatIP.search`` runs, called on the corpus block in place (no copy into an index).

A search on a GPU never falls back silently: when a faiss package with GPU support is installed (``faiss-gpu-cu12``,
the ``gpu`` extra) but faiss sees no GPU while torch does, :func:`search` stops with a :class:`DanceError` that says
why (``faiss-cpu`` installed beside it: both write the same ``faiss`` package, and the CPU files may win) and how to
repair it; with ``faiss-cpu`` alone the torch path is taken and a warning says so once per process
(:func:`faiss_gpu_problem`, :func:`check_gpu_search`; ``dance-doctor`` shows the same).

Order (the same on every backend): score descending, and among equal scores the lower corpus index first. faiss
and ``torch.topk`` do not guarantee which of several equal scores they keep at the k-th place, so each block is
asked for ``k + 16`` hits and the k are chosen here: when the last hit scores lower than the k-th, every document
tied with the k-th is among the hits, and the lowest indices are kept. In the rare rows where even the last hit
ties with the k-th (more than 16 documents share the score at the cut), the row is recomputed for that block from
float64 products rounded to float32 (so those scores can differ from the float32 products in the last bit) and
selected exactly. The merged lists are sorted by (score descending, index ascending). Scores are float32 inner
products; a BLAS may round the products of identical vectors differently in the last bit, so exact copies of a
document tie only when their products round alike. When ``k`` is larger than the corpus, the missing places hold
index ``-1`` and score ``-inf``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DanceError
from .runtime import faiss_threads

__all__ = ["Rankings", "search", "exact_topk", "faiss_packages", "faiss_gpu_problem", "check_gpu_search"]

logger = logging.getLogger(__name__)

#: PyPI distributions that install the ``faiss`` module with GPU support.
FAISS_GPU_PACKAGES = ("faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")
#: Every PyPI distribution that installs the ``faiss`` module.
FAISS_PACKAGES = ("faiss-cpu", *FAISS_GPU_PACKAGES)
#: How to install faiss, for messages.
FAISS_INSTALL = ("pip install 'dance-analysis[cpu]' (faiss-cpu) on a CPU-only machine, or "
                 "'dance-analysis[gpu]' (faiss-gpu-cu12, without faiss-cpu) on a CUDA 12+ GPU machine")

# Bytes of float32 corpus vectors per block on the CPU (a float32 memory map is searched in place; other dtypes
# are upcast into one block of this size).
_CPU_BLOCK_BYTES = 256 * 2**20
# Bytes of float32 corpus vectors per block on the GPU path (split over the GPUs when sharded; the host holds the
# block and faiss' CPU copy of it while it is sent).
_GPU_BLOCK_BYTES = 4 * 2**30
# Bytes of the score matrix of one (query block x corpus sub-block) product in the torch CUDA path and in the
# exact re-computation of tied rows.
_SCORE_BYTES = 256 * 2**20
# faiss GPU indexes select at most this many hits per query.
_FAISS_GPU_MAX_K = 2048
# faiss CPU computes scores in tiles of (queries x documents) with one BLAS call each; its default 4096 x 1024
# tiles waste much of the GEMM rate at d = 384 on this class of machine (measured: ~2x the bound), 2048 x 8192
# tiles (a 64 MB score buffer) come within ~1.2x of it. Set for the duration of a CPU search, then restored.
_FAISS_CPU_TILES = (2048, 8192)
# Products smaller than this (queries x documents x dim) run on one faiss thread.
_TINY_FLOPS = 1 << 22
# Extra hits asked per block so that documents tied at the k-th place can be chosen here (lowest index first).
_TIE_MARGIN = 16


@dataclass
class Rankings:
    """The top-k documents of each query.

    Attributes:
        query_ids: str [nq], one per row.
        doc_ids: str [N], the corpus id array that ``indices`` point into.
        indices: int64 [nq, k], corpus indices best first; ``-1`` marks an empty place (fewer than k hits).
        scores: float32 [nq, k] (float64 when read from a run file whose scores need it); ``-inf`` at empty
            places.

    Rows are ordered by score descending, ties by lower corpus index (see :func:`search`).
    """

    query_ids: np.ndarray
    doc_ids: np.ndarray
    indices: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.query_ids = np.asarray(self.query_ids)
        self.doc_ids = np.asarray(self.doc_ids)
        self.indices = np.asarray(self.indices)
        self.scores = np.asarray(self.scores)
        if self.indices.ndim != 2 or self.scores.shape != self.indices.shape:
            raise DanceError(f"Rankings: indices and scores must be 2-D arrays of one shape, got "
                             f"{self.indices.shape} and {self.scores.shape}")
        if self.query_ids.ndim != 1 or len(self.query_ids) != self.indices.shape[0]:
            raise DanceError(f"Rankings: expected one query id per row ({self.indices.shape[0]}), "
                             f"got {self.query_ids.shape}")
        if self.doc_ids.ndim != 1:
            raise DanceError(f"Rankings: doc_ids must be 1-D, got shape {self.doc_ids.shape}")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Places per query (including empty ones)."""
        return int(self.indices.shape[1])

    def row_of(self, query_id: str) -> int:
        """The row of ``query_id``; DanceError when it is not ranked."""
        hits = np.flatnonzero(self.query_ids == str(query_id))
        if len(hits) == 0:
            raise DanceError(f"query {query_id!r} is not in these rankings")
        return int(hits[0])

    def top(self, row: int, n: int | None = None) -> list[tuple[str, float]]:
        """The ranked ``(doc_id, score)`` pairs of ``row`` (its first ``n`` places), empty places left out."""
        indices = self.indices[row] if n is None else self.indices[row, :n]
        scores = self.scores[row] if n is None else self.scores[row, :n]
        keep = indices >= 0
        return [(str(d), float(s)) for d, s in zip(self.doc_ids[indices[keep]], scores[keep])]

    def subset(self, query_ids: Sequence[str]) -> Rankings:
        """The rows of ``query_ids``, in that order (DanceError naming the first one that is not ranked)."""
        row = {q: i for i, q in enumerate(self.query_ids.tolist())}
        try:
            rows = np.asarray([row[str(q)] for q in query_ids], dtype=np.int64)
        except KeyError as exc:
            raise DanceError(f"query {exc.args[0]!r} is not in these rankings") from None
        return Rankings(self.query_ids[rows], self.doc_ids, self.indices[rows], self.scores[rows])


def search(queries: np.ndarray, corpus: np.ndarray, k: int, *, query_ids: Sequence[str] | None = None,
           doc_ids: Sequence[str] | None = None, batch_size: int = 4096, corpus_batch_size: int | None = None,
           device: str = "auto", progress: bool = False, gpu_float16: bool = False) -> Rankings:
    """Exact inner-product top-``k`` search of ``queries`` [nq, d] over ``corpus`` [N, d].

    Args:
        queries, corpus: float32 / float16 / float64 arrays (memory maps welcome: they are read block by block
            and upcast to float32 per block). NaN or infinite values raise DanceError.
        k: hits per query (>= 1); when larger than the corpus, the extra places hold -1 / -inf.
        query_ids, doc_ids: the ids of the rows (default: "0", "1", ...).
        batch_size: queries per block.
        corpus_batch_size: corpus rows per block (default: 256 MB of float32 vectors on the CPU, 4 GB on GPUs).
        device: "auto" (faiss on every GPU, else torch CUDA, else CPU), "cpu", "cuda" or "cuda:N" (one GPU),
            or "cuda:N,M,..." (faiss, sharded over exactly those GPUs): only the GPUs named are touched.
        progress: show a progress bar over the blocks.
        gpu_float16: faiss GPU backend only: store the corpus blocks as float16 on the GPUs (half the GPU memory;
            the search is then no longer exact: scores drift by about 1e-3 relative, and near-ties may swap).

    Returns:
        :class:`Rankings` ordered by score descending, ties by lower corpus index.
    """
    queries = _as_matrix(queries, "queries")
    corpus = _as_matrix(corpus, "corpus")
    nq, dim = queries.shape
    n_docs = corpus.shape[0]
    if corpus.shape[1] != dim:
        raise DanceError(f"queries have dimension {dim} but the corpus has dimension {corpus.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DanceError(f"k must be a positive integer, got {k!r}")
    if batch_size < 1 or (corpus_batch_size is not None and corpus_batch_size < 1):
        raise DanceError("batch sizes must be positive")
    query_ids = _ids(query_ids, nq, "query_ids")
    doc_ids = _ids(doc_ids, n_docs, "doc_ids")
    k = int(k)
    backend = _pick_backend(device, k, gpu_float16)

    kept = min(k, n_docs)
    scores = np.full((nq, kept), -np.inf, dtype=np.float32)
    indices = np.full((nq, kept), -1, dtype=np.int64)
    if nq and n_docs:
        for start in range(0, nq, batch_size):
            _check_finite(queries[start:start + batch_size], "queries", start)
        block_rows = corpus_batch_size or backend.default_block_rows(dim)
        blocks = [(c0, min(c0 + block_rows, n_docs)) for c0 in range(0, n_docs, block_rows)]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(blocks) * -(-nq // batch_size), desc="search", unit="block",
                   disable=None if progress else True)
        for c0, c1 in blocks:
            block = np.ascontiguousarray(corpus[c0:c1], dtype=np.float32)
            _check_finite(block, "corpus", c0)
            scorer = backend.scorer(block)
            block_k = min(kept, c1 - c0)
            ask = min(block_k + _TIE_MARGIN, c1 - c0)
            for q0 in range(0, nq, batch_size):
                q1 = min(q0 + batch_size, nq)
                q = np.ascontiguousarray(queries[q0:q1], dtype=np.float32)
                top_s, top_i = scorer.topk(q, ask)
                top_s, top_i = _settle_boundary(q, block, top_s, top_i, block_k)
                top_i += c0
                scores[q0:q1], indices[q0:q1] = _merge(scores[q0:q1], indices[q0:q1], top_s, top_i)
                bar.update(1)
            del scorer
        bar.close()
    if kept < k:
        scores = np.concatenate([scores, np.full((nq, k - kept), -np.inf, np.float32)], axis=1)
        indices = np.concatenate([indices, np.full((nq, k - kept), -1, np.int64)], axis=1)
    return Rankings(query_ids, doc_ids, indices, scores)


# --------------------------------------------------------------------------------------------------------------
# Selection helpers (CPU, shared by all backends)


def exact_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each row of a full score matrix [m, n] (k <= n): (scores, column indices), ordered by score
    descending, ties by lower column; among tied scores at the k-th place the lowest columns are kept."""
    m, n = scores.shape
    if k >= n:
        cols = np.broadcast_to(np.arange(n, dtype=np.int64), (m, n))
    else:
        kth = np.partition(scores, n - k, axis=1)[:, n - k]
        above = scores > kth[:, None]
        equal = scores == kth[:, None]
        room = k - above.sum(axis=1)
        take = above | (equal & (np.cumsum(equal, axis=1) <= room[:, None]))
        cols = np.nonzero(take)[1].reshape(m, k).astype(np.int64)
    picked = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _settle_boundary(q: np.ndarray, block: np.ndarray, top_s: np.ndarray, top_i: np.ndarray,
                     block_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``block_k`` of the backend's hits (sorted by score descending) per row: all hits above the k-th
    score, then the lowest indices among the hits tied with it. Rows where the last hit still ties with the
    k-th (the tie may go on past the hits) are recomputed for the whole block in float64 and selected exactly."""
    top_s = np.ascontiguousarray(top_s, dtype=np.float32)
    top_i = np.ascontiguousarray(top_i, dtype=np.int64)
    asked = top_s.shape[1]
    # Sort the hits by (score desc, index asc); the first block_k are then the answer unless the tie runs on.
    order = np.lexsort((top_i, -top_s), axis=-1)
    top_s = np.take_along_axis(top_s, order, axis=1)
    top_i = np.take_along_axis(top_i, order, axis=1)
    if asked == len(block):
        return top_s[:, :block_k], top_i[:, :block_k]
    unsure = np.flatnonzero(top_s[:, block_k - 1] == top_s[:, asked - 1])
    top_s, top_i = top_s[:, :block_k].copy(), top_i[:, :block_k].copy()
    rows_per_chunk = max(1, _SCORE_BYTES // (4 * len(block)))
    docs_per_chunk = max(1, _SCORE_BYTES // (8 * block.shape[1]))
    for s0 in range(0, len(unsure), rows_per_chunk):
        rows = unsure[s0:s0 + rows_per_chunk]
        q64 = q[rows].astype(np.float64)
        full = np.empty((len(rows), len(block)), dtype=np.float32)
        for d0 in range(0, len(block), docs_per_chunk):
            full[:, d0:d0 + docs_per_chunk] = q64 @ block[d0:d0 + docs_per_chunk].astype(np.float64).T
        top_s[rows], top_i[rows] = exact_topk(full, block_k)
    return top_s, top_i


def _merge(run_s: np.ndarray, run_i: np.ndarray, new_s: np.ndarray,
           new_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two lists per row, each sorted by (score desc, index asc), where every index of ``new`` is larger than
    every index of ``run`` (blocks come in corpus order): a stable sort by score then keeps (score desc, index
    asc). Keeps the first ``run_s.shape[1]``."""
    cat_s = np.concatenate([run_s, new_s], axis=1)
    cat_i = np.concatenate([run_i, new_i], axis=1)
    order = np.argsort(-cat_s, axis=1, kind="stable")[:, :run_s.shape[1]]
    return np.take_along_axis(cat_s, order, axis=1), np.take_along_axis(cat_i, order, axis=1)


def _as_matrix(array, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        if hasattr(array, "detach"):  # a torch tensor
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
    if array.ndim != 2:
        raise DanceError(f"{name} must be a 2-D array [rows, dim], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DanceError(f"{name} must hold floating-point vectors, got dtype {array.dtype}")
    return array


def _check_finite(block: np.ndarray, name: str, offset: int) -> None:
    if np.isfinite(np.add.reduce(block, axis=1, dtype=np.float64)).all():
        return  # cheap test first: a NaN or an infinity makes its row sum non-finite
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        raise DanceError(f"{name} row {offset + int(np.argmin(finite))} holds NaN or infinite values: expected "
                         f"finite vectors")


def _ids(ids, n: int, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(n).astype(str)
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise DanceError(f"{name} must have one id per row ({n}), got shape {ids.shape}")
    return ids if ids.dtype.kind == "U" else ids.astype(str)


# --------------------------------------------------------------------------------------------------------------
# Backends


class _FaissCPU:
    """faiss exhaustive inner-product search on the CPU (the kernel of IndexFlatIP.search, without the copy)."""

    name = "faiss-cpu"

    def default_block_rows(self, dim: int) -> int:
        return max(1, _CPU_BLOCK_BYTES // (4 * dim))

    def scorer(self, block: np.ndarray) -> _FaissScorer:
        return _FaissKnn(import_faiss(), block)


class _FaissGPU:
    """faiss IndexFlatIP copied to the GPUs (sharded over all of them, or on one ``gpu``)."""

    name = "faiss-gpu"

    def __init__(self, gpu: int | None, float16: bool = False, gpus: list[int] | None = None):
        faiss = import_faiss()
        self.faiss = faiss
        self.gpu = gpu
        self.gpus = gpus          # shard over exactly these GPUs (None: all of them, or the one ``gpu``)
        self.float16 = float16
        self.ngpu = 1 if gpu is not None else len(gpus) if gpus else faiss.get_num_gpus()
        self.resources = None

    def default_block_rows(self, dim: int) -> int:
        return max(1, _GPU_BLOCK_BYTES // (4 * dim))

    def scorer(self, block: np.ndarray) -> _FaissScorer:
        faiss = self.faiss
        cpu_index = faiss.IndexFlatIP(block.shape[1])
        cpu_index.add(block)
        if self.gpus:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            options.useFloat16 = self.float16
            index = faiss.index_cpu_to_gpus_list(cpu_index, co=options, gpus=list(self.gpus))
        elif self.gpu is None:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            options.useFloat16 = self.float16
            index = faiss.index_cpu_to_all_gpus(cpu_index, co=options, ngpu=self.ngpu)
        else:
            if self.resources is None:
                self.resources = faiss.StandardGpuResources()
            options = faiss.GpuClonerOptions()
            options.useFloat16 = self.float16
            index = faiss.index_cpu_to_gpu(self.resources, self.gpu, cpu_index, options)
        del cpu_index
        return _FaissScorer(index)


class _FaissKnn:
    def __init__(self, faiss, block: np.ndarray):
        self.faiss = faiss
        self.block = block

    def topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = self.faiss
        settings = faiss.cvar
        saved = (settings.distance_compute_blas_query_bs, settings.distance_compute_blas_database_bs)
        settings.distance_compute_blas_query_bs = max(1, min(_FAISS_CPU_TILES[0], len(q)))
        settings.distance_compute_blas_database_bs = max(1, min(_FAISS_CPU_TILES[1], len(self.block)))
        # Tiny products run on one thread: waking a thread team costs more than the work.
        tiny = len(q) * len(self.block) * self.block.shape[1] < _TINY_FLOPS
        try:
            with faiss_threads(faiss, 1, enabled=tiny):
                return faiss.knn(q, self.block, k, metric=faiss.METRIC_INNER_PRODUCT)
        finally:
            settings.distance_compute_blas_query_bs, settings.distance_compute_blas_database_bs = saved


class _FaissScorer:
    def __init__(self, index):
        self.index = index

    def topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)


class _TorchCUDA:
    """torch.mm + torch.topk on one CUDA device (for a faiss without GPU support)."""

    name = "torch-cuda"

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device

    def default_block_rows(self, dim: int) -> int:
        return max(1, _GPU_BLOCK_BYTES // (4 * dim))

    def scorer(self, block: np.ndarray) -> _TorchScorer:
        import warnings

        with warnings.catch_warnings():  # a read-only memory map: it is only copied to the device
            warnings.simplefilter("ignore", UserWarning)
            host = self.torch.from_numpy(block)
        return _TorchScorer(self.torch, host.to(self.device))


class _TorchScorer:
    def __init__(self, torch, block):
        self.torch = torch
        self.block = block

    def topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        n = self.block.shape[0]
        queries = torch.from_numpy(q).to(self.block.device)
        step = max(1, _SCORE_BYTES // (4 * n))
        out_s, out_i = [], []
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.inference_mode():
                for s0 in range(0, len(q), step):
                    values, idx = torch.topk(queries[s0:s0 + step] @ self.block.T, k, dim=1, sorted=True)
                    out_s.append(values.cpu().numpy())
                    out_i.append(idx.cpu().numpy())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def import_faiss():
    """The ``faiss`` module, or a :class:`DanceError` that says how to install it (it comes from an extra)."""
    try:
        import faiss
    except ImportError as exc:
        raise DanceError(f"faiss is not installed ({exc}): {FAISS_INSTALL}") from None
    return faiss


def faiss_packages() -> dict[str, str]:
    """The installed distributions that write the ``faiss`` module: name -> version (normally exactly one)."""
    from importlib import metadata

    found = {}
    for name in FAISS_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def faiss_gpu_problem(torch_gpus: int | None = None) -> str | None:
    """Why faiss does not search on the GPUs torch sees although a faiss GPU package is installed, with the repair;
    ``None`` when faiss sees GPUs, when torch sees none (``torch_gpus``, default: asked) or when only ``faiss-cpu``
    is installed (then the torch CUDA path searches; see :func:`search`)."""
    if _faiss_gpus() > 0:
        return None
    if torch_gpus is None:
        import torch

        torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if torch_gpus == 0:
        return None
    installed = faiss_packages()
    gpu_packages = [name for name in installed if name in FAISS_GPU_PACKAGES]
    if not gpu_packages:
        return None
    listed = ", ".join(f"{name} {version}" for name, version in installed.items())
    if "faiss-cpu" in installed:
        cause = (f"faiss-cpu is installed beside {gpu_packages[0]} and both write the same faiss package: the CPU "
                 f"files won. Repair: pip uninstall -y faiss-cpu {' '.join(gpu_packages)} && pip install "
                 f"{gpu_packages[0]} (the gpu extra leaves faiss-cpu out; see README, Set-up)")
    else:
        cause = (f"{gpu_packages[0]} cannot use the GPU (its CUDA 12 runtime did not load, or the driver is older "
                 f"than CUDA 12); run dance-doctor")
    return f"torch sees {torch_gpus} GPU(s) but faiss sees none (installed: {listed}): {cause}"


def check_gpu_search() -> None:
    """Raise the :class:`DanceError` of :func:`faiss_gpu_problem` (a search on the GPU would not run in faiss)."""
    problem = faiss_gpu_problem()
    if problem:
        raise DanceError(problem)


_WARNED_TORCH_PATH = False


def _torch_path_note(device) -> None:
    """Say once per process that the GPU search runs through torch because faiss has no GPU support."""
    global _WARNED_TORCH_PATH
    if not _WARNED_TORCH_PATH:
        _WARNED_TORCH_PATH = True
        logger.warning("faiss has no GPU support here (installed: %s): exact search runs as torch.mm + topk on %s; "
                       "the gpu extra (faiss-gpu-cu12) searches in faiss", ", ".join(faiss_packages()) or "none",
                       device)


def _faiss_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # pragma: no cover - a broken faiss GPU install
        return 0


def _cuda_possible() -> bool:
    """False when this is a Linux machine without the NVIDIA driver (so importing torch to ask is not needed)."""
    import sys

    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _pick_backend(device: str, k: int, gpu_float16: bool = False):
    """The backend for ``device`` ("auto", "cpu", "cuda", "cuda:N")."""
    requested = "auto" if device is None else str(device).strip().lower()
    if requested == "cpu":
        return _FaissCPU()
    if requested != "auto" and requested != "cuda" and not requested.startswith("cuda:"):
        raise DanceError(f"unknown search device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    gpu = None
    gpus = None
    if requested.startswith("cuda:"):
        try:
            listed = [int(part) for part in requested.split(":", 1)[1].split(",")]
        except ValueError:
            raise DanceError(f"unknown search device {device!r}: expected 'cuda:N' or 'cuda:N,M,...'") from None
        if len(set(listed)) != len(listed) or min(listed) < 0:
            raise DanceError(f"search device {device!r}: expected distinct GPU numbers")
        if len(listed) == 1:
            gpu = listed[0]
        else:
            gpus = listed
    ngpu = _faiss_gpus()
    if gpus is not None:
        if ngpu > 0 and k + _TIE_MARGIN <= _FAISS_GPU_MAX_K and max(gpus) < ngpu:
            return _FaissGPU(None, gpu_float16, gpus=gpus)
        check_gpu_search()
        raise DanceError(f"search device {device!r} needs faiss with GPU support and those GPUs ({ngpu} visible "
                         f"to faiss; k = {k} must be at most {_FAISS_GPU_MAX_K - _TIE_MARGIN})")
    if requested == "auto" and ngpu == 0 and not _cuda_possible():
        return _FaissCPU()
    # k + _TIE_MARGIN hits are asked per block (tie check), within the faiss GPU selection limit.
    if ngpu > 0 and k + _TIE_MARGIN <= _FAISS_GPU_MAX_K and (gpu is None or gpu < ngpu):
        return _FaissGPU(gpu, gpu_float16)
    import torch

    if torch.cuda.is_available():
        # torch: this module imports torch late, only for a CUDA search
        from .device import pick_device

        target = pick_device(requested if requested != "auto" else "cuda")
        if ngpu == 0:
            check_gpu_search()      # a faiss GPU package that sees no GPU: stop, never fall back silently
            _torch_path_note(target)
        return _TorchCUDA(target)
    if requested == "auto":
        return _FaissCPU()
    raise DanceError(f"search device {device!r} was requested but neither faiss nor torch sees a GPU "
                     f"(use 'cpu' or 'auto')")
