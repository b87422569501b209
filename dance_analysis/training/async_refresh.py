"""Asynchronous refresh, as in ANCE: a separate miner process that follows the trainer through the filesystem.

The trainer (rank 0) starts the miner (``python -m dance_analysis.training.async_refresh RUN_DIR``), then goes on
training and writes ``checkpoint-<step>/`` folders. The miner watches the run directory; whenever a complete
checkpoint newer than the last one it handled appears, it takes the newest (skipping any it fell behind on), loads
its encoder on its own device (``mining.device``, placed by the trainer with :func:`place_miner`: ``auto`` = the
first GPU that no training process uses; the miner process sees only that GPU), re-encodes the corpus and the
queries, searches, mines and evaluates (:func:`.refresh.run_refresh`) and then:

1. writes everything into ``RUN_DIR/refresh/.tmp-step-<step>-<pid>/``;
2. adds ``embeddings/``, ``negatives/`` and ``dev_metrics.json`` to the checkpoint folder, each published
   atomically (skipped if the trainer has pruned that checkpoint meanwhile);
3. publishes the temporary folder as ``RUN_DIR/refresh/step-<step>/``: only complete sets ever carry that name,
   and a set mined again for the same step is swapped in without a moment with no set
   (:func:`dance_analysis.atomic.replace_dir`).

At a step boundary the trainer adopts the newest ``refresh/step-*`` set; it never sees a half-written one. When
training ends the trainer writes ``refresh/STOP`` (``{"final_step": ...}``); the miner handles that step if asked
and exits. It also exits when the trainer process disappears.

When the miner dies (killed, out of memory, a crash), the trainer notices at its next step, prints one warning,
goes on training with the newest complete negative set and restarts the miner, which mines the newest checkpoint;
after :data:`MAX_RESTARTS` restarts a further death stops training with an error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import checkpoints
from ..atomic import building_dir, publish_dir, read_json, remove_dir, replace_dir, write_json
from ..checkpoints import (
    DEV_METRICS_FILE,
    EMBEDDINGS_DIR,
    HELD_FILE,
    HELD_LOCK,
    MINER_LOG,
    NEGATIVES_DIR,
    REFRESH_DIR,
    STOP_FILE,
    read_refresh_record,
)
from ..errors import DanceError
from ..logs import NOTICE, show_messages
from ..mining import NegativeSet
from .config import load_recipe
from .faults import fault_point

logger = logging.getLogger("dance_analysis.training.async_refresh")  # __name__ is __main__ in the miner

SET_RE = re.compile(r"^step-(\d+)$")
MAX_RESTARTS = 3


def refresh_root(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/refresh``: where complete negative sets are published."""
    return Path(run_dir) / REFRESH_DIR


