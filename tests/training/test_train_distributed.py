"""DistContext with 2 gloo processes: a check that rank 0 polls (the async miner) and that raises stops every rank
with its message, instead of leaving the other ranks in a collective until the process-group timeout."""

from __future__ import annotations

import torch.multiprocessing as mp


def _poll_failing(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from dance_analysis.errors import DanceError
    from dance_analysis.training.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    context = DistContext(rank=rank, world_size=2, backend="gloo")
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise DanceError("the miner stopped")
        return None

    try:
        context.poll_until(check, 0.01)
        message = "returned"
    except DanceError as exc:
        message = str(exc)
    with open(f"{out}-{rank}.txt", "w") as fh:
        fh.write(message)
    dist.destroy_process_group()


def test_a_failing_poll_stops_every_rank_with_its_message(tmp_path):
    mp.spawn(_poll_failing, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2, join=True)
    assert (tmp_path / "rank-0.txt").read_text() == "the miner stopped"
    assert (tmp_path / "rank-1.txt").read_text() == "rank 0 stopped: DanceError: the miner stopped"
