"""The training instances of a negative set as a deterministic, resumable stream, and their token batches."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DanceError
from ..mining import NegativeSet


class InstanceStream:
    """The training instances of one negative set as a deterministic, resumable stream.

    Epoch e of the set with step s is ``negatives.instances(default_rng([seed, s, e]))`` (shuffled quadruplets);
    the stream's position is (epoch, index), saved in the trainer state.
    """

    def __init__(self, negatives: NegativeSet, seed: int, epoch: int = 0, position: int = 0):
        self.negatives = negatives
        self.seed = int(seed)
        self.step = int(negatives.meta["step"])
        self.epoch = epoch
        self.position = position
        self._items = self._load(epoch)

    def _load(self, epoch: int) -> np.ndarray:
        items = self.negatives.instances(np.random.default_rng([self.seed, self.step, epoch]))
        if len(items) == 0:
            raise DanceError(f"the negatives mined at step {self.step} give no training instance (every training "
                             f"query lacks candidates: is mining.top_k larger than its relevant documents?)")
        return items

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` instances [count, 4] (q_row, d_pos, d_neg, q_neg), continuing into new epochs."""
        out = []
        need = count
        while need:
            if self.position >= len(self._items):
                self.epoch += 1
                self.position = 0
                self._items = self._load(self.epoch)
            chunk = self._items[self.position:self.position + need]
            out.append(chunk)
            self.position += len(chunk)
            need -= len(chunk)
        return np.concatenate(out, axis=0)

    def state(self) -> dict[str, int]:
        """Where the stream is (JSON-able)."""
        return {"negatives_step": self.step, "epoch": self.epoch, "position": self.position,
                "instances_per_epoch": int(len(self._items))}


def instance_batch(data, rows: np.ndarray, with_query_negatives: bool, device: torch.device):
    """Token tensors of instances ``rows`` [m, 4] on ``device``: ``(q_ids, q_mask, d_ids, d_mask)``.

    Queries are the m queries, then (``with_query_negatives``) the m negative queries; documents are the m
    positives, then the m negatives. ``data`` is the :class:`~dance_analysis.training.data.TrainingData`.
    """
    q_rows = data.train_query_rows[rows[:, 0]]
    if with_query_negatives:
        q_rows = np.concatenate([q_rows, data.train_query_rows[rows[:, 3]]])
    d_rows = np.concatenate([rows[:, 1], rows[:, 2]])
    q_ids, q_mask = data.query_tokens.batch(q_rows)
    d_ids, d_mask = data.doc_tokens.batch(d_rows)
    return (q_ids.to(device, non_blocking=True), q_mask.to(device, non_blocking=True),
            d_ids.to(device, non_blocking=True), d_mask.to(device, non_blocking=True))
