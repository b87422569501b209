"""Setting a trainer up, one job per function (called in this order by ``Trainer._setup``):

1. :func:`open_process_group` - the process group (torchrun) or one process, and the per-rank micro-batch
   (:func:`micro_batch`);
2. :func:`find_start` - where training starts: a new run, a resume from the last checkpoint, or a folder prepared
   by ``dance-train --prepare`` (with or without its ``checkpoint-0``);
3. :func:`load_model` - seeding and the starting weights, frozen where no forward pass uses them;
   :func:`wrap_towers` puts both towers behind one forward call, under DDP in a multi-process run;
4. :func:`build_optimisation` and :func:`step_precision` - optimiser, schedule, the step's precision and loss
   scaler;
5. the refresher (:func:`dance_analysis.training.refresher.make_refresher`): sync or async, chosen once.

Identical initial weights on every rank: :func:`load_model` seeds every generator with ``optim.seed`` before the
weights are loaded (a new head is drawn from the torch generator), then the torch generator with ``optim.seed +
rank`` (dropout differs between ranks).
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..ann import check_index_spec
from ..checkpoints import check_prepared, list_checkpoints, prepared_checkpoint, require_prepared
from ..errors import DanceError
from ..model import DualEncoder
from .config import Recipe
from .distributed import DistContext, init_distributed
from .optim import build_optimizer, build_scheduler
from .precision import dtype_of, fixed_precision, needs_measurement
from .run_folder import check_run_dir, start_model

logger = logging.getLogger(__name__)

__all__ = ["Start", "Towers", "build_optimisation", "find_start", "load_model", "micro_batch",
           "open_process_group", "show_progress", "step_precision", "wrap_towers"]


def open_process_group(recipe: Recipe, run_dir: Path, dist: DistContext | None = None) -> DistContext:
    """``dist``, or the process group of a torchrun job (one process without torchrun), with the deterministic
    CUDA settings of ``optim.deterministic``. A multi-process run must start in a folder prepared by ``dance-train
    --prepare`` (checked before the process group exists: the token caches must not be built by rank 0 while the
    others wait in a collective)."""
    if dist is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        require_prepared(run_dir, recipe)
    dist = dist or init_distributed(recipe.optim.device, recipe.distributed.timeout_minutes)
    if recipe.optim.deterministic and dist.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return dist


def micro_batch(recipe: Recipe, world_size: int) -> int:
    """Instances per process and micro-step: ``optim.batch_size / optim.grad_accum / world_size`` (a
    :class:`DanceError` when that does not divide)."""
    opt = recipe.optim
    per_rank = opt.batch_size // opt.grad_accum
    if per_rank % world_size:
        raise DanceError(f"optim.batch_size / optim.grad_accum = {per_rank} instances per micro-step cannot be "
                         f"split over {world_size} processes; make it a multiple of the process count")
    return per_rank // world_size


@dataclass
class Start:
    """Where training starts (decided on rank 0, the same on every rank)."""

    resume_from: Path | None = None   # the checkpoint a resume continues from
    prepared: Path | None = None      # a checkpoint-0 mined before training: weights and step-0 negatives
    prepared_folder: bool = False     # a folder prepared by --prepare in which training has not begun


def find_start(dist: DistContext, run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> Start:
    """Check the run folder (rank 0: :func:`.run_folder.check_run_dir`) and decide where training starts.

    A folder prepared by ``--prepare`` without a complete checkpoint is a fresh start in that folder (the step-0
    negatives are mined by the launched job); one whose only checkpoint is ``checkpoint-0`` (``--prepare
    --mine-step0``, or the launched job's own) starts from it."""
    found = None
    if dist.is_main:
        if check_prepared(run_dir, recipe) and not list_checkpoints(run_dir):
            found = [None, None, True]
        else:
            resume_from = check_run_dir(run_dir, recipe, resume=resume, overwrite=overwrite)
            prepared = prepared_checkpoint(run_dir, recipe) if resume_from is None else None
            found = [str(resume_from) if resume_from else None, str(prepared) if prepared else None,
                     prepared is not None]
    resume_from, prepared, prepared_folder = dist.broadcast_object(found)
    return Start(Path(resume_from) if resume_from else None, Path(prepared) if prepared else None,
                 bool(prepared_folder))


def load_model(recipe: Recipe, start: Start, device: torch.device, rank: int):
    """The model to train on ``device``: ``(model, encoder folder of the checkpoint it starts from or None)``.

    The weights of the resumed checkpoint, of the prepared ``checkpoint-0`` or :func:`.run_folder.start_model`'s;
    checks the ANN index against the embedding size (before the first refresh encodes the whole corpus); in train
    mode, with gradient checkpointing when asked. Parameters that no forward pass uses get no gradient; DDP (built
    without ``find_unused_parameters``) would stop on the second step waiting for them, and the optimiser has
    nothing to do with them: frozen."""

    opt = recipe.optim
    torch.manual_seed(opt.seed)
    np.random.seed(opt.seed % (2 ** 32))
    random.seed(opt.seed)
    source = None  # the checkpoint's encoder/ folder the weights come from, when they do
    if start.resume_from is not None:
        model = DualEncoder.load(str(start.resume_from / "encoder"))
    elif start.prepared is not None:
        source = start.prepared / "encoder"
        model = DualEncoder.load(str(source))
    else:
        model, source = start_model(recipe)
    check_index_spec(recipe.mining.index, recipe.mining.index_params, dim=model.dim)
    model = model.to(device)
    model.train()
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    unused = set(model.unused_parameters())
    for name, param in model.named_parameters():
        if name in unused:
            param.requires_grad_(False)
    if unused and rank == 0:
        logger.info("frozen (no forward pass uses them): %s", ", ".join(sorted(unused)))
    torch.manual_seed(opt.seed + rank)  # dropout differs between ranks
    return model, source


class Towers(nn.Module):
    """Both sides in one forward call, so that DistributedDataParallel sees a single forward per micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, q_ids, q_mask, d_ids, d_mask):
        return self.model.encode(q_ids, q_mask, "query"), self.model.encode(d_ids, d_mask, "doc")


def wrap_towers(model: nn.Module, dist: DistContext, device: torch.device) -> nn.Module:
    """:class:`Towers` of ``model``, under DistributedDataParallel in a multi-process run."""
    towers = Towers(model)
    if not dist.enabled:
        return towers
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(towers, device_ids=[device.index] if device.type == "cuda" else None)


def show_progress(recipe: Recipe) -> bool:
    """Whether progress bars are shown: ``log.progress``, or (unset) when stderr is a terminal."""
    setting = recipe.log.progress
    return sys.stderr.isatty() if setting is None else bool(setting)


def build_optimisation(model: nn.Module, recipe: Recipe):
    """``(optimizer, scheduler)`` of the recipe (:mod:`.optim`)."""
    optimizer = build_optimizer(model, recipe)
    return optimizer, build_scheduler(optimizer, recipe)


def step_precision(recipe: Recipe, device: torch.device):
    """``(train_precision, autocast dtype, GradScaler)`` of the step (:mod:`.precision`): decided now, or (auto on
    a CPU with native bf16) ``(None, None, None)`` until the first step times it; a resumed run keeps the one its
    checkpoint records."""
    opt = recipe.optim
    decision = None if needs_measurement(opt.precision, device) else fixed_precision(opt.precision, device)
    amp = dtype_of(decision) if decision is not None else None
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    return decision, amp, scaler
