"""Fault-injection points, for the fault tests only (tests/training/test_train_faults.py,
tests/training/test_train_multiprocess.py); inert unless the environment variable ``DANCE_FAULT_PAUSE`` or
``DANCE_FAULT_SLOW`` is set.

``DANCE_FAULT_PAUSE=<point>@<step>`` makes the process that reaches ``point`` at optimizer step ``step`` print
``fault-point <point>@<step> pid <pid>`` on stderr and sleep (at most 10 minutes), so that a test can kill it with
SIGKILL exactly there.

``DANCE_FAULT_SLOW=<point>@<step>=<seconds>[,<point>@<step>=<seconds>...]`` makes the process that reaches
``point`` at step ``step`` print ``fault-slow <point>@<step> pid <pid>`` and sleep ``seconds`` (at most 10
minutes), then go on: a stage made slower than the process-group timeout, so that a test can show that no rank
waits in a collective for it.

The points:

- ``refresh``: a refresh (sync trainer or miner), after the embeddings are written, before mining;
- ``checkpoint-write``: the trainer, inside ``.tmp-checkpoint-<step>-*`` after ``trainer_state.json`` and
  ``optimizer.pt``, before the encoder and ``checkpoint.json``;
- ``miner-refresh``: the async miner, when it starts to handle checkpoint ``step``;
- ``miner-hold``: the async miner, holding ``refresh/held.lock``, before it marks checkpoint ``step`` as held;
- ``token-cache``: a token cache is about to be built (step 0: the caches are built before training);
- ``encode-shard``: a rank of a multi-process refresh has encoded its share of the rows (the number after ``@`` is
  the rank, not a step).
"""

from __future__ import annotations

import os
import sys
import time

ENV = "DANCE_FAULT_PAUSE"
SLOW_ENV = "DANCE_FAULT_SLOW"
_LIMIT_SECONDS = 600.0


def _slow_seconds(name: str) -> float | None:
    for item in os.environ.get(SLOW_ENV, "").split(","):
        where, _, seconds = item.strip().partition("=")
        if where == name:
            try:
                return min(max(float(seconds), 0.0), _LIMIT_SECONDS)
            except ValueError:
                return None
    return None


def fault_point(point: str, step: int) -> None:
    """Pause here when ``DANCE_FAULT_PAUSE`` names this point and step, or sleep for a while when
    ``DANCE_FAULT_SLOW`` does (fault tests only); else do nothing."""
    name = f"{point}@{int(step)}"
    slow = _slow_seconds(name) if SLOW_ENV in os.environ else None
    if slow is not None:
        print(f"fault-slow {name} pid {os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(slow)
    wanted = os.environ.get(ENV)
    if not wanted or wanted != name:
        return
    print(f"fault-point {wanted} pid {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(_LIMIT_SECONDS)
