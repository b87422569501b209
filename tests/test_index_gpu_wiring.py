"""The faiss GPU path of dance_analysis.index.search, run on the CPU through a stand-in for faiss' GPU API.

No GPU exists here, so these tests replace ``faiss.get_num_gpus`` and the GPU cloners with stand-ins that record
the options they are given and return the CPU ``IndexFlatIP``: they check the device selection, that the corpus
blocks are sharded over all GPUs (or put on the one GPU asked for) with the float16 option passed through, and
that the blocked search on top of such an index gives exactly the CPU results; and the placement: a refresh
searches on the one GPU it encodes on, a list of GPUs is sharded over exactly those, and the async miner gets a GPU
that no training process uses, and sees only that one. What the GPU computes is not tested here (see the README:
faiss GPU is written, not run).
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

    def to_gpus_list(cpu_index, co=None, gpus=None, ngpu=-1):
        calls.append(("list", co.shard, co.useFloat16, list(gpus), cpu_index.ntotal))
        return cpu_index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 4, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: SimpleNamespace(shard=False, useFloat16=False),
                        raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: SimpleNamespace(useFloat16=False), raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", to_gpus_list, raising=False)
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


def test_a_list_of_gpus_shards_over_exactly_those(fake_gpus):
    q, d = _data(3)
    cpu = search(q, d, 10, device="cpu")
    listed = search(q, d, 10, device="cuda:1,3", corpus_batch_size=300)
    assert fake_gpus == [("list", True, False, [1, 3], 300), ("list", True, False, [1, 3], 200)]
    np.testing.assert_array_equal(listed.indices, cpu.indices)
    with pytest.raises(Exception, match="distinct"):
        search(q, d, 10, device="cuda:1,1")


def test_a_refresh_searches_only_on_the_gpu_it_encodes_on(fake_gpus):
    """At a sync refresh of a multi-process run, rank 0 (cuda:0) searches while the other ranks hold their training
    memory on cuda:1..: the search must touch cuda:0 alone (it used every GPU, "auto")."""
    import torch

    from dance_analysis.training.refresh import _search_device

    q, d = _data(4)
    for rank_device in (torch.device("cuda", 0), torch.device("cuda", 2)):
        fake_gpus.clear()
        search(q, d, 5, device=_search_device(rank_device))
        assert fake_gpus == [("one", rank_device.index, False, 500)]
    assert _search_device(torch.device("cpu")) == "cpu"


def test_the_async_miner_never_takes_a_training_gpu():
    from dance_analysis.errors import DanceError
    from dance_analysis.training.async_refresh import place_miner

    assert place_miner("auto", training_gpus=7, visible_gpus=8) == "cuda:7"     # 7 + 1
    assert place_miner("auto", training_gpus=4, visible_gpus=8) == "cuda:4"
    assert place_miner("auto", training_gpus=1, visible_gpus=1) == "cuda:0"     # one process shares its GPU
    assert place_miner("auto", training_gpus=0, visible_gpus=0) == "cpu"
    assert place_miner("cpu", training_gpus=8, visible_gpus=8) == "cpu"
    with pytest.raises(DanceError, match="nproc_per_node=7"):
        place_miner("auto", training_gpus=8, visible_gpus=8)   # was cuda:7, the last training rank's GPU
    assert place_miner("cuda:7", training_gpus=8, visible_gpus=8) == "cuda:7"   # named: shared, with a warning
    with pytest.raises(DanceError, match="visible"):
        place_miner("cuda:8", training_gpus=7, visible_gpus=8)


def test_the_miner_process_sees_only_its_gpu(tmp_path, monkeypatch):
    import subprocess

    import torch

    from dance_analysis.training.async_refresh import MinerHandle
    from dance_analysis.training.config import Recipe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: started.append((args, kwargs["env"])))
    MinerHandle(tmp_path, Recipe(), device="cuda:7").start()
    args, env = started[-1]
    assert env["CUDA_VISIBLE_DEVICES"] == "7" and args[-2:] == ["--device", "cuda:0"] and "RANK" not in env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,9")   # physical ids behind cuda:0..7
    MinerHandle(tmp_path, Recipe(), device="cuda:7").start()
    assert started[-1][1]["CUDA_VISIBLE_DEVICES"] == "9"
    MinerHandle(tmp_path, Recipe(), device="cpu").start()
    assert started[-1][0][-2:] == ["--device", "cpu"]
