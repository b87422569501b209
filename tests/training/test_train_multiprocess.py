"""Failure modes of the multi-process (torchrun) path, reproduced on the CPU with 2 gloo processes and a tiny model.

Each test here failed on the code before its fix (the commit that added it names how):

- two towers (``shared: false``) whose document side skips the LayerNorm (``doc_layernorm: false``): the document
  tower's LayerNorm gets no gradient, and DDP stopped on the second step ("Expected to have finished reduction in
  the prior iteration"); now those parameters are frozen before DDP is built, and the run equals one process.
- ``mode: async`` with a miner slower than the process-group timeout (slowed with ``DANCE_FAULT_SLOW``): rank 0
  waited for the miner (the first negatives, ``max_staleness``, ``miner.finish`` at the end) while rank 1 waited
  in a collective, which timed out; now rank 0 only polls, and every rank meets in a small collective at least
  every ``distributed.poll_seconds``.
- token caches built on rank 0 while rank 1 waited in a barrier (slowed past the timeout): timed out; now the
  caches (and the step-0 negatives) are built by ``dance-train RECIPE --prepare`` before the process group exists,
  and a multi-process run refuses to start in a folder that was not prepared.

Every multi-process run here uses the launch sequence: ``--prepare``, then ``torchrun`` with 2 gloo processes.

Timeouts: the process group's is a few seconds (``distributed.timeout_minutes``); the slowed stages take several
times that. Nothing here asserts a duration.
"""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest

import train_support as ts
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.faults import ENV as FAULT_ENV
from dance_analysis.training.faults import SLOW_ENV
from dance_analysis.training.loop import train

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_setup):
    with tiny_setup(tmp_path_factory.mktemp("multiprocess"), dropout=0.0, pooling="mean") as env:
        yield env


def torchrun(recipe_path, run_dir, cache, *, env=None, workers=1):
    """The launch sequence on the CPU: ``dance-train RECIPE --prepare``, then 2 gloo processes under torchrun;
    returns the training command's result."""
    prepared, trained = ts.launch(recipe_path, run_dir, cache, env=env, workers=workers)
    assert prepared.returncode == 0, prepared.stderr[-4000:]
    return trained


def losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in lines if "loss" in r])


def test_two_towers_without_document_layernorm_train_under_ddp(setup):
    root = setup["root"]
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], root / "cache",
                            model={"backbone": str(setup["encoder"]), "temperature": 0.5, "shared": False,
                                   "normalize": True, "doc_layernorm": False},
                            optim={"max_steps": 3, "batch_size": 8}, mining={"refresh_every": 100},
                            log={"tensorboard": False, "progress": False})
    single = root / "towers-single"
    train(recipe_from_dict(recipe), single)
    ddp = root / "towers-ddp"
    done = torchrun(ts.write_recipe(root / "towers.yaml", recipe), ddp, root / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    np.testing.assert_allclose(losses(ddp), losses(single), rtol=RTOL, atol=ATOL)
    assert len(losses(ddp)) == 3
    start = ts.encoder_state(single / "checkpoint-0")
    for run in (single, ddp):
        state = ts.encoder_state(run / "checkpoint-3")
        # The document tower's LayerNorm is never used: it stays as it started; the query tower's moves.
        norm = [k for k in state if k.startswith("encoder/doc/head") and ":norm." in k]
        assert norm and all(np.array_equal(state[k], start[k]) for k in norm)
        assert not np.array_equal(state["encoder/query/head.safetensors:norm.weight"],
                                  start["encoder/query/head.safetensors:norm.weight"])


TIMEOUT_MINUTES = 0.12   # 7.2 s
SLOW = 18                # seconds: a stage that outlasts the process-group timeout


def test_async_miner_slower_than_the_process_group_timeout(setup):
    root = setup["root"]
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], root / "cache",
                            optim={"max_steps": 4, "batch_size": 8},
                            mining={"mode": "async", "refresh_every": 2, "max_staleness": 2, "poll_seconds": 0.2},
                            distributed={"timeout_minutes": TIMEOUT_MINUTES},
                            log={"tensorboard": False, "progress": False})
    run = root / "async-slow"
    # The miner is slow on checkpoint-2 (max_staleness makes the trainer wait for it) and on the final checkpoint
    # (the trainer waits for it to finish); the step-0 negatives come from --prepare.
    slow = ",".join(f"miner-refresh@{step}={SLOW}" for step in (2, 4))
    done = torchrun(ts.write_recipe(root / "async.yaml", recipe), run, root / "cache", env={SLOW_ENV: slow})
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    used = [r["negatives_step"] for r in records if "loss" in r]
    assert used == [0, 0, 2, 2]           # step 3 waited for the negatives of checkpoint-2 (max_staleness 2)
    assert [r["step"] for r in records if "dev" in r and "swapped_at" not in r] == [4]   # the final refresh
    log = (run / "miner.log").read_text()
    assert all(f"fault-slow miner-refresh@{step}" in log for step in (2, 4))
    assert "fault-slow miner-refresh@0" not in log


def test_token_caches_slower_than_the_timeout_are_built_before_the_process_group(setup):
    root = setup["root"]
    cache = root / "slow-tokens"        # caches of their own: this run builds them
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], cache, optim={"max_steps": 2, "batch_size": 8},
                            mining={"refresh_every": 100}, distributed={"timeout_minutes": TIMEOUT_MINUTES},
                            log={"tensorboard": False, "progress": False})
    recipe_path = ts.write_recipe(root / "slow-tokens.yaml", recipe)
    run = root / "slow-tokens-run"
    env = {SLOW_ENV: f"token-cache@0={SLOW}"}

    # Without --prepare the multi-process run refuses to start, with one line that says what to run.
    refused = subprocess.run(ts.torchrun_command(recipe_path, run), env={**ts.subprocess_env(cache), **env},
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--prepare" in errors[0] and str(run) in errors[0], refused.stderr[-3000:]
    assert not list(cache.glob("*-doc-*"))                  # refused before any cache was built

    done = torchrun(recipe_path, run, cache, env=env, workers=2)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "fault-slow token-cache" not in done.stderr      # the ranks only opened the caches
    assert len(losses(run)) == 2
    prepared = json.loads((run / "prepared.json").read_text())
    assert prepared["workers"] == 2 and prepared["checkpoint"] is None   # the ranks mined step 0 (test_train_step0)


def test_prepare_resumes_and_refuses_another_recipe(setup, tmp_path):
    root = setup["root"]
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], root / "cache", optim={"max_steps": 2},
                            log={"tensorboard": False, "progress": False})
    recipe_path = ts.write_recipe(tmp_path / "recipe.yaml", recipe)
    run = tmp_path / "run"
    env = ts.subprocess_env(root / "cache")
    # Killed while mining the step-0 negatives (--mine-step0): the token caches are kept, checkpoint-0 is not there.
    proc = subprocess.Popen(ts.train_command(recipe_path, run, "--prepare", "--mine-step0"),
                            env={**env, FAULT_ENV: "refresh@0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("fault-point refresh@0"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / "prepared.json").exists() and not (run / "checkpoint-0").exists()
    again = subprocess.run(ts.train_command(recipe_path, run, "--prepare", "--mine-step0"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "prepared.json").is_file() and (run / "checkpoint-0" / "negatives").is_dir()
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]
    other = ts.write_recipe(tmp_path / "other.yaml", {**recipe, "mining": {**recipe["mining"], "top_k": 10}})
    refused = subprocess.run(ts.train_command(other, run), env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "mining.top_k" in refused.stderr
