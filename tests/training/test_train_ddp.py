"""Data parallelism: 2 gloo processes under torchrun against 1 process with the same global batch, and gradient
accumulation against one large micro-batch.

Tolerance: per-step losses agree to rtol 1e-4 (atol 1e-5). Both set-ups average the same per-instance losses and
gradients, so they differ only by float summation order (all-reduce of gradients, the order in which rows are
encoded and gathered); the mined negatives are compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import train_support as ts
from dance_analysis.mining import NegativeSet
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.loop import train

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_setup):
    # No dropout (so the runs see the same network), mean pooling (well separated scores: exact mining ties).
    with tiny_setup(tmp_path_factory.mktemp("ddp"), dropout=0.0, pooling="mean", head="linear") as env:
        recipe = ts.recipe_dict(env["manifest"], env["encoder"], env["cache"], optim={"max_steps": 6, "batch_size": 8},
                                mining={"refresh_every": 3}, log={"tensorboard": False, "progress": False})
        yield {"root": env["root"], "recipe": recipe}


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir):
    return np.array([r["loss"] for r in _lines(run_dir) if "loss" in r])


def test_two_gloo_processes_match_one_process(setup):
    root = setup["root"]
    single = root / "single"
    train(recipe_from_dict(setup["recipe"]), single)

    recipe_path = ts.write_recipe(root / "recipe.yaml", setup["recipe"])
    ddp = root / "ddp"
    probe = root / "exit"     # each rank's dance-train runs inside tests/exit_probe.py
    prepared, done = ts.launch(recipe_path, ddp, root / "cache",     # --prepare, then torchrun
                               entry=(str(Path(__file__).parents[1] / "exit_probe.py"), str(probe)))
    assert prepared.returncode == 0, prepared.stderr[-4000:]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # Both ranks left the group with no DDP module holding it: nothing is left for gloo to tear down at shutdown
    # (where it can abort a rank that trained without fault).
    for rank in range(2):
        assert json.loads(Path(f"{probe}-{rank}.json").read_text()) == \
            {"exit": 0, "ddp_alive": 0, "group_joined": False}
    meta = json.loads((ddp / "checkpoint-6" / "checkpoint.json").read_text())
    assert meta["world_size"] == 2
    assert "2 x cpu" in done.stderr

    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    dev_a = [r["dev"]["MRR@10"] for r in _lines(single) if "dev" in r]
    dev_b = [r["dev"]["MRR@10"] for r in _lines(ddp) if "dev" in r]
    assert dev_a == pytest.approx(dev_b, abs=1e-6)
    for step in (0, 3, 6):
        na = NegativeSet.load(single / f"checkpoint-{step}" / "negatives")
        nb = NegativeSet.load(ddp / f"checkpoint-{step}" / "negatives")
        assert np.array_equal(na.doc_negatives, nb.doc_negatives)
        assert np.array_equal(na.query_negatives, nb.query_negatives)
        # Corpus encoding was split over the two ranks and gathered: same rows, same vectors.
        ea = np.load(single / f"checkpoint-{step}" / "embeddings" / "corpus.npy")
        eb = np.load(ddp / f"checkpoint-{step}" / "embeddings" / "corpus.npy")
        np.testing.assert_allclose(eb, ea, rtol=1e-4, atol=1e-5)
    state_a, state_b = ts.encoder_state(single / "checkpoint-6"), ts.encoder_state(ddp / "checkpoint-6")
    for key in state_a:
        np.testing.assert_allclose(state_b[key], state_a[key], rtol=1e-3, atol=1e-5)


def test_gradient_accumulation_matches_one_large_micro_batch(setup):
    root = setup["root"]
    recipe = dict(setup["recipe"])
    one = root / "accum-1"
    two = root / "accum-2"
    train(recipe_from_dict({**recipe, "optim": {**recipe["optim"], "grad_accum": 1}}), one)
    train(recipe_from_dict({**recipe, "optim": {**recipe["optim"], "grad_accum": 2}}), two)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=RTOL, atol=ATOL)
