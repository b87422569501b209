"""Exact resume: dance-train killed with SIGKILL after a checkpoint and restarted with --resume ends with weights
bit-for-bit equal (CPU) to an uninterrupted run of the same recipe."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

import train_support as ts
from dance_analysis.mining import NegativeSet
from dance_analysis.training import checkpoint as ckpt


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model trains several times faster on one thread than on two busy ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _steps_logged(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return steps


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "cache"
    manifest = ts.write_tiny_collection(tmp_path / "collection")
    encoder = ts.tiny_encoder(tmp_path / "model", dropout=0.1)   # dropout: the torch RNG state must resume too
    recipe = ts.write_recipe(tmp_path / "recipe.yaml", ts.recipe_dict(
        manifest, encoder, cache, optim={"max_steps": 40, "warmup_steps": 5},
        mining={"refresh_every": 10}, log={"tensorboard": True, "progress": False}))
    env = ts.subprocess_env(cache)

    full = tmp_path / "full"
    done = subprocess.run(ts.train_command(recipe, full), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(ts.train_command(recipe, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            logged = _steps_logged(killed)
            if ckpt.is_complete(killed / "checkpoint-10") and logged and max(logged) >= 12:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = ckpt.latest_checkpoint(killed)
    assert last is not None and ckpt.checkpoint_step(last) in (10, 20, 30)
    assert not ckpt.is_complete(killed / "checkpoint-40")
    killed_at = max(_steps_logged(killed))

    resumed = subprocess.run(ts.train_command(recipe, killed, "--resume"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from {last.name}" in resumed.stderr

    where = f"killed after step {killed_at}, resumed from {last.name}"
    # Same losses step by step (each step logged once: the lines after the checkpoint were replayed, not doubled).
    full_lines = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    resumed_lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert _steps_logged(killed) == list(range(1, 41)), where
    loss_a = [r["loss"] for r in full_lines if "loss" in r]
    loss_b = [r["loss"] for r in resumed_lines if "loss" in r]
    first = next((i + 1 for i, (x, y) in enumerate(zip(loss_a, loss_b)) if x != y), None)
    assert first is None, f"losses differ from step {first} on ({where})"
    assert [r["dev"] for r in full_lines if "dev" in r] == [r["dev"] for r in resumed_lines if "dev" in r], where

    a, b = ts.encoder_state(full / "checkpoint-40"), ts.encoder_state(killed / "checkpoint-40")
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{key} differs ({where})"
    na, nb = NegativeSet.load(full / "checkpoint-40" / "negatives"), NegativeSet.load(killed / "checkpoint-40" /
                                                                                       "negatives")
    assert np.array_equal(na.doc_negatives, nb.doc_negatives)
    assert np.array_equal(na.query_negatives, nb.query_negatives)


@pytest.mark.parametrize("missing", ["negatives", "optimizer.pt"])
def test_resume_names_what_is_missing(tmp_path, missing):
    """A checkpoint with a damaged / missing part stops the resume with a message naming it."""
    import os

    from dance_analysis.errors import DanceError
    from dance_analysis.training.config import recipe_from_dict
    from dance_analysis.training.loop import train

    cache = tmp_path / "cache"
    old = os.environ.get("DANCE_CACHE")
    os.environ["DANCE_CACHE"] = str(cache)
    try:
        manifest = ts.write_tiny_collection(tmp_path / "collection")
        encoder = ts.tiny_encoder(tmp_path / "model")
        recipe = recipe_from_dict(ts.recipe_dict(manifest, encoder, cache, optim={"max_steps": 4},
                                                 mining={"refresh_every": 2},
                                                 log={"tensorboard": False, "progress": False}))
        run = tmp_path / "run"
        train(recipe, run)
        target = run / "checkpoint-4" / missing
        ckpt.remove_dir(target) if target.is_dir() else target.unlink()
        recipe.optim.max_steps = 4
        with pytest.raises(DanceError, match=missing.split(".")[0]):
            train(recipe, run, resume=True)
    finally:
        if old is None:
            os.environ.pop("DANCE_CACHE", None)
        else:
            os.environ["DANCE_CACHE"] = old
