"""Faults during training, with real dance-train processes on the tiny collection:

- SIGKILL in the middle of a refresh and in the middle of a checkpoint write, then ``--resume``: the half-written
  checkpoint is removed and never used, and the run ends bit-for-bit equal (CPU) to an uninterrupted one;
- the async miner killed with SIGKILL: one warning, training goes on with the last complete negatives, a restarted
  miner delivers the next ones;
- a full disk (``RLIMIT_FSIZE`` in the child, SIGXFSZ ignored, so writes fail with EFBIG) and an output path under a
  regular file: one ``error:`` line naming the path and the cause, exit status 2, no traceback, the last complete
  checkpoint intact and resumable.

The kill points are reached with the fault-injection hook ``DANCE_FAULT_PAUSE`` (dance_analysis.training.faults):
the process prints ``fault-point <point>@<step>`` and sleeps there until the test kills it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import train_support as ts
from dance_analysis.mining import NegativeSet
from dance_analysis.training import checkpoint as ckpt
from dance_analysis.training.faults import ENV as FAULT_ENV

DISK_LIMIT = 6_000_000  # bytes per file: checkpoint-0 fits (4 MB encoder, empty optimizer), checkpoint-4 does not


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Collection, encoder and a sync recipe (12 steps, refresh every 4), and the uninterrupted run of it."""
    root = tmp_path_factory.mktemp("faults")
    cache = root / "cache"
    manifest = ts.write_tiny_collection(root / "collection")
    encoder = ts.tiny_encoder(root / "model", dropout=0.1)  # dropout: the RNG state must resume exactly too
    recipe = ts.write_recipe(root / "recipe.yaml", ts.recipe_dict(
        manifest, encoder, cache, optim={"max_steps": 12, "warmup_steps": 2}, mining={"refresh_every": 4},
        log={"tensorboard": False, "progress": False}))
    env = ts.subprocess_env(cache)
    env.pop(FAULT_ENV, None)
    full = root / "full"
    done = subprocess.run(ts.train_command(recipe, full), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(root=root, cache=cache, manifest=manifest, encoder=encoder, recipe=recipe, env=env,
                           full=full)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in _records(run_dir) if "loss" in r]


