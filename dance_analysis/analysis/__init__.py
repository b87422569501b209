"""Embedding-space analysis: pure functions, numpy arrays in, numbers and small tables out.

No I/O, no plotting, and no imports from the rest of the package (only numpy, scipy, scikit-learn and
umap-learn), so every function can be called from a notebook on any pair of embedding matrices.

Conventions shared by every module:

- Embedding matrices are ``[N, d]`` float arrays (float16 / float32 / float64, memmaps welcome); large matrices
  are processed in row blocks with float64 accumulators, so memory stays a few blocks above the input.
- A matrix that contains NaN or infinite values raises :class:`ValueError` naming the offending rows.
- Rows with zero norm have no direction: they are left out of every direction-based statistic (cosines,
  alignment, uniformity, cosine histograms); norm statistics and the PCA spectrum include them, and UMAP
  places them at the origin of the normalised space.
- Randomness (pair sampling, random documents, UMAP) is driven by an explicit ``seed``.

Modules: :mod:`.geometry` (anisotropy, norms, PCA spectrum, query-document geometry), :mod:`.isotropy`
(IsoScore, effective rank, partition-function ratio), :mod:`.align_uniform` (Wang & Isola alignment and
uniformity), :mod:`.ranking` (the dual d2q task), :mod:`.sampling` (negative-sampling distributions),
:mod:`.projection` (UMAP, aligned PCA), :mod:`.claim_metrics` (statistics that can test the paper's claims on
small samples), :mod:`.stats` (paired tests, bootstrap intervals, Holm, verdicts) and :mod:`.snapshot` (cheap
statistics logged at every refresh). The claims themselves, with the metric registry, live in
:mod:`dance_analysis.comparison`.
"""

from __future__ import annotations

from . import stats
from .align_uniform import alignment, l2_normalize, uniformity, uniformity_sides
from .claim_metrics import (
    balanced_joint_uniformity,
    energy_distance,
    first_component_share,
    isotropic_reference,
    judged_margin,
    mmd2_linear_unbiased,
    nearest_document_ratio,
    subspace_isotropy,
)
from .geometry import (
    centroid_distance,
    check_finite,
    covariance,
    cross_mean_cosine,
    mean_pairwise_cosine,
    mean_vector_norm_ratio,
    negatives_to_pairs,
    norm_stats,
    pca_spectrum,
    query_document_geometry,
    variance_explained,
)
from .isotropy import effective_rank, isoscore, isotropy_stats, partition_ratio
from .projection import aligned_pca, procrustes_align, umap_project
from .ranking import d2q_metrics, d2q_ranks
from .sampling import (
    count_distribution_stats,
    gini,
    lorenz_curve,
    negative_sampling_marginals,
    sampling_uniformity,
    softmax_stats,
)
from .snapshot import negative_score_margins, partly_relevant_share, refresh_geometry

__all__ = [
    "stats",
    "balanced_joint_uniformity", "energy_distance", "first_component_share", "isotropic_reference", "judged_margin",
    "mmd2_linear_unbiased", "nearest_document_ratio", "subspace_isotropy",
    "alignment", "l2_normalize", "uniformity", "uniformity_sides",
    "centroid_distance", "check_finite", "covariance", "cross_mean_cosine", "mean_pairwise_cosine",
    "mean_vector_norm_ratio", "negatives_to_pairs", "norm_stats", "pca_spectrum", "query_document_geometry",
    "variance_explained",
    "effective_rank", "isoscore", "isotropy_stats", "partition_ratio",
    "aligned_pca", "procrustes_align", "umap_project",
    "d2q_metrics", "d2q_ranks",
    "count_distribution_stats", "gini", "lorenz_curve", "negative_sampling_marginals", "sampling_uniformity",
    "softmax_stats",
    "negative_score_margins", "partly_relevant_share", "refresh_geometry",
]
