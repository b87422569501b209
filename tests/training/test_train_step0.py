"""The step-0 negatives of a multi-process run are mined by the launched job, sharded over its processes, not by
``dance-train --prepare`` on one device while the others wait; ``--prepare --mine-step0`` keeps the earlier way.

CPU, 2 gloo processes under torchrun, a tiny model. That both ranks took part is read from the ``encode-shard``
fault point (:mod:`dance_analysis.faults`, slowed by 0 s), which each rank of a multi-process refresh reaches once it
has encoded its share of the rows and which prints the rank and its process id. The reference for the step-0
negatives is the earlier path: the same refresh in the one ``--prepare --mine-step0`` process. Exact equality holds
because the tiny encoder (mean pooling, no dropout) scores the documents well apart, so the two encodings, whose
vectors may differ in the last bits, rank them the same.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

import train_support as ts
from dance_analysis.mining import NegativeSet
from dance_analysis.training.faults import SLOW_ENV

TIMEOUT_MINUTES = 0.12   # 7.2 s: the step-0 refresh of the launched job never waits in a collective


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_setup):
    with tiny_setup(tmp_path_factory.mktemp("step0"), dropout=0.0, pooling="mean") as env:
        yield {**env, "env": ts.subprocess_env(env["cache"])}


def _run(command, env, extra_env=None):
    done = subprocess.run(command, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _shard_pids(stderr: str) -> dict[int, set[str]]:
    """rank -> process ids that printed ``fault-slow encode-shard@<rank> pid <pid>``."""
    found: dict[int, set[str]] = {}
    for rank, pid in re.findall(r"fault-slow encode-shard@(\d+) pid (\d+)", stderr):
        found.setdefault(int(rank), set()).add(pid)
    return found


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in lines if "loss" in r])


def test_both_ranks_of_the_launched_job_mine_step_0_as_one_process_did(setup):
    root, env = setup["root"], setup["env"]
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], root / "cache",
                            optim={"max_steps": 2, "batch_size": 8},
                            mining={"refresh_every": 100, "final_refresh": False},
                            distributed={"timeout_minutes": TIMEOUT_MINUTES},
                            log={"tensorboard": False, "progress": False})
    recipe_path = ts.write_recipe(root / "sync.yaml", recipe)
    shards = {SLOW_ENV: "encode-shard@0=0,encode-shard@1=0"}

    # The earlier path: the preparing process mines step 0 into checkpoint-0.
    before = root / "mined-by-prepare"
    _run(ts.train_command(recipe_path, before, "--prepare", "--mine-step0", "--workers", "1"), env, shards)
    assert json.loads((before / "prepared.json").read_text())["checkpoint"] == "checkpoint-0"
    assert json.loads((before / "checkpoint-0" / "checkpoint.json").read_text())["world_size"] == 1

    # Now: --prepare builds the token caches only; the two training processes mine step 0 together.
    run = root / "mined-by-the-job"
    prepared = _run(ts.train_command(recipe_path, run, "--prepare", "--workers", "1"), env, shards)
    assert "fault-slow encode-shard" not in prepared.stderr
    assert not (run / "checkpoint-0").exists()
    assert json.loads((run / "prepared.json").read_text())["checkpoint"] is None
    trained = _run(ts.torchrun_command(recipe_path, run), env, shards)
    pids = _shard_pids(trained.stderr)
    assert sorted(pids) == [0, 1], trained.stderr[-3000:]          # each rank encoded its rows ...
    assert len(pids[0]) == len(pids[1]) == 1 and pids[0] != pids[1]   # ... in its own process
    meta = json.loads((run / "checkpoint-0" / "checkpoint.json").read_text())
    assert meta["world_size"] == 2 and "prepared" not in meta
    assert "mined by 2 processes" in trained.stderr

    mined, reference = (NegativeSet.load(folder / "checkpoint-0" / "negatives") for folder in (run, before))
    np.testing.assert_array_equal(mined.doc_negatives, reference.doc_negatives)
    np.testing.assert_array_equal(mined.query_negatives, reference.query_negatives)
    np.testing.assert_array_equal(mined.doc_counts, reference.doc_counts)
    np.testing.assert_array_equal(mined.query_counts, reference.query_counts)
    assert mined.meta == reference.meta
    for name in ("corpus.npy", "queries.npy"):      # rows encoded on two ranks, gathered in order
        np.testing.assert_allclose(np.load(run / "checkpoint-0" / "embeddings" / name),
                                   np.load(before / "checkpoint-0" / "embeddings" / name), rtol=1e-4, atol=1e-5)

    # The earlier path still trains under torchrun, from its checkpoint-0, exactly as the job that mined its own.
    again = _run(ts.torchrun_command(recipe_path, before), env, shards)
    assert "fault-slow encode-shard" not in again.stderr          # nothing mined at step 0 this time
    assert len(_losses(run)) == 2
    np.testing.assert_array_equal(_losses(before), _losses(run))


def test_async_layout_mines_step_0_on_the_training_ranks_then_the_miner_takes_over(setup):
    root, env = setup["root"], setup["env"]
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], root / "cache",
                            optim={"max_steps": 4, "batch_size": 8},
                            mining={"mode": "async", "refresh_every": 2, "max_staleness": 2, "poll_seconds": 0.2},
                            distributed={"timeout_minutes": TIMEOUT_MINUTES},
                            log={"tensorboard": False, "progress": False})
    recipe_path = ts.write_recipe(root / "async.yaml", recipe)
    run = root / "async"
    shards = {SLOW_ENV: "encode-shard@0=0,encode-shard@1=0"}
    _run(ts.train_command(recipe_path, run, "--prepare", "--workers", "1"), env)
    trained = _run(ts.torchrun_command(recipe_path, run), env, shards)

    assert sorted(_shard_pids(trained.stderr)) == [0, 1], trained.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    swaps = [(r["step"], r["swapped_at"]) for r in records if "swapped_at" in r]
    assert swaps[0] == (0, 0)                       # the step-0 set, mined by the ranks, handed to the miner
    assert [r["negatives_step"] for r in records if "loss" in r] == [0, 0, 2, 2]   # max_staleness 2
    miner_log = (run / "miner.log").read_text()
    assert "refresh@0:" not in miner_log and "refresh@2:" in miner_log and "refresh@4:" in miner_log
    assert json.loads((run / "checkpoint-0" / "checkpoint.json").read_text())["world_size"] == 2
    assert NegativeSet.load(run / "checkpoint-2" / "negatives").meta["refresh_index"] == 1   # the miner went on


def test_mine_step0_is_an_option_of_prepare(setup, tmp_path):
    recipe = ts.recipe_dict(setup["manifest"], setup["encoder"], setup["root"] / "cache")
    recipe_path = ts.write_recipe(tmp_path / "recipe.yaml", recipe)
    done = subprocess.run(ts.train_command(recipe_path, tmp_path / "run", "--mine-step0"), env=setup["env"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "--mine-step0 is an option of --prepare" in done.stderr
    assert not (tmp_path / "run").exists()
