"""The MS MARCO recipes (paper settings) take two steps on a tiny stand-in collection through the multi-process
launch sequence: ``dance-train RECIPE --prepare`` (one process), then ``torchrun`` with 2 gloo processes; only the
data, the model and the step count are overridden (LAMB, sync refreshes, url <sep> title <sep> body, lower-casing
and the rest stay as the recipes say). The stand-in: a few generated MS MARCO document-format TSV lines, a tiny
random encoder (BERT for ANCE FirstP, an ANCE-layout RoBERTa for the DANCE stage 1), and stage 2 starting from the
best checkpoint of the stage-1 run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train_support as ts
from dance_analysis import checkpoints
from dance_analysis.mining import NegativeSet
from dance_analysis.model import DualEncoder
from dance_analysis.training import checkpoint as ckpt
from dance_analysis.training.config import load_recipe
from dance_analysis.training.loop import resolve_backbone

TRAIN = Path(__file__).resolve().parents[2] / "train"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("msmarco-standin")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("DANCE_CACHE")
    os.environ["DANCE_CACHE"] = str(root / "cache")
    yield {
        "root": root,
        "manifest": ts.write_tiny_collection(root / "msmarco-doc", n_docs=40, n_train=20, n_dev=6),
        "bert": ts.tiny_encoder(root / "bert", max_positions=512, query_max_length=64, doc_max_length=512),
        "ance": ts.tiny_ance_checkpoint(root / "ance-firstp"),
    }
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("DANCE_CACHE", None)
    else:
        os.environ["DANCE_CACHE"] = old


def _start(name: str, backbone: Path, standin: dict, run: Path):
    """Run the recipe for 2 steps (refreshing at every step) with only data, model and sizes overridden, through
    the launch sequence (--prepare, then torchrun with 2 gloo processes)."""
    overrides = [f"data.collection={standin['manifest']}", f"data.cache_dir={standin['root'] / 'tokens'}",
                 f"model.backbone={backbone}", "optim.max_steps=2", "mining.refresh_every=1", "log.progress=false",
                 "log.tensorboard=false"]
    recipe = load_recipe(TRAIN / name, overrides)
    extra = tuple(part for o in overrides for part in ("--set", o))
    prepared, trained = ts.launch(TRAIN / name, run, standin["root"] / "cache", extra=extra)
    assert prepared.returncode == 0, prepared.stderr[-4000:]
    assert trained.returncode == 0, trained.stderr[-4000:]
    final = run / "checkpoint-2"
    assert json.loads((final / "checkpoint.json").read_text())["world_size"] == 2
    assert (run / "prepared.json").is_file()
    losses = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return recipe, SimpleNamespace(final_step=max(r["step"] for r in losses if "loss" in r), final_checkpoint=final)


def test_msmarco_doc_ance_firstp_starts(standin):
    recipe, result = _start("msmarco-doc-ance-firstp.yaml", standin["bert"], standin, standin["root"] / "ance")
    assert result.final_step == 2
    model = DualEncoder.load(str(result.final_checkpoint / "encoder"))
    assert (model.config.pooling, model.config.head, model.config.normalize) == ("cls", "linear+layernorm", False)
    assert (model.config.query_max_length, model.config.doc_max_length) == (64, 512)
    negatives = NegativeSet.load(result.final_checkpoint / "negatives")
    assert negatives.meta["top_k"] == 200 and negatives.meta["n"] == 20 and negatives.query_negatives is None
    # fraction 0.2: a rotating fifth of the 20 training queries is mined at each refresh.
    assert (negatives.doc_negatives >= 0).any(axis=1).sum() == 4
    assert (result.final_checkpoint / "embeddings" / "corpus.npy").is_file()
    import numpy as np

    assert np.load(result.final_checkpoint / "embeddings" / "corpus.npy").dtype == np.float16
    assert checkpoints.read_dev_metrics(result.final_checkpoint)["MRR@100"] >= 0
    # The paper's optimiser and the reference input, as the recipe says.
    assert recipe.optim.optimizer == "lamb" and recipe.optim.decay_steps == 1_000_000
    assert not recipe.optim.deterministic and recipe.model.lowercase
    optimizer = ckpt.torch_load_safe(result.final_checkpoint / "optimizer.pt")
    assert optimizer["param_groups"][0]["adam_debias"] is True and optimizer["state"]
    meta = json.loads((result.final_checkpoint / "checkpoint.json").read_text())
    assert meta["collection"]["doc_text"] == "url-title-body"


def test_msmarco_doc_dance_two_stages_start(standin):
    stage1_dir = standin["root"] / "stage1"
    recipe1, result1 = _start("msmarco-doc-dance-stage1.yaml", standin["ance"], standin, stage1_dir)
    model1 = DualEncoder.load(str(result1.final_checkpoint / "encoder"))
    assert model1.config.normalize and not model1.config.doc_layernorm and model1.config.temperature == 0.01
    assert json.loads((result1.final_checkpoint / "checkpoint.json").read_text())["objective"] == "ance"

    best = checkpoints.best_checkpoint(stage1_dir, "MRR@100")
    assert resolve_backbone(str(stage1_dir), "best") == str(best[1] / "encoder")
    assert resolve_backbone(str(stage1_dir), "last") == str(stage1_dir / "checkpoint-2" / "encoder")
    recipe2, result2 = _start("msmarco-doc-dance-stage2.yaml", stage1_dir, standin, standin["root"] / "stage2")
    assert recipe2.loss.objective == "dance" and recipe2.loss.w_d2q == 0.1
    negatives = NegativeSet.load(result2.final_checkpoint / "negatives")
    assert negatives.query_negatives is not None and negatives.query_counts.sum() > 0
    lines = [json.loads(x) for x in (standin["root"] / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert all("d2q" in r for r in lines if "loss" in r)
    # Stage 2 started from the chosen stage-1 weights.
    start = ts.encoder_state(standin["root"] / "stage2" / "checkpoint-0")
    chosen = ts.encoder_state(best[1])
    assert all((start[k] == chosen[k]).all() for k in chosen)
