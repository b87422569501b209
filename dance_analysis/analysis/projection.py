"""2-d UMAP projections of query and document embeddings that several runs can share.

McInnes, Healy & Melville 2018, "UMAP: Uniform Manifold Approximation and Projection for Dimension
Reduction" (umap-learn). Rows are L2-normalised and compared with the Euclidean metric, whose neighbourhoods
equal those of the cosine metric on the original vectors (:math:`\\lVert u - v \\rVert^2 = 2 - 2\\cos`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_matrix, unit_block

__all__ = ["umap_project", "exact_knn", "aligned_pca", "procrustes_align"]

FIT_MODES = ("aligned", "stacked", "each")


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


def umap_project(arrays: Sequence[np.ndarray], *, fit: str = "aligned", n_neighbors: int = 15,
                 min_dist: float = 0.1, seed: int = 0, n_epochs: int | None = 200,
                 align_rows: np.ndarray | slice | None = None) -> list[np.ndarray]:
    """Project several runs' embeddings of the same sample to 2-d with one shared UMAP.

    ``arrays`` holds one ``[n_i, dim]`` matrix per run (typically the sampled queries then the sampled
    documents, the same ids in the same order for every run, so that rows correspond). Each row is
    L2-normalised (zero rows stay at the origin); neighbours are exact Euclidean k-NN on the normalised rows
    (the cosine neighbourhoods), then UMAP runs with ``n_neighbors`` (capped at n - 1), ``min_dist``,
    ``n_epochs`` (200 by default: umap-learn's default for large data, ample for a few thousand points; None =
    umap-learn's own choice) and ``random_state=seed`` (deterministic, single thread).

    ``fit`` chooses how runs share axes:

    - ``"aligned"`` (default): one reducer per run, each run's picture then moved onto the first run's by
      :func:`procrustes_align` over ``align_rows`` (default: all rows; typically the documents, which every run
      embeds). Each panel shows its own model's neighbourhoods, so the panels differ where the models differ, and
      the shared axes make them comparable.
    - ``"stacked"``: ONE reducer is fitted on all runs stacked together and each run gets its own
      rows of that embedding. No run is privileged (the picture does not depend on which run comes first)
      and every picture shares the same axes; points of different runs that are close in the original space
      land close together (meaningful when the runs live in one vector space, e.g. checkpoints of one
      trajectory or runs fine-tuned from one warm start; unrelated spaces separate into their own regions).
    - ``"each"``: one independent reducer per run (no shared axes). With ``"stacked"`` each point's neighbours
      are mostly its own copies in the other runs, so every panel shows the same picture.

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
    if fit in ("each", "aligned"):
        coords = [_fit(u, n_neighbors, min_dist, seed, n_epochs) for u in units]
        return procrustes_align(coords, rows=align_rows) if fit == "aligned" else coords
    stacked = np.concatenate(units, axis=0)
    coords = _fit(stacked, n_neighbors, min_dist, seed, n_epochs)
    bounds = np.cumsum([0] + [u.shape[0] for u in units])
    return [coords[bounds[k]:bounds[k + 1]] for k in range(len(units))]


def aligned_pca(documents: Sequence[np.ndarray], queries: Sequence[np.ndarray], *, reference: int = 0,
                components: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per model, its own PCA of L2-normalised vectors, rotated onto the reference model's axes.

    ``documents[m]`` [n, dim_m] and ``queries[m]`` [nq_m, dim_m] are model m's vectors of the same n documents
    (rows in the same order for every model). Each model's PCA (top ``components`` directions, centred on its
    documents) is fitted on its documents, and both documents and queries are projected. Then the orthogonal
    matrix R that minimises :math:`\\lVert D_m R - D_{ref} \rVert_F` over the shared documents (orthogonal
    Procrustes, Schönemann 1966; ``scipy.linalg.orthogonal_procrustes``) is applied to model m's coordinates, so the
    panels share axes: a model that differs from the reference only by a rotation of its space gets the same picture,
    and what remains different is what differs between the models. Returns ``[(doc_xy [n, c], query_xy [nq_m, c])]``
    per model. PCA is linear and deterministic (up to the sign of each axis, which the rotation absorbs).
    """
    if len(documents) != len(queries) or not documents:
        raise ValueError("documents and queries: expected one array of each per model")
    n = None
    projected = []
    for m, (d, q) in enumerate(zip(documents, queries)):
        d = check_matrix(d, f"documents[{m}]", min_rows=components + 1)
        q = check_matrix(q, f"queries[{m}]", dim=d.shape[1])
        if n is not None and d.shape[0] != n:
            raise ValueError(f"documents[{m}]: expected the same {n} documents as model 0, got {d.shape[0]} rows")
        n = d.shape[0]
        du, _ = unit_block(d)
        qu, _ = unit_block(q)
        mean = du.mean(axis=0)
        _, _, vt = np.linalg.svd(du - mean, full_matrices=False)
        axes = vt[:components].T
        projected.append(((du - mean) @ axes, (qu - mean) @ axes))
    n_docs = projected[0][0].shape[0]
    stacked = [np.concatenate([d_xy, q_xy]) for d_xy, q_xy in projected]
    aligned = procrustes_align(stacked, reference=reference, rows=slice(0, n_docs))
    return [(a[:n_docs], a[n_docs:]) for a in aligned]


def procrustes_align(coords: Sequence[np.ndarray], *, reference: int = 0,
                     rows: np.ndarray | slice | None = None) -> list[np.ndarray]:
    """Move each picture onto the reference picture by a translation and an orthogonal map (rotation or
    reflection), fitted on the corresponding ``rows`` (default: all) of both pictures.

    For picture X and reference Y, with the rows' centroids :math:`\bar x, \bar y`, the orthogonal R minimises
    :math:`\\lVert (X_r - \bar x) R - (Y_r - \bar y) \rVert_F` (orthogonal Procrustes, Schönemann 1966;
    ``scipy.linalg.orthogonal_procrustes``) and the picture becomes :math:`(X - \bar x) R + \bar y`. No scaling:
    distances within each picture are kept. Returns new arrays in the order of ``coords``.
    """
    from scipy.linalg import orthogonal_procrustes

    if not coords:
        raise ValueError("coords: expected at least one picture")
    if not 0 <= reference < len(coords):
        raise ValueError(f"reference: expected a picture index below {len(coords)}, got {reference}")
    pick = slice(None) if rows is None else rows
    target = np.asarray(coords[reference], dtype=np.float64)
    y = target[pick]
    y_mean = y.mean(axis=0)
    out = []
    for k, c in enumerate(coords):
        c = np.asarray(c, dtype=np.float64)
        if c.shape[1] != target.shape[1] or c[pick].shape != y.shape:
            raise ValueError(f"coords[{k}]: expected the rows to align with the reference picture's {y.shape}, "
                             f"got {c[pick].shape}")
        x = c[pick]
        x_mean = x.mean(axis=0)
        rotation, _ = orthogonal_procrustes(x - x_mean, y - y_mean)
        out.append((c - x_mean) @ rotation + y_mean)
    return out
