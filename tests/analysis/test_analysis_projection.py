"""UMAP projection: shapes, shared axes and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from dance_analysis.analysis import projection as P


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 4
    a = np.vstack([c + rng.normal(size=(40, 16)) for c in centers])
    b = a + 0.05 * rng.normal(size=a.shape)
    return a, b


def test_stacked_shares_one_fit_and_is_deterministic(runs):
    a, b = runs
    out = P.umap_project([a, b], fit="stacked", seed=1)
    assert [o.shape for o in out] == [(120, 2), (120, 2)] and all(np.isfinite(o).all() for o in out)
    again = P.umap_project([a, b], fit="stacked", seed=1)
    np.testing.assert_array_equal(out[0], again[0])
    np.testing.assert_array_equal(out[1], again[1])
    # nearly identical runs share axes: each point lands near its counterpart
    spread = np.ptp(np.vstack(out), axis=0).max()
    assert np.median(np.linalg.norm(out[0] - out[1], axis=1)) < 0.1 * spread
    # the three clusters stay separated
    labels = np.repeat(np.arange(3), 40)
    cent = np.stack([out[0][labels == k].mean(0) for k in range(3)])
    within = max(np.linalg.norm(out[0][labels == k] - cent[k], axis=1).mean() for k in range(3))
    between = min(np.linalg.norm(cent[i] - cent[j]) for i in range(3) for j in range(i + 1, 3))
    assert between > 2 * within


def test_procrustes_align_undoes_a_rotation_reflection_and_shift_over_the_chosen_rows():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(50, 2))
    angle = 0.7
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([1.0, -1.0])
    moved = ref @ turn + np.array([5.0, -2.0])
    moved[:10] += rng.normal(size=(10, 2))          # rows outside the fitted ones may differ
    out = P.procrustes_align([ref, moved], rows=slice(10, None))
    np.testing.assert_allclose(out[0], ref, atol=1e-12)
    np.testing.assert_allclose(out[1][10:], ref[10:], atol=1e-10)
    assert np.abs(out[1][:10] - ref[:10]).max() > 0.1
    with pytest.raises(ValueError, match="align"):
        P.procrustes_align([ref, moved[:20]])


def test_aligned_umap_is_each_run_fitted_then_moved_onto_the_first(runs):
    a, b = runs
    aligned = P.umap_project([a, b], seed=1, align_rows=slice(40, None))
    each = P.umap_project([a, b], fit="each", seed=1)
    for got, want in zip(aligned, P.procrustes_align(each, rows=slice(40, None))):
        np.testing.assert_allclose(got, want, atol=1e-9)
    # the second picture moved: its shared rows are closer to the first picture's than before
    before = np.linalg.norm(each[1][40:] - each[0][40:])
    assert np.linalg.norm(aligned[1][40:] - aligned[0][40:]) <= before + 1e-9


def test_each_mode_and_errors(runs):
    a, b = runs
    each = P.umap_project([a, b[:, :8]], fit="each", seed=0)
    assert each[0].shape == (120, 2) and each[1].shape == (120, 2)
    with pytest.raises(ValueError, match="dimension"):
        P.umap_project([a, b[:, :8]], fit="stacked")
    with pytest.raises(ValueError, match="fit"):
        P.umap_project([a], fit="first")


def test_exact_knn_matches_brute_force():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(300, 5)).astype(np.float32)
    idx, dist = P.exact_knn(u, 6, block=64)
    full = np.linalg.norm(u[:, None, :].astype(np.float64) - u[None, :, :], axis=2)
    for i in range(len(u)):
        order = np.argsort(full[i], kind="stable")[:6]
        assert idx[i, 0] == i
        np.testing.assert_array_equal(idx[i], order)
        np.testing.assert_allclose(dist[i], full[i, order], atol=1e-3)


def test_aligned_pca_removes_a_rotation_of_the_space_and_keeps_real_differences():
    from scipy.stats import special_ortho_group

    from dance_analysis.analysis.projection import aligned_pca

    rng = np.random.default_rng(3)
    docs = rng.normal(size=(200, 10)) * np.linspace(3, 0.5, 10)
    queries = rng.normal(size=(30, 10)) * np.linspace(3, 0.5, 10)
    rotation = special_ortho_group.rvs(10, random_state=4)
    shifted = queries + 2.0          # another model whose queries sit elsewhere
    out = aligned_pca([docs, docs @ rotation, docs], [queries, queries @ rotation, shifted])
    np.testing.assert_allclose(out[1][0], out[0][0], atol=1e-8)   # same space, rotated: same picture
    np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-8)
    assert np.abs(out[2][1] - out[0][1]).max() > 0.1                # different queries: a different picture
    # the coordinates are the PCA of the reference's normalised documents (up to the sign of each axis)
    u = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    centred = u - u.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2].T
    np.testing.assert_allclose(np.abs(out[0][0]), np.abs(centred @ top), atol=1e-8)
