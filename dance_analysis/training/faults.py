"""Fault-injection points, for the fault tests only (tests/test_train_faults.py); inert unless the environment
variable ``DANCE_FAULT_PAUSE`` is set.

``DANCE_FAULT_PAUSE=<point>@<step>`` makes the process that reaches ``point`` at optimizer step ``step`` print
``fault-point <point>@<step> pid <pid>`` on stderr and sleep (at most 10 minutes), so that a test can kill it with
SIGKILL exactly there. The points:

- ``refresh``: a refresh (sync trainer or miner), after the embeddings are written, before mining;
- ``checkpoint-write``: the trainer, inside ``.tmp-checkpoint-<step>-*`` after ``trainer_state.json`` and
  ``optimizer.pt``, before the encoder and ``checkpoint.json``;
- ``miner-refresh``: the async miner, when it starts to handle checkpoint ``step``.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "DANCE_FAULT_PAUSE"


def fault_point(point: str, step: int) -> None:
    """Pause here when ``DANCE_FAULT_PAUSE`` names this point and step (fault tests only); else do nothing."""
    wanted = os.environ.get(ENV)
    if not wanted or wanted != f"{point}@{int(step)}":
        return
    print(f"fault-point {wanted} pid {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(600)
