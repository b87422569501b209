"""Atomic publishing (dance_analysis.atomic) and its users: a reader never finds a published file or folder
missing or half-written, not even while a new version replaces it.

The "reader" looks after every filesystem operation of the writer (os.replace, os.rename, os.unlink, os.rmdir,
shutil.rmtree are wrapped), so a gap between removing the old folder and renaming the new one in is seen
deterministically, however short it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import types

import numpy as np
import pytest

from dance_analysis import atomic, checkpoints
from dance_analysis.atomic import write_json
from dance_analysis.training import async_refresh
from dance_analysis.training import checkpoint as ckpt
from dance_analysis.training.config import Recipe, dump_recipe

needs_exchange = pytest.mark.skipif(
    not atomic.can_exchange(tempfile.gettempdir()),
    reason="this system cannot exchange two folders in one step (no renameat2 RENAME_EXCHANGE)")


class Reader:
    """Checks after every filesystem operation that each watched path holds a complete version."""

    def __init__(self, monkeypatch, checks):
        self.checks = checks
        self.looks = 0
        self.gaps: list[str] = []
        for module, name in ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"),
                             (shutil, "rmtree")):
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), f"{module.__name__}.{name}"))

    def _wrap(self, real, label):
        def wrapped(*args, **kwargs):
            try:
                return real(*args, **kwargs)
            finally:
                self.look(f"after {label}{tuple(map(str, args[:2]))}")
        return wrapped

    def look(self, when: str) -> None:
        self.looks += 1
        for description, check in self.checks.items():
            if not check():
                self.gaps.append(f"{description} missing {when}")


def _complete_negatives(folder):
    return lambda: (folder / "meta.json").is_file()


@needs_exchange
def test_miner_attach_replaces_negatives_without_a_gap(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "checkpoint-8"
    (checkpoint / "negatives").mkdir(parents=True)
    (checkpoint / "negatives" / "meta.json").write_text('{"version": "old"}')
    write_json(checkpoint / "checkpoint.json", {"step": 8, "complete": True})
    result = tmp_path / "run" / "refresh" / ".tmp-step-8-1"
    (result / "negatives").mkdir(parents=True)
    (result / "negatives" / "meta.json").write_text('{"version": "new"}')
    (result / "dev_metrics.json").write_text('{"MRR@10": 0.5}')

    reader = Reader(monkeypatch, {"checkpoint-8/negatives": _complete_negatives(checkpoint / "negatives"),
                                  "checkpoint-8/dev_metrics.json": lambda: True})
    async_refresh._attach(result, checkpoint)
    assert reader.looks > 0
    assert reader.gaps == []
    assert json.loads((checkpoint / "negatives" / "meta.json").read_text()) == {"version": "new"}
    assert json.loads((checkpoint / "dev_metrics.json").read_text()) == {"MRR@10": 0.5}
    assert sorted(p.name for p in checkpoint.iterdir()) == ["checkpoint.json", "dev_metrics.json", "negatives"]


@needs_exchange
def test_miner_publishes_a_set_over_an_existing_one_without_a_gap(tmp_path, monkeypatch):
    """Mining a step whose set exists already (a restarted miner) swaps the new set in: never no set at all."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(Recipe(name="gap")), encoding="utf-8")
    checkpoint = run / "checkpoint-8"
    (checkpoint / "encoder").mkdir(parents=True)
    write_json(checkpoint / "checkpoint.json", {"step": 8, "complete": True})
    old_set = run / "refresh" / "step-8"
    (old_set / "negatives").mkdir(parents=True)
    (old_set / "negatives" / "meta.json").write_text('{"version": "old"}')

    fake_model = types.SimpleNamespace(to=lambda device: None, tokenizer=None,
                                       config=types.SimpleNamespace(query_max_length=8, doc_max_length=8,
                                                                    query_prompt="", document_prompt=""))

    def fake_refresh(model, data, recipe, step, *, out_dir, **kwargs):
        (out_dir / "negatives").mkdir()
        (out_dir / "negatives" / "meta.json").write_text('{"version": "new"}')
        (out_dir / "refresh.json").write_text("{}")
        return types.SimpleNamespace(record=lambda: {"step": step},
                                     precision=types.SimpleNamespace(describe=lambda: "encode precision: fp32"))

    from dance_analysis import model as model_module
    from dance_analysis.training import refresh as refresh_module

    monkeypatch.setattr(model_module.DualEncoder, "load", classmethod(lambda cls, *a, **k: fake_model))
    monkeypatch.setattr(refresh_module, "prepare_data", lambda *a, **k: object())
    monkeypatch.setattr(refresh_module, "run_refresh", fake_refresh)
    monkeypatch.setattr(refresh_module, "summary_line", lambda record, metric, tail: f"refresh {tail}")
    miner = async_refresh.Miner(run, device="cpu")

    reader = Reader(monkeypatch, {"refresh/step-8": _complete_negatives(old_set / "negatives"),
                                  "checkpoint-8/negatives": lambda: not (checkpoint / "negatives").exists()
                                  or (checkpoint / "negatives" / "meta.json").is_file()})
    miner._refresh(8, checkpoint)
    assert reader.looks > 0
    assert reader.gaps == []
    assert json.loads((old_set / "negatives" / "meta.json").read_text()) == {"version": "new"}
    # nothing left beside the set but the lock the miner and the trainer's pruning take turns on
    assert sorted(p.name for p in (run / "refresh").iterdir()) == [checkpoints.HELD_LOCK, "step-8"]


@needs_exchange
def test_recommitting_a_checkpoint_swaps_it_without_a_gap(tmp_path, monkeypatch):
    def make(payload):
        tmp = ckpt.begin_checkpoint(tmp_path, 5)
        (tmp / "payload.txt").write_text(payload)
        return ckpt.commit_checkpoint(tmp, tmp_path, 5, {"objective": "ance"})

    make("old")
    final = tmp_path / "checkpoint-5"
    reader = Reader(monkeypatch, {"checkpoint-5": lambda: checkpoints.is_complete(final)})
    make("new")
    assert reader.gaps == []
    assert (final / "payload.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]


# ------------------------------------------------------------------------------------------------ the helpers
def test_files_appear_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic.write_text(tmp_path / "a.txt", "x\ny\n")
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == b"x\ny\n" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with atomic.publishing_path(tmp_path / "c.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".c.npy.") and tmp.name.endswith(".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, np.arange(3))
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".*"))


def test_building_dir_publishes_replaces_keeps_and_cleans_up(tmp_path):
    final = tmp_path / "sub" / "folder"
    with atomic.building_dir(final) as tmp:
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with atomic.building_dir(final) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    with atomic.building_dir(final, replace=False) as tmp:  # an entry someone else finished first is kept
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    with pytest.raises(ValueError):
        with atomic.building_dir(final) as tmp:
            (tmp / "d").write_text("4")
            raise ValueError("interrupted")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert [p.name for p in final.parent.iterdir()] == ["folder"]
    atomic.remove_dir(final)
    assert list(final.parent.iterdir()) == []


def test_replace_dir_without_exchange_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "t"
    target.mkdir()
    (target / "old").write_text("")
    tmp = atomic.temp_dir_beside(target)
    (tmp / "new").write_text("")
    atomic.replace_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
