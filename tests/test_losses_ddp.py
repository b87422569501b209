"""In-batch negatives across ranks: 2 gloo processes, each with half of a global batch, gather the other rank's
positives and negatives with gradients (DistContext.gather_with_grad); their loss and their DDP-averaged gradient
equal one process computing the same loss on the whole global batch."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
from torch import nn

from dance_analysis.losses import DanceObjective

B, N, H, D = 4, 3, 12, 6     # instances per rank, negatives per instance, input width, embedding width


def _inputs():
    gen = torch.Generator().manual_seed(5)
    world = 2 * B
    return {"q": torch.randn(world, H, generator=gen), "d_pos": torch.randn(world, H, generator=gen),
            "d_neg": torch.randn(world, N, H, generator=gen), "q_neg": torch.randn(world, N, H, generator=gen)}


def _model():
    torch.manual_seed(0)
    return nn.Linear(H, D)


def _loss(model, x, gather=None):
    objective = DanceObjective.for_objective("dance", temperature=0.5, in_batch=True, w_d2q=0.1)
    q, d_pos = model(x["q"]), model(x["d_pos"])
    d_neg, q_neg = model(x["d_neg"]), model(x["q_neg"])
    return objective(q, d_pos, d_neg, q_neg, gather=gather)[0]


def _rank(rank: int, store: str, out: str) -> None:
    import gc

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    _train_half(rank, out)
    # The DDP module and the gathered tensors are gone before the group is torn down: a gloo group that outlives
    # destroy_process_group (held by DDP's reducer) is destroyed during interpreter shutdown, which can abort.
    gc.collect()
    dist.barrier()   # both ranks are done with the store before either tears the group down
    dist.destroy_process_group()


def _train_half(rank: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dance_analysis.training.distributed import DistContext

    context = DistContext(rank=rank, world_size=2, backend="gloo")
    model = DDP(_model())
    x = {k: v[rank * B:(rank + 1) * B] for k, v in _inputs().items()}   # this rank's half of the global batch
    loss = _loss(model, x, gather=context.gather_with_grad)             # the DDP module encodes, the loss gathers
    loss.backward()
    total = torch.tensor([float(loss.detach())])
    dist.all_reduce(total)
    torch.save({"loss": total / 2, "grads": {k: p.grad for k, p in model.module.named_parameters()}},
               f"{out}-{rank}.pt")


def test_in_batch_negatives_gathered_across_ranks_equal_one_process(tmp_path):
    model = _model()
    loss = _loss(model, _inputs())          # one process, the whole global batch of 2 B instances
    loss.backward()
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"][0], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, param in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], param.grad, rtol=1e-5, atol=1e-6)
    # Without the gather each rank would see only its own half: a different loss.
    half = _loss(_model(), {k: v[:B] for k, v in _inputs().items()})
    assert abs(float(half.detach()) - float(loss.detach())) > 1e-3

