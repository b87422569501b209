"""Experiment trackers that receive a training run's numbers: ``log.report_to`` names them.

    tensorboard   events in ``<run>/tensorboard`` (torch's SummaryWriter); the run name and the resolved recipe
                  are written once as text (``run/name``, ``run/recipe``) when the run starts afresh
    wandb         a Weights & Biases run (the optional extra ``dance-analysis[wandb]``) named after the run, with
                  the resolved recipe as its config, files under ``<run>/wandb``; a resumed run continues the same
                  W&B run (its id is kept in ``<run>/wandb/run-id``). W&B's own environment applies:
                  ``WANDB_MODE=offline`` keeps everything on disk (``wandb sync`` uploads it later),
                  ``WANDB_PROJECT`` names the project (default ``dance-analysis``), ``WANDB_ENTITY`` the team.
    none          no tracker (``metrics.jsonl`` is written whatever ``report_to`` says)

Every tracker gets the same scalars, keyed ``train/<name>``, ``dev/<metric>``, ``negatives/<name>`` and
``geometry/<name>`` (:func:`scalars_of`), at the record's step.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from ..checkpoints import TENSORBOARD_DIR
from ..errors import DanceError

WANDB_DIR = "wandb"
WANDB_ID_FILE = "run-id"
WANDB_PROJECT = "dance-analysis"


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record as tracker scalars: a training step's own numbers as
    ``train/<key>`` (not its step, epoch and negatives_step; records without a loss have none), and those of its
    ``dev``, ``negatives`` and ``geometry`` sections as ``<section>/<key>``."""
    out: dict[str, float] = {}
    if "loss" in record:
        for key, value in record.items():
            if key not in ("step", "epoch", "negatives_step") and _number(value):
                out[f"train/{key}"] = value
    for section in ("dev", "negatives", "geometry"):
        for key, value in (record.get(section) or {}).items():
            if _number(value):
                out[f"{section}/{key}"] = value
    return out


class TensorBoardTracker:
    """TensorBoard events in ``<run>/tensorboard`` (events after ``purge_step`` are dropped on a resume)."""

    def __init__(self, run_dir: Path, run_name: str, recipe_yaml: str, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)
        if purge_step is None:
            self.writer.add_text("run/name", run_name, 0)
            self.writer.add_text("run/recipe", "    " + recipe_yaml.replace("\n", "\n    "), 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def require_wandb() -> None:
    """A :class:`DanceError` naming the fix when the ``wandb`` package is not installed."""
    if importlib.util.find_spec("wandb") is None:
        raise DanceError("log.report_to names wandb, but the wandb package is not installed: "
                         "pip install 'dance-analysis[wandb]' (or set log.report_to to tensorboard or none)")


class WandbTracker:
    """A Weights & Biases run named ``run_name`` with the resolved recipe as its config (module docstring)."""

    def __init__(self, run_dir: Path, run_name: str, recipe: dict[str, Any], resume: bool):
        require_wandb()
        import wandb

        folder = Path(run_dir) / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if resume and id_file.is_file() else None
        if not run_id:
            run_id = secrets.token_hex(4)   # W&B run ids: lowercase letters and digits
            id_file.write_text(run_id + "\n", encoding="utf-8")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, name=run_name,
                              id=run_id, resume="allow", config=recipe, dir=str(run_dir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def check_trackers(names: list[str]) -> None:
    """Fail before any work when a named tracker cannot run (``wandb`` without its package)."""
    if "wandb" in names:
        require_wandb()


def open_trackers(names: list[str], run_dir: Path, run_name: str, recipe: dict[str, Any], recipe_yaml: str,
                  purge_step: int | None) -> list[Tracker]:
    """The trackers ``names`` (``log.report_to``) for a run; ``purge_step`` is the step a resumed run continues
    from (``None`` for a fresh start)."""
    check_trackers(names)
    out: list[Tracker] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            out.append(TensorBoardTracker(run_dir, run_name, recipe_yaml, purge_step))
        elif name == "wandb":
            out.append(WandbTracker(run_dir, run_name, recipe, resume=purge_step is not None))
        elif name != "none":
            raise DanceError(f"log.report_to: unknown tracker {name!r} (expected tensorboard, wandb or none)")
    return out


__all__ = ["TensorBoardTracker", "Tracker", "WandbTracker", "check_trackers", "open_trackers", "scalars_of"]