def list_sets(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete negative set, ordered by step."""
    root = refresh_root(run_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        match = SET_RE.match(child.name)
        if match and child.is_dir():
            out.append((int(match.group(1)), child))
    return sorted(out)


def held_checkpoint(run_dir: str | os.PathLike) -> int | None:
    """The step of the checkpoint the miner is refreshing from (``refresh/held.json``), or ``None``.

    The miner writes the marker before it reads the checkpoint and removes it once the refresh is attached; the
    trainer's pruning never deletes that checkpoint (:func:`.state.commit`), however many checkpoint intervals the
    refresh spans. A marker left by a killed miner protects its checkpoint until the restarted miner moves on."""
    path = refresh_root(run_dir) / HELD_FILE
    step = (read_json(path, kind=dict, invalid=None) or {}).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


@contextlib.contextmanager
def held_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """The miner's marking of a checkpoint (:func:`hold_checkpoint`) and the trainer's pruning (:func:`.state.commit`),
    one at a time: an exclusive advisory lock on ``refresh/held.lock``. Without it the trainer could read no marker,
    the miner mark the newest checkpoint, and the trainer then prune it. A run without a ``refresh/`` folder
    (synchronous refreshes) has no miner and takes no lock; neither does a system without ``fcntl`` (not POSIX)."""
    root = refresh_root(run_dir)
    try:
        import fcntl
    except ImportError:   # not POSIX: the async layout is tested on Linux only
        fcntl = None
    if fcntl is None or not root.is_dir():
        yield
        return
    with open(root / HELD_LOCK, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_checkpoint(run_dir: str | os.PathLike, step: int, checkpoint_dir: str | os.PathLike) -> bool:
    """Mark ``checkpoint_dir`` (``step``) as the one the miner refreshes from (``refresh/held.json``), under
    :func:`held_lock`; False, with nothing marked, when it was pruned (or is no longer complete) since it was
    listed."""
    with held_lock(run_dir):
        if not checkpoints.is_complete(checkpoint_dir):
            return False
        fault_point("miner-hold", step)
        write_json(refresh_root(run_dir) / HELD_FILE, {"step": int(step), "pid": os.getpid()})
        return True


class MinerHandle:
    """The trainer's side: start the miner, find / wait for complete negative sets, stop the miner."""

    def __init__(self, run_dir: str | os.PathLike, recipe, device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.device = device      # where the miner runs: "cpu" or "cuda:N" of this process (see place_miner)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.run_dir / MINER_LOG
        self._log_handle = None
        self.restarts = 0
        self.using: int | None = None
        self._final_step: int | None = None

    def start(self) -> None:
        """Start the miner process (its output goes to ``RUN_DIR/miner.log``)."""
        root = refresh_root(self.run_dir)
        root.mkdir(parents=True, exist_ok=True)
        (root / STOP_FILE).unlink(missing_ok=True)
        (root / HELD_FILE).unlink(missing_ok=True)   # left by a miner that died: the new one holds its own
        for child in root.iterdir():
            if child.name.startswith(".tmp-"):
                shutil.rmtree(child, ignore_errors=True)
        if self._log_handle is not None:
            self._log_handle.close()
        env, device = self.environment()
        self._log_handle = open(self.log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dance_analysis.training.async_refresh", str(self.run_dir),
             "--parent-pid", str(os.getpid()), "--device", device],
            stdout=self._log_handle, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)

    def environment(self) -> tuple[dict[str, str], str]:
        """The miner's environment and ``--device``: without torchrun's variables, and on a GPU restricted to
        that one GPU (``CUDA_VISIBLE_DEVICES`` = its physical id, ``--device cuda:0``), so neither its encoding
        nor its search opens a context or allocates on another GPU."""
        env = dict(os.environ)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        if not self.device.startswith("cuda"):
            return env, "cpu"
        index = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
        ids = _visible_device_ids()
        env["CUDA_VISIBLE_DEVICES"] = ids[index] if index < len(ids) else str(index)
        return env, "cuda:0"

    def set_dir(self, step: int) -> Path:
        """The folder of the set mined from checkpoint ``step``."""
        return refresh_root(self.run_dir) / f"step-{step}"

    def newest(self) -> tuple[int, Path] | None:
        """The newest complete set, or ``None``."""
        found = list_sets(self.run_dir)
        return found[-1] if found else None

    def revive(self) -> bool:
        """Restart the miner if it has died; returns whether it did.

        Logs one warning per death (training goes on with the set in use meanwhile); raises
        :class:`DanceError` when the miner dies again after :data:`MAX_RESTARTS` restarts.
        """
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        if self.restarts >= MAX_RESTARTS:
            raise DanceError(f"the negative miner stopped with exit status {code} after {self.restarts} "
                             f"restart(s); see {self.log_path}")
        self.restarts += 1
        using = f"the negatives of step {self.using}" if self.using is not None else "no negatives yet"
        logger.warning("warning: the negative miner stopped (exit status %s, see %s); training goes on with %s "
                       "and the miner is restarted", code, self.log_path, using)
        self.start()
        return True

    def ready(self, step: int) -> Path | None:
        """The folder of the newest complete set when its step is at least ``step``, else ``None``; never blocks
        (restarts a dead miner, see :meth:`revive`). The trainer polls it (every rank meets in a small collective
        between two polls, so no rank waits in a collective for the miner)."""
        newest = self.newest()
        if newest is not None and newest[0] >= step:
            return newest[1]
        self.revive()
        return None

    def newer_than(self, current: int) -> Path | None:
        """The folder of a complete set newer than step ``current``, or ``None`` (restarts a dead miner)."""
        self.revive()
        newest = self.newest()
        return newest[1] if newest is not None and newest[0] > current else None

    def read_set(self, set_dir: Path):
        """``(NegativeSet, refresh record or None)`` of the complete set in ``set_dir``."""
        return NegativeSet.load(set_dir / NEGATIVES_DIR), read_refresh_record(set_dir)

    def in_use(self, step: int) -> None:
        """The trainer now trains on set ``step``: delete older sets (their checkpoints keep copies)."""
        self.using = step
        for other, path in list_sets(self.run_dir):
            if other < step:
                remove_dir(path)

    def checkpoint_written(self, step: int) -> None:
        """Called after checkpoint ``step`` is committed (the miner finds it by watching the folder)."""
        self.revive()

    def record(self, step: int) -> dict[str, Any] | None:
        """The ``refresh.json`` record of set ``step``, if it exists."""
        return read_refresh_record(self.set_dir(step))

    def request_stop(self, final_step: int | None) -> None:
        """Ask the miner to stop, after mining ``final_step`` when given (writes ``refresh/STOP``)."""
        self._final_step = final_step
        if self.proc is not None:
            self.revive()
            write_json(refresh_root(self.run_dir) / STOP_FILE, {"final_step": final_step})

    def stopped(self) -> bool | None:
        """After :meth:`request_stop`: ``True`` once the miner has exited cleanly, else ``None``; never blocks.
        A miner that died before handling the final step is restarted (:meth:`revive`) and asked again."""
        if self.proc is None:
            return True
        code = self.proc.poll()
        if code is None:
            return None
        if code == 0:
            self.proc = None
            return True
        self.revive()   # died before handling the final step: once more (or an error after MAX_RESTARTS)
        write_json(refresh_root(self.run_dir) / STOP_FILE, {"final_step": self._final_step})
        return None

    def close(self) -> None:
        """Stop the miner if it still runs (on errors)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


# ------------------------------------------------------------------------------------------------ miner side

def place_miner(requested: str, training_gpus: int, visible_gpus: int) -> str:
    """Where the async miner runs, decided by the trainer before it starts the miner: ``"cpu"`` or ``"cuda:N"``.

    ``training_gpus``: how many GPUs the training processes of this machine use (torchrun's ``LOCAL_WORLD_SIZE``
    on CUDA: ``cuda:0`` .. ``cuda:<training_gpus - 1>``; 0 when training runs on the CPU); ``visible_gpus``: how
    many this process sees. ``auto`` takes the first GPU that no training process uses (``cuda:<training_gpus>``);
    when every GPU trains, a single training process shares its GPU with the miner, and several are refused with
    a message naming the choices (in lockstep data parallelism every rank would run at the speed of the shared
    GPU). ``cpu`` and ``cuda:N`` are taken as given (``cuda:N`` of a training process is allowed, with a warning).
    """
    requested = str(requested).strip().lower()
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        if visible_gpus <= 0:
            return "cpu"
        if training_gpus < visible_gpus:
            return f"cuda:{training_gpus}"
        if training_gpus <= 1:
            return "cuda:0"
        raise DanceError(f"mining.device auto: all {visible_gpus} GPUs run training processes, so the async miner "
                         f"has no GPU of its own; start one training process fewer (torchrun --nproc_per_node="
                         f"{visible_gpus - 1}, with optim.batch_size a multiple of {visible_gpus - 1} x "
                         f"optim.grad_accum) so that it gets cuda:{visible_gpus - 1}, or use mining.mode sync, or "
                         f"name a GPU to share (mining.device cuda:N)")
    if requested == "cuda":
        requested = "cuda:0"
    if requested.startswith("cuda:") and requested[5:].isdigit():
        index = int(requested[5:])
        if index >= visible_gpus:
            raise DanceError(f"mining.device {requested}: only {visible_gpus} GPU(s) are visible")
        if index < training_gpus:
            logger.warning("warning: mining.device %s is also the GPU of training process %d: both share it",
                           requested, index)
        return requested
    raise DanceError(f"mining.device must be auto, cpu, cuda or cuda:N, got {requested!r}")


def miner_device(requested: str):
    """The miner process's torch device for ``--device`` / ``mining.device``: ``auto`` = the first visible GPU
    (the trainer restricts the miner to the one GPU :func:`place_miner` chose), else the CPU."""
    import torch

    # torch: the async miner (light module) starts without it
    from ..device import pick_device

    if requested == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() and torch.cuda.device_count() else \
            torch.device("cpu")
    return pick_device(requested)


def _visible_device_ids() -> list[str]:
    """The physical ids behind ``cuda:0``, ``cuda:1``, ... of this process (``CUDA_VISIBLE_DEVICES`` or 0..n-1)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        return [part.strip() for part in listed.split(",")][:count] if count else []
    return [str(i) for i in range(count)]


def _attach(result_dir: Path, checkpoint_dir: Path) -> str | None:
    """Move the refresh's embeddings and copy its negatives / dev metrics into the checkpoint folder; returns
    why nothing (or not everything) was attached, or ``None`` when all was."""
    if not checkpoint_dir.exists():
        return "the checkpoint was deleted meanwhile"
    if not checkpoints.is_complete(checkpoint_dir):
        return "the checkpoint is incomplete"
    try:
        emb = result_dir / EMBEDDINGS_DIR
        if emb.is_dir() and not (checkpoint_dir / EMBEDDINGS_DIR).exists():
            publish_dir(emb, checkpoint_dir / EMBEDDINGS_DIR, replace=False)
        neg = result_dir / NEGATIVES_DIR
        if neg.is_dir():
            with building_dir(checkpoint_dir / NEGATIVES_DIR) as staging:
                shutil.copytree(neg, staging, dirs_exist_ok=True)
        dev = read_json(result_dir / DEV_METRICS_FILE, "the refresh's dev metrics", missing=None)
        if dev is not None:
            write_json(checkpoint_dir / DEV_METRICS_FILE, dev)
    except FileNotFoundError as exc:
        return f"the checkpoint was deleted while the results were attached ({exc.filename})"
    return None


def _next_index(set_dir: Path) -> int:
    """The refresh count after the set in ``set_dir`` (its ``refresh_index`` + 1; 0 when unreadable)."""
    # torch: the async miner (light module) starts without it
    from .refresh import next_refresh_index

    meta = read_json(set_dir / NEGATIVES_DIR / "meta.json", kind=dict, invalid=None)
    return next_refresh_index(meta) if meta is not None else 0


class Miner:
    """The miner loop (runs in its own process)."""

    def __init__(self, run_dir: str | os.PathLike, parent_pid: int | None = None, device: str | None = None):

        self.run_dir = Path(run_dir)
        self.recipe = load_recipe(self.run_dir / "config.yaml")
        self.parent_pid = parent_pid
        self.device = miner_device(device or self.recipe.mining.device)
        self.data = None
        found = list_sets(self.run_dir)
        self.last_done = found[-1][0] if found else -1
        # The chunk of queries a refresh mines follows the count of refreshes (refresh_index), which a restarted
        # miner reads from the newest set on disk.
        self.next_index = _next_index(found[-1][1]) if found else 0
        # The encode precision decided at the first refresh, kept by a restarted miner from the newest set.
        self.precision = None
        if found:
            # torch: the async miner (light module) starts without it
            from .refresh import kept_precision

            record = (read_refresh_record(found[-1][1]) or {}).get("encode_precision")
            self.precision = kept_precision(record, found[-1][1].name, self.device)

    def _parent_alive(self) -> bool:
        if self.parent_pid is None:
            return True
        if os.getppid() != self.parent_pid:
            return False
        return True

    def _stop_request(self) -> dict | None:
        path = refresh_root(self.run_dir) / STOP_FILE
        if not path.is_file():
            return None
        return read_json(path, invalid=None)

    def _say(self, text: str) -> None:
        logger.log(NOTICE, text)

    def run(self) -> int:
        """Watch and refresh until asked to stop; returns the exit status."""
        self._say(f"watching {self.run_dir} on {self.device}")
        while True:
            if not self._parent_alive():
                self._say("the trainer is gone; exiting")
                return 0
            stop = self._stop_request()
            pending = [(s, p) for s, p in checkpoints.list_checkpoints(self.run_dir) if s > self.last_done]
            if stop is not None and stop.get("final_step") is not None:
                pending = [(s, p) for s, p in pending if s <= int(stop["final_step"])]
            if pending:
                step, path = pending[-1]
                if stop is not None and stop.get("final_step") is None:
                    return 0
                self._refresh(step, path)
                continue
            if stop is not None:
                self._say("stop requested; exiting")
                return 0
            time.sleep(self.recipe.mining.poll_seconds)

    def _refresh(self, step: int, checkpoint_dir: Path) -> None:
        started = time.perf_counter()
        if not hold_checkpoint(self.run_dir, step, checkpoint_dir):   # the trainer's pruning keeps it from now on
            logger.info("checkpoint-%d was pruned before the miner could hold it; looking for the newest", step)
            return
        try:
            self._refresh_held(step, checkpoint_dir, started)
        finally:
            (refresh_root(self.run_dir) / HELD_FILE).unlink(missing_ok=True)

    def _refresh_held(self, step: int, checkpoint_dir: Path, started: float) -> None:
        # torch: the async miner (light module) starts without it
        from ..model import DualEncoder

        # torch: the async miner (light module) starts without it
        from .refresh import prepare_data, run_refresh, summary_line

        fault_point("miner-refresh", step)
        try:
            model = DualEncoder.load(str(checkpoint_dir / "encoder"))
        except (DanceError, OSError) as exc:
            if not checkpoint_dir.exists():
                logger.warning("warning: checkpoint-%d was deleted before the miner could read it; skipped", step)
                self.last_done = step
                return
            raise exc
        model.to(self.device)
        if self.data is None:
            self.data = prepare_data(self.recipe, model.tokenizer, model.config.query_max_length,
                                     model.config.doc_max_length,
                                     prompts=(model.config.query_prompt, model.config.document_prompt))
        root = refresh_root(self.run_dir)
        tmp = root / f".tmp-step-{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        search_device = f"cuda:{self.device.index or 0}" if self.device.type == "cuda" else "cpu"
        result = run_refresh(model, self.data, self.recipe, step, out_dir=tmp, device=self.device,
                             search_device=search_device,
                             reuse_cache=step == 0 and self.recipe.mining.cache_initial_embeddings,
                             refresh_index=self.next_index, precision=self.precision)
        if self.precision is None:
            self._say(result.precision.describe())
        self.precision = result.precision
        missing = _attach(tmp, checkpoint_dir)
        if missing is not None:
            self._report_attach(step, checkpoint_dir, root / f"step-{step}", missing)
        replace_dir(tmp, root / f"step-{step}")
        self.last_done = step
        self.next_index += 1
        self._say(summary_line(result.record(), self.recipe.checkpoint.best_metric,
                               f"| {time.perf_counter() - started:.1f}s in all"))
        del model, result
        if self.device.type == "cuda":   # the GPU's cached memory is not kept between refreshes
            import torch

            torch.cuda.empty_cache()


    def _report_attach(self, step: int, checkpoint_dir: Path, set_dir: Path, reason: str) -> None:
        """One warning in ``miner.log``: the refresh of ``step`` could not be attached to its checkpoint."""
        logger.warning("warning: the refresh of step %d was not attached to %s: %s; its negatives and dev metrics "
                       "are only in %s", step, checkpoint_dir, reason, set_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the miner process."""
    parser = argparse.ArgumentParser(prog="python -m dance_analysis.training.async_refresh",
                                     description="Mine negatives for a dance-train run in async refresh mode.")
    parser.add_argument("run_dir", help="the run directory the trainer writes checkpoints into")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--device", default=None, help="override mining.device")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    show_messages(stream="stdout", fmt="[miner %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        return Miner(args.run_dir, args.parent_pid, args.device).run()
    except DanceError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
