"""dance-doctor: the machine as torch, faiss and the OS report it, and whether recipes can run here.

What it prints is compared with what torch, faiss, importlib.metadata and the OS say directly; the GPU machines
(an A100 with faiss shadowed by faiss-cpu, a V100 without bf16) are stand-ins for torch's and faiss' answers.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from types import SimpleNamespace

import faiss
import pytest
import torch

import train_support as ts
from dance_analysis import encode
from dance_analysis import index as index_module
from dance_analysis.cli.doctor import main

DEMO = str(ts.REPO / "train" / "demo-dance.yaml")
MSMARCO = str(ts.REPO / "train" / "msmarco-doc-ance-firstp.yaml")
RAG24 = str(ts.REPO / "train" / "rag24-dance.yaml")


def _run(capsys, *argv) -> tuple[int, dict]:
    code = main([*argv, "--json", "--no-timing"])
    return code, json.loads(capsys.readouterr().out)


def test_this_machine_as_torch_faiss_and_the_os_see_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DANCE_CACHE", str(tmp_path / "cache"))
    code, out = _run(capsys)
    machine = out["machine"]
    assert code == 0 and out["recipes"] == []
    assert machine["torch"]["version"] == torch.__version__
    assert machine["torch"]["cuda_available"] is torch.cuda.is_available() and machine["torch"]["gpus"] == []
    assert machine["faiss"]["packages"] == {"faiss-cpu": metadata.version("faiss-cpu")}
    assert machine["faiss"]["version"] == faiss.__version__ and machine["faiss"]["gpus"] == 0
    assert machine["faiss"]["problem"] is None
    assert machine["cpu"]["bf16_native"] == encode.bf16_hardware("cpu")[0]
    assert machine["threads"]["torch_threads"] == torch.get_num_threads()
    assert machine["threads"]["faiss_threads"] == faiss.omp_get_max_threads()
    assert machine["cache"]["DANCE_CACHE"] == str(tmp_path / "cache")
    assert machine["cache"]["root"] == str(tmp_path / "cache")
    assert abs(machine["cache"]["free_gb"] - shutil.disk_usage(tmp_path).free / 1e9) < 1.0


def test_the_text_report_names_the_kernel_decision(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text and "faiss: installed faiss-cpu" in text
    assert "CPU kernels of float32 encoding: CPU linear layers:" in text and "free disk" in text


def test_recipes_that_can_and_cannot_run_here(capsys):
    code, out = _run(capsys, DEMO)
    assert code == 0 and out["recipes"][0]["problems"] == [] and out["recipes"][0]["search"] == "faiss CPU"
    code, out = _run(capsys, DEMO, "--set", "optim.device=cuda")
    assert code == 1 and "torch sees no CUDA GPU" in out["recipes"][0]["problems"][0]
    code, out = _run(capsys, DEMO, "--set", "optim.precision=fp16")
    assert code == 1 and out["recipes"][0]["problems"] == [
        "optim.precision fp16: not possible here: fp16 needs a CUDA device (use fp32 or bf16)"]
    code, out = _run(capsys, MSMARCO)      # its data is not on this machine
    assert code == 1 and out["recipes"][0]["problems"] == [
        "data.collection data/msmarco-doc/manifest.yaml: not found here"]
    assert main([DEMO, "--set", "optim.no_such_key=1"]) == 2


def _gpu(monkeypatch, major: int, name: str) -> None:
    props = SimpleNamespace(name=name, major=major, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: major >= 8)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)


def test_a100_with_faiss_shadowed_by_faiss_cpu(capsys, monkeypatch):
    _gpu(monkeypatch, 8, "NVIDIA A100-SXM4-80GB (stand-in)")
    monkeypatch.setattr(index_module, "faiss_packages", lambda: {"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.14.1"})
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    code, out = _run(capsys, DEMO, "--set", "optim.precision=fp32")
    gpu = out["machine"]["torch"]["gpus"][0]
    assert (gpu["capability"], gpu["bf16"], gpu["fp16"], gpu["memory_gb"]) == ("8.0", True, True, 80.0)
    assert "both write the same faiss package: the CPU files won" in out["machine"]["faiss"]["problem"]
    recipe = out["recipes"][0]
    assert code == 1 and recipe["device"] == "cuda" and recipe["problems"] == [out["machine"]["faiss"]["problem"]]
    assert recipe["precision"] == {"optim.precision": "fp32",
                                   "mining.encode_precision": "fp32"}


def test_v100_cannot_run_a_bf16_recipe_and_auto_is_fp16(capsys, monkeypatch):
    _gpu(monkeypatch, 7, "Tesla V100 (stand-in)")
    monkeypatch.setattr(index_module, "faiss_packages", lambda: {"faiss-gpu-cu12": "1.14.1"})
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    code, out = _run(capsys, RAG24, DEMO)
    rag24, demo = out["recipes"]
    assert code == 1 and out["machine"]["faiss"]["problem"] is None and rag24["search"] == "faiss GPU"
    assert rag24["problems"] == ["optim.precision bf16: not possible here: the GPU has no bf16",
                                 "mining.encode_precision bf16: not possible here: the GPU has no bf16"]
    assert demo["problems"] == []
    assert demo["precision"]["optim.precision"] == "fp16 autocast (the GPU has no bf16), with a gradient scaler"


@pytest.mark.parametrize("mode_device, expected", [("cpu", "cpu"), ("auto", "cuda:0")])
def test_async_miner_placement_on_one_gpu(capsys, monkeypatch, mode_device, expected):
    _gpu(monkeypatch, 8, "A100 (stand-in)")
    monkeypatch.setattr(index_module, "faiss_packages", lambda: {"faiss-gpu-cu12": "1.14.1"})
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    code, out = _run(capsys, DEMO, "--set", "mining.mode=async", "--set", f"mining.device={mode_device}")
    assert code == 0 and out["recipes"][0]["miner"] == expected
