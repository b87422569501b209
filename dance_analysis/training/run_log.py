"""What a training run reports: the metrics log (``metrics.jsonl``), the trackers' scalars (``log.report_to``:
TensorBoard, Weights & Biases; :mod:`.trackers`), and one-line
messages for the user (logged at :data:`~dance_analysis.logs.NOTICE`; ``dance-train`` prints them on stderr)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..checkpoints import METRICS_FILE
from ..logs import NOTICE
from .trackers import open_trackers, scalars_of

logger = logging.getLogger(__name__)


def finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class RunLog:
    """The metrics log and the messages of one run; every method is a no-op on ranks other than the main one.

    ``bar`` is the loop's progress bar while it is shown.
    """

    def __init__(self, run_dir: Path, *, is_main: bool = True):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.trackers: list = []
        self.bar = None
        self._handle = None

    def open_trackers(self, names: list[str], run_name: str, recipe: dict[str, Any], recipe_yaml: str,
                      purge_step: int | None) -> None:
        """Open the trackers ``names`` (``log.report_to``: tensorboard, wandb, none) with the run's name and its
        resolved recipe as their config (:mod:`.trackers`); ``purge_step``: the step a resumed run continues from
        (TensorBoard drops later events)."""
        if not self.is_main:
            return
        self.trackers = open_trackers(names, self.run_dir, run_name, recipe, recipe_yaml, purge_step)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (NaN as null) and its numbers to every tracker."""
        if not self.is_main:
            return
        if self._handle is None:
            self._handle = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._handle.write(json.dumps(finite(record)) + "\n")
        self._handle.flush()
        if self.trackers:

            scalars = scalars_of(record)
            if scalars:
                for tracker in self.trackers:
                    tracker.log(scalars, int(record["step"]))

    def steps(self, records: list[dict[str, Any]], losses: list[float], every: int, max_steps: int) -> None:
        """After one training step: ``records`` are the steps whose values reached the host at it (the trainer
        reads them once per ``log.every`` steps and before refreshes and checkpoints, so often none). Their losses
        go into ``losses`` (on every rank); on the main rank the steps at ``every`` / ``max_steps`` get their
        metrics line, the progress bar moves by one step and shows the newest values."""
        losses.extend(record["loss"] for record in records)
        if not self.is_main:
            return
        for record in records:
            if record["step"] % every == 0 or record["step"] == max_steps:
                self.log(record)
        if self.bar is not None:
            self.bar.update(1)
            if records:
                last = records[-1]
                self.bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                     step=f"{last['step_time']:.2f}s", refresh=last["negatives_step"])

    def say(self, text: str) -> None:
        """A message for the user (:data:`~dance_analysis.logs.NOTICE`; the command prints it without tearing
        the progress bar)."""
        if self.is_main:
            logger.log(NOTICE, text)

    def close(self) -> None:
        """Close the progress bar, the trackers and the metrics file."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

