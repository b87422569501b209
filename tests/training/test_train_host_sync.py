"""Host synchronisation of the training step: the values a step logs (loss parts, gradient norm, the non-finite
flag) stay on the device and reach the host once per logging interval (``log.every``), and before every
checkpoint; the divergence check runs there, and a NaN still stops training with :class:`TrainingDiverged` naming
the step where it appeared, before any checkpoint holds the weights it produced.

A host synchronisation is counted as a call, made from the package's own code, of what makes the host wait for
the device (``Tensor.item``, ``float()`` / ``bool()`` / ``int()`` of a tensor, ``Tensor.tolist`` / ``.numpy``,
``torch.cuda.synchronize``) or of a collective that returns host values (``DistContext.all_reduce_sum``,
``broadcast_object``, ``all_gather_objects``)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import train_support as ts
from dance_analysis.training import checkpoint as ckpt
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.distributed import DistContext
from dance_analysis.training.loop import Trainer, TrainingDiverged, train

PACKAGE = os.sep + "dance_analysis" + os.sep


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_setup):
    with tiny_setup(tmp_path_factory.mktemp("host-sync")) as env:
        yield env


def _recipe(env, **sections):
    sections.setdefault("log", {"tensorboard": False, "progress": False})
    return recipe_from_dict(ts.recipe_dict(env["manifest"], env["encoder"], env["cache"], **sections)).validate()


class SyncCounter:
    """Counts host synchronisations requested by the package's code while ``Trainer._train_step`` runs."""

    TENSOR = ("item", "tolist", "numpy", "__float__", "__bool__", "__int__")
    DIST = ("all_reduce_sum", "broadcast_object", "all_gather_objects")

    def __init__(self, monkeypatch):
        self.active = False
        self.per_step: list[int] = []
        self.calls: list[str] = []
        for name in self.TENSOR:
            self._wrap(monkeypatch, torch.Tensor, name, from_package_only=True)
        for name in self.DIST:
            self._wrap(monkeypatch, DistContext, name, from_package_only=False)
        self._wrap(monkeypatch, torch.cuda, "synchronize", from_package_only=False)
        real_step = Trainer._train_step

        def counted_step(trainer):
            self.active, self.calls = True, []
            try:
                return real_step(trainer)
            finally:
                self.active = False
                self.per_step.append(len(self.calls))

        monkeypatch.setattr(Trainer, "_train_step", counted_step)

    def _wrap(self, monkeypatch, owner, name, *, from_package_only):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if self.active and (not from_package_only or PACKAGE in sys._getframe(1).f_code.co_filename):
                self.calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def test_one_host_sync_per_logging_interval(env, tmp_path, monkeypatch):
    counter = SyncCounter(monkeypatch)
    run = tmp_path / "run"
    result = train(_recipe(env, optim={"max_steps": 12, "grad_accum": 2}, mining={"refresh_every": 8},
                           log={"every": 4, "tensorboard": False, "progress": False}), run)
    # Steps 4 and 12 end a logging interval, step 8 a refresh (a checkpoint follows): one sync each, none between.
    expected = [1 if step in (4, 8, 12) else 0 for step in range(1, 13)]
    assert counter.per_step == expected, counter.per_step
    # Every step's values still reach the log and the result, exactly as when every step synchronised.
    assert len(result.losses) == 12 and all(isinstance(v, float) for v in result.losses)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [4, 8, 12]
    every_step = train(_recipe(env, optim={"max_steps": 12, "grad_accum": 2}, mining={"refresh_every": 8},
                               log={"every": 1, "tensorboard": False, "progress": False}), tmp_path / "run1")
    assert every_step.losses == result.losses   # bit-identical: only when values reach the host has changed
    logged_1 = {r["step"]: r for r in (json.loads(x) for x in (tmp_path / "run1" / "metrics.jsonl")
                                         .read_text().splitlines()) if "loss" in r}
    for record in (r for r in logged if "loss" in r):
        for key in ("loss", "q2d", "d2q", "grad_norm", "lr", "negatives_step"):
            assert record[key] == logged_1[record["step"]][key], key


def test_a_nan_between_logging_steps_stops_training_naming_its_step(env, tmp_path, monkeypatch):
    from dance_analysis import losses

    real = losses.dance_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:            # step 6, between the logging steps 4 and 8; refreshes at 0 and 9
            total = total * float("nan")
        return total, parts

    monkeypatch.setattr(losses, "dance_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train(_recipe(env, optim={"max_steps": 12}, mining={"refresh_every": 9},
                      log={"every": 4, "tensorboard": False, "progress": False}), run)
    message = str(caught.value)
    assert "training diverged at step 6" in message and "the loss is nan" in message, message
    assert "checkpoint-0" in message and "optim.lr" in message, message
    # Found at the end of the logging interval (step 8), before the refresh at step 9 could save those weights.
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [0]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [4]


def test_async_mode_looks_for_a_new_negative_set_once_per_logging_interval(env, tmp_path, monkeypatch):
    """The check for a newer set of the miner is a broadcast from rank 0 (a pickled object: a host synchronisation
    under nccl): made at the logging steps, not before every step."""
    from dance_analysis.training.refresher import AsyncRefresher

    real = AsyncRefresher._poll
    polled: list[int] = []

    def counted(refresher, wait_for=None):
        if wait_for is None:
            polled.append(refresher.trainer.step)
        return real(refresher, wait_for)

    monkeypatch.setattr(AsyncRefresher, "_poll", counted)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # for the miner process
    train(_recipe(env, optim={"max_steps": 12}, mining={"mode": "async", "refresh_every": 4, "poll_seconds": 0.1},
                  log={"every": 4, "tensorboard": False, "progress": False}), tmp_path / "run")
    assert polled and all(step % 4 == 0 for step in polled), polled


def test_tensor_parts_are_the_float_parts():
    """``dance_loss(tensor_parts=True)``: the same numbers as the floats, as detached 0-d tensors."""
    from dance_analysis.losses import DanceObjective

    torch.manual_seed(0)
    q, d_pos = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    d_neg, q_neg = torch.randn(6, 3, 8), torch.randn(6, 3, 8)
    objective = DanceObjective(w_d2q=0.1, temperature=0.5, in_batch=True, w_align=0.2, w_uniform=0.3)
    loss_f, floats = objective(q, d_pos, d_neg, q_neg)
    loss_t, tensors = objective(q, d_pos, d_neg, q_neg, tensor_parts=True)
    assert sorted(floats) == sorted(tensors) == ["align", "d2q", "q2d", "total", "uniform"]
    for key, value in tensors.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
        assert float(value) == floats[key], key
    assert torch.equal(loss_f, loss_t) and loss_t.requires_grad
