"""What a training run reports: the metrics log (``metrics.jsonl``), TensorBoard scalars, and one-line
messages for the user (logged at :data:`~dance_analysis.logs.NOTICE`; ``dance-train`` prints them on stderr)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..logs import NOTICE
from .run_folder import METRICS_FILE, TENSORBOARD_DIR

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
        self.writer = None
        self.bar = None
        self._handle = None

    def open_tensorboard(self, purge_step: int | None) -> None:
        """Write TensorBoard events into ``RUN_DIR/tensorboard`` (events after ``purge_step`` are dropped)."""
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (NaN as null) and its numbers to TensorBoard."""
        if not self.is_main:
            return
        if self._handle is None:
            self._handle = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._handle.write(json.dumps(finite(record)) + "\n")
        self._handle.flush()
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if "loss" not in record or key in ("step", "epoch", "negatives_step") or \
                        not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                self.writer.add_scalar(f"train/{key}", value, step)
            for key, value in (record.get("dev") or {}).items():
                self.writer.add_scalar(f"dev/{key}", value, step)
            for section in ("negatives", "geometry"):
                for key, value in (record.get(section) or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.writer.add_scalar(f"{section}/{key}", value, step)

    def say(self, text: str) -> None:
        """A message for the user (:data:`~dance_analysis.logs.NOTICE`; the command prints it without tearing
        the progress bar)."""
        if self.is_main:
            logger.log(NOTICE, text)

    def close(self) -> None:
        """Close the progress bar, TensorBoard and the metrics file."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

