"""The training step's precision (``optim.precision``): ``auto`` on a CPU decided by timing the first step (stubbed
hardware and timings), the timing leaves no trace in the run, the decision is recorded and kept on resume."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis.training import precision
from dance_analysis.training.config import recipe_from_dict


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("DANCE_CACHE", str(tmp_path / "cache"))
    manifest = ts.write_tiny_collection(tmp_path / "collection")
    encoder = ts.tiny_encoder(tmp_path / "model")
    yield {"root": tmp_path, "manifest": manifest, "encoder": encoder, "cache": tmp_path / "cache"}
    torch.set_num_threads(threads)


def _recipe(env, train_precision: str):
    raw = ts.recipe_dict(env["manifest"], env["encoder"], env["cache"], optim={"precision": train_precision})
    return recipe_from_dict(raw).validate()


def _native(monkeypatch, native: bool = True) -> None:
    monkeypatch.setattr(precision, "bf16_hardware", lambda device="cpu": (native, "CPU flags: stub"))


def _state(run, step: int) -> dict:
    return json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())


def test_measurement_picks_bf16_only_when_faster_and_finite(monkeypatch):
    _native(monkeypatch)

    def run_with(fp32_seconds, bf16_seconds, bf16_loss=1.0):
        def run(dtype):
            time.sleep(fp32_seconds if dtype is None else bf16_seconds)
            torch.rand(3)                                  # consumes the generator
            return 1.0 if dtype is None else bf16_loss
        return run

    before = torch.random.get_rng_state()
    fast = precision.measure_train_precision(run_with(0.03, 0.01), "cpu")
    assert torch.equal(torch.random.get_rng_state(), before)      # the timing leaves the generator as it was
    assert fast.precision == "bf16" and fast.scope == "training" and fast.speedup > 2
    assert len(fast.timings["fp32"]) == len(fast.timings["bf16"]) == precision.ROUNDS
    assert "training precision: bf16" in fast.describe()
    slow = precision.measure_train_precision(run_with(0.01, 0.012), "cpu")
    assert slow.precision == "fp32" and "not faster" in slow.reason
    broken = precision.measure_train_precision(run_with(0.03, 0.01, math.nan), "cpu")
    assert broken.precision == "fp32" and "not finite" in broken.reason


def test_which_requests_are_measured(monkeypatch):
    _native(monkeypatch, True)
    assert precision.needs_measurement("auto", torch.device("cpu"))
    assert not precision.needs_measurement("fp32", torch.device("cpu"))
    assert precision.fixed_precision("bf16", torch.device("cpu")).precision == "bf16"
    _native(monkeypatch, False)
    assert not precision.needs_measurement("auto", torch.device("cpu"))
    decision = precision.fixed_precision("auto", torch.device("cpu"))
    assert (decision.precision, decision.reason) == ("fp32", "no native bf16")
    kept = precision.kept_train_precision(None, "checkpoint-40", "auto", "cpu")
    assert kept.precision == "fp32" and "before the measurement" in kept.reason


def test_auto_deciding_fp32_trains_exactly_as_fp32(run_env, monkeypatch):
    """The timing really runs forward and backward (dropout draws, gradients) and must leave no trace."""
    from dance_analysis.training.loop import train

    reference = run_env["root"] / "fp32"
    train(_recipe(run_env, "fp32"), reference)
    _native(monkeypatch)
    real = precision.paired_timings
    calls = []

    def slow_bf16(run, rounds=precision.ROUNDS):
        calls.append(1)
        _, losses = real(run, rounds)
        return {"fp32": [1.0] * rounds, "bf16": [1.2] * rounds}, losses

    monkeypatch.setattr(precision, "paired_timings", slow_bf16)
    auto = run_env["root"] / "auto"
    train(_recipe(run_env, "auto"), auto)
    assert calls == [1]
    record = _state(auto, 12)["train_precision"]
    assert record["precision"] == "fp32" and "not faster" in record["reason"]
    assert np.isfinite(record["agreement"]["bf16"]["loss_bf16"])
    assert _state(reference, 12)["train_precision"]["reason"] == "requested"
    assert ts.encoder_state(auto / "checkpoint-12").keys() == ts.encoder_state(reference / "checkpoint-12").keys()
    for name, value in ts.encoder_state(reference / "checkpoint-12").items():
        assert np.array_equal(value, ts.encoder_state(auto / "checkpoint-12")[name]), name


def test_auto_deciding_bf16_trains_in_bf16_and_a_resumed_run_keeps_it(run_env, monkeypatch):
    from dance_analysis.training.loop import train

    _native(monkeypatch)

    def faster_bf16(run, rounds=precision.ROUNDS):
        return {"fp32": [1.0] * rounds, "bf16": [0.6] * rounds}, {"fp32": 1.0, "bf16": 1.0}

    monkeypatch.setattr(precision, "paired_timings", faster_bf16)
    seen = []
    real_autocast = torch.autocast

    def spy(device_type, dtype=None, *args, **kwargs):
        seen.append(dtype)
        return real_autocast(device_type, dtype=dtype, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    full = run_env["root"] / "full"
    train(_recipe(run_env, "auto"), full)
    assert seen.count(torch.bfloat16) >= 12                    # every step's forward pass
    assert _state(full, 0)["train_precision"] is None          # written before the first step decided it
    for step in (6, 12):
        assert _state(full, step)["train_precision"]["precision"] == "bf16"

    fp32 = run_env["root"] / "fp32"
    train(_recipe(run_env, "fp32"), fp32)
    differs = [name for name, value in ts.encoder_state(fp32 / "checkpoint-12").items()
               if not np.array_equal(value, ts.encoder_state(full / "checkpoint-12")[name])]
    assert differs                                             # bf16 steps are not fp32 steps

    resumed = run_env["root"] / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoint-12")
    monkeypatch.setattr(precision, "paired_timings", lambda *a, **k: pytest.fail("measured again on resume"))
    train(_recipe(run_env, "auto"), resumed, resume=True)
    kept = _state(resumed, 12)["train_precision"]
    assert kept["precision"] == "bf16" and kept["reason"] == "kept from checkpoint-6"
    for name, value in ts.encoder_state(full / "checkpoint-12").items():
        assert np.array_equal(value, ts.encoder_state(resumed / "checkpoint-12")[name]), name

    # Resumed from checkpoint-0 (written before the first step decided): decided at the first step, as then.
    early = run_env["root"] / "early"
    shutil.copytree(full, early)
    for step in (6, 12):
        shutil.rmtree(early / f"checkpoint-{step}")
    monkeypatch.setattr(precision, "paired_timings", faster_bf16)
    train(_recipe(run_env, "auto"), early, resume=True)
    assert _state(early, 12)["train_precision"]["reason"] == "measured: faster"
    for name, value in ts.encoder_state(full / "checkpoint-12").items():
        assert np.array_equal(value, ts.encoder_state(early / "checkpoint-12")[name]), name


def test_print_config_says_what_auto_will_look_at(monkeypatch, capsys):
    import yaml

    from dance_analysis.cli.train import main as train_main
    from dance_analysis.training.config import load_recipe

    _native(monkeypatch)
    assert train_main([str(ts.REPO / "train" / "demo-dance.yaml"), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "encode_precision: auto" in printed and "precision: auto" in printed
    assert "# this machine: CPU flags: stub (native bf16: yes)" in printed
    assert "# optim.precision auto: bf16 if the first step times it faster" in printed
    assert yaml.safe_load(printed)["mining"]["encode_precision"] == "auto"
    assert load_recipe(ts.REPO / "train" / "demo-dance.yaml").mining.encode_precision == "auto"


# ------------------------------------------------------------------ the resolved precision, and fp32 honoured

def _fast_bf16_encoding(monkeypatch):
    """A CPU with native bf16 whose encode timing would pick bf16 (stubbed): what ``auto`` alone would choose."""
    from dance_analysis import encode
    from dance_analysis.encode import PrecisionDecision

    monkeypatch.setattr(encode, "bf16_hardware", lambda device="cpu": (True, "CPU flags: stub"))
    monkeypatch.setattr(encode, "_measure", lambda *a, **k: PrecisionDecision(
        "bf16", "auto", "measured: the fastest in agreement", "cpu", "CPU flags: stub"))


@pytest.mark.parametrize("train_precision, encode_precision, expected", [
    ("fp32", None, ("fp32", "fp32", "requested")),          # fp32 training, encode precision not set: fp32 too
    ("fp32", "auto", ("bf16", "auto", "measured: the fastest in agreement")),   # a value given is taken as is
    ("fp32", "bf16", ("bf16", "bf16", "requested")),
    ("bf16", None, ("bf16", "auto", "measured: the fastest in agreement")),
])
def test_fp32_training_encodes_its_refreshes_in_fp32_unless_told_otherwise(run_env, monkeypatch, caplog,
                                                                          train_precision, encode_precision,
                                                                          expected):
    import logging

    import yaml

    from dance_analysis.training.loop import train

    _native(monkeypatch)
    _fast_bf16_encoding(monkeypatch)
    raw = ts.recipe_dict(run_env["manifest"], run_env["encoder"], run_env["cache"],
                         optim={"precision": train_precision, "max_steps": 6})
    del raw["mining"]["encode_precision"]
    if encode_precision is not None:
        raw["mining"]["encode_precision"] = encode_precision
    run = run_env["root"] / f"run-{train_precision}-{encode_precision}"
    with caplog.at_level(logging.INFO, logger="dance_analysis"):
        train(recipe_from_dict(raw).validate(), run)
    for step in (0, 6):
        record = json.loads((run / f"checkpoint-{step}" / "refresh.json").read_text())["encode_precision"]
        assert (record["precision"], record["requested"], record["reason"]) == expected
    assert _state(run, 6)["train_precision"]["precision"] == train_precision
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["mining"]["encode_precision"] == expected[1]        # what the async miner and a resume read
    # the run log says the training precision before the first step, and the refreshes' encode precision
    assert f"training precision: {train_precision} (requested {train_precision}; requested" in caplog.text
    assert f"encode precision: {expected[0]} (requested {expected[1]}; {expected[2]}" in caplog.text


def test_fp32_training_is_resolved_when_the_recipe_is_read(tmp_path):
    from contextlib import nullcontext

    from dance_analysis import encode
    from dance_analysis.training.config import dump_recipe, load_recipe, recipe_differences

    assert recipe_from_dict({"optim": {"precision": "fp32"}}).mining.encode_precision == "fp32"
    assert recipe_from_dict({"optim": {"precision": "fp32"},
                             "mining": {"encode_precision": "auto"}}).mining.encode_precision == "auto"
    assert recipe_from_dict({}).mining.encode_precision == "auto"
    assert recipe_from_dict({"optim": {"precision": "bf16"}}).mining.encode_precision == "auto"
    demo = ts.REPO / "train" / "demo-dance.yaml"
    assert load_recipe(demo).mining.encode_precision == "auto"
    pinned = load_recipe(demo, ["optim.precision=fp32"])
    assert pinned.mining.encode_precision == "fp32"
    # config.yaml read back (a resume, the async miner) is the same recipe
    (tmp_path / "config.yaml").write_text(dump_recipe(pinned))
    assert recipe_differences(load_recipe(tmp_path / "config.yaml"), pinned) == []
    # and on CUDA fp32 means no autocast at all (CUDA's auto would have been its autocast)
    assert isinstance(encode.precision_context("fp32", torch.device("cuda")), nullcontext)


@pytest.mark.parametrize("bf16_gpu, train_line, encode_line", [
    (True, "# optim.precision auto: bf16 autocast (the GPU supports bf16)\n",
     "# mining.encode_precision auto: bf16 autocast (the GPU supports bf16)\n"),
    (False, "# optim.precision auto: fp16 autocast (the GPU has no bf16), with a gradient scaler\n",
     "# mining.encode_precision auto: fp16 autocast (the GPU has no bf16)\n"),
])
def test_print_config_resolves_auto_on_a_gpu(monkeypatch, capsys, bf16_gpu, train_line, encode_line):
    """An A100 / H100 (bf16) and a V100 (no bf16), stood in for: ``--print-config`` names what auto becomes."""
    from dance_analysis.cli.train import main as train_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    monkeypatch.setattr(precision, "bf16_hardware", lambda device="cpu": (bf16_gpu, "CUDA capability stub"))
    recipe = ts.REPO / "train" / "msmarco-doc-ance-firstp.yaml"
    assert train_main([str(recipe), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert train_line in printed and encode_line in printed and "training on cuda" in printed
    assert train_main([str(recipe), "--print-config", "--set", "optim.precision=fp32"]) == 0
    printed = capsys.readouterr().out
    assert "# optim.precision fp32: fp32\n" in printed
    assert "# mining.encode_precision fp32: fp32\n" in printed and "  encode_precision: fp32" in printed
    assert train_main([str(recipe), "--print-config", "--set", "optim.precision=fp16", "--set",
                       "optim.device=cpu"]) == 0
    assert "# optim.precision fp16: not possible here: fp16 needs a CUDA device" in capsys.readouterr().out
