"""Isotropy of an embedding matrix: IsoScore, effective rank and the partition-function ratio I(W).

All three use one blocked pass for the d x d covariance (or second-moment) matrix and its eigendecomposition,
so they scale to 1,000,000 x 384 rows; :func:`isotropy_stats` computes them together from one covariance.

Zero vectors: IsoScore, effective rank and I(W) on raw vectors measure the spread of the points, so a zero row is
a point at the origin like any other; I(W) with ``normalize=True`` works on directions and leaves zero rows out.
"""

from __future__ import annotations

import numpy as np

from ._common import check_matrix, row_blocks, unit_block, work_dtype
from .geometry import covariance, undefined

__all__ = ["isoscore", "effective_rank", "partition_ratio", "isotropy_stats",
           "isoscore_from_variances", "effective_rank_from_eigenvalues"]


def isoscore_from_variances(variances) -> float:
    """IsoScore of a variance vector (the covariance eigenvalues = variances along the principal axes).

    Steps 3-6 of Rudman et al. (2022), with n the number of dimensions and :math:`\\Sigma_D` the variances:

    1. normalise: :math:`\\hat\\Sigma_D = \\sqrt{n}\\, \\Sigma_D / \\lVert \\Sigma_D \\rVert_2`;
    2. isotropy defect: :math:`\\delta = \\lVert \\hat\\Sigma_D - \\mathbf 1_n \\rVert_2 / \\sqrt{2(n - \\sqrt n)}`;
    3. fraction of dimensions used: :math:`\\phi = (n - \\delta^2 (n - \\sqrt n))^2 / n^2`;
    4. IsoScore :math:`\\iota = (n \\phi - 1) / (n - 1)`,

    in [0, 1]: 1 for equal variance in every direction, 0 when all variance lies along one direction.
    NaN when all variances are 0 or n < 2.
    """
    v = np.clip(np.asarray(variances, dtype=np.float64), 0.0, None)
    n = v.size
    norm = np.linalg.norm(v)
    if n < 2 or norm == 0:
        return float("nan")
    v_hat = np.sqrt(n) * v / norm
    defect = np.linalg.norm(v_hat - 1.0) / np.sqrt(2.0 * (n - np.sqrt(n)))
    phi = (n - defect ** 2 * (n - np.sqrt(n))) ** 2 / n ** 2
    score = (n * phi - 1.0) / (n - 1.0)
    return float(np.clip(score, 0.0, 1.0))


def isoscore(x, *, name: str = "embeddings") -> float:
    """IsoScore (Rudman, Gillman, Rayne & Eickhoff 2022, "IsoScore: Measuring the Uniformity of Embedding
    Space Utilization", Findings of ACL 2022).

    Step 1-2 of the published algorithm reorient the point cloud by PCA; the variance vector of the
    reoriented points is the vector of eigenvalues of the covariance matrix, computed here exactly from the
    blocked covariance (all d eigenvalues, zeros included, so fewer rows than dimensions is allowed). Steps
    3-6 are in :func:`isoscore_from_variances`. ~1 for an isotropic Gaussian, ~0 for rank-1 data.
    """
    _, c = covariance(x, center=True, name=name)
    return isoscore_from_variances(np.linalg.eigvalsh(c))


