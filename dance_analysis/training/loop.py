"""The training loop of ``dance-train``: ANCE / DANCE with negatives from a refreshed ANN index.

One optimizer step takes ``optim.batch_size`` training instances (q, d+, d-, q-) from the current negative set,
split over processes and ``optim.grad_accum`` micro-batches; each micro-batch encodes its queries (q and, for
DANCE, q-) and documents (d+ and d-) with the dual encoder and calls the recipe's loss,
:class:`dance_analysis.losses.DanceObjective`.
AdamW with linear warm-up and linear decay; gradient clipping; fp16 / bf16 autocast on CUDA.

Every ``mining.refresh_every`` steps the negatives are refreshed (:mod:`.refresh`) by the run's refresher
(:mod:`.refresher`, chosen once at setup; the loop calls it the same way in either mode): in ``sync`` mode training
pauses, the refresh runs with the current weights and a checkpoint is written with them; in ``async`` mode a
checkpoint is written and the miner process (:mod:`.async_refresh`) refreshes from it while training goes on, the
trainer swapping to the newest complete negative set at a step boundary. The step-0 negatives are mined by the
training processes, sharded over the ranks of a multi-process run (by the miner in a one-process async run), unless
``dance-train --prepare --mine-step0`` mined them before.

Determinism: instances of a negative set are drawn with ``numpy.random.default_rng([seed, negatives step,
epoch])``; mining with ``default_rng([seed, refresh step])``; dropout from the torch generator, whose state is
saved in every checkpoint. A run resumed from a checkpoint on the CPU therefore ends with exactly the weights of an
uninterrupted run (sync mode; an async run depends on when the miner finishes).

This module holds the loop itself (the step, checkpoints of the trainer's state, the run); the other jobs have
their modules: :mod:`.setup` (process group, start, model, optimisation), :mod:`.refresher` (the negatives: sync or
async), :mod:`.run_folder` (which directory, its files), :mod:`.run_log` (metrics log, TensorBoard, messages),
:mod:`.optim` (AdamW and the schedule), :mod:`.instances` (the instance stream and its batches), :mod:`.state`
(trainer state for exact resume, committing checkpoints) and :mod:`.async_refresh` (the miner). Their public
names are re-exported here, so ``from dance_analysis.training.loop import ...`` keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import (
    CONFIG_FILE,
    METRICS_FILE,
    NEGATIVES_DIR,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    checkpoint_step,
    latest_checkpoint,
    read_dev_metrics,
)
from ..errors import DanceError
from ..losses import DanceObjective
from . import checkpoint as ckpt
from .config import Recipe, dump_recipe
from .data import TrainingData, prepare_data
from .distributed import DistContext
from .instances import InstanceStream, instance_batch
from .optim import autocast_dtype, build_optimizer, linear_schedule
from .precision import dtype_of, kept_train_precision, measure_train_precision
from .refresher import Refresher, checkpoint_follows, make_refresher, poll_interval
from .result import TrainResult, best_record, conclude
from .run_folder import init_run_dir, resolve_backbone, truncate_metrics
from .run_log import RunLog
from .setup import Towers as _Towers
from .setup import (
    build_optimisation,
    find_start,
    load_model,
    micro_batch,
    open_process_group,
    show_progress,
    step_precision,
    wrap_towers,
)
from .state import (
    checkpoint_meta,
    commit,
    find_negatives,
    gather_rng,
    read_trainer_state,
    restore_optimisation,
    restore_rng,
    save_trainer_state,
)
from .step_values import StepValues
from .trackers import check_trackers

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "SUMMARY_FILE", "TENSORBOARD_DIR", "InstanceStream", "TrainResult", "Trainer",
    "TrainingDiverged", "autocast_dtype", "build_optimizer", "linear_schedule", "resolve_backbone", "train",
]


class TrainingDiverged(DanceError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped before updating the weights."""

    exit_status = 3


