"""The training loop of ``dance-train``: ANCE / DANCE with negatives from a refreshed ANN index.

One optimizer step takes ``optim.batch_size`` training instances (q, d+, d-, q-) from the current negative set,
split over processes and ``optim.grad_accum`` micro-batches; each micro-batch encodes its queries (q and, for
DANCE, q-) and documents (d+ and d-) with the dual encoder and calls the recipe's loss,
:class:`dance_analysis.losses.DanceObjective`.
AdamW with linear warm-up and linear decay; gradient clipping; fp16 / bf16 autocast on CUDA.

Every ``mining.refresh_every`` steps the negatives are refreshed (:mod:`.refresh`): in ``sync`` mode training
pauses, the refresh runs with the current weights and a checkpoint is written with them; in ``async`` mode a
checkpoint is written and the miner process (:mod:`.async_refresh`) refreshes from it while training goes on, the
trainer swapping to the newest complete negative set at a step boundary.

Determinism: instances of a negative set are drawn with ``numpy.random.default_rng([seed, negatives step,
epoch])``; mining with ``default_rng([seed, refresh step])``; dropout from the torch generator, whose state is
saved in every checkpoint. A run resumed from a checkpoint on the CPU therefore ends with exactly the weights of an
uninterrupted run (sync mode; an async run depends on when the miner finishes).

This module holds the loop itself (setup, the step, refreshes, the run); the other jobs have their modules:
:mod:`.run_folder` (which directory, its files), :mod:`.run_log` (metrics log, TensorBoard, messages),
:mod:`.optim` (AdamW and the schedule), :mod:`.instances` (the instance stream and its batches), :mod:`.state`
(trainer state for exact resume, committing checkpoints) and :mod:`.async_refresh` (the miner). Their public
names are re-exported here, so ``from dance_analysis.training.loop import ...`` keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_json
from ..errors import DanceError
from ..losses import DanceObjective
from . import checkpoint as ckpt
from .config import Recipe, dump_recipe
from .distributed import DistContext, init_distributed
from .instances import InstanceStream, instance_batch
from .optim import autocast_dtype, build_optimizer, build_scheduler, linear_schedule
from .precision import dtype_of, fixed_precision, kept_train_precision, measure_train_precision, needs_measurement
from .prepare import prepared_checkpoint, publish_prepared_set, require_prepared
from .refresh import (
    NEGATIVES_DIR,
    TrainingData,
    kept_precision,
    next_refresh_index,
    prepare_data,
    run_refresh,
    summary_line,
)
from .run_folder import (
    BEST_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    check_run_dir,
    init_run_dir,
    resolve_backbone,
    start_model,
    truncate_metrics,
)
from .run_log import RunLog
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
from .trackers import check_trackers

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "SUMMARY_FILE", "TENSORBOARD_DIR", "InstanceStream", "TrainResult", "Trainer",
    "TrainingDiverged", "autocast_dtype", "build_optimizer", "linear_schedule", "resolve_backbone", "train",
]


class TrainingDiverged(DanceError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped before updating the weights."""

    exit_status = 3