def effective_rank_from_eigenvalues(eigenvalues) -> float:
    """Effective rank from the eigenvalues of :math:`A^\\top A` (singular values :math:`\\sigma = \\sqrt\\lambda`).

    :math:`\\mathrm{erank} = \\exp(-\\sum_k p_k \\log p_k)`, :math:`p_k = \\sigma_k / \\sum_j \\sigma_j`
    (Roy & Vetterli 2007), with :math:`0 \\log 0 = 0`. Eigenvalues below the round-off level
    :math:`\\lambda_{max} \\cdot d \\cdot \\epsilon_{float64}` count as 0. NaN when all eigenvalues are 0.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    # eigenvalues below the round-off level of the eigendecomposition are zero (as numpy's matrix_rank)
    tol = lam.max(initial=0.0) * lam.size * np.finfo(np.float64).eps
    s = np.sqrt(np.where(lam > tol, lam, 0.0))
    total = s.sum()
    if total == 0:
        return float("nan")
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(x, *, center: bool = True, name: str = "embeddings") -> float:
    """Effective rank (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality",
    EUSIPCO 2007): the exponential of the Shannon entropy of the normalised singular values.

    .. math:: \\mathrm{erank}(A) = \\exp\\Big(-\\sum_k p_k \\log p_k\\Big), \\quad
              p_k = \\sigma_k / \\lVert \\sigma \\rVert_1

    where :math:`\\sigma_k` are the singular values of A. With ``center=True`` (default) A is the centred data
    matrix (the spread of the cloud, independent of where its mean lies: the mean-vector anisotropy is
    measured by :func:`~dance_analysis.analysis.geometry.mean_vector_norm_ratio`); with ``center=False`` A is
    X itself. Singular values come from the eigenvalues of the blocked :math:`A^\\top A`. In [1, d]: ~d for
    an isotropic Gaussian, 1 for rank-1 data.
    """
    _, c = covariance(x, center=center, name=name)
    return effective_rank_from_eigenvalues(np.linalg.eigvalsh(c))


def _log_partition(x: np.ndarray, directions: np.ndarray, normalize: bool
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """One streamed pass over ``x``: ``log Z(c) = logsumexp_i (c . w_i)`` for each column c of ``directions``
    (running log-sum-exp), the sum of the rows :math:`\\sum_i w_i` and the sum of their norms (float64).

    With ``normalize`` the rows w_i are the unit vectors of the non-zero rows of ``x``."""
    k = directions.shape[1]
    run_max = np.full(k, -np.inf)
    run_sum = np.zeros(k)
    total = np.zeros(x.shape[1])
    norm_sum = 0.0
    dt = work_dtype(x)
    dirs = directions.astype(dt)
    for start, stop in row_blocks(x.shape[0]):
        if normalize:
            b, nonzero = unit_block(x[start:stop], dt)
            b = b[nonzero]
            if not len(b):
                continue
        else:
            b = np.asarray(x[start:stop], dtype=dt)
        total += b.sum(axis=0, dtype=np.float64)
        norm_sum += float(np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64)).sum())
        s = b @ dirs  # [B, k] in the input precision
        new_max = np.maximum(run_max, s.max(axis=0).astype(np.float64))
        run_sum = (run_sum * np.exp(run_max - new_max)
                   + np.exp(s - new_max.astype(dt)).sum(axis=0, dtype=np.float64))
        run_max = new_max
    return run_max + np.log(run_sum), total, norm_sum


#: Relative level (of :math:`\\sum_i \\lVert w_i \\rVert`) below which :math:`c \\cdot \\sum_i w_i` counts as 0
#: when :func:`partition_ratio` orients an eigenvector.
_ORIENT_TOL = 1e-9


def _oriented(vecs: np.ndarray, total: np.ndarray, norm_sum: float) -> np.ndarray:
    """+1 / -1 per eigenvector (column of ``vecs``): the sign that makes :math:`c \\cdot \\sum_i w_i \\ge 0`; when
    that projection is at round-off level, the sign that makes the largest-magnitude entry of c positive."""
    proj = vecs.T @ total
    tie = np.abs(proj) <= _ORIENT_TOL * norm_sum
    cols = np.arange(vecs.shape[1])
    fallback = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), cols])
    return np.where(tie, fallback, np.where(proj >= 0, 1.0, -1.0))


def partition_ratio(x, *, normalize: bool = False, name: str = "embeddings",
                    _second_moment: np.ndarray | None = None) -> float:
    """Partition-function isotropy I(W) of Mu & Viswanath (2018, "All-but-the-Top: Simple and Effective
    Postprocessing for Word Representations", ICLR 2018), following Arora, Li, Liang, Ma & Risteski (2016,
    "A Latent Variable Model Approach to PMI-based Word Embeddings", TACL).

    .. math:: I(W) = \\frac{\\min_{c \\in C} Z(c)}{\\max_{c \\in C} Z(c)}, \\quad Z(c) = \\sum_i \\exp(c^\\top w_i)

    The minimum and maximum over all unit vectors c are approximated, as Mu & Viswanath do in the isotropy
    measure of their paper, over C = the d eigenvectors of :math:`W^\\top W` (uncentred second moment): d
    directions, one per eigenvector. An eigenvector's sign is arbitrary and Z(c) != Z(-c) in general, so each is
    oriented deterministically: towards the rows' sum, :math:`c^\\top \\sum_i w_i \\ge 0` (a rule that rotates
    with the data, so I(WR) = I(W) for an orthogonal R); when that projection is at round-off level (below 1e-9
    of :math:`\\sum_i \\lVert w_i \\rVert`, e.g. exactly centred data) the largest-magnitude entry of c is made
    positive instead. (Taking each eigenvector with both signs, 2d directions, as this function did before,
    gives a lower value: e.g. about :math:`e^{-2\\lVert \\mu \\rVert}` instead of
    :math:`e^{-\\lVert \\mu \\rVert}` for a small-noise cloud around a mean :math:`\\mu`.)
    Computed with a streamed log-sum-exp, so large norms do not overflow. In (0, 1]: close to 1 when the space
    is isotropic (e.g. a large isotropic Gaussian sample), close to 0 with a dominant common direction.
    ``normalize=True`` L2-normalises the rows first, which makes the value independent of the norm scale; zero
    vectors have no direction and are left out of the second moment, of the orientation and of every
    Z(c) (they would add exp(0) = 1 to each and pull the ratio towards 1;
    :func:`~dance_analysis.analysis.geometry.zero_norm_rows` counts them), and with no non-zero row the result is
    NaN with a :class:`RuntimeWarning`.
    The products :math:`c^\\top w_i` run in the input precision (float32 input: relative error ~1e-7 of
    :math:`\\lVert w_i \\rVert` in the exponent).
    """
    x = check_matrix(x, name)
    if _second_moment is None:
        if normalize:
            dim = x.shape[1]
            m = np.zeros((dim, dim))
            count = 0
            for start, stop in row_blocks(x.shape[0]):
                b, nonzero = unit_block(x[start:stop], work_dtype(x))
                m += b.T @ b
                count += int(nonzero.sum())
            if count == 0:
                return undefined(f"{name}: partition ratio of normalised rows without a row of non-zero norm")
            m /= count
        else:
            _, m = covariance(x, center=False, name=name)
    else:
        m = _second_moment
    _, vecs = np.linalg.eigh((m + m.T) / 2)
    dim = vecs.shape[1]
    # one pass for both signs of every eigenvector and the rows' sum; the orientation then picks one sign each
    log_z_both, total, norm_sum = _log_partition(x, np.concatenate([vecs, -vecs], axis=1), normalize)
    sign = _oriented(vecs, total, norm_sum)
    log_z = np.where(sign > 0, log_z_both[:dim], log_z_both[dim:])
    return float(np.exp(log_z.min() - log_z.max()))


def isotropy_stats(x, *, cov: tuple[np.ndarray, np.ndarray] | None = None,
                   name: str = "embeddings") -> dict[str, float]:
    """IsoScore, effective rank (centred) and I(W) (raw vectors) from one shared covariance pass.

    Returns ``{"isoscore", "effective_rank", "partition_ratio"}``, equal to :func:`isoscore`,
    :func:`effective_rank` and :func:`partition_ratio` called separately. ``cov`` may pass the result of
    :func:`~dance_analysis.analysis.geometry.covariance` ``(x)`` when it is already computed (e.g. for
    :func:`~dance_analysis.analysis.geometry.pca_spectrum`); I(W) still needs one pass over ``x``.
    """
    x = check_matrix(x, name, min_rows=2)
    n = x.shape[0]
    mean, c = cov if cov is not None else covariance(x, center=True, name=name)
    vals = np.linalg.eigvalsh(c)
    second = c * ((n - 1) / n) + np.outer(mean, mean)
    return {"isoscore": isoscore_from_variances(vals),
            "effective_rank": effective_rank_from_eigenvalues(vals),
            "partition_ratio": partition_ratio(x, name=name, _second_moment=second)}
