"""Hostile files: pickles in .pt / .bin / .npy files and remote code in a model folder never run."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis.cli import analyze as analyze_cli
from dance_analysis.cli import eval as eval_cli
from dance_analysis.cli import train as train_cli
from dance_analysis.errors import DanceError

PACKAGE = Path(__file__).resolve().parents[1] / "dance_analysis"


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poisoned_pt(path: Path, marker: Path) -> Path:
    torch.save({"state": {0: Payload(marker)}, "param_groups": []}, path)
    return path


def test_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """Sanity check of the payload itself: an unsafe load would run it."""
    marker = tmp_path / "pwned"
    poisoned_pt(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


def test_weights_only_load_refuses_the_payload(tmp_path):
    from dance_analysis.training.checkpoint import torch_load_safe

    marker = tmp_path / "pwned"
    path = poisoned_pt(tmp_path / "optimizer.pt", marker)
    with pytest.raises(DanceError, match="optimizer.pt"):
        torch_load_safe(path)
    assert not marker.exists()


def test_resume_from_poisoned_optimizer_is_refused(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DANCE_CACHE", str(cache))
    manifest = ts.write_tiny_collection(tmp_path / "collection")
    encoder = ts.tiny_encoder(tmp_path / "model")
    recipe = ts.write_recipe(tmp_path / "recipe.yaml", ts.recipe_dict(
        manifest, encoder, cache, optim={"max_steps": 4}, mining={"refresh_every": 2},
        log={"tensorboard": False, "progress": False}))
    run = tmp_path / "run"
    assert train_cli.main([str(recipe), "--output-dir", str(run)]) == 0
    capsys.readouterr()
    # an interrupted run: its last checkpoint is checkpoint-2 (a finished run has nothing to resume or load)
    shutil.rmtree(run / "checkpoint-4")
    marker = tmp_path / "pwned"
    target = run / "checkpoint-2" / "optimizer.pt"
    poisoned_pt(target, marker)
    before = sorted(p.name for p in run.iterdir())
    code = train_cli.main([str(recipe), "--output-dir", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "optimizer.pt" in err and "Traceback" not in err
    assert not marker.exists()
    assert (run / "checkpoint-2" / "checkpoint.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == before


def test_poisoned_ance_weights_are_refused(tmp_path, capsys):
    from dance_analysis.model import DualEncoder

    folder = ts.tiny_ance_checkpoint(tmp_path / "ance")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"roberta.embeddings.word_embeddings.weight": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(DanceError, match="pytorch_model.bin"):
        DualEncoder.load(str(folder))
    assert not marker.exists()
    out = tmp_path / "out"
    code = eval_cli.main([str(folder), "--collection", "rag24-sample", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "pytorch_model.bin" in err and "Traceback" not in err
    assert not marker.exists() and not out.exists()


def test_poisoned_head_file_of_saved_encoder_is_refused(tmp_path, tiny_model_dir):
    """A head stored as a torch pickle instead of safetensors is refused too (it is read as safetensors)."""
    from dance_analysis.model import DualEncoder

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "pwned"
    torch.save({"linear.weight": Payload(marker)}, folder / "head.safetensors")
    with pytest.raises(DanceError, match="head.safetensors"):
        DualEncoder.load(str(folder))
    assert not marker.exists()


def test_package_never_enables_trust_remote_code():
    hits = []
    for file in PACKAGE.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            hits.append(str(file))
    assert hits == []


def test_auto_map_remote_code_is_not_run(tmp_path, capsys):
    from safetensors.torch import save_file

    from dance_analysis.model import DualEncoder

    marker = tmp_path / "pwned"
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n", encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}), encoding="utf-8")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(DanceError):
        DualEncoder.load(str(folder))
    assert not marker.exists()
    out = tmp_path / "out"
    code = eval_cli.main([str(folder), "--collection", "rag24-sample", "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not marker.exists() and not out.exists()


def test_object_array_npy_is_refused(tmp_path, capsys):
    import report_support as rs
    from dance_analysis.embeddings import Embeddings

    marker = tmp_path / "pwned"
    folder = tmp_path / "emb"
    rs.write_embeddings(folder, ["D0", "D1"], np.ones((2, 4), np.float32), ["Q0"], np.ones((1, 4), np.float32))
    payload = np.empty(2, dtype=object)
    payload[0], payload[1] = Payload(marker), "D1"
    np.save(folder / "corpus.ids.npy", payload, allow_pickle=True)
    with pytest.raises(DanceError, match=r"corpus\.ids\.npy.*(pickle|allow_pickle)"):
        Embeddings.load(folder / "corpus")
    assert not marker.exists()
    out = tmp_path / "report"
    code = analyze_cli.main([str(folder), "--collection", "rag24-sample", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "corpus.ids.npy" in err and "Traceback" not in err
    assert not marker.exists() and (not out.exists() or not any(out.iterdir()))
