"""Data-parallel training over several processes (torchrun / DDP).

``torchrun --nproc_per_node=N -m dance_analysis.cli.train RECIPE`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; :func:`init_distributed` reads them and joins the process group with
``nccl`` when the processes train on CUDA and ``gloo`` on the CPU. Without those variables everything here is a
single-process no-op, so the trainer has one code path.

Division of work: every rank trains on its share of each global batch (DDP averages the gradients); corpus and
query encoding is split into contiguous row blocks, one per rank, gathered on rank 0 (:meth:`DistContext.gather_rows`);
at a refresh with exact search every rank then receives the embeddings (:meth:`DistContext.broadcast_rows`) and
searches its whole blocks of the queries against the whole corpus (:meth:`DistContext.block_bounds`), the rankings
gathered on rank 0; rank 0 mines, evaluates and writes checkpoints, and the negatives reach every rank through
:meth:`DistContext.broadcast_object`.

No rank waits in a collective for work that can outlast the process-group timeout (``distributed.timeout_minutes``):
what rank 0 does alone (mining at a refresh, writing a checkpoint: :meth:`DistContext.on_main`) or waits for (the
async miner: :meth:`DistContext.poll_until`) runs while every rank meets in a small broadcast at least every
``distributed.poll_seconds``; the timeout then only bounds one poll and one balanced step.
"""

from __future__ import annotations

import datetime
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..device import pick_device
from ..errors import DanceError


@dataclass
class _Failed:
    """What rank 0 sends instead of a value when the check it polls raised (see :meth:`DistContext.poll_until`)."""

    message: str


