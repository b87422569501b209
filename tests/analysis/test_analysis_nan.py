"""Every analysis function that takes embeddings refuses NaN / infinite values and names the rows."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis import analysis as A


def _bad():
    x = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    x[3, 2] = np.nan
    x[17, 0] = np.inf
    return x


GOOD = np.random.default_rng(1).normal(size=(30, 6))
PAIRS = np.array([[0, 1], [2, 3]])

CALLS = {
    "mean_pairwise_cosine": lambda x: A.mean_pairwise_cosine(x),
    "cross_mean_cosine": lambda x: A.cross_mean_cosine(GOOD, x),
    "covariance": lambda x: A.covariance(x),
    "pca_spectrum": lambda x: A.pca_spectrum(x),
    "norm_stats": lambda x: A.norm_stats(x),
    "mean_vector_norm_ratio": lambda x: A.mean_vector_norm_ratio(x),
    "centroid_distance": lambda x: A.centroid_distance(x, GOOD),
    "query_document_geometry": lambda x: A.query_document_geometry(x, GOOD, PAIRS, PAIRS),
    "isoscore": lambda x: A.isoscore(x),
    "effective_rank": lambda x: A.effective_rank(x),
    "partition_ratio": lambda x: A.partition_ratio(x),
    "isotropy_stats": lambda x: A.isotropy_stats(x),
    "l2_normalize": lambda x: A.l2_normalize(x),
    "alignment": lambda x: A.alignment(GOOD, x, PAIRS),
    "uniformity": lambda x: A.uniformity(x),
    "uniformity_sides": lambda x: A.uniformity_sides(GOOD, x),
    "d2q_metrics": lambda x: A.d2q_metrics(x, GOOD, PAIRS),
    "d2q_ranks": lambda x: A.d2q_ranks(GOOD, x, PAIRS),
    "umap_project": lambda x: A.umap_project([GOOD, x]),
    "softmax_stats": lambda x: A.softmax_stats(x),
    "count_distribution_stats": lambda x: A.count_distribution_stats(np.abs(x).sum(axis=1)),
    "gini": lambda x: A.gini(np.abs(x).sum(axis=1)),
    "lorenz_curve": lambda x: A.lorenz_curve(np.abs(x).sum(axis=1)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_nan_raises_value_error_naming_rows(name):
    with pytest.raises(ValueError) as err:
        CALLS[name](_bad())
    msg = str(err.value)
    assert "NaN" in msg
    assert "3" in msg


def test_message_lists_rows():
    with pytest.raises(ValueError, match=r"queries: NaN or infinite values in row\(s\) 3, 17$"):
        A.check_finite(_bad(), "queries")
