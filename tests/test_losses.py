"""The ANCE / DANCE losses against hand computations in plain Python (math.exp / math.log)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dance_analysis.errors import DanceError
from dance_analysis.losses import (
    DanceObjective,
    alignment_loss,
    d2q_loss,
    dance_loss,
    q2d_loss,
    uniformity_loss,
)


def dot(a, b) -> float:
    return float(sum(x * y for x, y in zip(a, b)))


def hand_nll(anchor, positive, negatives, t) -> float:
    """-log(e^{s+/t} / (e^{s+/t} + sum e^{s-/t})) for one anchor, computed with math.exp / math.log."""
    pos = math.exp(dot(anchor, positive) / t)
    neg = sum(math.exp(dot(anchor, n) / t) for n in negatives)
    return -math.log(pos / (pos + neg))


def rand(*shape, seed=0, scale=0.5):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


def tt(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_q2d_pairwise_matches_hand_computation():
    q, dp, dn = rand(4, 3, seed=1), rand(4, 3, seed=2), rand(4, 3, seed=3)
    for t in (1.0, 0.5, 2.0):
        expected = sum(hand_nll(q[b], dp[b], [dn[b]], t) for b in range(4)) / 4
        got = q2d_loss(tt(q), tt(dp), tt(dn), temperature=t).item()
        assert got == pytest.approx(expected, rel=1e-12)


def test_q2d_known_value_zero_vectors_is_log2():
    z = torch.zeros(3, 5)
    assert q2d_loss(z, z, z).item() == pytest.approx(math.log(2))
    assert q2d_loss(z, z, torch.zeros(3, 4, 5)).item() == pytest.approx(math.log(5))


def test_q2d_multiple_negatives_matches_hand_computation():
    q, dp, dn = rand(3, 4, seed=4), rand(3, 4, seed=5), rand(3, 5, 4, seed=6)
    expected = sum(hand_nll(q[b], dp[b], list(dn[b]), 0.7) for b in range(3)) / 3
    assert q2d_loss(tt(q), tt(dp), tt(dn), temperature=0.7).item() == pytest.approx(expected, rel=1e-12)
    # [B, 1, h] is the same as the pairwise [B, h] form.
    assert q2d_loss(tt(q), tt(dp), tt(dn[:, 0])).item() == pytest.approx(
        q2d_loss(tt(q), tt(dp), tt(dn[:, :1])).item(), rel=1e-12)


@pytest.mark.parametrize("n", [None, 3])
def test_q2d_in_batch_matches_explicit_loop(n):
    B, h, t = 4, 3, 0.8
    q, dp = rand(B, h, seed=7), rand(B, h, seed=8)
    dn = rand(B, h, seed=9) if n is None else rand(B, n, h, seed=9)
    negs_of = (lambda j: [dn[j]]) if n is None else (lambda j: list(dn[j]))
    total = 0.0
    for b in range(B):
        negatives = list(negs_of(b))
        for j in range(B):
            if j != b:
                negatives.append(dp[j])
                negatives.extend(negs_of(j))
        assert len(negatives) == B * (1 if n is None else n) + B - 1
        total += hand_nll(q[b], dp[b], negatives, t)
    got = q2d_loss(tt(q), tt(dp), tt(dn), temperature=t, in_batch=True).item()
    assert got == pytest.approx(total / B, rel=1e-12)
    assert got > q2d_loss(tt(q), tt(dp), tt(dn), temperature=t).item()   # more negatives, larger loss


def test_in_batch_counts_duplicates():
    """Nothing is deduplicated: two instances of the same (q, d+) make d+ a negative of q as well."""
    q = tt(rand(1, 3, seed=10)).repeat(2, 1)
    dp = tt(rand(1, 3, seed=11)).repeat(2, 1)
    dn = tt(rand(2, 3, seed=12))
    got = q2d_loss(q, dp, dn, in_batch=True).item()
    qa, pa, na = q[0].tolist(), dp[0].tolist(), dn.tolist()
    expected = sum(hand_nll(qa, pa, [na[b], pa, na[1 - b]], 1.0) for b in range(2)) / 2
    assert got == pytest.approx(expected, rel=1e-12)


def test_d2q_is_the_dual_task():
    q, dp, qn = rand(3, 4, seed=13), rand(3, 4, seed=14), rand(3, 2, 4, seed=15)
    expected = sum(hand_nll(dp[b], q[b], list(qn[b]), 0.5) for b in range(3)) / 3
    assert d2q_loss(tt(dp), tt(q), tt(qn), temperature=0.5).item() == pytest.approx(expected, rel=1e-12)
    # In-batch: the other instances' queries and negative queries join the denominator.
    total = 0.0
    for b in range(3):
        negatives = list(qn[b]) + [x for j in range(3) if j != b for x in [q[j], *qn[j]]]
        total += hand_nll(dp[b], q[b], negatives, 0.5)
    assert d2q_loss(tt(dp), tt(q), tt(qn), 0.5, in_batch=True).item() == pytest.approx(total / 3, rel=1e-12)


def test_temperature_scales_scores():
    q, dp, dn = tt(rand(5, 4, seed=16)), tt(rand(5, 4, seed=17)), tt(rand(5, 2, 4, seed=18))
    for in_batch in (False, True):
        a = q2d_loss(q, dp, dn, temperature=0.25, in_batch=in_batch).item()
        b = q2d_loss(q / 0.25, dp, dn, temperature=1.0, in_batch=in_batch).item()
        assert a == pytest.approx(b, rel=1e-12)
    # Lower temperature sharpens: with the positive scored highest the loss falls towards 0.
    dp_best = q * 3
    assert q2d_loss(q, dp_best, dn, temperature=0.01).item() < q2d_loss(q, dp_best, dn, temperature=1.0).item()
    with pytest.raises(DanceError, match="temperature"):
        q2d_loss(q, dp, dn, temperature=0.0)


def test_gradients_finite_with_small_temperature():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    dp = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    dn = torch.nn.functional.normalize(torch.randn(8, 3, 16), dim=-1).requires_grad_()
    qn = torch.nn.functional.normalize(torch.randn(8, 3, 16), dim=-1).requires_grad_()
    total, parts = dance_loss(q * 30, dp * 30, dn * 30, qn * 30, temperature=0.01, in_batch=True,
                              w_align=0.5, w_uniform=0.5)
    total.backward()
    assert math.isfinite(total.item())
    for x in (q, dp, dn, qn):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert set(parts) == {"q2d", "d2q", "align", "uniform", "total"}


def test_shape_errors():
    with pytest.raises(DanceError, match="negatives"):
        q2d_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(DanceError):
        q2d_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_alignment_matches_hand_computation():
    x, y = rand(5, 3, seed=19), rand(5, 3, seed=20)
    xn, yn = unit(x), unit(y)
    for alpha in (2, 1, 3):
        expected = sum(math.sqrt(sum((a - b) ** 2 for a, b in zip(xn[i], yn[i]))) ** alpha for i in range(5)) / 5
        assert alignment_loss(tt(x), tt(y), alpha=alpha).item() == pytest.approx(expected, rel=1e-9)
    assert alignment_loss(tt(x), tt(x)).item() == pytest.approx(0.0, abs=1e-12)
    assert alignment_loss(tt(x), -tt(x)).item() == pytest.approx(4.0)


def test_uniformity_matches_hand_computation():
    x = rand(6, 4, seed=21)
    xn = unit(x)
    for t in (2.0, 5.0):
        terms = [math.exp(-t * sum((a - b) ** 2 for a, b in zip(xn[i], xn[j])))
                 for i in range(6) for j in range(i + 1, 6)]
        expected = math.log(sum(terms) / len(terms))
        assert uniformity_loss(tt(x), t=t).item() == pytest.approx(expected, rel=1e-9)
    # Identical points: log mean e^0 = 0, the maximum; gradients stay finite.
    same = tt(np.ones((4, 3))).requires_grad_()
    loss = uniformity_loss(same)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-9)
    assert torch.isfinite(same.grad).all()
    assert uniformity_loss(tt(x[:1])).item() == 0.0


def test_dance_loss_combines_parts():
    q, dp = tt(rand(4, 3, seed=22)), tt(rand(4, 3, seed=23))
    dn, qn = tt(rand(4, 3, seed=24)), tt(rand(4, 3, seed=25))
    total, parts = dance_loss(q, dp, dn, qn, w_q2d=1.0, w_d2q=0.1, temperature=0.5, w_align=0.2,
                              w_uniform=0.3, uniform_t=2.0)
    qa, pa, na, qna = (a.numpy() for a in (q, dp, dn, qn))
    l_q2d = sum(hand_nll(qa[b], pa[b], [na[b]], 0.5) for b in range(4)) / 4
    l_d2q = sum(hand_nll(pa[b], qa[b], [qna[b]], 0.5) for b in range(4)) / 4
    assert parts["q2d"] == pytest.approx(l_q2d, rel=1e-12)
    assert parts["d2q"] == pytest.approx(l_d2q, rel=1e-12)
    expected = l_q2d + 0.1 * l_d2q + 0.2 * parts["align"] + 0.3 * parts["uniform"]
    assert total.item() == pytest.approx(expected, rel=1e-12)
    assert parts["total"] == pytest.approx(expected, rel=1e-12)
    assert parts["uniform"] == pytest.approx(
        0.5 * (uniformity_loss(q).item() + uniformity_loss(dp).item()), rel=1e-12)


def test_ance_objective_needs_no_query_negatives():
    q, dp, dn = tt(rand(3, 3, seed=26)), tt(rand(3, 3, seed=27)), tt(rand(3, 3, seed=28))
    ance = DanceObjective.for_objective("ance", temperature=0.5)
    assert not ance.uses_query_negatives
    total, parts = ance(q, dp, dn, None)
    assert set(parts) == {"q2d", "total"}
    assert total.item() == pytest.approx(q2d_loss(q, dp, dn, 0.5).item(), rel=1e-12)
    dance = DanceObjective.for_objective("dance", temperature=0.5)
    assert dance.w_d2q == 0.1 and dance.uses_query_negatives
    with pytest.raises(DanceError, match="q_neg"):
        dance(q, dp, dn, None)
    with pytest.raises(DanceError, match="objective"):
        DanceObjective.for_objective("dpr")


def test_objective_from_the_recipe_is_the_one_loss_object():
    """The recipe's loss section, DanceObjective and dance_loss name the same parameters, so callers never
    spell them out: DanceObjective.from_config reads them by name and calling it computes dance_loss."""
    import dataclasses
    import inspect

    from dance_analysis.training.config import LossConfig

    fields = [f.name for f in dataclasses.fields(DanceObjective)]
    keyword = [name for name, p in inspect.signature(dance_loss).parameters.items() if p.kind is p.KEYWORD_ONLY]
    # gather (the ranks' batch) and tensor_parts (parts left on the device): per-call arguments, not settings
    assert fields + ["gather", "tensor_parts"] == keyword
    recipe_weights = [f.name for f in dataclasses.fields(LossConfig) if f.name != "objective"]
    assert set(recipe_weights) == set(fields) - {"temperature"}

    config = LossConfig(objective="dance", w_q2d=0.7, w_d2q=0.2, in_batch=True, w_align=0.1, w_uniform=0.3,
                        uniform_t=5.0)
    objective = DanceObjective.from_config(config, temperature=0.5)
    assert objective == DanceObjective(w_q2d=0.7, w_d2q=0.2, temperature=0.5, in_batch=True, w_align=0.1,
                                       w_uniform=0.3, uniform_t=5.0)
    ance = DanceObjective.from_config(LossConfig(objective="ance", w_d2q=0.4), temperature=1.0)
    assert ance.w_d2q == 0.0 and not ance.uses_query_negatives
    q, dp = tt(rand(4, 3, seed=31)), tt(rand(4, 3, seed=32))
    dn, qn = tt(rand(4, 2, 3, seed=33)), tt(rand(4, 2, 3, seed=34))
    total, parts = objective(q, dp, dn, qn)
    expected, expected_parts = dance_loss(q, dp, dn, qn, w_q2d=0.7, w_d2q=0.2, temperature=0.5, in_batch=True,
                                          w_align=0.1, w_uniform=0.3, uniform_t=5.0)
    assert total.item() == expected.item() and parts == expected_parts