# ------------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Runs one recipe into one run directory (see :func:`train`)."""

    def __init__(self, recipe: Recipe, run_dir: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False, dist: DistContext | None = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.dist = dist
        self._owns_dist = dist is None
        self.losses: list[float] = []
        self.train_seconds = 0.0
        self.refresh_seconds = 0.0
        self.last_dev: dict[str, float] | None = None
        self.refresher: Refresher | None = None
        self.final_checkpoint: Path | None = None   # the last checkpoint written (rank 0)
        self.log = RunLog(self.run_dir, is_main=False)  # replaced once the process group is known

    def _say(self, text: str) -> None:
        self.log.say(text)

    @contextlib.contextmanager
    def writing(self, target: Path, tmp: Path | None = None):
        """Turn a failed write of ``target`` (disk full, file size limit, unwritable folder) into a one-line
        :class:`DanceError` naming it, the cause and the last complete checkpoint; removes ``tmp`` (a temporary
        checkpoint folder) first. Other errors pass unchanged."""
        try:
            yield
        except DanceError:
            raise
        except Exception as exc:  # only write failures are translated, the rest is re-raised
            cause = ckpt.write_failure(exc)
            if cause is None:
                raise
            if tmp is not None:
                with contextlib.suppress(OSError):
                    ckpt.remove_dir(tmp)
            named = target if tmp is not None else (getattr(exc, "filename", None) or target)
            raise DanceError(ckpt.write_error_message(named, cause, self.run_dir)) from None

    # ------------------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        """Set up by job (:mod:`.setup`): process group, run folder and start, model, data, optimisation, and the
        refresher."""
        recipe = self.recipe
        self.dist = dist = open_process_group(recipe, self.run_dir, self.dist)
        self.device = dist.device
        self.micro = micro_batch(recipe, dist.world_size)
        self.log = RunLog(self.run_dir, is_main=dist.is_main)
        # log.report_to; a tracker that cannot run (wandb not installed) stops the run before any work
        self._trackers = [name for name in recipe.log.report_to if recipe.log.tensorboard or name != "tensorboard"]
        if dist.is_main:
            check_trackers(self._trackers)
        start = find_start(dist, self.run_dir, recipe, resume=self.resume, overwrite=self.overwrite)
        self.resume_from = start.resume_from
        # A checkpoint-0 mined before training (--prepare --mine-step0): training starts from its weights and
        # negatives. A folder prepared without it: the refresher mines step 0.
        self.prepared = start.prepared
        # start: the checkpoint's encoder/ folder the weights come from, when they do
        self.model, self.start = load_model(recipe, start, self.device, dist.rank)
        model = self.model
        self.data: TrainingData = prepare_data(recipe, model.tokenizer, model.config.query_max_length,
                                               model.config.doc_max_length, dist,
                                               prompts=(model.config.query_prompt, model.config.document_prompt))
        if dist.is_main:
            with self.writing(self.run_dir):
                init_run_dir(self.run_dir, recipe, resume=self.resume or start.prepared_folder,
                             overwrite=self.overwrite and not start.prepared_folder, fresh=self.resume_from is None)
            if self._trackers:   # in the folder as init_run_dir left it (a fresh start drops old events)
                self.log.open_trackers(self._trackers, recipe.name, recipe.to_dict(), dump_recipe(recipe),
                                       purge_step=checkpoint_step(self.resume_from) if self.resume_from else None)
        dist.barrier()
        self.objective = DanceObjective.from_config(recipe.loss, temperature=model.config.temperature)
        self.towers = wrap_towers(self.model, dist, self.device)
        self.optimizer, self.scheduler = build_optimisation(self.model, recipe)
        # The step's precision (.precision): decided now, or (auto on a CPU with native bf16) by timing the first
        # step; a resumed run keeps the one its checkpoint records.
        self.train_precision, self.amp, self.scaler = step_precision(recipe, self.device)
        self.step = 0
        self.stream: InstanceStream | None = None
        self.refresher = make_refresher(self)

    # -------------------------------------------------------------------------------------- checkpoint I/O
    def _write_state(self, folder: Path | None, rng: tuple[list, list]) -> None:
        """Trainer state for exact resume into ``folder`` (rank 0)."""
        if folder is None:
            return
        state = {
            "step": self.step,
            "data": self.stream.state() if self.stream is not None else None,
            "world_size": self.dist.world_size,
            "batch_size": self.recipe.optim.batch_size,
            "grad_accum": self.recipe.optim.grad_accum,
            "train_seconds": round(self.train_seconds, 3),
            "refresh_seconds": round(self.refresh_seconds, 3),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        state.update(self.refresher.state())   # e.g. the encode precision of sync refreshes
        # null: auto, not decided yet (a checkpoint before the first step); decided at the first step after resume
        state["train_precision"] = self.train_precision.to_dict() if self.train_precision is not None else None
        save_trainer_state(folder, state, optimizer=self.optimizer, scheduler=self.scheduler, model=self.model,
                           rng=rng)

    def _load_state(self, folder: Path) -> None:
        state = read_trainer_state(folder, self.dist.world_size)
        self.step = int(state["step"])
        restore_optimisation(folder, state, optimizer=self.optimizer, scheduler=self.scheduler,
                             scaler=self.scaler, device=self.device)
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.refresh_seconds = float(state.get("refresh_seconds", 0.0))
        if state.get("train_precision") or ("train_precision" not in state and self.train_precision is None):
            self.train_precision = kept_train_precision(state.get("train_precision"), folder.name,
                                                        self.recipe.optim.precision, self.device)
            self.amp = dtype_of(self.train_precision)
        self.refresher.load_state(state, folder)
        restore_rng(folder, self.dist.rank)
        data_state = state.get("data")
        if data_state is None:
            self.stream = None
            return
        negatives = None
        if self.dist.is_main:
            step = int(data_state["negatives_step"])
            negatives = find_negatives(folder, self.run_dir, step, self.refresher.set_dir(step))
        negatives = self.dist.broadcast_object(negatives)
        self.stream = InstanceStream(negatives, self.recipe.optim.seed, int(data_state["epoch"]),
                                     int(data_state["position"]))
        self.last_dev = read_dev_metrics(folder)

    def _commit(self, tmp: Path | None, step: int) -> Path | None:
        if not self.dist.is_main or tmp is None:
            return None
        meta = checkpoint_meta(self.recipe, self.data.collection.source, self.model.config.temperature,
                               self.dist.world_size)
        protect = (step,)
        if self.stream is not None:
            protect += (self.stream.step,)
        return commit(tmp, self.run_dir, step, meta, self.recipe, protect)

    def write_checkpoint(self, tmp: Path | None, rng: tuple[list, list], with_negatives: bool) -> Path | None:
        """Rank 0 writes the trainer state (and the negatives in use) into ``tmp`` and commits it, while the other
        ranks meet it in small collectives (a large encoder takes a while to write); returns the checkpoint
        (rank 0), also kept as ``final_checkpoint``."""
        def write() -> Path | None:
            self._write_state(tmp, rng)
            if with_negatives and self.stream is not None:
                self.stream.negatives.save(tmp / NEGATIVES_DIR)
            return self._commit(tmp, self.step)

        final = self.dist.on_main(write, self._poll_seconds())
        if final is not None:
            self.final_checkpoint = final
        return final

    def checkpoint(self, with_negatives: bool) -> Path | None:
        """A checkpoint without a refresh: weights and state (async mode, or a final step without refresh)."""
        started = time.perf_counter()
        target = self.run_dir / f"checkpoint-{self.step}"
        with self.writing(target):
            tmp = ckpt.begin_checkpoint(self.run_dir, self.step) if self.dist.is_main else None
        with self.writing(target, tmp):
            rng = gather_rng(self.dist)
            final = self.write_checkpoint(tmp, rng, with_negatives)
        self.dist.barrier()
        self.refresh_seconds += time.perf_counter() - started
        return final

    def _poll_seconds(self, wanted: float | None = None) -> float:
        """How long all ranks sleep between two polls (:func:`.refresher.poll_interval`)."""
        return poll_interval(self.recipe, wanted)

    # --------------------------------------------------------------------------------------------- training
    def _train_step(self) -> list[dict[str, Any]]:
        """One optimizer step; returns the log records (global means) of the steps whose values reached the host.

        The losses, the non-finite flag and the gradient norm stay on the device (:mod:`.step_values`) and are read
        once per ``log.every`` steps and at every step that a refresh or a checkpoint follows (so the list is empty
        between those steps): one all-reduce and one copy to the host instead of several per micro-step. The
        divergence check reads them there, before this step updates the weights; a non-finite loss or gradient norm
        of an earlier step of the interval stops training with the step where it appeared, before any checkpoint
        holds the weights since."""

        opt = self.recipe.optim
        dist = self.dist
        started = time.perf_counter()
        rows = self.stream.take(opt.batch_size)
        use_qneg = self.objective.uses_query_negatives
        if self.train_precision is None:
            self._decide_train_precision(rows[:self.micro])
            self.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
        values = getattr(self, "_step_values", None)
        if values is None:
            values = self._step_values = StepValues(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        per_micro = opt.batch_size // opt.grad_accum
        for a in range(opt.grad_accum):
            chunk = rows[a * per_micro:(a + 1) * per_micro]
            mine = chunk[dist.rank * self.micro:(dist.rank + 1) * self.micro]
            q_ids, q_mask, d_ids, d_mask = instance_batch(self.data, mine, use_qneg, self.device)
            sync = contextlib.nullcontext()
            if dist.enabled and a < opt.grad_accum - 1:
                sync = self.towers.no_sync()
            with sync:
                with (torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None
                      else contextlib.nullcontext()):
                    q_emb, d_emb = self.towers(q_ids, q_mask, d_ids, d_mask)
                m = len(mine)
                q, d_pos, d_neg = q_emb[:m].float(), d_emb[:m].float(), d_emb[m:].float()
                q_neg = q_emb[m:].float() if use_qneg else None
                # In-batch negatives come from the global batch: every rank's instances (gathered with gradients).
                gather = dist.gather_with_grad if self.objective.in_batch and dist.enabled else None
                loss, parts = self.objective(q, d_pos, d_neg, q_neg, gather=gather, tensor_parts=True)
                values.add_micro(loss, parts, opt.grad_accum)
                scaled = loss / opt.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = opt.grad_clip if opt.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        lr = float(self.scheduler.get_last_lr()[0])
        values.end_step(grad_norm, {"step": self.step + 1, "lr": lr, "epoch": self.stream.epoch,
                                    "negatives_step": self.stream.step})
        step = self.step + 1
        flushed = []
        if step % self.recipe.log.every == 0 or checkpoint_follows(self.recipe, step):
            flushed = values.flush(dist)   # the one host synchronisation of the interval
            for done in flushed:
                if done.nonfinite_ranks > 0:
                    value = done.nonfinite_value if done.nonfinite_value is not None else "not finite"
                    self._diverged(f"the loss is {value} on {done.nonfinite_ranks} process(es)", done.host["step"])
                if self.scaler is None and not math.isfinite(done.grad_norm):
                    self._diverged(f"the gradient norm is {done.grad_norm}", done.host["step"])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self._interval_seconds = getattr(self, "_interval_seconds", 0.0) + elapsed
        if not flushed:
            return []
        # The device's time reaches the host at the synchronising step: each record gets the interval's mean.
        step_time = round(self._interval_seconds / len(flushed), 4)
        self._interval_seconds = 0.0
        records = []
        for done in flushed:
            means = dict(done.means)
            host = done.host
            records.append({"step": host["step"], "loss": means.pop("total"), "lr": host["lr"], **means,
                            "grad_norm": done.grad_norm, "step_time": step_time, "epoch": host["epoch"],
                            "negatives_step": host["negatives_step"]})
        return records

    def _decide_train_precision(self, rows: np.ndarray) -> None:
        """``optim.precision`` auto on a CPU with native bf16: rank 0 times forward and backward of its first
        micro-batch ``rows`` in fp32 and bf16 (:func:`.precision.measure_train_precision`, gradients dropped,
        generator restored); every rank takes its decision."""
        use_qneg = self.objective.uses_query_negatives
        towers = _Towers(self.model)  # not the DDP wrapper: no collective while rank 0 measures

        def run(dtype) -> float:
            q_ids, q_mask, d_ids, d_mask = instance_batch(self.data, rows, use_qneg, self.device)
            with (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                  else contextlib.nullcontext()):
                q_emb, d_emb = towers(q_ids, q_mask, d_ids, d_mask)
            m = len(rows)
            loss, _ = self.objective(q_emb[:m].float(), d_emb[:m].float(), d_emb[m:].float(),
                                     q_emb[m:].float() if use_qneg else None)
            loss.backward()
            self.model.zero_grad(set_to_none=True)
            return float(loss.detach())

        decision = self.dist.on_main(lambda: measure_train_precision(run, self.device), self._poll_seconds())
        self.train_precision = self.dist.broadcast_object(decision)
        self.amp = dtype_of(self.train_precision)
        if self.dist.is_main:
            self._say(self.train_precision.describe())

    def _diverged(self, what: str, step: int | None = None) -> None:
        """Stop with :class:`TrainingDiverged`: ``what`` went wrong at ``step`` (default: the step being taken),
        found before this step updates the weights (:meth:`_train_step`)."""
        latest = latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        now = self.step + 1
        step = now if step is None else step
        stopped = ("stopped before updating the weights" if step == now else
                   f"found at step {now} (the values are read every log.every = {self.recipe.log.every} steps) and "
                   f"stopped before any checkpoint held the weights since")
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; {stopped}, {where}. "
            f"Resume from it with a lower learning rate (e.g. --set optim.lr={self.recipe.optim.lr / 10:g}, "
            f"--resume), a longer warm-up or gradient clipping")

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        """Train to ``optim.max_steps``; returns a :class:`TrainResult`."""
        wall_start = time.perf_counter()
        try:
            self._setup()
            with self.writing(self.run_dir):
                return self._run(wall_start)
        finally:
            self.log.close()
            if self.refresher is not None:
                self.refresher.close()
            self.towers = None    # DDP's reducer holds the process group: let it go before it (DistContext.close)
            if self._owns_dist and self.dist is not None:
                self.dist.close()

    def _run(self, wall_start: float) -> TrainResult:
        from tqdm.auto import tqdm

        recipe = self.recipe
        dist = self.dist
        max_steps = recipe.optim.max_steps
        previous_wall = 0.0
        if self.resume_from is not None:
            if dist.is_main:
                truncate_metrics(self.run_dir, checkpoint_step(self.resume_from))
            self._load_state(self.resume_from)
            self._say(f"resuming {self.run_dir} from {self.resume_from.name} (step {self.step})")
            if self.train_precision is not None:
                self._say(self.train_precision.describe())
            previous_wall = self.train_seconds + self.refresh_seconds
            self.refresher.resume()
        else:
            self._say(f"{recipe.name}: {recipe.loss.objective} on {self.data.collection.name}, "
                      f"{len(self.data.train_qids)} training queries ({len(self.data.pairs)} positive pairs), "
                      f"{len(self.data.dev_qids)} dev queries, {self.data.num_docs} documents; "
                      f"{max_steps} steps of {recipe.optim.batch_size} instances on {dist.world_size} x "
                      f"{self.device}; output {self.run_dir}")
            if self.train_precision is not None:    # (auto on a CPU is said when the first step decides it)
                self._say(self.train_precision.describe())
            self.refresher.start()       # the step-0 negatives (and checkpoint-0)
        if dist.is_main:
            self.log.bar = tqdm(total=max_steps, initial=self.step, desc=recipe.name, unit="step",
                            disable=not show_progress(recipe), dynamic_ncols=True, file=sys.stderr)
            self.final_checkpoint = latest_checkpoint(self.run_dir)
        while self.step < max_steps:
            self.refresher.before_step()
            self.log.steps(self._train_step(), self.losses, recipe.log.every, max_steps)
            self.refresher.after_step()   # a refresh and / or a checkpoint when due
        self.refresher.finish()
        wall = time.perf_counter() - wall_start + previous_wall
        best = best_record(self.run_dir, recipe.checkpoint.best_metric) if dist.is_main else None
        result = TrainResult(run_dir=self.run_dir, final_step=self.step, final_checkpoint=self.final_checkpoint,
                             best=best, dev_metrics=self.last_dev, wall_seconds=wall,
                             train_seconds=self.train_seconds, refresh_seconds=self.refresh_seconds,
                             losses=self.losses)
        if dist.is_main:
            conclude(result, recipe.checkpoint.best_metric, self._say)   # best.json, summary.json, the last line
        dist.barrier()
        return result


def train(recipe: Recipe, output_dir: str | os.PathLike | None = None, *, resume: bool = False,
          overwrite: bool = False, dist: DistContext | None = None) -> TrainResult:
    """Train ``recipe`` into ``output_dir`` (default ``runs/<recipe.name>``); see the module docstring.

    Raises :class:`DanceError` for problems the user can fix (recipe, data, a non-empty output directory without
    ``resume`` / ``overwrite``) and :class:`TrainingDiverged` when the loss is not finite.
    """
    run_dir = Path(output_dir) if output_dir is not None else Path("runs") / recipe.name
    return Trainer(recipe, run_dir, resume=resume, overwrite=overwrite, dist=dist).run()
