"""How the trainer gets its negatives: one small interface, a sync and an async implementation.

The loop (:class:`dance_analysis.training.loop.Trainer`) calls a :class:`Refresher` at five points and never asks
which one it has (as Tevatron's trainer calls one ``compute_loss``); :func:`make_refresher` picks it once, at setup,
from ``mining.mode`` (:data:`REFRESHERS`):

==================  =========================================================================================
``start()``         a new run: the step-0 negatives (from a prepared ``checkpoint-0``, or mined now by the
                    training processes, sharded over them) and ``checkpoint-0``
``resume()``        after the trainer state of a checkpoint was loaded: whatever the mode needs to go on
``before_step()``   before each optimizer step: take newer negatives if there are any (async)
``after_step()``    after each optimizer step: refresh and / or write a checkpoint when one is due
``finish()``        after the last step: wait for the last refresh (async)
``close()``         always, at the end (stops a miner that still runs)
==================  =========================================================================================

plus two checkpoint hooks: :meth:`Refresher.state` (what the trainer state of a checkpoint records for the
refresher) with :meth:`Refresher.load_state`, and :meth:`Refresher.set_dir` (where the negatives of a step may be
found on resume besides the checkpoint).

- :class:`SyncRefresher` (``sync``): training pauses every ``mining.refresh_every`` steps; every process takes part
  in the refresh (:func:`.refresh.run_refresh`: encoding split over the ranks, search and mining on rank 0 while the
  others meet it in small collectives) and ``checkpoint-<step>`` is written with the new negatives.
- :class:`AsyncRefresher` (``async``): in a multi-process run the step-0 negatives are mined as the sync refresher
  mines them (by the training processes, sharded), then handed to the miner process
  (:class:`.async_refresh.MinerHandle`), which refreshes from each checkpoint while training goes on (in one process
  the miner mines step 0 too); the trainer swaps to the newest complete set at a step boundary.

A refresher works on the trainer it serves: it reads its recipe, run folder, process group, model, data and step,
sets its negative stream (``trainer.stream``), dev metrics (``trainer.last_dev``) and ``trainer.refresh_seconds``,
and writes checkpoints through it (``trainer.checkpoint``, ``trainer.write_checkpoint``, ``trainer.writing``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from ..checkpoints import NEGATIVES_DIR, read_refresh_record
from ..mining import NegativeSet
from . import checkpoint as ckpt
from .async_refresh import MinerHandle, place_miner
from .instances import InstanceStream
from .prepare import publish_prepared_set
from .refresh import kept_precision, next_refresh_index, run_refresh, summary_line
from .setup import show_progress
from .state import gather_rng

__all__ = ["REFRESHERS", "AsyncRefresher", "Refresher", "SyncRefresher", "checkpoint_follows", "make_refresher",
           "poll_interval"]


def poll_interval(recipe, wanted: float | None = None) -> float:
    """How long all ranks sleep between two polls: ``wanted`` (e.g. ``mining.poll_seconds``), at most
    ``distributed.poll_seconds``."""
    limit = recipe.distributed.poll_seconds
    return limit if wanted is None else min(wanted, limit)


def checkpoint_follows(recipe, step: int) -> bool:
    """True when optimizer step ``step`` is followed by a refresh and / or a checkpoint, in either mode: every
    ``mining.refresh_every`` steps and after the last one (``optim.max_steps``). The trainer reads its logged values
    there (:meth:`.loop.Trainer._train_step`), so a checkpoint never holds weights it has not checked."""
    return step % recipe.mining.refresh_every == 0 or step >= recipe.optim.max_steps


class Refresher(Protocol):
    """What the training loop calls (see the module docstring); every rank calls every method."""

    def start(self) -> None: ...

    def resume(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any], folder: Path) -> None: ...

    def set_dir(self, step: int) -> Path | None: ...


class SyncRefresher:
    """Refresh in the training processes, training paused (``mining.mode: sync``)."""

    def __init__(self, trainer):
        self.trainer = trainer
        # The encode precision of the refreshes (a PrecisionDecision): decided at the first, kept on resume.
        self.precision = None

    @classmethod
    def for_trainer(cls, trainer) -> SyncRefresher:
        """The refresher of ``trainer`` (nothing to place: the training processes refresh)."""
        return cls(trainer)

    # ------------------------------------------------------------------------------------------ the points
    def start(self) -> None:
        """The step-0 negatives: those of the prepared ``checkpoint-0``, or a refresh now (``checkpoint-0``)."""
        if self.trainer.prepared is not None:
            self._take_prepared(self.trainer.prepared)
        else:
            self.refresh()

    def resume(self) -> None:
        """Nothing to do: the checkpoint's negatives and precision are loaded with the trainer state."""

    def before_step(self) -> None:
        """Nothing to do: the negatives change only at a refresh."""

    def after_step(self) -> None:
        """Refresh (and write the checkpoint) every ``mining.refresh_every`` steps and, with
        ``mining.final_refresh``, after the last step; else a checkpoint with the negatives in use after it."""
        trainer = self.trainer
        if not checkpoint_follows(trainer.recipe, trainer.step):
            return
        if trainer.step % trainer.recipe.mining.refresh_every == 0 or trainer.recipe.mining.final_refresh:
            self.refresh()
        else:    # the last step, without a final refresh
            trainer.checkpoint(with_negatives=True)

    def finish(self) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """Nothing to stop."""

    # ---------------------------------------------------------------------------------- checkpoint hooks
    def state(self) -> dict[str, Any]:
        """The encode precision of the refreshes, once decided (``trainer_state.json``: ``encode_precision``)."""
        return {"encode_precision": self.precision.to_dict()} if self.precision is not None else {}

    def load_state(self, state: dict[str, Any], folder: Path) -> None:
        """Keep the encode precision the checkpoint ``folder`` records."""
        self.precision = kept_precision(state.get("encode_precision"), folder.name, self.trainer.device)

    def set_dir(self, step: int) -> Path | None:
        """No folder besides the checkpoints: a sync checkpoint holds its negatives."""
        return None

    # --------------------------------------------------------------------------------------- the refresh
    def refresh(self, announce: bool = True) -> Path | None:
        """Refresh with the current weights on every rank and write ``checkpoint-<step>`` with everything; the
        trainer trains on the new negatives. ``announce``: log the refresh record and its summary line."""
        trainer = self.trainer
        dist = trainer.dist
        started = time.perf_counter()
        target = trainer.run_dir / f"checkpoint-{trainer.step}"
        with trainer.writing(target):
            tmp = ckpt.begin_checkpoint(trainer.run_dir, trainer.step) if dist.is_main else None
        with trainer.writing(target, tmp):
            result = run_refresh(trainer.model, trainer.data, trainer.recipe, trainer.step, out_dir=tmp, dist=dist,
                                 device=trainer.device, progress=show_progress(trainer.recipe),
                                 reuse_cache=trainer.step == 0 and trainer.recipe.mining.cache_initial_embeddings,
                                 start=trainer.start,
                                 refresh_index=next_refresh_index(trainer.stream.negatives if trainer.stream
                                                                  else None),
                                 precision=self.precision)
            if self.precision is None and dist.is_main:
                trainer.log.say(result.precision.describe())
            self.precision = result.precision
            trainer.stream = InstanceStream(result.negatives, trainer.recipe.optim.seed)
            rng = gather_rng(dist)
            trainer.refresh_seconds += time.perf_counter() - started
            final = trainer.write_checkpoint(tmp, rng, with_negatives=False)
        dist.barrier()
        if dist.is_main and announce:
            trainer.last_dev = result.dev_metrics
            record = result.record()
            trainer.log.log(record)
            where = f" by {dist.world_size} processes" if trainer.step == 0 and dist.world_size > 1 else ""
            trainer.log.say(summary_line(record, trainer.recipe.checkpoint.best_metric,
                                         f"| training so far {trainer.train_seconds:.1f}s" +
                                         (f" | mined{where}" if where else "")))
        return final

    def _take_prepared(self, checkpoint: Path) -> None:
        """Train on the step-0 negatives of a ``checkpoint-0`` mined before training (``--prepare
        --mine-step0``, or the launched job's own before it was interrupted)."""

        trainer = self.trainer
        dist = trainer.dist
        negatives = NegativeSet.load(checkpoint / NEGATIVES_DIR) if dist.is_main else None
        trainer.stream = InstanceStream(dist.broadcast_object(negatives), trainer.recipe.optim.seed)
        recorded = (read_refresh_record(checkpoint) or {}).get("encode_precision") if dist.is_main else None
        self.precision = kept_precision(dist.broadcast_object(recorded), checkpoint.name, trainer.device)
        if dist.is_main:
            record = read_refresh_record(checkpoint) or {"step": 0}
            trainer.last_dev = record.get("dev")
            trainer.log.log(record)
            trainer.log.say(summary_line(record, trainer.recipe.checkpoint.best_metric,
                                         f"| from {checkpoint.name}, mined before training"))