def _wait_for_text(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> re.Match:
    """Poll ``path`` until ``pattern`` appears in it; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.is_file() else ""
        found = re.search(pattern, text)
        if found:
            return found
        assert proc.poll() is None, f"the trainer ended (status {proc.returncode}) before {pattern!r}: {text[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} did not appear in {path} within {timeout}s")


def _start(base, run_dir: Path, log: Path, **env) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(ts.train_command(base.recipe, run_dir), env={**base.env, **env},
                                stdout=subprocess.DEVNULL, stderr=fh)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _resume(base, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(ts.train_command(base.recipe, run_dir, "--resume"), env=base.env, capture_output=True,
                          text=True, timeout=300)


def _assert_same_as_full(full: Path, run: Path) -> None:
    """Losses, negatives steps and dev metrics step by step, final weights and every checkpoint's negatives."""
    assert _steps(run) == list(range(1, 13))   # every step logged once: replayed lines were not doubled
    a, b = _records(full), _records(run)
    for key in ("loss", "negatives_step", "grad_norm"):
        assert [r[key] for r in a if "loss" in r] == [r[key] for r in b if "loss" in r], key
    assert [r["dev"] for r in a if "dev" in r] == [r["dev"] for r in b if "dev" in r]
    wa, wb = ts.encoder_state(full / "checkpoint-12"), ts.encoder_state(run / "checkpoint-12")
    assert wa.keys() == wb.keys() and len(wa) > 10
    for key in wa:
        assert wa[key].dtype == wb[key].dtype and np.array_equal(wa[key], wb[key]), key
    assert [s for s, _ in ckpt.list_checkpoints(full)] == [s for s, _ in ckpt.list_checkpoints(run)] == [0, 4, 8, 12]
    for step in (4, 8, 12):
        na = NegativeSet.load(full / f"checkpoint-{step}" / "negatives")
        nb = NegativeSet.load(run / f"checkpoint-{step}" / "negatives")
        assert np.array_equal(na.doc_negatives, nb.doc_negatives), step
        assert np.array_equal(na.query_negatives, nb.query_negatives), step


def _assert_no_partial_checkpoint(run: Path) -> None:
    assert not [p.name for p in run.iterdir() if p.name.startswith((ckpt.TMP_PREFIX, ckpt.TRASH_PREFIX))]
    for path in run.glob("checkpoint-*"):
        assert ckpt.is_complete(path), f"{path.name} is incomplete"


@pytest.mark.parametrize("point", ["refresh", "checkpoint-write"])
def test_sigkill_mid_refresh_or_mid_checkpoint_write_then_resume(base, tmp_path, point):
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(base, run, log, **{FAULT_ENV: f"{point}@8"})
    try:
        _wait_for_text(log, rf"fault-point {point}@8 pid \d+", proc)
        partial = list(run.glob(f"{ckpt.TMP_PREFIX}8-*"))
        assert len(partial) == 1, partial
        if point == "refresh":      # encoded, not mined yet
            assert (partial[0] / "embeddings").is_dir() and not (partial[0] / "negatives").exists()
        else:                       # trainer state and optimizer written, encoder not yet
            assert (partial[0] / "optimizer.pt").is_file() and not (partial[0] / "encoder").exists()
        assert not (partial[0] / "checkpoint.json").exists()
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest_checkpoint(run) == run / "checkpoint-4" and not (run / "checkpoint-8").exists()
    # A torn checkpoint-N folder (no checkpoint.json, as an interrupted copy leaves) must not be picked up either.
    torn = run / "checkpoint-10"
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"step": 10}')

    resumed = _resume(base, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from checkpoint-4 (step 4)" in resumed.stderr
    assert not partial[0].exists() and not torn.exists()
    _assert_no_partial_checkpoint(run)
    _assert_same_as_full(base.full, run)


def test_async_miner_killed_is_restarted_and_training_goes_on(base, tmp_path):
    recipe = ts.write_recipe(tmp_path / "async.yaml", ts.recipe_dict(
        base.manifest, base.encoder, base.cache, optim={"max_steps": 16, "warmup_steps": 2},
        mining={"mode": "async", "refresh_every": 4, "max_staleness": 8, "poll_seconds": 0.1},
        log={"tensorboard": False, "progress": False}))
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen(ts.train_command(recipe, run), env={**base.env, FAULT_ENV: "miner-refresh@4"},
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        # The miner stalls on checkpoint-4; the trainer trains on to step 8 with the negatives of step 0 (then waits:
        # max_staleness 8). The miner is killed there.
        marker = _wait_for_text(run / "miner.log", r"fault-point miner-refresh@4 pid (\d+)", proc)
        deadline = time.monotonic() + 120
        while not (_steps(run) and max(_steps(run)) >= 8) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        os.kill(int(marker.group(1)), signal.SIGKILL)
        proc.wait(timeout=240)
    finally:
        _kill(proc)
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: the negative miner stopped")]
    assert len(warnings) == 1, stderr[-3000:]
    assert "exit status -9" in warnings[0] and "negatives of step 0" in warnings[0]
    assert "Traceback" not in stderr
    assert (run / "miner.log").read_text().count("watching") == 2   # restarted once

    used = {r["step"]: r["negatives_step"] for r in _records(run) if "loss" in r}
    assert sorted(used) == list(range(1, 17))
    assert all(used[s] == 0 for s in range(1, 9)), used      # went on with the last complete negatives
    assert all(used[s] == 8 for s in range(9, 13)), used     # the restarted miner's set (it skipped step 4)
    assert all(used[s] in (8, 12) for s in range(13, 17)), used
    swaps = [r["swapped_at"] for r in _records(run) if "swapped_at" in r]
    assert 8 in swaps and 4 not in [r["step"] for r in _records(run) if "swapped_at" in r]
    assert (run / "checkpoint-8" / "negatives").is_dir()     # attached by the restarted miner


def _limit_file_size() -> None:
    """In the child: files cannot grow beyond DISK_LIMIT bytes, and a write beyond fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_LIMIT, DISK_LIMIT))


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def test_disk_full_stops_with_one_line_and_keeps_the_last_checkpoint(base, tmp_path):
    from dance_analysis.model import DualEncoder

    # The limit sits between checkpoint-0's largest file and checkpoint-4's optimizer state.
    sizes0 = [p.stat().st_size for p in (base.full / "checkpoint-0").rglob("*") if p.is_file()]
    assert max(sizes0) < DISK_LIMIT < (base.full / "checkpoint-4" / "optimizer.pt").stat().st_size
    run = tmp_path / "run"
    done = subprocess.run(ts.train_command(base.recipe, run), env=base.env, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_file_size)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _error_line(done.stderr)
    assert f"cannot write {run / 'checkpoint-4'}: File too large" in line
    assert f"{run / 'checkpoint-0'} is intact" in line
    assert ckpt.latest_checkpoint(run) == run / "checkpoint-0"
    _assert_no_partial_checkpoint(run)
    model = DualEncoder.load(str(run / "checkpoint-0" / "encoder"))
    assert model.config.query_max_length == 16
    assert NegativeSet.load(run / "checkpoint-0" / "negatives").doc_negatives.size > 0

    resumed = _resume(base, run)   # with room again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from checkpoint-0 (step 0)" in resumed.stderr
    _assert_same_as_full(base.full, run)


def test_output_path_under_a_regular_file_is_one_line_error(base, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    done = subprocess.run(ts.train_command(base.recipe, blocker / "run"), env=base.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _error_line(done.stderr)
    assert str(blocker / "run") in line and f"{blocker} is a file" in line
    assert blocker.read_text() == "not a folder\n"


def _mount_tmpfs(path: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (root only); False when this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_real_full_filesystem_enospc_stops_cleanly_and_resumes_after_room_is_made(base, tmp_path):
    """A real full disk (ENOSPC from a tiny tmpfs, not a file size limit): same guarantees as above."""
    used0 = sum(p.stat().st_size for p in (base.full / "checkpoint-0").rglob("*") if p.is_file())
    extra4 = sum(p.stat().st_size for p in (base.full / "checkpoint-4").rglob("*") if p.is_file())
    room = used0 + 2 * 2**20          # checkpoint-0 and the logs fit; checkpoint-4 (>= 8 MB more) does not
    assert extra4 > 4 * 2**20
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, room):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        run = disk / "run"
        done = subprocess.run(ts.train_command(base.recipe, run), env=base.env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        line = _error_line(done.stderr)
        assert f"cannot write {run / 'checkpoint-4'}: No space left on device" in line, line
        assert f"{run / 'checkpoint-0'} is intact" in line
        assert ckpt.latest_checkpoint(run) == run / "checkpoint-0"
        _assert_no_partial_checkpoint(run)

        remount = subprocess.run(["mount", "-o", f"remount,size={64 * 2**20}", str(disk)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        resumed = _resume(base, run)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "from checkpoint-0 (step 0)" in resumed.stderr
        _assert_same_as_full(base.full, run)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_read_only_output_filesystem_is_one_line_error(base, tmp_path):
    """An output folder that cannot be written (root ignores permission bits, so a read-only mount stands in)."""
    disk = tmp_path / "ro"
    if not _mount_tmpfs(disk, 2**20):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        done = subprocess.run(ts.train_command(base.recipe, disk / "run"), env=base.env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        line = _error_line(done.stderr)
        assert str(disk / "run") in line and "Read-only file system" in line, line
        assert not any(disk.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
