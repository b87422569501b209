"""Claim metrics (C1-C5) and the exact negative-sampling marginals against brute force and Monte Carlo.

References are float64 numpy written here: full Gram / distance matrices, explicit loops over pairs, or a Monte
Carlo run of the project's own query-negative sampler (dance_analysis.mining.mine_query_negatives).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from dance_analysis.analysis import claim_metrics as C
from dance_analysis.analysis import ranking as R
from dance_analysis.analysis import sampling as S
from dance_analysis.mining import mine_query_negatives


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def units(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1)
    return x[n > 0] / n[n > 0, None]


# ------------------------------------------------------------------------------------------------- C1


def test_isotropic_reference_replays_the_documented_draws(rng):
    stat = lambda x: float(np.abs(x).max())                                  # noqa: E731
    out = C.isotropic_reference(stat, 7, 5, reps=6, seed=3)
    gen = np.random.default_rng(3)
    ref = np.array([stat(gen.standard_normal((7, 5))) for _ in range(6)])
    np.testing.assert_array_equal(out["values"], ref)
    assert out["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert out["sd"] == pytest.approx(ref.std(ddof=1), rel=1e-12)
    assert (out["n"], out["dim"], out["reps"]) == (7, 5, 6)
    assert np.isnan(C.isotropic_reference(stat, 3, 2, reps=1)["sd"])
    for bad in (dict(n=0, dim=3), dict(n=3, dim=0), dict(n=3, dim=3, reps=0)):
        with pytest.raises(ValueError):
            C.isotropic_reference(stat, **bad)
    with pytest.raises(ValueError, match="stat"):
        C.isotropic_reference(3.0, 4, 4)


def test_isotropic_reference_monte_carlo_matches_known_moments():
    # mean of squared N(0, 1) entries over n * dim = 20 entries: mean 1, sd sqrt(2 / 20)
    out = C.isotropic_reference(lambda x: float((x ** 2).mean()), 5, 4, reps=400, seed=0)
    assert out["mean"] == pytest.approx(1.0, abs=5 * np.sqrt(0.1 / 400))
    assert out["sd"] == pytest.approx(np.sqrt(0.1), rel=0.2)
    # first-component share of an isotropic sample with N < d sits near the Marchenko-Pastur edge
    # (1 + sqrt(d / N))^2 / d, far above the population value 1 / d
    ref = C.isotropic_reference(C.first_component_share, 60, 384, reps=5, seed=1)
    assert ref["mean"] == pytest.approx((1 + np.sqrt(384 / 60)) ** 2 / 384, rel=0.1)


def test_first_component_share_matches_svd(rng):
    x = rng.normal(size=(80, 12)) * np.linspace(0.2, 3.0, 12) + 2.0
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert C.first_component_share(x) == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-10)
    assert C.first_component_share(np.outer(rng.normal(size=30), rng.normal(size=6))) == pytest.approx(1.0)


def reference_isoscore(variances: np.ndarray) -> float:
    """Rudman et al. (2022) steps 3-6 on a variance vector, written out."""
    n = variances.size
    normalized = variances * np.sqrt(n) / np.linalg.norm(variances)
    defect = np.linalg.norm(normalized - np.ones(n)) / np.sqrt(2 * (n - np.sqrt(n)))
    return ((n - defect ** 2 * (n - np.sqrt(n))) ** 2 - n) / (n * (n - 1))


def reference_erank(singular: np.ndarray) -> float:
    p = singular / singular.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def test_subspace_isotropy_matches_svd_of_projected_data(rng):
    x = rng.normal(size=(40, 64)) * np.linspace(0.3, 2.0, 64) + 1.0
    for k in (None, 3, 10, 39):
        out = C.subspace_isotropy(x, k=k)
        kk = 10 if k is None else k                         # default max(2, 40 // 4)
        xc = x - x.mean(0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        proj = xc @ vt[:kk].T                                # coordinates in the top-k PCA subspace
        var = np.var(proj, axis=0, ddof=1)
        assert out["k"] == kk
        assert out["isoscore"] == pytest.approx(reference_isoscore(var), rel=1e-10)
        assert out["effective_rank"] == pytest.approx(reference_erank(np.linalg.svd(proj, compute_uv=False)),
                                                      rel=1e-10)
        assert out["variance_share"] == pytest.approx((s[:kk] ** 2).sum() / (s ** 2).sum(), rel=1e-10)
        assert out["effective_rank_cap"] == kk and out["isoscore_range"] == (0.0, 1.0)
        # full-space values and their caps for N = 40 <= d = 64
        full_var = np.concatenate([s ** 2 / 39, np.zeros(64 - s.size)])
        assert out["full_isoscore"] == pytest.approx(reference_isoscore(full_var), rel=1e-9)
        assert out["full_effective_rank"] == pytest.approx(reference_erank(s[s > 1e-10 * s[0]]), rel=1e-9)
        assert out["full_isoscore_cap"] == pytest.approx(38 / 63) and out["full_effective_rank_cap"] == 39
        assert out["full_isoscore"] <= out["full_isoscore_cap"] + 1e-12
        assert out["full_effective_rank"] <= out["full_effective_rank_cap"] + 1e-9


def test_subspace_isotropy_known_cases_and_caps(rng):
    # isotropic sample with N < d: the full-space IsoScore is capped at (N - 2) / (d - 1), the subspace one is ~1
    iso = C.subspace_isotropy(rng.normal(size=(60, 384)))
    assert iso["k"] == 15 and iso["isoscore"] > 0.9 and iso["full_isoscore"] < iso["full_isoscore_cap"] < 0.16
    # the cap is reached by N - 1 equal-variance orthogonal directions (a regular simplex)
    simplex = np.eye(60) - 1.0 / 60                          # 60 points, centred rank 59, equal variances
    emb = np.hstack([simplex, np.zeros((60, 384 - 60))])
    out = C.subspace_isotropy(emb, k=59)
    assert out["full_isoscore"] == pytest.approx(out["full_isoscore_cap"], rel=1e-9)
    assert out["isoscore"] == pytest.approx(1.0, abs=1e-9) and out["effective_rank"] == pytest.approx(59.0)
    with pytest.raises(ValueError, match="k"):
        C.subspace_isotropy(rng.normal(size=(10, 5)), k=6)   # > min(N - 1, d)
    with pytest.raises(ValueError, match="k"):
        C.subspace_isotropy(rng.normal(size=(10, 5)), k=1)
    with pytest.raises(ValueError, match="rows"):
        C.subspace_isotropy(rng.normal(size=(2, 5)))


# ------------------------------------------------------------------------------------------------- C2


def test_mmd2_linear_unbiased_matches_gram_matrices(rng):
    q = rng.normal(size=(23, 9)) + 0.5
    d = rng.normal(size=(31, 9)) * 2.0 - 0.2
    q[4] = 0.0                                               # zero row: left out when normalising
    for normalize in (True, False):
        a, b = (units(q), units(d)) if normalize else (q, d)
        gq, gd, gx = a @ a.T, b @ b.T, a @ b.T
        n, m = len(a), len(b)
        ref = ((gq.sum() - np.trace(gq)) / (n * (n - 1)) + (gd.sum() - np.trace(gd)) / (m * (m - 1))
               - 2 * gx.mean())
        assert C.mmd2_linear_unbiased(q, d, normalize=normalize) == pytest.approx(ref, rel=1e-10)
    same = rng.normal(size=(4000, 5))
    assert abs(C.mmd2_linear_unbiased(same[:2000], same[2000:])) < 5e-3   # unbiased: ~0 for one distribution
    with pytest.warns(RuntimeWarning, match="non-zero norm"):
        assert np.isnan(C.mmd2_linear_unbiased(np.vstack([q[:1], np.zeros((3, 9))]), d))
    with pytest.raises(ValueError, match="dimension"):
        C.mmd2_linear_unbiased(q, d[:, :4])


def brute_energy(q: np.ndarray, d: np.ndarray) -> tuple[float, float, float]:
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))   # noqa: E731
    dq, dd, dx = dist(q, q), dist(d, d), dist(q, d)
    n, m = len(q), len(d)
    return dx.mean(), dq.sum() / (n * (n - 1)), dd.sum() / (m * (m - 1))


def test_energy_distance_exact_matches_pair_loops(rng, monkeypatch):
    q = rng.normal(size=(17, 6)) + 0.7
    d = rng.normal(size=(26, 6)) * 1.5
    d[3] = 0.0
    monkeypatch.setattr(C._exact_mean_distance, "__defaults__", (5,))   # many small blocks
    for normalize in (True, False):
        a, b = (units(q), units(d)) if normalize else (q, d)
        exd, exq, exdd = brute_energy(a, b)
        out = C.energy_distance(q, d, normalize=normalize)
        assert out["methods"] == {"qq": "exact", "dd": "exact", "qd": "exact"}
        assert out["e_qd"] == pytest.approx(exd, rel=1e-10)
        assert out["e_qq"] == pytest.approx(exq, rel=1e-10)
        assert out["e_dd"] == pytest.approx(exdd, rel=1e-10)
        assert out["value"] == pytest.approx(2 * exd - exq - exdd, rel=1e-9)
        assert out["excluded_zero"] == ((0, 1) if normalize else (0, 0))
        assert out["pairs"] == {"qq": 17 * 16 // 2, "dd": len(b) * (len(b) - 1) // 2, "qd": 17 * len(b)}


def test_energy_distance_sampled_is_unbiased_and_seeded(rng):
    q = rng.normal(size=(40, 5)) + 0.4
    d = rng.normal(size=(60, 5))
    uq, ud = units(q), units(d)
    exd, exq, exdd = brute_energy(uq, ud)
    out = C.energy_distance(q, d, max_pairs=500, seed=5)
    assert out["methods"] == {"qq": "sampled", "dd": "sampled", "qd": "sampled"}
    assert out["pairs"] == {"qq": 500, "dd": 500, "qd": 500}
    # sd of each term: sd of the pair distances / sqrt(500) (uniform draws with replacement over distinct pairs)
    off = lambda a: np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))[np.triu_indices(len(a), 1)]   # noqa: E731
    cross = np.sqrt(((uq[:, None] - ud[None]) ** 2).sum(-1)).ravel()
    sd = np.sqrt(4 * cross.var() + off(uq).var() + off(ud).var()) / np.sqrt(500)
    assert abs(out["value"] - (2 * exd - exq - exdd)) < 5 * sd
    assert C.energy_distance(q, d, max_pairs=500, seed=5)["value"] == out["value"]
    assert C.energy_distance(q, d, max_pairs=500, seed=6)["value"] != out["value"]
    # mixed: the cross term (2,400 pairs) sampled, the within terms exact
    mixed = C.energy_distance(q, d, max_pairs=2000)
    assert mixed["methods"] == {"qq": "exact", "dd": "exact", "qd": "sampled"}
    assert mixed["e_qq"] == pytest.approx(exq, rel=1e-10)


def test_energy_distance_known_cases(rng):
    x = rng.normal(size=(3000, 4))
    assert abs(C.energy_distance(x[:1500], x[1500:])["value"]) < 0.01      # same distribution
    assert C.energy_distance(x[:1500], x[1500:] + 2.0)["value"] > 0.3
    with pytest.warns(RuntimeWarning, match="needs 2"):
        assert np.isnan(C.energy_distance(x[:1], x[1:10])["value"])


def test_nearest_document_ratio_matches_sorted_cosines(rng, monkeypatch):
    q = rng.normal(size=(19, 8)) + 0.3
    d = rng.normal(size=(33, 8)) + 0.5
    d[7] = d[2] * 3.0                                        # a duplicate direction: counts as a neighbour of 2
    d[11] = 0.0                                              # zero document: never a neighbour, not counted
    q[5] = 0.0                                               # zero query: NaN, left out
    monkeypatch.setattr(C._top_k_mean_cosine, "__defaults__", (4, 6))   # many blocks, running top-k
    ud = d / np.where(np.linalg.norm(d, axis=1) > 0, np.linalg.norm(d, axis=1), 1.0)[:, None]
    uq = q / np.where(np.linalg.norm(q, axis=1) > 0, np.linalg.norm(q, axis=1), 1.0)[:, None]
    good = np.linalg.norm(d, axis=1) > 0
    for k in (1, 3, 10):
        out = C.nearest_document_ratio(q, d, k=k)
        per_q = np.full(19, np.nan)
        for i in range(19):
            if i != 5:
                per_q[i] = np.sort(ud[good] @ uq[i])[::-1][:k].mean()
        per_d = np.full(33, np.nan)
        for m in range(33):
            if good[m]:
                others = [ud[j] @ ud[m] for j in range(33) if good[j] and j != m]
                per_d[m] = np.mean(sorted(others, reverse=True)[:k])
        np.testing.assert_allclose(out["per_query"], per_q, rtol=1e-10, atol=0)
        np.testing.assert_allclose(out["per_document"], per_d, rtol=1e-10, atol=0)
        assert out["query_level"] == pytest.approx(np.nanmean(per_q), rel=1e-10)
        assert out["document_level"] == pytest.approx(np.nanmean(per_d), rel=1e-10)
        assert out["ratio"] == pytest.approx(np.nanmean(per_q) / np.nanmean(per_d), rel=1e-10)
        assert (out["n_queries"], out["n_documents"], out["k"]) == (18, 32, k)
    assert C.nearest_document_ratio(q, d, k=1)["per_document"][2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k"):
        C.nearest_document_ratio(q, d, k=32)                 # 32 non-zero documents: at most 31 others


# ------------------------------------------------------------------------------------------------- C3


def test_judged_margin_matches_pair_loops(rng):
    q = rng.normal(size=(12, 6))
    d = rng.normal(size=(40, 6))
    d[39] = d[38]                                            # identical documents: tied scores
    d[30] = 0.0                                              # zero document: no cosine, inner product 0
    pos = [(0, 1), (0, 2), (0, 38), (1, 5), (2, 7), (2, 30), (3, 9), (5, 11), (5, 11), (7, 12)]
    neg = [(0, 3), (0, 39), (0, 4), (1, 6), (1, 8), (2, 10), (2, 13), (2, 14), (4, 15), (5, 16), (7, 30)]
    out = C.judged_margin(q, d, np.array(pos), np.array(neg))
    P, N = {}, {}
    for i, j in set(pos):
        P.setdefault(i, []).append(j)
    for i, j in set(neg):
        N.setdefault(i, []).append(j)
    both = sorted(set(P) & set(N))
    cos = lambda i, j: (q[i] @ d[j] / (np.linalg.norm(q[i]) * np.linalg.norm(d[j]))   # noqa: E731
                        if np.linalg.norm(d[j]) > 0 else None)
    margin, auc = [], []
    for i in both:
        cp = [c for c in (cos(i, j) for j in P[i]) if c is not None]
        cn = [c for c in (cos(i, j) for j in N[i]) if c is not None]
        margin.append(np.mean(cp) - np.mean(cn) if cp and cn else np.nan)
        wins = 0.0
        for j in P[i]:
            for m in N[i]:
                sj, sl = q[i] @ d[j], q[i] @ d[m]
                wins += 1.0 if sj > sl else 0.5 if sj == sl else 0.0
        auc.append(wins / (len(P[i]) * len(N[i])))
    assert out["queries"].tolist() == both == [0, 1, 2, 5, 7]
    np.testing.assert_allclose(out["margin"], margin, rtol=1e-10, atol=0)
    np.testing.assert_allclose(out["auc"], auc, rtol=1e-12, atol=0)
    assert np.isnan(out["margin"][-1])                       # query 7: its only non-relevant doc is zero
    assert out["margin_mean"] == pytest.approx(np.nanmean(margin), rel=1e-10)
    assert out["auc_mean"] == pytest.approx(np.mean(auc), rel=1e-12)
    assert (out["n_queries"], out["n_positive_pairs"], out["n_negative_pairs"]) == (5, 9, 11)
    empty = C.judged_margin(q, d, np.array([[0, 1]]), np.array([[1, 2]]))
    assert empty["n_queries"] == 0 and np.isnan(empty["auc_mean"]) and empty["auc"].size == 0
    with pytest.raises(ValueError, match=r"both relevant and non-relevant: \(0, 1\)"):
        C.judged_margin(q, d, np.array([[0, 1]]), np.array([[0, 1], [0, 2]]))
    with pytest.raises(ValueError, match="out of range"):
        C.judged_margin(q, d, np.array([[0, 40]]), np.array([[0, 1]]))


def test_d2q_mrr_ranks_among_all_queries_including_those_without_pairs(rng):
    """q holds 300 queries, only 15 of which have a positive document: the other 285 still compete."""
    q = rng.normal(size=(300, 16)).astype(np.float32)
    d = rng.normal(size=(40, 16)).astype(np.float32)
    judged = rng.choice(300, size=15, replace=False)
    pairs = np.array([(judged[i % 15], i) for i in range(40)], dtype=np.int64)
    d[:40] += 0.8 * q[pairs[:, 0]]                           # positives somewhat close: ranks vary around 1-30
    scores = d.astype(np.float64) @ q.astype(np.float64).T   # [docs, all queries]
    rr = []
    for j in range(40):
        i = pairs[j, 0]
        rank = 1 + int((scores[j] > scores[j, i]).sum())
        rr.append(1.0 / rank if rank <= 10 else 0.0)
    out = R.d2q_metrics(q, d, pairs)
    assert out["MRR@10"] == pytest.approx(np.mean(rr), rel=1e-12)
    remap = {int(old): new for new, old in enumerate(judged)}
    only = R.d2q_metrics(q[judged], d, np.array([(remap[int(i)], j) for i, j in pairs]))
    assert only["MRR@10"] > out["MRR@10"]                    # fewer competitors: the unjudged queries counted


# ------------------------------------------------------------------------------------------------- C4


def brute_marginals(topk: np.ndarray, mask: np.ndarray, n_queries: int, n: int) -> tuple[np.ndarray, list]:
    """pi(q) = sum_r 1[q in cand(r)] min(n, |cand(r)|) / |cand(r)|, with explicit loops; also per-row dicts."""
    pi = np.zeros(n_queries)
    per_row = []
    for r in range(topk.shape[0]):
        cand, seen = [], set()
        for j in range(topk.shape[1]):
            v = int(topk[r, j])
            if v < 0 or v in seen:
                continue
            seen.add(v)                                      # the first occurrence decides
            if not mask[r, j]:
                cand.append(v)
        probs = {v: min(n, len(cand)) / len(cand) for v in cand}
        for v, p in probs.items():
            pi[v] += p
        per_row.append(probs)
    return pi, per_row


def test_marginals_equal_monte_carlo_of_the_project_sampler():
    """pi against 20,000 refreshes of dance_analysis.mining.mine_query_negatives (the trainer's sampler)."""
    gen = np.random.default_rng(4)
    n_pool, n_docs, k, n = 60, 25, 10, 3                    # queries 50-58 are nobody's candidate
    qids = np.array([f"q{i}" for i in range(n_pool)])
    dids = np.array([f"d{j}" for j in range(n_docs)])
    indices = np.stack([gen.choice(50, size=k, replace=False) for _ in range(n_docs)]).astype(np.int64)
    indices[0, 7:] = -1                                      # padding
    indices[1, 5] = indices[1, 2]                            # repeated query in a row
    indices[2, :] = indices[2, 0]                            # a row of one query repeated (its positive below)
    indices[:, 9] = np.where(indices[:, 9] >= 0, 59, -1)     # query 59 in nearly every row
    positives = {}                                           # query id -> its labelled positive documents
    pairs = []
    for j in range(n_docs):
        own = [int(indices[j, 0])] if j % 3 else [int(indices[j, 0]), int(gen.integers(50))]
        for i in own:
            positives.setdefault(qids[i], set()).add(dids[j])
            pairs.append((qids[i], dids[j]))
    pairs = sorted(set(pairs))
    anchor = np.array([int(p[1][1:]) for p in pairs])
    topk = indices[anchor]                                   # one row per positive pair, as the trainer draws
    mask = np.array([[v >= 0 and dids[a] in positives.get(qids[v], set()) for v in row]
                     for a, row in zip(anchor, topk)])
    pi = S.negative_sampling_marginals(topk, mask, n_queries=n_pool, n=n)
    ref, per_row = brute_marginals(topk, mask, n_pool, n)
    np.testing.assert_allclose(pi, ref, rtol=1e-12, atol=1e-15)
    assert pi[int(indices[2, 0])] == pytest.approx(ref[int(indices[2, 0])])

    rankings = SimpleNamespace(query_ids=dids, doc_ids=qids, indices=indices, scores=None)
    reps, chunk = 20000, 2500
    sampler = np.random.default_rng(9)
    counts = np.zeros(n_pool)
    for _ in range(reps // chunk):                           # 2,500 refreshes per call: the pairs repeated
        _, c = mine_query_negatives(rankings, pairs * chunk, positives, n, sampler)
        counts += c
    mc = counts / reps
    var = np.zeros(n_pool)                                   # Poisson-binomial variance of one refresh's count
    for probs in per_row:
        for v, p in probs.items():
            var[v] += p * (1 - p)
    sd = np.sqrt(var / reps)
    assert np.all(np.abs(mc - pi) <= 5 * sd + 1e-12), np.abs(mc - pi) / np.maximum(sd, 1e-12)
    assert np.all(mc[pi == 0] == 0) and (pi == 0).any()


def test_marginals_separate_a_hubby_space_from_an_isotropic_one():
    gen = np.random.default_rng(21)
    n_q, n_d, dim = 200, 400, 32
    u = np.zeros(dim)
    u[0] = 1.0
    base = gen.normal(size=(n_q, dim))
    spaces = {"isotropic": base, "hubby": base + 6.0 * np.abs(gen.normal(size=(n_q, 1))) * u}   # norm hubs on u
    docs = gen.normal(size=(n_d, dim)) + 2.0 * u
    pos_query = np.arange(n_d) % n_q                         # document j's positive query
    for k in (5, 10, 20):
        stats = {}
        for name, q in spaces.items():
            topk = np.argsort(-(docs @ q.T), axis=1, kind="stable")[:, :k]
            mask = topk == pos_query[:, None]
            pi = S.negative_sampling_marginals(topk, mask, n_queries=n_q, n=4)
            np.testing.assert_allclose(pi, brute_marginals(topk, mask, n_q, 4)[0], rtol=1e-12, atol=1e-15)
            stats[name] = (pi, S.sampling_uniformity(pi))
        (pi_i, s_i), (pi_h, s_h) = stats["isotropic"], stats["hubby"]
        assert not np.allclose(pi_i, pi_h)
        assert s_h["gini"] > s_i["gini"] + 0.1
        assert s_h["zero_share"] > s_i["zero_share"]
        assert s_h["entropy_norm"] < s_i["entropy_norm"]
        assert pi_i.sum() == pytest.approx(pi_h.sum())          # same number of draws, spread differently


def test_sampling_uniformity_against_brute_force():
    gen = np.random.default_rng(8)
    pi = gen.gamma(0.5, size=57) * (gen.random(57) < 0.7)
    out = S.sampling_uniformity(pi)
    mad = np.abs(pi[:, None] - pi[None, :]).sum() / (2 * pi.size ** 2 * pi.mean())
    assert out["gini"] == pytest.approx(mad, rel=1e-10)
    assert out["zero_share"] == pytest.approx(np.mean(pi == 0))
    assert out["entropy_norm"] == pytest.approx(entropy(pi / pi.sum()) / np.log(57), rel=1e-10)
    assert out["total"] == pytest.approx(pi.sum()) and out["n"] == 57
    flat = S.sampling_uniformity(np.full(10, 0.3))
    assert flat["gini"] == pytest.approx(0.0, abs=1e-15) and flat["entropy_norm"] == pytest.approx(1.0)


def test_marginals_bad_input():
    ids = np.array([[0, 1, -1], [2, 2, 1]])
    mask = np.zeros(ids.shape, dtype=bool)
    assert S.negative_sampling_marginals(ids, mask, n_queries=3, n=0).sum() == 0
    np.testing.assert_allclose(S.negative_sampling_marginals(ids, mask, n_queries=3, n=1), [0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"out of range .* row\(s\) 1"):
        S.negative_sampling_marginals(np.array([[0, 1], [3, 0]]), np.zeros((2, 2), bool), n_queries=3)
    with pytest.raises(ValueError, match="positive_mask"):
        S.negative_sampling_marginals(ids, mask[:, :2], n_queries=3)
    with pytest.raises(ValueError, match="integer"):
        S.negative_sampling_marginals(ids.astype(float), mask, n_queries=3)


def test_softmax_stats_drop_positives_is_the_softmax_over_negatives():
    gen = np.random.default_rng(6)
    scores = gen.normal(size=(9, 8)) * 2
    scores[3, 6:] = -np.inf                                  # padding
    mask = gen.random((9, 8)) < 0.25
    mask[0] = [True] + [False] * 7
    mask[5] = True                                           # only positives: no candidate left
    out = S.softmax_stats(scores, mask, temperature=0.5, drop_positives=True)
    for r in range(9):
        keep = ~mask[r] & np.isfinite(scores[r])
        if not keep.any():
            assert np.isnan(out["entropy"][r]) and out["k"][r] == 0
            continue
        p = softmax(scores[r, keep] / 0.5)
        assert out["entropy"][r] == pytest.approx(entropy(p), abs=1e-12)
        assert out["max_prob"][r] == pytest.approx(p.max(), rel=1e-12)
        assert out["k"][r] == keep.sum() and out["positive_mass"][r] == 0.0
    kept = S.softmax_stats(scores, mask, temperature=0.5)
    assert kept["k"][0] == 8 and out["k"][0] == 7
    with pytest.raises(ValueError, match="positive_mask"):
        S.softmax_stats(scores, drop_positives=True)


# ------------------------------------------------------------------------------------------------- C5


def brute_joint(q: np.ndarray, d: np.ndarray, t: float) -> tuple[float, float, float, float]:
    uq, ud = units(q), units(d)
    pot = lambda a, b: np.exp(-t * ((a[:, None] - b[None]) ** 2).sum(-1))   # noqa: E731
    pq, pd, px = pot(uq, uq), pot(ud, ud), pot(uq, ud)
    n, m = len(uq), len(ud)
    eqq = (pq.sum() - np.trace(pq)) / (n * (n - 1))
    edd = (pd.sum() - np.trace(pd)) / (m * (m - 1))
    eqd = px.mean()
    return np.log(0.25 * eqq + 0.25 * edd + 0.5 * eqd), np.log(eqq), np.log(edd), np.log(eqd)


def test_balanced_joint_uniformity_matches_pair_loops(rng, monkeypatch):
    q = rng.normal(size=(14, 7)) + 1.0
    d = rng.normal(size=(50, 7))
    d[2] = 0.0
    monkeypatch.setattr(C._cross_log_potential, "__defaults__", (6,))
    for t in (0.5, 2.0, 9.0):
        value, lqq, ldd, lqd = brute_joint(q, d, t)
        out = C.balanced_joint_uniformity(q, d, t=t)
        assert out["methods"] == {"queries": "exact", "documents": "exact", "cross": "exact"}
        assert out["cross"] == pytest.approx(lqd, rel=1e-10)          # float64 cross term
        # the within terms are align_uniform.uniformity's exact values, computed with float32 products
        assert out["queries"] == pytest.approx(lqq, abs=2e-6)
        assert out["documents"] == pytest.approx(ldd, abs=2e-6)
        assert out["value"] == pytest.approx(value, abs=2e-6)
        assert out["excluded_zero"] == (0, 1) and (out["n_q"], out["n_d"]) == (14, 49)
        assert out["pairs"] == {"queries": 91, "documents": 49 * 48 // 2, "cross": 14 * 49}


def test_balanced_joint_uniformity_weights_and_sampling(rng):
    q = rng.normal(size=(30, 6)) + 1.5
    d = rng.normal(size=(600, 6))
    value, _, _, lqd = brute_joint(q, d, 2.0)
    exact = C.balanced_joint_uniformity(q, d)
    from dance_analysis.analysis.align_uniform import uniformity
    union = uniformity([q, d])["value"]
    assert abs(exact["value"] - union) > 0.05                # equal weights differ from the size-weighted union
    sampled = C.balanced_joint_uniformity(q, d, max_exact=100, n_pairs=200_000, seed=1)
    assert sampled["methods"] == {"queries": "exact", "documents": "sampled", "cross": "sampled"}
    assert sampled["cross"] == pytest.approx(lqd, abs=0.02)
    assert sampled["value"] == pytest.approx(value, abs=0.02)
    again = C.balanced_joint_uniformity(q, d, max_exact=100, n_pairs=200_000, seed=1)
    assert again["value"] == sampled["value"]
    with pytest.raises(ValueError, match="t"):
        C.balanced_joint_uniformity(q, d, t=0)
