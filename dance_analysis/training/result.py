"""What a training run returns and leaves at its end: :class:`TrainResult`, ``best.json`` (the best checkpoint by
``checkpoint.best_metric``), ``summary.json`` and the closing line of the run log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..checkpoints import BEST_FILE, SUMMARY_FILE, best_checkpoint

__all__ = ["TrainResult", "best_record", "conclude"]


@dataclass
class TrainResult:
    """What :func:`dance_analysis.training.loop.train` returns: where things are and how long they took."""

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


def best_record(run_dir: Path, metric: str) -> dict[str, Any] | None:
    """``{"step", "path", "metric", "value"}`` of the run's best checkpoint by dev ``metric``, or ``None`` when no
    checkpoint has it."""
    found = best_checkpoint(run_dir, metric)
    if found is None:
        return None
    return {"step": found[0], "path": str(found[1]), "metric": metric, "value": found[2]}


def conclude(result: TrainResult, metric: str, say: Callable[[str], None]) -> None:
    """Rank 0, at the end of a run: write ``best.json`` (when there is a best checkpoint) and ``summary.json`` into
    the run directory and ``say`` the closing line (steps, time and its share in refreshes, final dev ``metric``,
    the best checkpoint)."""
    best = result.best
    if best is not None:
        write_json(result.run_dir / BEST_FILE, best)
    write_json(result.run_dir / SUMMARY_FILE, result.summary())
    wall = result.wall_seconds
    share = 100.0 * result.refresh_seconds / max(wall, 1e-9)
    last_dev = result.dev_metrics
    dev = f", final dev {metric} {last_dev[metric]:.4f}" if last_dev and metric in last_dev else ""
    say(f"done: {result.final_step} steps in {wall:.1f}s (training {result.train_seconds:.1f}s, refreshes and "
        f"checkpoints {result.refresh_seconds:.1f}s = {share:.0f}%){dev}; "
        f"best {best['metric']} {best['value']:.4f} at step {best['step']}" if best else
        f"done: {result.final_step} steps in {wall:.1f}s{dev}")
