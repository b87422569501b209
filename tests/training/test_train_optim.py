"""The optimisers and the schedule of dance-train against references written out here: LAMB as the ANCE / DANCE
reference runs update (no bias correction, the weight decay added to the Adam step, trust ratio with the weight norm
clamped at 10), AdamW as torch's, and the warm-up + linear decay schedule (with a far decay end: almost constant)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dance_analysis.training import checkpoint as ckpt
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.optim import build_optimizer, build_scheduler, linear_schedule


def reference_lamb_step(w, g, m, v, *, lr, beta1, beta2, eps, weight_decay):
    """One step of the reference LAMB on one tensor (float64): returns the new (w, m, v)."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    step = m / (v.sqrt() + eps) + weight_decay * w
    weight_norm = w.norm().clamp(0, 10)
    step_norm = step.norm()
    trust = 1.0 if weight_norm == 0 or step_norm == 0 else weight_norm / step_norm
    return w - lr * trust * step, m, v


class Two(nn.Module):
    """A large matrix (norm > 10: the clamp acts), a small one, and a bias (no weight decay)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.big = nn.Parameter(torch.randn(6, 5, generator=gen) * 4.0)
        self.small = nn.Parameter(torch.randn(3, 4, generator=gen) * 0.1)
        self.bias = nn.Parameter(torch.randn(4, generator=gen) * 0.1)


def test_lamb_matches_the_reference_update():
    lr, beta1, beta2, eps, wd = 5e-3, 0.9, 0.999, 1e-6, 0.01
    recipe = recipe_from_dict({"optim": {"optimizer": "lamb", "lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                                         "weight_decay": wd}})
    model = Two()
    assert model.big.norm() > 10 > model.small.norm()
    optimizer = build_optimizer(model, recipe)
    reference = {name: (p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64),
                        torch.zeros_like(p, dtype=torch.float64)) for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = {name: torch.randn(p.shape, generator=gen) for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        optimizer.step()
        for name, (w, m, v) in reference.items():
            decay = 0.0 if name == "bias" else wd
            reference[name] = reference_lamb_step(w, grads[name].double(), m, v, lr=lr, beta1=beta1, beta2=beta2,
                                                  eps=eps, weight_decay=decay)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), reference[name][0], rtol=1e-5, atol=1e-7)
    moved = {name: float((p.detach().double() - Two().state_dict()[name].double()).norm())
             for name, p in model.named_parameters()}
    assert moved["big"] > moved["small"] > 0     # steps scale with the (clamped) weight norm, unlike Adam's


def test_lamb_state_round_trips_through_a_safe_checkpoint_file(tmp_path):
    recipe = recipe_from_dict({"optim": {"optimizer": "lamb", "lr": 1e-3}})
    model = Two()
    optimizer = build_optimizer(model, recipe)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    ckpt.torch_save_atomic(optimizer.state_dict(), tmp_path / "optimizer.pt")
    again = build_optimizer(Two(), recipe)
    again.load_state_dict(ckpt.torch_load_safe(tmp_path / "optimizer.pt"))   # weights_only=True
    for a, b in zip(optimizer.state.values(), again.state.values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])


def test_adamw_is_torchs_with_decay_only_on_matrices():
    recipe = recipe_from_dict({"optim": {"optimizer": "adamw", "weight_decay": 0.1}})
    optimizer = build_optimizer(Two(), recipe)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 1]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_the_schedule_warms_up_then_decays_linearly_to_decay_steps():
    factor = linear_schedule(3, 1003)
    assert [factor(s) for s in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert factor(503) == pytest.approx(0.5) and factor(1003) == 0.0 and factor(2000) == 0.0
    recipe = recipe_from_dict({"optim": {"lr": 1.0, "warmup_steps": 2, "max_steps": 10, "decay_steps": 1_000_000}})
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, recipe)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert rates[-1] == pytest.approx((1_000_000 - 9) / (1_000_000 - 2)) and rates[-1] > 0.99999   # ~constant
    with pytest.raises(Exception, match="decay_steps"):
        recipe_from_dict({"optim": {"warmup_steps": 5, "decay_steps": 5}}).validate()
