"""Async refresh with a miner much slower than the checkpoint interval and a small ``checkpoint.keep_last``.

The miner holds a checkpoint for the whole of its refresh (here made slow with ``DANCE_FAULT_SLOW`` at the
``refresh`` point, after its encoder is loaded and the corpus encoded); meanwhile the trainer writes several newer
checkpoints and prunes to ``keep_last``. The held checkpoint must survive that pruning, get its dev metrics
attached, and so take part in ``best.json`` (the choice of ``checkpoint.best_metric`` and of a stage-2 ``select:
best``). The reference is the record of every refresh in ``metrics.jsonl`` (written from the miner's negative
sets, not from the checkpoint folders).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

import train_support as ts
from dance_analysis import checkpoints
from dance_analysis.training.async_refresh import held_checkpoint
from dance_analysis.training.faults import ENV as FAULT_ENV
from dance_analysis.training.faults import SLOW_ENV

MAX_STEPS = 30
EVERY = 2
SLOW = 15.0  # seconds the miner sleeps in each refresh after step 0: several checkpoint intervals of the trainer
START = 8.0   # seconds the trainer pauses in its write of checkpoint-4: time for the miner to start


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("async-pruning")
    cache = root / "cache"
    manifest = ts.write_tiny_collection(root / "collection")
    encoder = ts.tiny_encoder(root / "model", dropout=0.1)
    return root, cache, manifest, encoder


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _newest(run_dir: Path) -> int:
    found = checkpoints.list_checkpoints(run_dir)
    return found[-1][0] if found else -1


@pytest.mark.parametrize("keep_last", [1, 2])
def test_the_checkpoint_a_slow_miner_holds_survives_pruning_and_gets_its_metrics(base, tmp_path, keep_last):
    root, cache, manifest, encoder = base
    recipe = ts.write_recipe(tmp_path / "async.yaml", ts.recipe_dict(
        manifest, encoder, cache, optim={"max_steps": MAX_STEPS, "warmup_steps": 2},
        mining={"mode": "async", "refresh_every": EVERY, "poll_seconds": 0.1},
        checkpoint={"keep_last": keep_last, "keep_best": True},
        log={"tensorboard": False, "progress": False}))
    # The trainer pauses while it writes checkpoint-4 (so that the miner has started and found checkpoint-2
    # whatever the machine's load); the miner sleeps in every refresh but the first and the final one.
    slow = ",".join([f"checkpoint-write@{2 * EVERY}={START}"]
                    + [f"refresh@{step}={SLOW}" for step in range(EVERY, MAX_STEPS, EVERY)])
    env = {**ts.subprocess_env(cache), SLOW_ENV: slow}
    env.pop(FAULT_ENV, None)
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen(ts.train_command(recipe, run), env=env, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        # Whichever checkpoint the miner holds (it sleeps inside each refresh), wait until the trainer has committed
        # (and pruned) at least two newer checkpoints meanwhile; the held one must still be there, complete. It is
        # held from before the first read of the marker to after the second, so it was held when it was looked at.
        deadline = time.monotonic() + 240
        held = None
        while held is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            first = held_checkpoint(run)
            if first is not None and first > 0 and _newest(run) >= first + 2 * EVERY:
                present = checkpoints.is_complete(run / f"checkpoint-{first}")
                if held_checkpoint(run) == first:
                    assert present, (first, [s for s, _ in checkpoints.list_checkpoints(run)])
                    held = first
            time.sleep(0.05)
        assert held is not None, "the trainer never got two checkpoints ahead of the miner's held one"
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    miner_log = (run / "miner.log").read_text()
    for text in ("skipped", "not attached", "Traceback"):
        assert text not in miner_log, miner_log[-3000:]
    assert held_checkpoint(run) is None        # released when the miner finished

    # The miner's own line for every refresh it finished (4 decimals), and the swapped-in records of metrics.jsonl.
    refreshes = {int(step): float(value) for step, value in
                 re.findall(r"refresh@(\d+): dev MRR@10 ([0-9.]+)", miner_log)}
    for record in _records(run):
        if record.get("dev"):    # (the negatives of step 0 may come from the trainer, not the miner)
            value = refreshes.setdefault(record["step"], record["dev"]["MRR@10"])
            assert value == pytest.approx(record["dev"]["MRR@10"], abs=5e-5)
    assert held in refreshes and 0 in refreshes and MAX_STEPS in refreshes, sorted(refreshes)
    # Every refreshed checkpoint got its metrics while it existed, so pruning kept the best of them all.
    best = json.loads((run / "best.json").read_text())
    assert best["value"] == pytest.approx(max(refreshes.values()), abs=5e-5), (best, refreshes)
    assert refreshes[best["step"]] == pytest.approx(best["value"], abs=5e-5)
    kept = [s for s, _ in checkpoints.list_checkpoints(run)]
    # the last keep_last, the best, the set in use and the one held at the final commit (nothing prunes after it)
    assert best["step"] in kept and MAX_STEPS in kept and len(kept) <= keep_last + 3, kept
    for step in refreshes:   # each refreshed checkpoint that is still there carries its refresh
        if step in kept:
            assert (run / f"checkpoint-{step}" / "dev_metrics.json").is_file(), step


def test_a_refresh_that_cannot_be_attached_says_why(tmp_path, caplog):
    """The reasons :func:`_attach` gives, and the miner's warning naming the step, the reason and the set."""
    import logging

    from dance_analysis.training import async_refresh

    result = tmp_path / "refresh" / "step-4"
    (result / "negatives").mkdir(parents=True)
    (result / "dev_metrics.json").write_text('{"MRR@10": 0.5}')
    assert async_refresh._attach(result, tmp_path / "checkpoint-4") == "the checkpoint was deleted meanwhile"
    torn = tmp_path / "checkpoint-6"
    torn.mkdir()
    assert async_refresh._attach(result, torn) == "the checkpoint is incomplete"
    assert not (torn / "dev_metrics.json").exists()

    miner = async_refresh.Miner.__new__(async_refresh.Miner)
    miner.run_dir = tmp_path
    with caplog.at_level(logging.WARNING, logger=async_refresh.logger.name):
        miner._report_attach(4, tmp_path / "checkpoint-4", result, "the checkpoint was deleted meanwhile")
    assert ("the refresh of step 4 was not attached" in caplog.text and "deleted meanwhile" in caplog.text
            and str(result) in caplog.text), caplog.text


