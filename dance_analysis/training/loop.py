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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..atomic import write_text
from ..device import amp_dtype
from ..errors import DanceError
from ..losses import DanceObjective
from ..mining import NegativeSet
from . import checkpoint as ckpt
from .config import Recipe, dump_recipe, recipe_differences, recipe_from_dict
from .distributed import DistContext, init_distributed
from .faults import fault_point
from .refresh import NEGATIVES_DIR, TrainingData, prepare_data, read_refresh_record, run_refresh, summary_line

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


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


# ---------------------------------------------------------------------------------------------- small helpers

def resolve_backbone(backbone: str, select: str = "best", metric: str = "MRR@10") -> str:
    """Where to load the starting encoder from.

    A ``checkpoint-<step>`` folder -> its ``encoder/``; a run directory of ``dance-train`` -> the ``encoder/`` of
    its best checkpoint by dev ``metric`` (``select="best"``) or of its last one (``"last"``); anything else is
    returned unchanged (an alias, a model folder or a hub name for ``DualEncoder.load``).
    """
    path = Path(backbone).expanduser()
    if path.is_dir() and (path / "encoder").is_dir() and (path / "checkpoint.json").is_file():
        return str(path / "encoder")
    if path.is_dir() and ckpt.list_checkpoints(path):
        chosen = None
        if select == "best":
            best = ckpt.best_checkpoint(path, metric)
            chosen = best[1] if best else None
        if chosen is None:
            chosen = ckpt.latest_checkpoint(path)
        return str(Path(chosen) / "encoder")
    return backbone