class AsyncRefresher:
    """The training processes of a multi-process run mine step 0 (as :class:`SyncRefresher`), then a miner process
    refreshes from each checkpoint while training goes on (``mining.mode: async``; the miner is
    :class:`.async_refresh.MinerHandle`'s, on rank 0 only)."""

    def __init__(self, trainer, miner):
        self.trainer = trainer
        self.miner = miner            # MinerHandle on rank 0, None on the other ranks
        self.first = SyncRefresher(trainer)

    @classmethod
    def for_trainer(cls, trainer) -> AsyncRefresher:
        """Place the miner (rank 0: :func:`.async_refresh.place_miner`) and say where; it starts at
        :meth:`start` / :meth:`resume`."""
        import os

        import torch

        dist = trainer.dist
        miner = None
        if dist.is_main:

            training_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)) \
                if trainer.device.type == "cuda" else 0
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            placed = place_miner(trainer.recipe.mining.device, training_gpus, visible)
            trainer.log.say(f"async miner on {placed} (training on {training_gpus or 'no'} GPU(s) of {visible})")
            miner = MinerHandle(trainer.run_dir, trainer.recipe, device=placed)
        return cls(trainer, miner)

    # ------------------------------------------------------------------------------------------ the points
    def start(self) -> None:
        """Step 0: the negatives of the prepared ``checkpoint-0``, or, in a multi-process run, mined now by every
        training process (sharded: ``checkpoint-0``), published as the miner's set of step 0 so that the miner goes
        on from it (its count of refreshes included); in one process the miner mines ``checkpoint-0`` itself, as
        every later one (one device either way, and the miner starts up meanwhile). The set is then adopted."""
        trainer = self.trainer
        dist = trainer.dist
        source = trainer.prepared
        if source is None and dist.enabled:
            self.first.refresh(announce=False)       # the set's record is logged when it is adopted below
            source = trainer.run_dir / "checkpoint-0"
        if dist.is_main:
            if source is not None:

                publish_prepared_set(source, self.miner.set_dir(0))
            self.miner.start()
        if source is None:
            trainer.checkpoint(with_negatives=False)   # checkpoint-0, which the miner refreshes from
        self._poll(wait_for=0)

    def resume(self) -> None:
        """Start the miner; when the checkpoint was written before the first negatives arrived (older runs),
        wait for the set of the last refresh step."""
        trainer = self.trainer
        if trainer.dist.is_main:
            self.miner.start()
        if trainer.stream is None:
            every = trainer.recipe.mining.refresh_every
            self._poll(wait_for=int(trainer.step // every) * every)

    def before_step(self) -> None:
        """Adopt a newer complete set (looked for every ``log.every`` steps: rank 0 tells the others in a broadcast,
        a host synchronisation); with ``mining.max_staleness``, wait for the set of the last refresh step when the
        negatives in use are that old."""
        trainer = self.trainer
        mining = trainer.recipe.mining
        if trainer.step % trainer.recipe.log.every == 0:   # a host sync (broadcast): with the step's, per interval
            self._poll()
        if mining.max_staleness is not None and trainer.step - trainer.stream.step >= mining.max_staleness:
            wanted = (trainer.step // mining.refresh_every) * mining.refresh_every
            if wanted > trainer.stream.step:
                self._poll(wait_for=wanted)

    def after_step(self) -> None:
        """A checkpoint (weights and state, no negatives) every ``mining.refresh_every`` steps and after the last
        one; the miner finds it by watching the folder."""
        trainer = self.trainer
        if checkpoint_follows(trainer.recipe, trainer.step):
            trainer.checkpoint(with_negatives=False)
            if trainer.dist.is_main:
                self.miner.checkpoint_written(trainer.step)

    def finish(self) -> None:
        """Ask the miner to stop (after mining the last checkpoint with ``mining.final_refresh``) and wait for it
        by polling, on every rank; log the final refresh."""
        trainer = self.trainer
        dist = trainer.dist
        mining = trainer.recipe.mining
        started = time.perf_counter()
        if dist.is_main:
            trainer.log.bar.close()
            trainer.log.bar = None
            self.miner.request_stop(trainer.step if mining.final_refresh else None)
        # Every rank waits for the miner's last set by polling, not in a barrier.
        dist.poll_until(self.miner.stopped if dist.is_main else None, poll_interval(trainer.recipe,
                                                                                 mining.poll_seconds))
        trainer.refresh_seconds += time.perf_counter() - started
        if dist.is_main and mining.final_refresh:
            record = self.miner.record(trainer.step)
            if record is not None:
                trainer.last_dev = record.get("dev")
                trainer.log.log(record)
                trainer.log.say(summary_line(record, trainer.recipe.checkpoint.best_metric, "| final"))

    def close(self) -> None:
        """Stop the miner if it still runs."""
        if self.miner is not None:
            self.miner.close()

    # ---------------------------------------------------------------------------------- checkpoint hooks
    def state(self) -> dict[str, Any]:
        """Nothing: the miner keeps its encode precision in its sets."""
        return {}

    def load_state(self, state: dict[str, Any], folder: Path) -> None:
        """Nothing (see :meth:`state`)."""

    def set_dir(self, step: int) -> Path | None:
        """The miner's set of ``step`` (rank 0), where a checkpoint's negatives are when the checkpoint lacks
        them."""
        return self.miner.set_dir(step) if self.miner is not None else None

    # -------------------------------------------------------------------------------------------- polling
    def _adopt(self, set_dir: Path | None, waited: float = 0.0) -> None:
        """Switch every rank to the negative set in ``set_dir`` (rank 0's argument)."""
        trainer = self.trainer
        dist = trainer.dist
        negatives, record = None, None
        if dist.is_main and set_dir is not None:
            negatives, record = self.miner.read_set(set_dir)
        negatives = dist.broadcast_object(negatives)
        if negatives is None:
            return
        trainer.stream = InstanceStream(negatives, trainer.recipe.optim.seed)
        if dist.is_main:
            self.miner.in_use(int(negatives.meta["step"]))
            if record is not None:
                trainer.last_dev = record.get("dev")
                trainer.log.log({**record, "swapped_at": trainer.step})
                trainer.log.say(summary_line(record, trainer.recipe.checkpoint.best_metric,
                                             f"| swapped in at step {trainer.step}"
                                             + (f" after waiting {waited:.1f}s" if waited > 0.05 else "")))

    def _poll(self, wait_for: int | None = None) -> None:
        """Adopt the newest complete negative set; with ``wait_for``, wait until one of at least that step exists.

        Waiting never happens inside a collective: rank 0 checks the miner without blocking and every rank meets
        it in a small broadcast after each check (:meth:`DistContext.poll_until`), however long the miner takes.
        """
        trainer = self.trainer
        dist = trainer.dist
        started = time.perf_counter()
        if wait_for is None:
            decision = None
            if dist.is_main:
                found = self.miner.newer_than(trainer.stream.step if trainer.stream is not None else -1)
                decision = str(found) if found is not None else None
            decision = dist.broadcast_object(decision)
        else:
            def check():
                found = self.miner.ready(wait_for)
                return str(found) if found is not None else None

            decision = dist.poll_until(check, poll_interval(trainer.recipe, trainer.recipe.mining.poll_seconds))
        waited = time.perf_counter() - started if wait_for is not None else 0.0
        trainer.refresh_seconds += waited
        if decision is not None or not dist.enabled:
            self._adopt(Path(decision) if decision else None, waited)


#: The refreshers by ``mining.mode``; a new mode is a class with the methods of :class:`Refresher` and a
#: ``for_trainer(trainer)`` constructor, an entry here and the choice in ``MiningConfig.mode``.
REFRESHERS: dict[str, Any] = {"sync": SyncRefresher, "async": AsyncRefresher}


def make_refresher(trainer) -> Refresher:
    """The refresher of ``trainer``'s ``mining.mode`` (chosen once, at setup)."""
    return REFRESHERS[trainer.recipe.mining.mode].for_trainer(trainer)