@dataclass
class DistContext:
    """Where this process sits in the job: rank, world size and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that mines, logs and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, values: list[float] | np.ndarray) -> np.ndarray:
        """Element-wise sum of a small float vector over all ranks (float64)."""
        array = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return array
        tensor = torch.from_numpy(array.copy()).to(self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def all_reduce_sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all ranks of a small tensor, kept where it lives (no copy to the host under nccl,
        so the host need not wait for the device). One process: ``tensor`` itself."""
        if not self.enabled:
            return tensor
        comm = self._comm_device()
        moved = tensor.to(comm)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        return bool(self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (peers of the same job only; nothing read from disk)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._comm_device() if self.backend == "nccl" else None)
        return box[0]

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def poll_until(self, check: Callable[[], Any], poll_seconds: float) -> Any:
        """Wait until ``check()`` (called on rank 0 only) returns something other than ``None``; return that value
        on every rank.

        ``check`` must not block. After each call every rank meets rank 0 in one small broadcast, then all sleep
        (0.05 s, doubling up to ``poll_seconds``) outside any collective; so however long the wait as a whole, no
        rank spends more than one check and ``poll_seconds`` in a collective. When ``check`` raises, rank 0 re-raises
        it and the other ranks raise a :class:`DanceError` naming it. One process: the same loop.
        """
        delay = min(0.05, poll_seconds)
        while True:
            failure = None
            value = None
            if self.is_main:
                try:
                    value = check()
                except Exception as exc:  # told to every rank, then re-raised here
                    failure = exc
                    value = _Failed(f"{type(exc).__name__}: {exc}")
            value = self.broadcast_object(value)
            if isinstance(value, _Failed):
                if failure is not None:
                    raise failure
                raise DanceError(f"rank 0 stopped: {value.message}")
            if value is not None:
                return value
            time.sleep(delay)
            delay = min(delay * 2, poll_seconds)

    def on_main(self, work: Callable[[], Any], poll_seconds: float) -> Any:
        """Run ``work()`` on rank 0 while every rank keeps meeting in small collectives (:meth:`poll_until`);
        returns its result on rank 0 and ``None`` on the others.

        On rank 0 ``work`` runs in a helper thread and the main thread polls it. An exception in ``work`` is
        re-raised on rank 0; the other ranks raise a :class:`DanceError` that names it. One process: ``work()``.
        """
        if not self.enabled:
            return work()
        box: dict[str, Any] = {}
        thread = None
        if self.is_main:
            def target() -> None:
                try:
                    box["result"] = work()
                except BaseException as exc:  # handed to the main thread, re-raised there
                    box["error"] = exc

            thread = threading.Thread(target=target, name="rank0-work", daemon=True)
            thread.start()

        def check():
            if thread.is_alive():
                return None
            error = box.get("error")
            return ("error", f"{type(error).__name__}: {error}") if error is not None else ("done", "")

        status, message = self.poll_until(check, poll_seconds)
        if status == "error":
            if self.is_main:
                raise box["error"]
            raise DanceError(f"rank 0 stopped: {message}")
        return box.get("result")

    def gather_with_grad(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's ``tensor`` (the same shape on each) concatenated along dim 0, in rank order, and the row
        offset of this rank's rows. The autograd graph is kept: the gradient of the gathered rows flows back to the
        rank that produced them (``torch.distributed.nn.functional.all_gather``), so a loss over the gathered
        batch (in-batch negatives across ranks) trains every rank's encoder. One process: ``(tensor, 0)``."""
        if not self.enabled:
            return tensor, 0
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(tensor.contiguous())
        return torch.cat(parts, dim=0), self.rank * int(tensor.shape[0])

    def shard(self, n: int) -> tuple[int, int]:
        """The contiguous block ``[start, end)`` of ``n`` rows this rank handles."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(np.int64)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])

    def block_bounds(self, n: int, block: int) -> np.ndarray:
        """Row bounds ``[b_0 = 0, b_1, ..., b_world = n]`` that split ``n`` rows over the ranks in whole blocks of
        ``block`` rows (the last block may be short): rank ``r`` takes rows ``[b_r, b_r+1)``, ranks differing by at
        most one block. A search that runs over its queries in blocks of ``block`` rows then makes, on each rank,
        exactly the calls it makes for those rows in one process (same rows per call), so the sharded results are
        the single-process ones bit for bit."""
        blocks = -(-n // max(1, int(block)))
        cut = np.linspace(0, blocks, self.world_size + 1).round().astype(np.int64)
        return np.minimum(cut * int(block), n)

    def gather_rows(self, block: np.ndarray, n: int, out: np.ndarray | None = None,
                    chunk_rows: int = 65536, bounds: np.ndarray | None = None) -> np.ndarray | None:
        """Concatenate every rank's :meth:`shard` block of an ``[n, d]`` array on rank 0.

        ``out`` (rank 0 only) receives the rows, e.g. a memmap; other ranks get ``None``. Rows travel in chunks of
        ``chunk_rows`` so memory stays bounded for large corpora. ``bounds`` (e.g. :meth:`block_bounds`) replaces
        the :meth:`shard` split.
        """
        if not self.enabled:
            if out is None:
                return np.asarray(block)
            out[:] = block
            return out
        if bounds is None:
            bounds = np.linspace(0, n, self.world_size + 1).round().astype(np.int64)
        sizes = np.diff(bounds)
        width = block.shape[1]
        if self.is_main and out is None:
            out = np.empty((n, width), dtype=block.dtype)
        torch_dtype = torch.from_numpy(np.zeros(1, dtype=block.dtype)).dtype
        comm = self._comm_device()
        for offset in range(0, int(sizes.max()), chunk_rows):
            rows = min(chunk_rows, int(sizes.max()) - offset)
            local = torch.zeros((rows, width), dtype=torch_dtype)
            mine = np.asarray(block[offset:offset + rows])
            if len(mine):
                local[:len(mine)] = torch.from_numpy(np.ascontiguousarray(mine))
            parts = [torch.zeros_like(local, device=comm) for _ in range(self.world_size)]
            dist.all_gather(parts, local.to(comm))
            if self.is_main:
                for r, part in enumerate(parts):
                    take = max(0, min(rows, int(sizes[r]) - offset))
                    if take:
                        start = int(bounds[r]) + offset
                        out[start:start + take] = part[:take].cpu().numpy()
        return out if self.is_main else None

    def broadcast_rows(self, array: np.ndarray | None, shape: tuple[int, int], dtype,
                       chunk_rows: int = 65536) -> np.ndarray:
        """Rank 0's ``[n, d]`` array (e.g. a memory map of the refresh's embeddings) on every rank: rank 0 returns
        ``array``, the others a new array in RAM, filled in chunks of ``chunk_rows`` rows (memory on the way stays
        bounded). One process: ``array``."""
        if not self.enabled:
            return array
        n, width = int(shape[0]), int(shape[1])
        out = array if self.is_main else np.empty((n, width), dtype=dtype)
        torch_dtype = torch.from_numpy(np.zeros(1, dtype=dtype)).dtype
        comm = self._comm_device()
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            if self.is_main:
                chunk = torch.from_numpy(np.ascontiguousarray(array[start:stop])).to(comm)
            else:
                chunk = torch.empty((stop - start, width), dtype=torch_dtype, device=comm)
            dist.broadcast(chunk, src=0)
            if not self.is_main:
                out[start:stop] = chunk.cpu().numpy()
        return out

    def close(self) -> None:
        """Leave the process group (when this module joined it).

        Whatever still holds the group (a DistributedDataParallel module's reducer, the work of a collective kept
        in an autograd graph) keeps it alive past ``destroy_process_group``; gloo then tears it down during
        interpreter shutdown, which can abort the process (SIGABRT, "terminate called without an active
        exception") after a run that succeeded. Callers drop their DDP modules first; unreachable ones (reference
        cycles) are collected here, while the interpreter is whole.
        """
        if self.enabled and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


def init_distributed(device: str = "auto", timeout_minutes: float = 60.0) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1, else return a single-process context.

    Each rank uses ``cuda:LOCAL_RANK`` when CUDA is requested / available, the CPU otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    wanted = pick_device(device)
    if wanted.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise DanceError(f"rank {rank} (local rank {local_rank}) has no CUDA device: "
                             f"{torch.cuda.device_count()} visible")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=wanted, backend=backend)