@dataclass
class TrainResult:
    """What :func:`train` returns: where things are and how long they took."""

    run_dir: Path
    final_step: int
    final_checkpoint: Path | None
    best: dict[str, Any] | None
    dev_metrics: dict[str, float] | None
    wall_seconds: float
    train_seconds: float
    refresh_seconds: float
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (written as ``summary.json`` in the run directory)."""
        wall = max(self.wall_seconds, 1e-9)
        return {
            "final_step": self.final_step,
            "final_checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "best": self.best,
            "dev_metrics": self.dev_metrics,
            "wall_seconds": round(self.wall_seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "refresh_seconds": round(self.refresh_seconds, 2),
            "refresh_share": round(self.refresh_seconds / wall, 4),
        }


class _Towers(nn.Module):
    """Both sides in one forward call, so that DistributedDataParallel sees a single forward per micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, q_ids, q_mask, d_ids, d_mask):
        return self.model.encode(q_ids, q_mask, "query"), self.model.encode(d_ids, d_mask, "doc")


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
        self.encode_precision = None  # the refreshes' PrecisionDecision: decided at the first, kept on resume
        self.miner = None
        self.log = RunLog(self.run_dir, is_main=False)  # replaced once the process group is known

    def _say(self, text: str) -> None:
        self.log.say(text)

    @contextlib.contextmanager
    def _writing(self, target: Path, tmp: Path | None = None):
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
        from ..model import DualEncoder

        recipe = self.recipe
        if self.dist is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Before the process group exists: the caches and the step-0 negatives must not be built by rank 0
            # while the others wait in a collective.
            require_prepared(self.run_dir, recipe)
        self.dist = self.dist or init_distributed(recipe.optim.device, recipe.distributed.timeout_minutes)
        dist = self.dist
        self.device = dist.device
        opt = recipe.optim
        per_rank = opt.batch_size // opt.grad_accum
        if per_rank % dist.world_size:
            raise DanceError(f"optim.batch_size / optim.grad_accum = {per_rank} instances per micro-step cannot be "
                             f"split over {dist.world_size} processes; make it a multiple of the process count")
        self.micro = per_rank // dist.world_size
        if opt.deterministic and self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.log = RunLog(self.run_dir, is_main=dist.is_main)
        # log.report_to; a tracker that cannot run (wandb not installed) stops the run before any work
        self._trackers = [name for name in recipe.log.report_to if recipe.log.tensorboard or name != "tensorboard"]
        if dist.is_main:
            check_trackers(self._trackers)
        found = None
        if dist.is_main:
            resume_from = check_run_dir(self.run_dir, recipe, resume=self.resume, overwrite=self.overwrite)
            prepared = prepared_checkpoint(self.run_dir, recipe) if resume_from is None else None
            found = [str(resume_from) if resume_from else None, str(prepared) if prepared else None]
        resume_from, prepared = dist.broadcast_object(found)
        self.resume_from = Path(resume_from) if resume_from else None
        # A folder prepared by --prepare: training starts from its checkpoint-0 (weights and step-0 negatives).
        self.prepared = Path(prepared) if prepared else None

        # Identical initial weights on every rank (a new head is drawn from the torch generator).
        torch.manual_seed(opt.seed)
        np.random.seed(opt.seed % (2 ** 32))
        random.seed(opt.seed)
        self.start = None  # the checkpoint's encoder/ folder the weights come from, when they do
        if self.resume_from is not None:
            model = DualEncoder.load(str(self.resume_from / "encoder"))
        elif self.prepared is not None:
            self.start = self.prepared / "encoder"
            model = DualEncoder.load(str(self.start))
        else:
            model, self.start = start_model(recipe)
        from ..ann import check_index_spec

        # Now that the embedding size is known, before the first refresh encodes the whole corpus.
        check_index_spec(recipe.mining.index, recipe.mining.index_params, dim=model.dim)
        self.model = model.to(self.device)
        self.model.train()
        if recipe.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        # Parameters that no forward pass uses get no gradient; DDP (built without find_unused_parameters) would
        # stop on the second step waiting for them, and the optimiser has nothing to do with them: frozen.
        unused = set(model.unused_parameters())
        for name, param in self.model.named_parameters():
            if name in unused:
                param.requires_grad_(False)
        if unused and dist.is_main:
            logger.info("frozen (no forward pass uses them): %s", ", ".join(sorted(unused)))
        torch.manual_seed(opt.seed + dist.rank)  # dropout differs between ranks

        self.data: TrainingData = prepare_data(recipe, model.tokenizer, model.config.query_max_length,
                                               model.config.doc_max_length, dist,
                                               prompts=(model.config.query_prompt, model.config.document_prompt))
        if dist.is_main:
            with self._writing(self.run_dir):
                init_run_dir(self.run_dir, recipe, resume=self.resume or self.prepared is not None,
                             overwrite=self.overwrite and self.prepared is None, fresh=self.resume_from is None)
            if self._trackers:   # in the folder as init_run_dir left it (a fresh start drops old events)
                self.log.open_trackers(self._trackers, recipe.name, recipe.to_dict(), dump_recipe(recipe),
                                       purge_step=self._resume_step_hint())
        dist.barrier()
        self.objective = DanceObjective.from_config(recipe.loss, temperature=model.config.temperature)

        towers = _Towers(self.model)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.towers = DDP(towers, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.towers = towers
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe)
        # The step's precision (.precision): decided now, or (auto on a CPU with native bf16) by timing the first
        # step; a resumed run keeps the one its checkpoint records.
        self.train_precision = (None if needs_measurement(opt.precision, self.device)
                                else fixed_precision(opt.precision, self.device))
        self.amp = dtype_of(self.train_precision) if self.train_precision is not None else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.stream: InstanceStream | None = None

        if recipe.mining.mode == "async" and dist.is_main:
            from .async_refresh import MinerHandle, place_miner

            training_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)) \
                if self.device.type == "cuda" else 0
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            placed = place_miner(recipe.mining.device, training_gpus, visible)
            self._say(f"async miner on {placed} (training on {training_gpus or 'no'} GPU(s) of {visible})")
            self.miner = MinerHandle(self.run_dir, recipe, device=placed)

    def _resume_step_hint(self) -> int | None:
        return ckpt.checkpoint_step(self.resume_from) if self.resume_from is not None else None

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
        if self.encode_precision is not None:
            state["encode_precision"] = self.encode_precision.to_dict()
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
        if self.recipe.mining.mode == "sync":   # (the async miner keeps its own: its sets record it)
            self.encode_precision = kept_precision(state.get("encode_precision"), folder.name, self.device)
        restore_rng(folder, self.dist.rank)
        data_state = state.get("data")
        if data_state is None:
            self.stream = None
            return
        negatives = None
        if self.dist.is_main:
            step = int(data_state["negatives_step"])
            negatives = find_negatives(folder, self.run_dir, step,
                                       self.miner.set_dir(step) if self.miner is not None else None)
        negatives = self.dist.broadcast_object(negatives)
        self.stream = InstanceStream(negatives, self.recipe.optim.seed, int(data_state["epoch"]),
                                     int(data_state["position"]))
        metrics = ckpt.read_dev_metrics(folder)
        self.last_dev = metrics

    def _commit(self, tmp: Path | None, step: int) -> Path | None:
        if not self.dist.is_main or tmp is None:
            return None
        meta = checkpoint_meta(self.recipe, self.data.collection.source, self.model.config.temperature,
                               self.dist.world_size)
        protect = (step,)
        if self.stream is not None:
            protect += (self.stream.step,)
        return commit(tmp, self.run_dir, step, meta, self.recipe, protect)

    def _write_checkpoint(self, tmp: Path | None, rng: tuple[list, list], with_negatives: bool) -> Path | None:
        """Rank 0 writes the trainer state (and the negatives in use) into ``tmp`` and commits it, while the other
        ranks meet it in small collectives (a large encoder takes a while to write)."""
        def write() -> Path | None:
            self._write_state(tmp, rng)
            if with_negatives and self.stream is not None:
                self.stream.negatives.save(tmp / NEGATIVES_DIR)
            return self._commit(tmp, self.step)

        return self.dist.on_main(write, self._poll_seconds())

    # ------------------------------------------------------------------------------------------------ refresh
    def _sync_refresh(self) -> Path | None:
        """Refresh with the current weights and write checkpoint-<step> with everything (sync mode)."""
        started = time.perf_counter()
        target = self.run_dir / f"checkpoint-{self.step}"
        with self._writing(target):
            tmp = ckpt.begin_checkpoint(self.run_dir, self.step) if self.dist.is_main else None
        with self._writing(target, tmp):
            result = run_refresh(self.model, self.data, self.recipe, self.step, out_dir=tmp, dist=self.dist,
                                 device=self.device, progress=self._progress_enabled(),
                                 reuse_cache=self.step == 0 and self.recipe.mining.cache_initial_embeddings,
                                 start=self.start,
                                 refresh_index=next_refresh_index(self.stream.negatives if self.stream else None),
                                 precision=self.encode_precision)
            if self.encode_precision is None and self.dist.is_main:
                self._say(result.precision.describe())
            self.encode_precision = result.precision
            self.stream = InstanceStream(result.negatives, self.recipe.optim.seed)
            rng = gather_rng(self.dist)
            self.refresh_seconds += time.perf_counter() - started
            final = self._write_checkpoint(tmp, rng, with_negatives=False)
        self.dist.barrier()
        if self.dist.is_main:
            self.last_dev = result.dev_metrics
            record = result.record()
            self.log.log(record)
            self._say(summary_line(record, self.recipe.checkpoint.best_metric,
                                   f"| training so far {self.train_seconds:.1f}s"))
        return final

    def _plain_checkpoint(self, with_negatives: bool) -> Path | None:
        """A checkpoint without a refresh: weights and state (async mode, or a final step without refresh)."""
        started = time.perf_counter()
        target = self.run_dir / f"checkpoint-{self.step}"
        with self._writing(target):
            tmp = ckpt.begin_checkpoint(self.run_dir, self.step) if self.dist.is_main else None
        with self._writing(target, tmp):
            rng = gather_rng(self.dist)
            final = self._write_checkpoint(tmp, rng, with_negatives)
        self.dist.barrier()
        self.refresh_seconds += time.perf_counter() - started
        return final

    def _adopt(self, set_dir: Path | None, waited: float = 0.0) -> None:
        """Switch every rank to the negative set in ``set_dir`` (rank 0's argument; async mode)."""
        negatives, record = None, None
        if self.dist.is_main and set_dir is not None:
            negatives, record = self.miner.read_set(set_dir)
        negatives = self.dist.broadcast_object(negatives)
        if negatives is None:
            return
        self.stream = InstanceStream(negatives, self.recipe.optim.seed)
        if self.dist.is_main:
            self.miner.in_use(int(negatives.meta["step"]))
            if record is not None:
                self.last_dev = record.get("dev")
                self.log.log({**record, "swapped_at": self.step})
                self._say(summary_line(record, self.recipe.checkpoint.best_metric,
                                       f"| swapped in at step {self.step}"
                                       + (f" after waiting {waited:.1f}s" if waited > 0.05 else "")))

    def _async_poll(self, wait_for: int | None = None) -> None:
        """Adopt the newest complete negative set; with ``wait_for``, wait until one of at least that step exists.

        Waiting never happens inside a collective: rank 0 checks the miner without blocking and every rank meets
        it in a small broadcast after each check (:meth:`DistContext.poll_until`), however long the miner takes.
        """
        started = time.perf_counter()
        if wait_for is None:
            decision = None
            if self.dist.is_main:
                found = self.miner.newer_than(self.stream.step if self.stream is not None else -1)
                decision = str(found) if found is not None else None
            decision = self.dist.broadcast_object(decision)
        else:
            def check():
                found = self.miner.ready(wait_for)
                return str(found) if found is not None else None

            decision = self.dist.poll_until(check, self._poll_seconds(self.recipe.mining.poll_seconds))
        waited = time.perf_counter() - started if wait_for is not None else 0.0
        self.refresh_seconds += waited
        if decision is not None or not self.dist.enabled:
            self._adopt(Path(decision) if decision else None, waited)

    def _poll_seconds(self, wanted: float | None = None) -> float:
        """How long all ranks sleep between two polls: ``wanted`` (e.g. mining.poll_seconds), at most
        ``distributed.poll_seconds``."""
        limit = self.recipe.distributed.poll_seconds
        return limit if wanted is None else min(wanted, limit)

    def _start_prepared(self, is_async: bool) -> None:
        """Train on the step-0 negatives of the prepared ``checkpoint-0`` (``dance-train --prepare``)."""
        from ..mining import NegativeSet
        from .refresh import read_refresh_record

        if is_async:
            if self.dist.is_main:   # the miner goes on from the set of step 0 (its count of refreshes included)
                publish_prepared_set(self.prepared, self.miner.set_dir(0))
                self.miner.start()
            self._async_poll(wait_for=0)
            return
        negatives = NegativeSet.load(self.prepared / NEGATIVES_DIR) if self.dist.is_main else None
        self.stream = InstanceStream(self.dist.broadcast_object(negatives), self.recipe.optim.seed)
        recorded = (read_refresh_record(self.prepared) or {}).get("encode_precision") if self.dist.is_main else None
        self.encode_precision = kept_precision(self.dist.broadcast_object(recorded), self.prepared.name, self.device)
        if self.dist.is_main:
            record = read_refresh_record(self.prepared) or {"step": 0}
            self.last_dev = record.get("dev")
            self.log.log(record)
            self._say(summary_line(record, self.recipe.checkpoint.best_metric, "| prepared by --prepare"))

    # --------------------------------------------------------------------------------------------- training
    def _progress_enabled(self) -> bool:
        setting = self.recipe.log.progress
        if setting is None:
            return sys.stderr.isatty()
        return bool(setting)

    def _train_step(self) -> list[dict[str, Any]]:
        """One optimizer step; returns the log records (global means) of the steps whose values reached the host.

        The losses, the non-finite flag and the gradient norm stay on the device (:mod:`.step_values`) and are read
        once per ``log.every`` steps and at every step that a refresh or a checkpoint follows (so the list is empty
        between those steps): one all-reduce and one copy to the host instead of several per micro-step. The
        divergence check reads them there, before this step updates the weights; a non-finite loss or gradient norm
        of an earlier step of the interval stops training with the step where it appeared, before any checkpoint
        holds the weights since."""
        from .step_values import StepValues

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
        if (step % self.recipe.log.every == 0 or step % self.recipe.mining.refresh_every == 0
                or step >= opt.max_steps):
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
        latest = ckpt.latest_checkpoint(self.run_dir)
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
            with self._writing(self.run_dir):
                return self._run(wall_start)
        finally:
            self.log.close()
            if self.miner is not None:
                self.miner.close()
            if self._owns_dist and self.dist is not None:
                self.dist.close()

    def _run(self, wall_start: float) -> TrainResult:
        from tqdm.auto import tqdm

        recipe = self.recipe
        dist = self.dist
        mining = recipe.mining
        max_steps = recipe.optim.max_steps
        is_async = mining.mode == "async"
        previous_wall = 0.0
        if self.resume_from is not None:
            if dist.is_main:
                truncate_metrics(self.run_dir, ckpt.checkpoint_step(self.resume_from))
            if is_async and dist.is_main:
                self.miner.start()
            self._load_state(self.resume_from)
            self._say(f"resuming {self.run_dir} from {self.resume_from.name} (step {self.step})")
            if self.train_precision is not None:
                self._say(self.train_precision.describe())
            previous_wall = self.train_seconds + self.refresh_seconds
            if self.stream is None:           # an async checkpoint written before the first negatives arrived
                self._async_poll(wait_for=int(self.step // mining.refresh_every) * mining.refresh_every)
        else:
            self._say(f"{recipe.name}: {recipe.loss.objective} on {self.data.collection.name}, "
                      f"{len(self.data.train_qids)} training queries ({len(self.data.pairs)} positive pairs), "
                      f"{len(self.data.dev_qids)} dev queries, {self.data.num_docs} documents; "
                      f"{max_steps} steps of {recipe.optim.batch_size} instances on {dist.world_size} x "
                      f"{self.device}; output {self.run_dir}")
            if self.train_precision is not None:    # (auto on a CPU is said when the first step decides it)
                self._say(self.train_precision.describe())
            if self.prepared is not None:
                self._start_prepared(is_async)
            elif is_async:
                if dist.is_main:
                    self.miner.start()
                self._plain_checkpoint(with_negatives=False)
                self._async_poll(wait_for=0)
            else:
                self._sync_refresh()
        if dist.is_main:
            self.log.bar = tqdm(total=max_steps, initial=self.step, desc=recipe.name, unit="step",
                            disable=not self._progress_enabled(), dynamic_ncols=True, file=sys.stderr)
        final_checkpoint = ckpt.latest_checkpoint(self.run_dir) if dist.is_main else None
        while self.step < max_steps:
            if is_async:
                self._async_poll()
                if mining.max_staleness is not None and self.step - self.stream.step >= mining.max_staleness:
                    wanted = (self.step // mining.refresh_every) * mining.refresh_every
                    if wanted > self.stream.step:
                        self._async_poll(wait_for=wanted)
            self.log.steps(self._train_step(), self.losses, recipe.log.every, max_steps)
            at_refresh = self.step % mining.refresh_every == 0
            last = self.step == max_steps
            if is_async:
                if at_refresh or last:
                    final_checkpoint = self._plain_checkpoint(with_negatives=False)
                    if dist.is_main:
                        self.miner.checkpoint_written(self.step)
            elif at_refresh or (last and mining.final_refresh):
                final_checkpoint = self._sync_refresh()
            elif last:
                final_checkpoint = self._plain_checkpoint(with_negatives=True)
        if is_async:
            started = time.perf_counter()
            if dist.is_main:
                self.log.bar.close()
                self.log.bar = None
                self.miner.request_stop(self.step if mining.final_refresh else None)
            # Every rank waits for the miner's last set by polling, not in a barrier.
            dist.poll_until(self.miner.stopped if dist.is_main else None,
                            self._poll_seconds(mining.poll_seconds))
            self.refresh_seconds += time.perf_counter() - started
        if is_async and dist.is_main:
            record = self.miner.record(self.step) if mining.final_refresh else None
            if record is not None:
                self.last_dev = record.get("dev")
                self.log.log(record)
                self._say(summary_line(record, recipe.checkpoint.best_metric, "| final"))
        wall = time.perf_counter() - wall_start + previous_wall
        best = None
        if dist.is_main:
            found = ckpt.best_checkpoint(self.run_dir, recipe.checkpoint.best_metric)
            if found is not None:
                best = {"step": found[0], "path": str(found[1]), "metric": recipe.checkpoint.best_metric,
                        "value": found[2]}
                write_json(self.run_dir / BEST_FILE, best)
        result = TrainResult(run_dir=self.run_dir, final_step=self.step,
                             final_checkpoint=Path(final_checkpoint) if final_checkpoint else None, best=best,
                             dev_metrics=self.last_dev, wall_seconds=wall, train_seconds=self.train_seconds,
                             refresh_seconds=self.refresh_seconds, losses=self.losses)
        if dist.is_main:
            write_json(self.run_dir / SUMMARY_FILE, result.summary())
            share = 100.0 * self.refresh_seconds / max(wall, 1e-9)
            dev = ""
            if self.last_dev and recipe.checkpoint.best_metric in self.last_dev:
                dev = f", final dev {recipe.checkpoint.best_metric} {self.last_dev[recipe.checkpoint.best_metric]:.4f}"
            self._say(f"done: {self.step} steps in {wall:.1f}s (training {self.train_seconds:.1f}s, refreshes and "
                      f"checkpoints {self.refresh_seconds:.1f}s = {share:.0f}%){dev}; "
                      f"best {best['metric']} {best['value']:.4f} at step {best['step']}" if best else
                      f"done: {self.step} steps in {wall:.1f}s{dev}")
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
