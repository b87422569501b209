"""Checkpoint folders: atomic commit, numeric order, pruning (last K + best), safe loading, RNG state."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from dance_analysis import checkpoints
from dance_analysis.atomic import write_json
from dance_analysis.errors import DanceError
from dance_analysis.training import checkpoint as ckpt


def _make(run_dir, step, mrr=None):
    tmp = ckpt.begin_checkpoint(run_dir, step)
    (tmp / "payload.txt").write_text(str(step))
    if mrr is not None:
        write_json(tmp / "dev_metrics.json", {"MRR@10": mrr})
    return ckpt.commit_checkpoint(tmp, run_dir, step, {"objective": "ance"})


def test_commit_is_atomic_and_listing_is_numeric(tmp_path):
    for step in (0, 9, 10, 100):
        _make(tmp_path, step)
    # A half-written checkpoint (temporary folder) and a folder without checkpoint.json are not listed.
    (tmp_path / ".tmp-checkpoint-200-1-abc").mkdir()
    (tmp_path / "checkpoint-300").mkdir()
    steps = [s for s, _ in checkpoints.list_checkpoints(tmp_path)]
    assert steps == [0, 9, 10, 100]
    assert checkpoints.latest_checkpoint(tmp_path).name == "checkpoint-100"
    meta = json.loads((tmp_path / "checkpoint-10" / "checkpoint.json").read_text())
    assert meta == {"objective": "ance", "step": 10, "complete": True}
    removed = {p.name for p in ckpt.clean_temporaries(tmp_path)}
    assert removed == {".tmp-checkpoint-200-1-abc", "checkpoint-300"}
    assert not list(tmp_path.glob(".tmp-*"))


def test_prune_keeps_last_k_and_the_best(tmp_path):
    for step, mrr in [(0, 0.1), (5, 0.4), (10, 0.2), (15, 0.3), (20, 0.25)]:
        _make(tmp_path, step, mrr)
    deleted = ckpt.prune_checkpoints(tmp_path, keep_last=2, keep_best=True, metric="MRR@10")
    assert deleted == [0, 10]
    assert [s for s, _ in checkpoints.list_checkpoints(tmp_path)] == [5, 15, 20]
    assert checkpoints.best_checkpoint(tmp_path, "MRR@10")[0] == 5
    assert ckpt.prune_checkpoints(tmp_path, keep_last=1, keep_best=False, protect=(15,)) == [5]
    assert ckpt.prune_checkpoints(tmp_path, keep_last=None) == []
    assert not list(tmp_path.glob(".trash-*"))


def test_best_prefers_the_earliest_on_ties_and_skips_missing_metrics(tmp_path):
    _make(tmp_path, 1, 0.5)
    _make(tmp_path, 2)
    _make(tmp_path, 3, 0.5)
    assert checkpoints.best_checkpoint(tmp_path, "MRR@10")[0] == 1
    assert checkpoints.best_checkpoint(tmp_path, "nDCG@10") is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_files_load_with_weights_only(tmp_path):
    good = tmp_path / "good.pt"
    ckpt.torch_save_atomic({"state": {0: {"exp_avg": torch.ones(2)}}, "step": 3}, good)
    assert ckpt.torch_load_safe(good)["step"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(DanceError, match="not a loadable checkpoint file"):
        ckpt.torch_load_safe(bad)


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    tensors, plain = ckpt.capture_rng_state()
    plain = json.loads(json.dumps(plain))            # it is saved as JSON
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.restore_rng_state(tensors, plain)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
