"""2-d UMAP projections of query and document embeddings that several runs can share.

McInnes, Healy & Melville 2018, "UMAP: Uniform Manifold Approximation and Projection for Dimension
Reduction" (umap-learn). Rows are L2-normalised and compared with the Euclidean metric, whose neighbourhoods
equal those of the cosine metric on the original vectors (:math:`\\lVert u - v \\rVert^2 = 2 - 2\\cos`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_matrix, unit_block

__all__ = ["umap_project", "exact_knn"]

FIT_MODES = ("stacked", "each")


def exact_knn(units: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (each row its own first neighbour) by Euclidean distance, blocked.

    Returns ``(indices int64 [n, k], distances float32 [n, k])`` sorted by distance, ties by lower index;
    :math:`\\lVert u - v \\rVert^2 = \\lVert u \\rVert^2 + \\lVert v \\rVert^2 - 2 u \\cdot v`.
    """
    n = units.shape[0]
    k = min(k, n)
    sq = np.einsum("ij,ij->i", units, units).astype(np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (units[start:stop] @ units.T)
        rows = np.arange(stop - start)
        d2[rows, rows + start] = -1.0          # the point itself comes first
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (stop - start, 1))
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        dist[start:stop] = np.sqrt(np.clip(np.take_along_axis(pd, order, axis=1), 0.0, None))
    return idx, dist


def _fit(units: np.ndarray, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        n = units.shape[0]
        k = max(2, min(n_neighbors, n - 1))
        # exact neighbours from one matrix product; umap's own small-data path computes the distance matrix
        # with a per-pair Python callback, orders of magnitude slower
        knn = exact_knn(units, k)
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, metric="euclidean",
                            random_state=seed, n_jobs=1, n_epochs=n_epochs,
                            init="spectral" if n > 10 else "random", precomputed_knn=(knn[0], knn[1]))
        out = reducer.fit_transform(units)
    return np.asarray(out, dtype=np.float64)


def umap_project(arrays: Sequence[np.ndarray], *, fit: str = "stacked", n_neighbors: int = 15,
                 min_dist: float = 0.1, seed: int = 0, n_epochs: int | None = 200) -> list[np.ndarray]:
    """Project several runs' embeddings of the same sample to 2-d with one shared UMAP.

    ``arrays`` holds one ``[n_i, dim]`` matrix per run (typically the sampled queries then the sampled
    documents, the same ids in the same order for every run, so that rows correspond). Each row is
    L2-normalised (zero rows stay at the origin); neighbours are exact Euclidean k-NN on the normalised rows
    (the cosine neighbourhoods), then UMAP runs with ``n_neighbors`` (capped at n - 1), ``min_dist``,
    ``n_epochs`` (200 by default: umap-learn's default for large data, ample for a few thousand points; None =
    umap-learn's own choice) and ``random_state=seed`` (deterministic, single thread).

    ``fit`` chooses how runs share axes:

    - ``"stacked"`` (default): ONE reducer is fitted on all runs stacked together and each run gets its own
      rows of that embedding. No run is privileged (the picture does not depend on which run comes first)
      and every picture shares the same axes; points of different runs that are close in the original space
      land close together (meaningful when the runs live in one vector space, e.g. checkpoints of one
      trajectory or runs fine-tuned from one warm start; unrelated spaces separate into their own regions).
    - ``"each"``: one independent reducer per run (no shared axes; for runs whose spaces are unrelated).

    All matrices must have the same dimension for ``"stacked"``. Returns a list of float64 ``[n_i, 2]``
    coordinate arrays in the order of ``arrays``. Needs at least 4 rows per fit; meant for a few thousand rows
    in all (seconds, plus numba's one-off compilation of umap-learn on first use in a process, ~15 s here).
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit: expected one of {', '.join(FIT_MODES)}, got {fit!r}")
    mats = [check_matrix(a, f"arrays[{k}]", min_rows=4) for k, a in enumerate(arrays)]
    if not mats:
        raise ValueError("arrays: expected at least one matrix")
    if fit == "stacked":
        for k, m in enumerate(mats):
            if m.shape[1] != mats[0].shape[1]:
                raise ValueError(f"arrays[{k}]: expected dimension {mats[0].shape[1]} (as arrays[0]), "
                                 f"got {m.shape[1]}")
    units = [unit_block(m, np.float32)[0] for m in mats]
    if fit == "each":
        return [_fit(u, n_neighbors, min_dist, seed, n_epochs) for u in units]
    stacked = np.concatenate(units, axis=0)
    coords = _fit(stacked, n_neighbors, min_dist, seed, n_epochs)
    bounds = np.cumsum([0] + [u.shape[0] for u in units])
    return [coords[bounds[k]:bounds[k + 1]] for k in range(len(units))]
