"""Shared input checks and blocking helpers for the analysis functions (private)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Rows processed at once by the blocked computations (16,384 x 384 float64 = 50 MB).
BLOCK_ROWS = 16384


def row_blocks(n: int, block: int = BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` row ranges covering ``range(n)``."""
    for start in range(0, n, block):
        yield start, min(start + block, n)


def _row_list(rows: np.ndarray, total: int) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    more = f", ... ({total} rows in all)" if total > 10 else ""
    return shown + more


def check_matrix(x, name: str = "embeddings", *, min_rows: int = 1, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a 2-D numeric array (no copy for arrays and memmaps) after checking it.

    Raises :class:`ValueError` when ``x`` is not 2-D, has fewer than ``min_rows`` rows, has a dimension other
    than ``dim``, or holds NaN / infinite values (the message names the first offending rows).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, dim], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows, got {arr.shape[0]}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected dimension {dim}, got {arr.shape[1]}")
    if np.issubdtype(arr.dtype, np.floating):
        bad: list[np.ndarray] = []
        for start, stop in row_blocks(arr.shape[0]):
            ok = np.isfinite(arr[start:stop]).all(axis=1)
            if not ok.all():
                bad.append(np.flatnonzero(~ok) + start)
        if bad:
            rows = np.concatenate(bad)
            raise ValueError(f"{name}: NaN or infinite values in row(s) {_row_list(rows, rows.size)}")
    return arr


def check_vector(x, name: str) -> np.ndarray:
    """Return ``x`` as a 1-D float array; NaN / infinite entries raise :class:`ValueError` naming them."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}: NaN or infinite values at position(s) {_row_list(bad, bad.size)}")
    return arr


def check_pairs(pairs, n_left: int, n_right: int, name: str = "pairs",
                left: str = "query", right: str = "document") -> np.ndarray:
    """Return ``pairs`` as an int64 ``[m, 2]`` array after checking both columns are valid row indices."""
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected an integer array of shape [m, 2], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
            raise ValueError(f"{name}: NaN or infinite values in row(s) {_row_list(bad, bad.size)}")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name}: expected integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    for col, n, what in ((0, n_left, left), (1, n_right, right)):
        bad = np.flatnonzero((arr[:, col] < 0) | (arr[:, col] >= n))
        if bad.size:
            raise ValueError(f"{name}: {what} index out of range [0, {n}) in row(s) {_row_list(bad, bad.size)}")
    return arr


def unit_block(block: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise the rows of ``block`` (as ``dtype``); returns ``(units, nonzero_mask)``.

    Rows with zero norm stay zero and are reported as ``False`` in the mask.
    """
    b = np.asarray(block, dtype=dtype)
    norms = np.sqrt(np.einsum("ij,ij->i", b, b))
    nonzero = norms > 0
    safe = np.where(nonzero, norms, 1.0).astype(dtype)
    return b / safe[:, None], nonzero


def work_dtype(arr: np.ndarray) -> type:
    """Compute dtype for blocks of ``arr``: float64 for float64 / integer input, float32 for float32 / float16.

    Block-level products run in this precision; every cross-block accumulation is float64.
    """
    return np.float32 if arr.dtype in (np.float32, np.float16) else np.float64


def rng_from(seed) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator (used as is) or None (seed 0)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(0 if seed is None else seed)