# ----------------------------------------------------------------------------- the choice and the marker, one go
def _complete_checkpoint(run_dir: Path, step: int) -> None:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, "complete": True}))


@pytest.mark.parametrize("locked", [True, False])
def test_the_trainer_never_prunes_between_the_miners_choice_and_its_marker(tmp_path, monkeypatch, locked):
    """The miner has listed checkpoint-4 as the newest and is about to mark it held when the trainer commits
    checkpoint-6 with keep_last 1. With the lock the trainer's pruning waits for the marker and keeps
    checkpoint-4; without it (``locked`` False: the window this lock closes) the trainer prunes checkpoint-4 under
    the miner's feet."""
    import contextlib
    import threading
    from types import SimpleNamespace

    from dance_analysis.training import async_refresh, state

    run = tmp_path / "run"
    (run / "refresh").mkdir(parents=True)
    for step in (2, 4):
        _complete_checkpoint(run, step)
    choosing = threading.Event()

    def slow_choice(point, step):    # the miner, between its choice and its marker, for a second
        if point == "miner-hold":
            choosing.set()
            time.sleep(1.0)

    monkeypatch.setattr(async_refresh, "fault_point", slow_choice)
    if not locked:
        monkeypatch.setattr(async_refresh, "held_lock", lambda run_dir: contextlib.nullcontext())
        monkeypatch.setattr(state, "held_lock", lambda run_dir: contextlib.nullcontext())
    marked = []
    miner = threading.Thread(target=lambda: marked.append(async_refresh.hold_checkpoint(run, 4, run / "checkpoint-4")))
    miner.start()
    assert choosing.wait(30)
    tmp = run / ".tmp-checkpoint-6"
    tmp.mkdir()
    recipe = SimpleNamespace(checkpoint=SimpleNamespace(keep_last=1, keep_best=True, best_metric="MRR@10"))
    state.commit(tmp, run, 6, {}, recipe, protect=())
    miner.join()
    assert marked == [True] and held_checkpoint(run) == 4
    steps = [step for step, _ in checkpoints.list_checkpoints(run)]
    assert steps == ([4, 6] if locked else [6])


def test_a_checkpoint_pruned_before_the_miner_holds_it_is_not_marked(tmp_path):
    from dance_analysis.training.async_refresh import hold_checkpoint

    run = tmp_path / "run"
    (run / "refresh").mkdir(parents=True)
    assert not hold_checkpoint(run, 4, run / "checkpoint-4")
    assert held_checkpoint(run) is None
