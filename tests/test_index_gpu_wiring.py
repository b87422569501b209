"""The faiss GPU path of dance_analysis.index.search, run on the CPU through a stand-in for faiss' GPU API.

No GPU exists here, so these tests replace ``faiss.get_num_gpus`` and the GPU cloners with stand-ins that record
the options they are given and return the CPU ``IndexFlatIP``: they check the device selection, that the corpus
blocks are sharded over all GPUs (or put on the one GPU asked for) with the float16 option passed through, and
that the blocked search on top of such an index gives exactly the CPU results. What the GPU computes is not
tested here (see the README: faiss GPU is written, not run).
"""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from dance_analysis import index as index_module
from dance_analysis.index import search


@pytest.fixture
def fake_gpus(monkeypatch):
    calls = []

    def to_all_gpus(cpu_index, co=None, ngpu=-1):
        calls.append(("all", co.shard, co.useFloat16, ngpu, cpu_index.ntotal))
        return cpu_index

    def to_gpu(resources, device, cpu_index, options=None):
        calls.append(("one", device, options.useFloat16, cpu_index.ntotal))
        return cpu_index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 4, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: SimpleNamespace(shard=False, useFloat16=False),
                        raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: SimpleNamespace(useFloat16=False), raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    return calls


def _data(seed=0, nq=37, nd=500, dim=16):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(nq, dim)).astype(np.float32), rng.normal(size=(nd, dim)).astype(np.float32)


def test_auto_shards_every_corpus_block_over_all_gpus_and_matches_the_cpu(fake_gpus):
    q, d = _data()
    cpu = search(q, d, 20, device="cpu")
    assert not fake_gpus
    gpu = search(q, d, 20, device="auto", corpus_batch_size=128)
    assert fake_gpus == [("all", True, False, 4, n) for n in (128, 128, 128, 116)]
    np.testing.assert_array_equal(gpu.indices, cpu.indices)
    np.testing.assert_array_equal(gpu.scores, cpu.scores)
    brute = np.argsort(-(q.astype(np.float64) @ d.T.astype(np.float64)), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(cpu.indices, brute)


def test_float16_storage_and_a_single_gpu_are_passed_to_faiss(fake_gpus):
    q, d = _data(1)
    search(q, d, 5, device="auto", gpu_float16=True)
    search(q, d, 5, device="cuda:2", gpu_float16=True)
    assert fake_gpus == [("all", True, True, 4, 500), ("one", 2, True, 500)]


def test_k_beyond_the_faiss_gpu_limit_leaves_faiss_gpu(fake_gpus, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    q, d = _data(2, nd=3000)
    k = index_module._FAISS_GPU_MAX_K     # + the tie margin is beyond what faiss GPU selects
    assert isinstance(index_module._pick_backend("auto", k), index_module._FaissCPU)
    assert isinstance(index_module._pick_backend("auto", k - index_module._TIE_MARGIN), index_module._FaissGPU)
    with pytest.raises(Exception, match="neither faiss nor torch sees a GPU"):
        search(q, d, k, device="cuda")
    assert not fake_gpus
