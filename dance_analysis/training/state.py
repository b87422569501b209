"""The trainer's state in a checkpoint folder, for exact resume, and committing a checkpoint.

Written by rank 0 into the temporary checkpoint folder (:func:`save_trainer_state`): ``trainer_state.json``
(step, data position, timings, loss scale), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` / ``rng.json`` (the
generator states of every rank) and ``encoder/``. :func:`commit` then publishes the folder as
``checkpoint-<step>`` and prunes old checkpoints (never the one the async miner holds). Reading it back never unpickles
(``torch.load(weights_only=True)``, JSON).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import read_json
from ..checkpoints import NEGATIVES_DIR
from ..errors import DanceError
from ..mining import NegativeSet
from . import checkpoint as ckpt
from .async_refresh import held_checkpoint, held_lock
from .config import Recipe
from .faults import fault_point

STATE_FILE = "trainer_state.json"


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


def checkpoint_meta(recipe: Recipe, collection_source: Any, temperature: float, world_size: int) -> dict[str, Any]:
    """The ``checkpoint.json`` record of a training checkpoint (before ``step`` and ``complete`` are added)."""

    return {"objective": recipe.loss.objective, "collection": collection_source,
            "splits": {"train": recipe.data.train_split, "dev": recipe.data.dev_split},
            "seed": recipe.optim.seed, "temperature": float(temperature),
            "recipe": recipe.name, "world_size": world_size,
            "dance_analysis_version": __version__}


def gather_rng(dist) -> tuple[list, list]:
    """The generator states of every rank: ``(tensors for rng.pt, JSON-able for rng.json)``, one entry per rank."""
    tensors, plain = ckpt.capture_rng_state()
    return dist.all_gather_objects(tensors), dist.all_gather_objects(plain)


def save_trainer_state(folder: Path, state: dict[str, Any], *, optimizer, scheduler, model,
                       rng: tuple[list, list]) -> None:
    """Write the trainer state for exact resume into ``folder`` (rank 0): ``state`` as ``trainer_state.json``,
    the optimiser, the schedule, the generator states of every rank (``rng`` from :func:`gather_rng`) and the
    encoder."""
    rng_tensors, rng_plain = rng
    ckpt.write_json(folder / STATE_FILE, state)
    ckpt.torch_save_atomic(optimizer.state_dict(), folder / "optimizer.pt")
    fault_point("checkpoint-write", int(state["step"]))
    ckpt.torch_save_atomic(scheduler.state_dict(), folder / "scheduler.pt")
    ckpt.torch_save_atomic({"ranks": rng_tensors}, folder / "rng.pt")
    ckpt.write_json(folder / "rng.json", {"ranks": rng_plain})
    with _quiet_saving():
        model.save(folder / "encoder")


def read_trainer_state(folder: Path, world_size: int) -> dict[str, Any]:
    """``trainer_state.json`` of ``folder``; a checkpoint of another process count is a :class:`DanceError`."""
    state = read_json(folder / STATE_FILE)
    if int(state.get("world_size", 1)) != world_size:
        raise DanceError(f"{folder} was written by {state.get('world_size')} process(es); resume it with the "
                         f"same number (now {world_size})")
    return state


def restore_optimisation(folder: Path, state: dict[str, Any], *, optimizer, scheduler, scaler, device) -> None:
    """Load the optimiser, the schedule and (when both exist) the loss scale of ``folder``."""
    optimizer.load_state_dict(ckpt.torch_load_safe(folder / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(ckpt.torch_load_safe(folder / "scheduler.pt"))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def restore_rng(folder: Path, rank: int) -> None:
    """Restore this rank's generator states from ``folder``."""
    rng_tensors = ckpt.torch_load_safe(folder / "rng.pt")["ranks"]
    rng_plain = read_json(folder / "rng.json")["ranks"]
    ckpt.restore_rng_state(rng_tensors[rank], rng_plain[rank])


def find_negatives(folder: Path, run_dir: Path, step: int, set_dir: Path | None = None) -> NegativeSet:
    """The negatives mined at ``step`` that a checkpoint was training on: from the async set ``set_dir``, the
    checkpoint's own ``negatives/`` or those of ``checkpoint-<step>``."""
    candidates = [folder / NEGATIVES_DIR]
    if set_dir is not None:
        candidates.insert(0, set_dir / NEGATIVES_DIR)
    candidates.append(run_dir / f"checkpoint-{step}" / NEGATIVES_DIR)
    for path in candidates:
        if path.is_dir():
            negatives = NegativeSet.load(path)
            if int(negatives.meta["step"]) == step:
                return negatives
    raise DanceError(f"cannot resume from {folder}: the negatives mined at step {step}, which the run was "
                     f"training on, are no longer on disk")


def commit(tmp: Path, run_dir: Path, step: int, meta: dict[str, Any], recipe: Recipe,
           protect: tuple[int, ...]) -> Path:
    """Publish the temporary folder ``tmp`` as ``checkpoint-<step>``, then prune by ``recipe.checkpoint``
    (``protect``: steps that must stay). The checkpoint the async miner is refreshing from
    (:func:`.async_refresh.held_checkpoint`) stays too: its dev metrics, which ``best_metric`` chooses by, are
    attached only when that refresh ends, possibly many checkpoint intervals later."""

    final = ckpt.commit_checkpoint(tmp, run_dir, step, meta)
    with held_lock(run_dir):     # never between the miner's choice of a checkpoint and its marker
        held = held_checkpoint(run_dir)
        if held is not None:
            protect = (*protect, held)
        ckpt.prune_checkpoints(run_dir, recipe.checkpoint.keep_last, keep_best=recipe.checkpoint.keep_best,
                               metric=recipe.checkpoint.best_metric, protect=protect)
    return final
