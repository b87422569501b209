"""Alignment and uniformity on the unit hypersphere (Wang & Isola 2020).

Wang, T. and Isola, P. (2020), "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", ICML 2020. Vectors are L2-normalised first; rows with zero norm have no point
on the sphere and are left out (pairs that involve one are dropped), never taken as a point at distance 0 or 1:
:func:`alignment` can return how many pairs it dropped, :func:`uniformity` reports ``excluded_zero``. A value
with nothing left to average is NaN with a :class:`RuntimeWarning`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_matrix, check_pairs, rng_from, row_blocks, unit_block, work_dtype
from .geometry import undefined

__all__ = ["l2_normalize", "alignment", "uniformity", "uniformity_sides"]

#: Up to this many points, uniformity is computed exactly over all pairs (blocked matrix products).
MAX_EXACT = 20000
#: Number of sampled pairs beyond :data:`MAX_EXACT`.
N_PAIRS = 1_000_000


def l2_normalize(x, *, dtype=np.float32, name: str = "embeddings") -> np.ndarray:
    """Return a copy of ``x`` with every row divided by its L2 norm: :math:`x_i / \\lVert x_i \\rVert_2`.

    Rows with zero norm stay zero (as ``torch.nn.functional.normalize``). NaN / infinite values raise
    :class:`ValueError` naming the rows.
    """
    x = check_matrix(x, name)
    out = np.empty(x.shape, dtype=dtype)
    for start, stop in row_blocks(x.shape[0]):
        out[start:stop] = unit_block(x[start:stop])[0]
    return out


def alignment(q, d, pairs, *, alpha: float = 2.0, names: tuple[str, str] = ("queries", "documents"),
              return_excluded: bool = False) -> float | tuple[float, int]:
    """Alignment of positive pairs (Wang & Isola 2020), lower is better aligned.

    .. math:: \\mathcal L_{align} = \\frac{1}{|P|} \\sum_{(i,j) \\in P} \\lVert f(q_i) - f(d_j) \\rVert_2^{\\alpha}

    with f the L2 normalisation and P the positive (query row, document row) ``pairs`` (int ``[m, 2]``);
    :math:`\\lVert u - v \\rVert^2 = 2 - 2 u \\cdot v` on the sphere. ``alpha`` defaults to 2 as in the
    paper. In [0, 2^alpha].

    Zero vectors: a pair whose query or document row has zero norm is left out (not taken as distance 0 or
    :math:`\\sqrt 2`); with ``return_excluded=True`` the result is ``(value, number of pairs left out)``. NaN
    when no pair is given (no warning: nothing to measure), and NaN with a :class:`RuntimeWarning` when every
    given pair was left out.
    """
    q = check_matrix(q, names[0])
    d = check_matrix(d, names[1], dim=q.shape[1])
    p = check_pairs(pairs, q.shape[0], d.shape[0])
    if alpha <= 0:
        raise ValueError(f"alpha: expected > 0, got {alpha}")
    total = 0.0
    count = 0
    for start, stop in row_blocks(len(p), 65536):
        a, oka = unit_block(q[p[start:stop, 0]])
        b, okb = unit_block(d[p[start:stop, 1]])
        ok = oka & okb
        sq = np.clip(2.0 - 2.0 * np.einsum("ij,ij->i", a[ok], b[ok]), 0.0, None)
        total += float((sq ** (alpha / 2.0)).sum())
        count += int(ok.sum())
    if count:
        value = total / count
    elif len(p):
        value = undefined(f"{names[0]}/{names[1]}: alignment of {len(p)} pair(s), each with a zero-norm row")
    else:
        value = float("nan")
    return (value, len(p) - count) if return_excluded else value


class _Rows:
    """Several matrices seen as one row concatenation (no copy)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def blocks(self):
        for part in self.parts:
            for start, stop in row_blocks(part.shape[0]):
                yield part[start:stop]

    def take(self, idx: np.ndarray, dtype=np.float64) -> np.ndarray:
        out = np.empty((idx.size, self.parts[0].shape[1]), dtype=dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k, part in enumerate(self.parts):
            sel = np.flatnonzero(which == k)
            if sel.size:
                out[sel] = part[idx[sel] - self.offsets[k]]
        return out


def _logsumexp_update(state: tuple[float, float], values: np.ndarray) -> tuple[float, float]:
    """Running log-sum-exp: state = (max, sum of exp(v - max))."""
    if values.size == 0:
        return state
    m_old, s_old = state
    m = float(values.max())
    new_m = max(m_old, m)
    s = s_old * np.exp(m_old - new_m) + float(np.exp((values - new_m).astype(np.float64)).sum())
    return new_m, s


def uniformity(x, *, t: float = 2.0, max_exact: int = MAX_EXACT, n_pairs: int = N_PAIRS, seed=0,
               name: str = "embeddings") -> dict:
    """Uniformity (Wang & Isola 2020): log of the mean Gaussian potential over pairs of distinct points.

    .. math:: \\mathcal L_{uniform} = \\log \\frac{2}{M(M-1)} \\sum_{i<j} e^{-t \\lVert u_i - u_j \\rVert_2^2},
              \\quad \\lVert u_i - u_j \\rVert^2 = 2 - 2\\, u_i \\cdot u_j

    over the M L2-normalised non-zero rows ``u`` (lower = more uniform; 0 when all points coincide; about
    :math:`-2t + 2t^2/d` for points uniform on the sphere in high dimension d). ``t`` defaults to 2 as in the
    paper. ``x`` is a matrix or a sequence of matrices treated as their row concatenation (no copy).

    Up to ``max_exact`` points the sum runs over all M(M-1)/2 pairs exactly (blocked matrix products and a
    streamed log-sum-exp, so no overflow for any t). Beyond it, ``n_pairs`` pairs (i, j), i != j, are drawn
    uniformly with replacement with ``numpy.random.default_rng(seed)``; an unbiased estimate of the mean inside
    the log. Returns ``{"value", "method": "exact" | "sampled", "pairs", "t", "n", "excluded_zero"}``
    (``value`` NaN, with a :class:`RuntimeWarning`, when M < 2). Zero vectors are left out, not placed on the
    sphere: M counts the other rows and ``excluded_zero`` the rows left out.
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    if not parts:
        raise ValueError(f"{name}: expected at least one matrix")
    parts = [check_matrix(p, name if len(parts) == 1 else f"{name}[{k}]", dim=None) for k, p in enumerate(parts)]
    dim = parts[0].shape[1]
    for k, p in enumerate(parts):
        if p.shape[1] != dim:
            raise ValueError(f"{name}[{k}]: expected dimension {dim}, got {p.shape[1]}")
    if t <= 0:
        raise ValueError(f"t: expected > 0, got {t}")
    rows = _Rows(parts)
    dt = np.float64 if any(work_dtype(p) == np.float64 for p in parts) else np.float32
    norms = np.concatenate([np.sqrt(np.einsum("ij,ij->i", *(np.asarray(b, dtype=dt),) * 2)) for b in rows.blocks()])
    nonzero = norms > 0
    m = int(nonzero.sum())
    out = {"t": float(t), "n": m, "excluded_zero": int(rows.n - m)}
    if m < 2:
        return {"value": undefined(f"{name}: uniformity of {m} row(s) with non-zero norm (needs 2)"),
                "method": "exact", "pairs": 0, **out}
    if m <= max_exact:
        u = np.empty((m, dim), dtype=np.float32)
        pos = 0
        for b in rows.blocks():
            ub, ok = unit_block(b, np.float32)
            u[pos:pos + int(ok.sum())] = ub[ok]
            pos += int(ok.sum())
        state = (-np.inf, 0.0)
        block = 1024
        for start in range(0, m, block):
            stop = min(start + block, m)
            s = u[start:stop] @ u[start:].T  # [B, m - start]
            v = (2.0 * t) * (s - 1.0)          # = -t ||u_i - u_j||^2
            # strictly upper triangle: column c (global start + c) > row r (global start + r)
            cols = np.arange(s.shape[1])[None, :]
            rws = np.arange(stop - start)[:, None]
            state = _logsumexp_update(state, v[cols > rws])
        n_all = m * (m - 1) / 2.0
        value = state[0] + np.log(state[1]) - np.log(n_all)
        return {"value": float(min(value, 0.0)), "method": "exact", "pairs": int(m * (m - 1) // 2), **out}
    rng = rng_from(seed)
    good = np.flatnonzero(nonzero)
    state = (-np.inf, 0.0)
    chunk = 65536
    for start in range(0, n_pairs, chunk):
        k = min(chunk, n_pairs - start)
        i = rng.integers(0, m, size=k)
        j = rng.integers(0, m - 1, size=k)
        j = j + (j >= i)
        gi, gj = good[i], good[j]
        dots = np.einsum("ij,ij->i", rows.take(gi, dt), rows.take(gj, dt)).astype(np.float64)
        s = np.clip(dots / (norms[gi].astype(np.float64) * norms[gj]), -1.0, 1.0)
        state = _logsumexp_update(state, (2.0 * t) * (s - 1.0))
    value = state[0] + np.log(state[1]) - np.log(n_pairs)
    return {"value": float(min(value, 0.0)), "method": "sampled", "pairs": int(n_pairs), **out}


def uniformity_sides(q, d, *, t: float = 2.0, max_exact: int = MAX_EXACT, n_pairs: int = N_PAIRS,
                     seed=0) -> dict[str, dict]:
    """:func:`uniformity` of the queries, of the documents and of both together (their union).

    Returns ``{"queries": {...}, "documents": {...}, "both": {...}}``, each a :func:`uniformity` result; the
    union is not copied. Same ``t``, ``max_exact``, ``n_pairs`` and ``seed`` for the three.
    """
    q = check_matrix(q, "queries")
    d = check_matrix(d, "documents", dim=q.shape[1])
    kw = dict(t=t, max_exact=max_exact, n_pairs=n_pairs, seed=seed)
    return {"queries": uniformity(q, name="queries", **kw),
            "documents": uniformity(d, name="documents", **kw),
            "both": uniformity([q, d], name="queries+documents", **kw)}
