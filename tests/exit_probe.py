"""``dance-train`` under torchrun, then a look at what each rank leaves for interpreter shutdown.

``python exit_probe.py OUT RECIPE [dance-train arguments]`` runs the command's ``main`` in this process and writes
``OUT-<RANK>.json``: its exit status, the DistributedDataParallel modules still in memory (unreachable ones
included: no collection is run first, as none is at shutdown until the interpreter is half torn down) and whether
a process group is still joined. A DDP module alive here keeps its gloo group alive past ``destroy_process_group``;
the group is then destroyed during shutdown, which can abort a rank that trained without fault.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from dance_analysis.cli.train import main

if __name__ == "__main__":
    out = sys.argv[1]
    status = main(sys.argv[2:])

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    alive = sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())
    Path(f"{out}-{os.environ.get('RANK', '0')}.json").write_text(
        json.dumps({"exit": status, "ddp_alive": alive, "group_joined": dist.is_initialized()}))
    sys.exit(status)
