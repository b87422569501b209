"""The values a training step logs, kept on the device until the end of a logging interval.

Reading a device value on the host (``float(tensor)``, ``.item()``, a collective whose result the host reads)
makes the host wait until the GPU has run everything queued so far, so that the next step's work cannot be queued
while the current one runs. The trainer therefore keeps, per step, on the device: the loss parts summed over the
micro-steps (float64, the very additions the host made when it read each part), whether a micro-step's loss was not
finite (and the first such value), and the gradient norm. :meth:`StepValues.flush` turns every pending step into
host numbers with one all-reduce over the ranks and one copy to the host; the trainer calls it at the end of each
``log.every`` interval and before every refresh or checkpoint (:meth:`Trainer._train_step`), and checks for
divergence there.

The numbers are exactly those of reading every value at once: the same float64 sums in the same order, the same
all-reduce, the same division by the process count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class FlushedStep:
    """One step's values on the host: ``host`` (what the host knew at the step: step, lr, ...), the global means of
    the loss parts, how many ranks saw a non-finite loss, this rank's first non-finite loss (``None``: none here)
    and the gradient norm."""

    host: dict[str, Any]
    means: dict[str, float]
    nonfinite_ranks: int
    nonfinite_value: float | None
    grad_norm: float


class StepValues:
    """Per-step loss parts, non-finite flag and gradient norm, on ``device`` until :meth:`flush`."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._pending: list[tuple[dict[str, Any], list[str], torch.Tensor, torch.Tensor]] = []
        self._begin()

    def _begin(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._bad = torch.zeros((), dtype=torch.float64, device=self.device)
        self._bad_value = torch.zeros((), dtype=torch.float64, device=self.device)

    def __len__(self) -> int:
        return len(self._pending)

    def add_micro(self, loss: torch.Tensor, parts: dict[str, Any], grad_accum: int) -> None:
        """One micro-step: its loss (0-d tensor) and its parts (tensors or floats), each part divided by
        ``grad_accum`` and added to the step's sum."""
        detached = loss.detach().to(torch.float64)
        bad = ~torch.isfinite(detached)
        self._bad_value = torch.where(bad & (self._bad == 0), detached, self._bad_value)
        self._bad = torch.where(bad, torch.ones_like(self._bad), self._bad)
        for key, value in parts.items():
            part = (value.detach().to(self.device, torch.float64) if isinstance(value, torch.Tensor)
                    else torch.tensor(float(value), dtype=torch.float64, device=self.device))
            previous = self._sums.get(key)
            self._sums[key] = (torch.zeros((), dtype=torch.float64, device=self.device) if previous is None
                               else previous) + part / grad_accum

    def end_step(self, grad_norm: torch.Tensor | float, host: dict[str, Any]) -> None:
        """Close the step: its gradient norm (device tensor) and the host's fields of its record."""
        keys = sorted(self._sums)
        reduced = torch.stack([self._sums[k] for k in keys] + [self._bad])
        norm = (grad_norm.detach().to(self.device, torch.float64) if isinstance(grad_norm, torch.Tensor)
                else torch.tensor(float(grad_norm), dtype=torch.float64, device=self.device))
        local = torch.stack([self._bad, self._bad_value, norm])
        self._pending.append((dict(host), keys, reduced, local))
        self._begin()

    def flush(self, dist) -> list[FlushedStep]:
        """Every pending step on the host, in order: one all-reduce (sum) of the loss parts and flags over the
        ranks of ``dist`` and one copy to the host. Every rank must call it at the same step."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        reduced = dist.all_reduce_sum_tensor(torch.cat([entry[2] for entry in pending]))
        values = torch.cat([reduced, torch.cat([entry[3] for entry in pending])]).tolist()
        local = values[len(reduced):]
        out, offset = [], 0
        for i, (host, keys, _, _) in enumerate(pending):
            sums = values[offset:offset + len(keys)]
            flag = values[offset + len(keys)]
            offset += len(keys) + 1
            mine, first, norm = local[3 * i:3 * i + 3]
            out.append(FlushedStep(host=host, means={k: float(v) / dist.world_size for k, v in zip(keys, sums)},
                                   nonfinite_ranks=int(flag), nonfinite_value=first if mine > 0 else None,
                                   grad_norm=norm))
        return out