def linear_schedule(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step s: s / warmup during warm-up, then linear decay to 0 at ``max_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(max_steps - step) / float(max(1, max_steps - warmup_steps)))

    return factor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm / 1-d parameters get no weight decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    opt = recipe.optim
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(opt.beta1, opt.beta2),
                             eps=opt.eps)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``optim.precision`` on ``device`` (``None``: full fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return amp_dtype(device)
    if precision == "fp16":
        if device.type != "cuda":
            raise DanceError("optim.precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        return torch.float16
    return torch.bfloat16


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextlib.contextmanager
def _quiet_saving():
    """No transformers progress bar while the encoder is written."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class _Towers(nn.Module):
    """Both sides in one forward call, so that DistributedDataParallel sees a single forward per micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, q_ids, q_mask, d_ids, d_mask):  # noqa: D401 - nn.Module API
        return self.model.encode(q_ids, q_mask, "query"), self.model.encode(d_ids, d_mask, "doc")


class InstanceStream:
    """The training instances of one negative set as a deterministic, resumable stream.

    Epoch e of the set with step s is ``negatives.instances(default_rng([seed, s, e]))`` (shuffled quadruplets);
    the stream's position is (epoch, index), saved in the trainer state.
    """

    def __init__(self, negatives: NegativeSet, seed: int, epoch: int = 0, position: int = 0):
        self.negatives = negatives
        self.seed = int(seed)
        self.step = int(negatives.meta["step"])
        self.epoch = epoch
        self.position = position
        self._items = self._load(epoch)

    def _load(self, epoch: int) -> np.ndarray:
        items = self.negatives.instances(np.random.default_rng([self.seed, self.step, epoch]))
        if len(items) == 0:
            raise DanceError(f"the negatives mined at step {self.step} give no training instance (every training "
                             f"query lacks candidates: is mining.top_k larger than its relevant documents?)")
        return items

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` instances [count, 4] (q_row, d_pos, d_neg, q_neg), continuing into new epochs."""
        out = []
        need = count
        while need:
            if self.position >= len(self._items):
                self.epoch += 1
                self.position = 0
                self._items = self._load(self.epoch)
            chunk = self._items[self.position:self.position + need]
            out.append(chunk)
            self.position += len(chunk)
            need -= len(chunk)
        return np.concatenate(out, axis=0)

    def state(self) -> dict[str, int]:
        """Where the stream is (JSON-able)."""
        return {"negatives_step": self.step, "epoch": self.epoch, "position": self.position,
                "instances_per_epoch": int(len(self._items))}


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
        self.miner = None
        self.writer = None
        self._metrics_handle = None
        self.bar = None

    # --------------------------------------------------------------------------------------- run directory
    def _check_run_dir(self) -> Path | None:
        """Decide, without changing anything, whether the run directory may be used; returns the checkpoint to
        resume from. Raises :class:`DanceError` for a non-empty directory without --resume / --overwrite."""
        run_dir = self.run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise DanceError(f"{run_dir}: the output directory is a file")
        ancestor = run_dir.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not run_dir.exists() and not ancestor.is_dir():
            raise DanceError(f"cannot create the output directory {run_dir}: {ancestor} is a file, not a folder")
        non_empty = run_dir.is_dir() and any(run_dir.iterdir())
        if not non_empty:
            return None
        if self.resume:
            saved_file = run_dir / CONFIG_FILE
            if saved_file.is_file():
                import yaml

                saved = recipe_from_dict(yaml.safe_load(saved_file.read_text(encoding="utf-8")), str(saved_file))
                diffs = recipe_differences(saved, self.recipe)
                if diffs:
                    raise DanceError(f"--resume: the recipe differs from the one this run was started with "
                                     f"({saved_file}) in {', '.join(diffs)}; resume with the same recipe, or "
                                     f"start a new run (--output-dir) / --overwrite")
            return ckpt.latest_checkpoint(run_dir)
        if self.overwrite:
            looks_like_run = (run_dir / CONFIG_FILE).exists() or (run_dir / METRICS_FILE).exists() or \
                any(ckpt.checkpoint_step(p) is not None for p in run_dir.iterdir())
            if not looks_like_run:
                raise DanceError(f"{run_dir} is not empty and does not look like a dance-train run directory "
                                 f"(no {CONFIG_FILE}, {METRICS_FILE} or checkpoint-*/); refusing to delete it")
            return None
        raise DanceError(f"the output directory {run_dir} is not empty; pass --resume to continue that run or "
                         f"--overwrite to replace it, or choose another --output-dir")

    def _init_run_dir(self) -> None:
        """Prepare the run directory once model and data have loaded: clear it (--overwrite), remove what an
        interrupted write left (--resume), write the resolved recipe."""
        run_dir = self.run_dir
        if self.overwrite and run_dir.is_dir():
            for child in run_dir.iterdir():
                ckpt.remove_dir(child) if child.is_dir() else child.unlink()
        if self.resume:
            ckpt.clean_temporaries(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / CONFIG_FILE, dump_recipe(self.recipe))
        if self.resume_from is None:
            for name in (METRICS_FILE, SUMMARY_FILE, "best.json"):
                (run_dir / name).unlink(missing_ok=True)
            for child in run_dir.iterdir():
                if child.name == TENSORBOARD_DIR or child.name == "refresh":
                    ckpt.remove_dir(child)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics lines logged after ``step`` (they are replayed after a resume)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if max(int(record.get("step", 0)), int(record.get("swapped_at", 0))) <= step:
                kept.append(line)
        write_text(path, "".join(k + "\n" for k in kept))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        if self._metrics_handle is None:
            self._metrics_handle = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._metrics_handle.write(json.dumps(_finite(record)) + "\n")
        self._metrics_handle.flush()
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if "loss" not in record or key in ("step", "epoch", "negatives_step") or \
                        not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                self.writer.add_scalar(f"train/{key}", value, step)
            for key, value in (record.get("dev") or {}).items():
                self.writer.add_scalar(f"dev/{key}", value, step)
            for key, value in (record.get("negatives") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"negatives/{key}", value, step)

    def _say(self, text: str) -> None:
        if not self.dist.is_main:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _writing(self, target: Path, tmp: Path | None = None):
        """Turn a failed write of ``target`` (disk full, file size limit, unwritable folder) into a one-line
        :class:`DanceError` naming it, the cause and the last complete checkpoint; removes ``tmp`` (a temporary
        checkpoint folder) first. Other errors pass unchanged."""
        try:
            yield
        except DanceError:
            raise
        except Exception as exc:  # noqa: BLE001 - only write failures are translated, the rest is re-raised
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
        self.dist = self.dist or init_distributed(recipe.optim.device)
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

        resume_from = self._check_run_dir() if dist.is_main else None
        resume_from = dist.broadcast_object(str(resume_from) if resume_from else None)
        self.resume_from = Path(resume_from) if resume_from else None

        # Identical initial weights on every rank (a new head is drawn from the torch generator).
        torch.manual_seed(opt.seed)
        np.random.seed(opt.seed % (2 ** 32))
        random.seed(opt.seed)
        if self.resume_from is not None:
            model = DualEncoder.load(str(self.resume_from / "encoder"))
        else:
            model = DualEncoder.load(resolve_backbone(recipe.model.backbone, recipe.model.select,
                                                      recipe.checkpoint.best_metric),
                                     **recipe.model.overrides())
        from ..ann import check_index_spec

        # Now that the embedding size is known, before the first refresh encodes the whole corpus.
        check_index_spec(recipe.mining.index, recipe.mining.index_params, dim=model.dim)
        self.model = model.to(self.device)
        self.model.train()
        torch.manual_seed(opt.seed + dist.rank)  # dropout differs between ranks

        self.data: TrainingData = prepare_data(recipe, model.tokenizer, model.config.query_max_length,
                                               model.config.doc_max_length, dist)
        if dist.is_main:
            with self._writing(self.run_dir):
                self._init_run_dir()
        dist.barrier()
        self.objective = DanceObjective.from_config(recipe.loss, temperature=model.config.temperature)

        towers = _Towers(self.model)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.towers = DDP(towers, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.towers = towers
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           linear_schedule(opt.warmup_steps, opt.max_steps))
        self.amp = autocast_dtype(opt.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.stream: InstanceStream | None = None

        if dist.is_main:
            if recipe.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR),
                                            purge_step=self._resume_step_hint())
        if recipe.mining.mode == "async" and dist.is_main:
            from .async_refresh import MinerHandle

            self.miner = MinerHandle(self.run_dir, recipe)

    def _resume_step_hint(self) -> int | None:
        return ckpt.checkpoint_step(self.resume_from) if self.resume_from is not None else None

    # -------------------------------------------------------------------------------------- checkpoint I/O
    def _checkpoint_meta(self) -> dict[str, Any]:
        from .. import __version__

        return {"objective": self.recipe.loss.objective, "collection": self.data.collection.source,
                "splits": {"train": self.recipe.data.train_split, "dev": self.recipe.data.dev_split},
                "seed": self.recipe.optim.seed, "temperature": float(self.model.config.temperature),
                "recipe": self.recipe.name, "world_size": self.dist.world_size,
                "dance_analysis_version": __version__}

    def _write_state(self, folder: Path | None, rng_tensors: list, rng_plain: list) -> None:
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
        ckpt.write_json(folder / "trainer_state.json", state)
        ckpt.torch_save_atomic(self.optimizer.state_dict(), folder / "optimizer.pt")
        fault_point("checkpoint-write", self.step)
        ckpt.torch_save_atomic(self.scheduler.state_dict(), folder / "scheduler.pt")
        ckpt.torch_save_atomic({"ranks": rng_tensors}, folder / "rng.pt")
        ckpt.write_json(folder / "rng.json", {"ranks": rng_plain})
        with _quiet_saving():
            self.model.save(folder / "encoder")

    def _gather_rng(self) -> tuple[list, list]:
        tensors, plain = ckpt.capture_rng_state()
        return self.dist.all_gather_objects(tensors), self.dist.all_gather_objects(plain)

    def _load_state(self, folder: Path) -> None:
        state = ckpt.read_json(folder / "trainer_state.json")
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise DanceError(f"{folder} was written by {state.get('world_size')} process(es); resume it with the "
                             f"same number (now {self.dist.world_size})")
        self.step = int(state["step"])
        self.optimizer.load_state_dict(ckpt.torch_load_safe(folder / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(ckpt.torch_load_safe(folder / "scheduler.pt"))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.refresh_seconds = float(state.get("refresh_seconds", 0.0))
        rng_tensors = ckpt.torch_load_safe(folder / "rng.pt")["ranks"]
        rng_plain = ckpt.read_json(folder / "rng.json")["ranks"]
        ckpt.restore_rng_state(rng_tensors[self.dist.rank], rng_plain[self.dist.rank])
        data_state = state.get("data")
        if data_state is None:
            self.stream = None
            return
        negatives = None
        if self.dist.is_main:
            negatives = self._find_negatives(folder, data_state)
        negatives = self.dist.broadcast_object(negatives)
        self.stream = InstanceStream(negatives, self.recipe.optim.seed, int(data_state["epoch"]),
                                     int(data_state["position"]))
        metrics = ckpt.read_dev_metrics(folder)
        self.last_dev = metrics

    def _find_negatives(self, folder: Path, data_state: dict) -> NegativeSet:
        step = int(data_state["negatives_step"])
        candidates = [folder / NEGATIVES_DIR]
        if self.miner is not None:
            candidates.insert(0, self.miner.set_dir(step) / NEGATIVES_DIR)
        candidates.append(self.run_dir / f"checkpoint-{step}" / NEGATIVES_DIR)
        for path in candidates:
            if path.is_dir():
                negatives = NegativeSet.load(path)
                if int(negatives.meta["step"]) == step:
                    return negatives
        raise DanceError(f"cannot resume from {folder}: the negatives mined at step {step}, which the run was "
                         f"training on, are no longer on disk")

    def _commit(self, tmp: Path | None, step: int) -> Path | None:
        if not self.dist.is_main or tmp is None:
            return None
        final = ckpt.commit_checkpoint(tmp, self.run_dir, step, self._checkpoint_meta())
        protect = (step,)
        if self.stream is not None:
            protect += (self.stream.step,)
        ckpt.prune_checkpoints(self.run_dir, self.recipe.checkpoint.keep_last,
                               keep_best=self.recipe.checkpoint.keep_best,
                               metric=self.recipe.checkpoint.best_metric, protect=protect)
        return final

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
                                 reuse_cache=self.step == 0 and self.recipe.mining.cache_initial_embeddings)
            self.stream = InstanceStream(result.negatives, self.recipe.optim.seed)
            rng_tensors, rng_plain = self._gather_rng()
            self.refresh_seconds += time.perf_counter() - started
            if self.dist.is_main:
                self._write_state(tmp, rng_tensors, rng_plain)
            final = self._commit(tmp, self.step)
        self.dist.barrier()
        if self.dist.is_main:
            self.last_dev = result.dev_metrics
            record = result.record()
            self._log(record)
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
            rng_tensors, rng_plain = self._gather_rng()
            if self.dist.is_main:
                self._write_state(tmp, rng_tensors, rng_plain)
                if with_negatives and self.stream is not None:
                    self.stream.negatives.save(tmp / NEGATIVES_DIR)
            final = self._commit(tmp, self.step)
        self.dist.barrier()
        self.refresh_seconds += time.perf_counter() - started
        return final

    def _adopt(self, set_dir: Path | None, waited: float = 0.0) -> None:
        """Switch every rank to the negative set in ``set_dir`` (rank 0's argument; async mode)."""
        negatives, record = None, None
        if self.dist.is_main and set_dir is not None:
            negatives = NegativeSet.load(set_dir / NEGATIVES_DIR)
            record = read_refresh_record(set_dir)
        negatives = self.dist.broadcast_object(negatives)
        if negatives is None:
            return
        self.stream = InstanceStream(negatives, self.recipe.optim.seed)
        if self.dist.is_main:
            self.miner.in_use(int(negatives.meta["step"]))
            if record is not None:
                self.last_dev = record.get("dev")
                self._log({**record, "swapped_at": self.step})
                self._say(summary_line(record, self.recipe.checkpoint.best_metric,
                                       f"| swapped in at step {self.step}"
                                       + (f" after waiting {waited:.1f}s" if waited > 0.05 else "")))

    def _async_poll(self, wait_for: int | None = None) -> None:
        """Adopt the newest complete negative set; with ``wait_for``, block until one of at least that step."""
        decision = None
        waited = 0.0
        if self.dist.is_main:
            started = time.perf_counter()
            current = self.stream.step if self.stream is not None else -1
            self.miner.revive()
            if wait_for is not None:
                decision = self.miner.wait_for(wait_for)
            else:
                newest = self.miner.newest()
                decision = newest if newest is not None and newest[0] > current else None
            decision = str(decision[1]) if decision is not None else None
            waited = time.perf_counter() - started
            self.refresh_seconds += waited
        decision = self.dist.broadcast_object(decision)
        if decision is not None or not self.dist.enabled:
            self._adopt(Path(decision) if decision else None, waited)

    # --------------------------------------------------------------------------------------------- training
    def _progress_enabled(self) -> bool:
        setting = self.recipe.log.progress
        if setting is None:
            return sys.stderr.isatty()
        return bool(setting)

    def _batch(self, rows: np.ndarray, with_query_negatives: bool):
        data = self.data
        q_rows = data.train_query_rows[rows[:, 0]]
        if with_query_negatives:
            q_rows = np.concatenate([q_rows, data.train_query_rows[rows[:, 3]]])
        d_rows = np.concatenate([rows[:, 1], rows[:, 2]])
        q_ids, q_mask = data.query_tokens.batch(q_rows)
        d_ids, d_mask = data.doc_tokens.batch(d_rows)
        dev = self.device
        return (q_ids.to(dev, non_blocking=True), q_mask.to(dev, non_blocking=True),
                d_ids.to(dev, non_blocking=True), d_mask.to(dev, non_blocking=True))

    def _train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its log record (global means)."""
        opt = self.recipe.optim
        dist = self.dist
        started = time.perf_counter()
        rows = self.stream.take(opt.batch_size)
        use_qneg = self.objective.uses_query_negatives
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        nonfinite = None
        per_micro = opt.batch_size // opt.grad_accum
        for a in range(opt.grad_accum):
            chunk = rows[a * per_micro:(a + 1) * per_micro]
            mine = chunk[dist.rank * self.micro:(dist.rank + 1) * self.micro]
            q_ids, q_mask, d_ids, d_mask = self._batch(mine, use_qneg)
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
                loss, parts = self.objective(q, d_pos, d_neg, q_neg)
                if not torch.isfinite(loss.detach()).item() and nonfinite is None:
                    nonfinite = float(loss.detach())
                scaled = loss / opt.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value / opt.grad_accum
        keys = sorted(sums)
        totals = dist.all_reduce_sum([sums[k] for k in keys] + [0.0 if nonfinite is None else 1.0])
        means = {k: float(v) / dist.world_size for k, v in zip(keys, totals[:-1])}
        if totals[-1] > 0:
            self._diverged(f"the loss is {nonfinite if nonfinite is not None else 'not finite'} on "
                           f"{int(totals[-1])} process(es)")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = opt.grad_clip if opt.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if self.scaler is None and not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}")
        lr = float(self.scheduler.get_last_lr()[0])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        record = {"step": self.step, "loss": means.pop("total"), "lr": lr, **means,
                  "grad_norm": grad_norm, "step_time": round(elapsed, 4), "epoch": self.stream.epoch,
                  "negatives_step": self.stream.step}
        return record

    def _diverged(self, what: str) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: {what}; stopped before updating the weights, {where}. "
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
            if self.bar is not None:
                self.bar.close()
            if self.writer is not None:
                self.writer.close()
            if self._metrics_handle is not None:
                self._metrics_handle.close()
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
                self._truncate_metrics(ckpt.checkpoint_step(self.resume_from))
            if is_async and dist.is_main:
                self.miner.start()
            self._load_state(self.resume_from)
            self._say(f"resuming {self.run_dir} from {self.resume_from.name} (step {self.step})")
            previous_wall = self.train_seconds + self.refresh_seconds
            if self.stream is None:           # an async checkpoint written before the first negatives arrived
                self._async_poll(wait_for=int(self.step // mining.refresh_every) * mining.refresh_every)
        else:
            self._say(f"{recipe.name}: {recipe.loss.objective} on {self.data.collection.name}, "
                      f"{len(self.data.train_qids)} training queries ({len(self.data.pairs)} positive pairs), "
                      f"{len(self.data.dev_qids)} dev queries, {self.data.num_docs} documents; "
                      f"{max_steps} steps of {recipe.optim.batch_size} instances on {dist.world_size} x "
                      f"{self.device}; output {self.run_dir}")
            if is_async:
                if dist.is_main:
                    self.miner.start()
                self._plain_checkpoint(with_negatives=False)
                self._async_poll(wait_for=0)
            else:
                self._sync_refresh()
        if dist.is_main:
            self.bar = tqdm(total=max_steps, initial=self.step, desc=recipe.name, unit="step",
                            disable=not self._progress_enabled(), dynamic_ncols=True, file=sys.stderr)
        final_checkpoint = ckpt.latest_checkpoint(self.run_dir) if dist.is_main else None
        while self.step < max_steps:
            if is_async:
                self._async_poll()
                if mining.max_staleness is not None and self.step - self.stream.step >= mining.max_staleness:
                    wanted = (self.step // mining.refresh_every) * mining.refresh_every
                    if wanted > self.stream.step:
                        self._async_poll(wait_for=wanted)
            record = self._train_step()
            self.losses.append(record["loss"])
            if dist.is_main:
                if self.step % recipe.log.every == 0 or self.step == max_steps:
                    self._log(record)
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                     step=f"{record['step_time']:.2f}s", refresh=self.stream.step)
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
        if is_async and dist.is_main:
            self.bar.close()
            self.bar = None
            waited = self.miner.finish(self.step if mining.final_refresh else None)
            self.refresh_seconds += waited
            record = self.miner.record(self.step) if mining.final_refresh else None
            if record is not None:
                self.last_dev = record.get("dev")
                self._log(record)
                self._say(summary_line(record, recipe.checkpoint.best_metric, "| final"))
        wall = time.perf_counter() - wall_start + previous_wall
        best = None
        if dist.is_main:
            found = ckpt.best_checkpoint(self.run_dir, recipe.checkpoint.best_metric)
            if found is not None:
                best = {"step": found[0], "path": str(found[1]), "metric": recipe.checkpoint.best_metric,
                        "value": found[2]}
                ckpt.write_json(self.run_dir / "best.json", best)
        result = TrainResult(run_dir=self.run_dir, final_step=self.step,
                             final_checkpoint=Path(final_checkpoint) if final_checkpoint else None, best=best,
                             dev_metrics=self.last_dev, wall_seconds=wall, train_seconds=self.train_seconds,
                             refresh_seconds=self.refresh_seconds, losses=self.losses)
        if dist.is_main:
            ckpt.write_json(self.run_dir / SUMMARY_FILE, result.summary())
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
