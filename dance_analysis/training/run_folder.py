"""The run directory of ``dance-train``: which starting encoder a path names, whether a directory may be used
(new, ``--resume``, ``--overwrite``), preparing it, and trimming its metrics log on resume.

The names of the run folder and the reading of it are :mod:`dance_analysis.checkpoints` (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``best.json``, ``tensorboard/``, ``checkpoint-<step>/``, and in async mode
``refresh/`` and ``miner.log``); this module decides whether a folder may be written and writes it.
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoints
from ..atomic import remove_dir, write_text
from ..checkpoints import (
    BEST_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    REFRESH_DIR,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
)
from ..errors import DanceError
from .config import Recipe, dump_recipe, recipe_differences, recipe_from_dict


def resolve_backbone(backbone: str, select: str = "best") -> str:
    """Where to load the starting encoder from.

    A ``checkpoint-<step>`` folder -> its ``encoder/``; a run directory of ``dance-train`` -> the ``encoder/`` of
    the checkpoint ``select`` names (:func:`dance_analysis.checkpoints.run_checkpoint`): the run's best
    (``"best"``: the one every reader picks, :func:`dance_analysis.checkpoints.run_best`, else the last), its last
    one (``"last"``) or the checkpoint of a fixed step (``"step-<N>"``: a branch point fixed before the run, an
    error when the run has no such checkpoint); anything else is returned unchanged (an alias, a model folder or a
    hub name for ``DualEncoder.load``).
    """
    path = Path(backbone).expanduser()
    if path.is_dir() and (path / checkpoints.ENCODER_DIR).is_dir() and (path / checkpoints.CHECKPOINT_FILE).is_file():
        return str(path / checkpoints.ENCODER_DIR)
    if path.is_dir() and checkpoints.list_checkpoints(path):
        try:
            chosen = checkpoints.run_checkpoint(path, select)
        except DanceError as exc:
            raise DanceError(f"model.select: {exc}") from None
        return str(chosen / checkpoints.ENCODER_DIR)
    return backbone


def start_model(recipe: Recipe):
    """The encoder training starts from: ``(DualEncoder, encoder/ folder of a checkpoint or None)``.

    Seeds the torch, numpy and Python generators with ``optim.seed`` first, so that a new head is drawn the same
    way in every process (every rank of a run, and ``--prepare``)."""
    import random

    import numpy as np
    import torch

    # torch: dance-train --help and dance-doctor import this module without it
    from ..model import DualEncoder

    seed = recipe.optim.seed
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)
    source = resolve_backbone(recipe.model.backbone, recipe.model.select)
    start = Path(source) if (Path(source).parent / checkpoints.CHECKPOINT_FILE).is_file() else None
    return DualEncoder.load(source, tokenizer=recipe.model.tokenizer, head_init=recipe.model.head_init,
                            **recipe.model.overrides()), start


def check_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> Path | None:
    """Decide, without changing anything, whether ``run_dir`` may be used; returns the checkpoint to resume
    from. Raises :class:`DanceError` for a non-empty directory without ``resume`` / ``overwrite``, and for a
    resume with another recipe."""
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
    if checkpoints.prepared_checkpoint(run_dir, recipe) is not None:
        return None   # prepared by --prepare, training not begun: a fresh start from its checkpoint-0
    looks_like_run = checkpoints.looks_like_run(run_dir)
    if resume:
        if not looks_like_run:
            raise DanceError(f"--resume: {run_dir} is not empty and does not look like a dance-train run directory "
                             f"(no {CONFIG_FILE}, {METRICS_FILE} or checkpoint-*/); nothing was written (name an "
                             f"empty or new --output-dir)")
        saved_file = run_dir / CONFIG_FILE
        if saved_file.is_file():
            import yaml

            saved = recipe_from_dict(yaml.safe_load(saved_file.read_text(encoding="utf-8")), str(saved_file))
            diffs = recipe_differences(saved, recipe)
            if diffs:
                raise DanceError(f"--resume: the recipe differs from the one this run was started with "
                                 f"({saved_file}) in {', '.join(diffs)}; resume with the same recipe, or "
                                 f"start a new run (--output-dir) / --overwrite")
        return checkpoints.latest_checkpoint(run_dir)
    if overwrite:
        if not looks_like_run:
            raise DanceError(f"{run_dir} is not empty and does not look like a dance-train run directory "
                             f"(no {CONFIG_FILE}, {METRICS_FILE} or checkpoint-*/); refusing to delete it")
        return None
    raise DanceError(f"the output directory {run_dir} is not empty; pass --resume to continue that run or "
                     f"--overwrite to replace it, or choose another --output-dir")


def init_run_dir(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool, fresh: bool) -> None:
    """Prepare the run directory once model and data have loaded: clear it (``overwrite``), remove what an
    interrupted write left (``resume``), write the resolved recipe; a ``fresh`` start (nothing to resume from)
    also drops the logs, TensorBoard events and negative sets of an earlier run."""
    if overwrite and run_dir.is_dir():
        for child in run_dir.iterdir():
            remove_dir(child) if child.is_dir() else child.unlink()
    if resume:
        # torch (checkpoint.py): dance-train --help imports this module without it
        from .checkpoint import clean_temporaries

        clean_temporaries(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG_FILE, dump_recipe(recipe))
    if fresh:
        for name in (METRICS_FILE, SUMMARY_FILE, BEST_FILE):
            (run_dir / name).unlink(missing_ok=True)
        for child in run_dir.iterdir():
            if child.name in (TENSORBOARD_DIR, REFRESH_DIR):
                remove_dir(child)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics lines logged after ``step`` (they are replayed after a resume) and lines a kill cut
    (:func:`dance_analysis.checkpoints.metrics_log_lines` with ``repair``); kept lines are kept byte for byte."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = [text for _, text, record in checkpoints.metrics_log_lines(path, repair=True)
            if (checkpoints.record_step(record) or 0) <= step]
    write_text(path, "".join(k + "\n" for k in kept))
