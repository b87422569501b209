"""Which faiss is installed, and a GPU search that never falls back silently.

``faiss-cpu`` and ``faiss-gpu-cu12`` write the same ``faiss`` package; when both are installed and the CPU files
win, ``faiss.get_num_gpus()`` is 0 on a GPU machine. No GPU exists here: torch's and faiss' views of the GPUs and
the installed distributions are stood in for, and the checks are read against what they must conclude.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis import index as index_module
from dance_analysis.errors import DanceError
from dance_analysis.index import search


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch sees 2 GPUs, faiss sees none; ``installed`` sets the faiss distributions found."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    monkeypatch.setattr(index_module, "_WARNED_TORCH_PATH", False)

    def installed(packages: dict[str, str]) -> None:
        monkeypatch.setattr(index_module, "faiss_packages", lambda: dict(packages))

    return installed


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1", "cuda:0,1"])
def test_gpu_search_with_the_cpu_files_winning_stops_and_says_how_to_repair(gpu_machine, device):
    gpu_machine({"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.14.1"})
    q, d = _data()
    with pytest.raises(DanceError) as caught:
        search(q, d, 5, device=device)
    message = str(caught.value)
    assert "torch sees 2 GPU(s) but faiss sees none" in message
    assert "faiss-cpu 1.15.1, faiss-gpu-cu12 1.14.1" in message
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu-cu12" in message


def test_a_gpu_package_alone_that_sees_no_gpu_stops_too(gpu_machine):
    gpu_machine({"faiss-gpu-cu12": "1.14.1"})
    q, d = _data()
    with pytest.raises(DanceError, match="cannot use the GPU .*run dance-doctor"):
        search(q, d, 5, device="cuda:0")


def test_faiss_cpu_alone_takes_the_torch_path_and_says_so_once(gpu_machine, caplog):
    gpu_machine({"faiss-cpu": "1.15.1"})
    with caplog.at_level(logging.WARNING, logger="dance_analysis.index"):
        first = index_module._pick_backend("cuda:1", 10)
        second = index_module._pick_backend("auto", 10)
    assert first.name == second.name == "torch-cuda" and str(first.device) == "cuda:1"
    assert caplog.text.count("faiss has no GPU support here (installed: faiss-cpu)") == 1


def test_no_gpu_no_problem(monkeypatch):
    """A CPU machine with the gpu extra installed searches on the CPU (auto), exactly as brute force."""
    monkeypatch.setattr(index_module, "faiss_packages", lambda: {"faiss-gpu-cu12": "1.14.1"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert index_module.faiss_gpu_problem() is None
    q, d = _data()
    ranked = search(q, d, 5, device="auto")
    expected = np.argsort(-(q.astype(np.float64) @ d.T.astype(np.float64)), axis=1, kind="stable")[:, :5]
    assert np.array_equal(ranked.indices, expected)


def test_faiss_gpus_seen_is_no_problem(monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(index_module, "faiss_packages", lambda: {"faiss-cpu": "1", "faiss-gpu-cu12": "1"})
    assert index_module.faiss_gpu_problem(torch_gpus=2) is None


def test_the_installed_faiss_is_found():
    """This environment installs faiss-cpu (the cpu extra), and only it."""
    from importlib import metadata

    assert index_module.faiss_packages() == {"faiss-cpu": metadata.version("faiss-cpu")}


def test_missing_faiss_says_which_extra_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)     # `import faiss` raises ImportError
    with pytest.raises(DanceError, match=r"faiss is not installed .*dance-analysis\[cpu\].*dance-analysis\[gpu\]"):
        index_module.import_faiss()


def test_dance_train_on_a_gpu_stops_before_any_work(gpu_machine, tmp_path, capsys):
    from dance_analysis.cli.train import main as train_main

    gpu_machine({"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.14.1"})
    out = tmp_path / "run"
    code = train_main([str(ts.REPO / "train" / "demo-dance.yaml"), "--output-dir", str(out)])
    assert code == 2 and not out.exists()
    assert "faiss-cpu is installed beside faiss-gpu-cu12" in capsys.readouterr().err
