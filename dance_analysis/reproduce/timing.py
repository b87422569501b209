"""Stage timings of the experiment, summed over invocations (an interrupted experiment is run again)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import read_json, write_json
from ..errors import InputError


def duration(seconds: float) -> str:
    """``"83 min 07 s"``."""
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"


class Clock:
    """Stage timings of this invocation, appended to the earlier ones in a JSON file after every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.previous: list[dict] = []
        if path.exists():
            expected = "the timings JSON written by an earlier invocation"
            sessions = read_json(path, expected, kind=dict).get("sessions")
            if not isinstance(sessions, list):
                raise InputError(path, expected, got="no list of sessions")
            self.previous = sessions
        self.session = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stages": {},
                        "seconds": 0.0}
        self.t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.session["stages"][name] = round(time.perf_counter() - started, 1)
            self.finish()

    def finish(self) -> None:
        self.session["seconds"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.path, {"sessions": self.previous + [self.session]})

    def total(self) -> float:
        """Seconds over every invocation so far."""
        return sum(s["seconds"] for s in self.previous) + self.session["seconds"]

    def stages(self) -> dict[str, float]:
        """Seconds per stage, summed over invocations (a stage that ran twice, e.g. a resumed run, adds up)."""
        out: dict[str, float] = {}
        for session in [*self.previous, self.session]:
            for name, seconds in session["stages"].items():
                out[name] = round(out.get(name, 0.0) + seconds, 1)
        return out

    def duration(self) -> str:
        return duration(self.total())
