"""Where the commands write: everything a user's command makes lies under runs/ (ignored by git), apart from the
committed reports/; default names come from the inputs' paths, so two inputs do not share a folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dance_analysis import demo
from dance_analysis.cli.eval import main as eval_main
from dance_analysis.outputs import OUTPUT_ROOT, input_slug
from dance_analysis.report.build import DEFAULT_ROOT

ROOT = Path(__file__).resolve().parents[1]


def test_names_come_from_the_inputs_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    for folder in ("runs/demo-dance/checkpoint-40", "runs/exported/minilm", "exported/minilm", "minilm-folder"):
        (work / folder).mkdir(parents=True)
    (tmp_path / "elsewhere" / "models" / "minilm").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert input_slug("minilm") == "minilm"                            # an alias (no such folder here)
    assert input_slug("runs/demo-dance/checkpoint-40") == "demo-dance-checkpoint-40"
    assert input_slug("runs/exported/minilm") == "exported-minilm"
    assert input_slug("exported/minilm/") == "exported-minilm"
    assert input_slug(str(tmp_path / "elsewhere" / "models" / "minilm")) == "models-minilm"
    assert input_slug("minilm-folder") == "minilm-folder"


def test_user_outputs_stay_out_of_the_committed_folders():
    assert DEFAULT_ROOT == OUTPUT_ROOT / "reports" and OUTPUT_ROOT == Path("runs")
    assert demo.REPORT.startswith("runs/")
    assert all(out.startswith("runs/") for _, out in demo.RUNS)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("runs/reports/demo/index.html", "runs/eval/minilm-test/metrics.json", "exported/minilm/x"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git"


def test_demo_replaces_only_its_own_report(monkeypatch):
    calls = []
    monkeypatch.setattr(demo.train, "main", lambda args: calls.append(("train", args)) or 0)
    monkeypatch.setattr(demo.analyze, "main", lambda args: calls.append(("analyze", args)) or 0)
    assert demo._run() == 0
    assert calls[-1] == ("analyze", ["runs/demo-ance", "runs/demo-dance", "--out", "runs/reports/demo",
                                     "--overwrite"])


def test_eval_writes_under_runs_eval_named_after_the_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "runs" / "exported" / "tiny")
    monkeypatch.chdir(work)
    assert eval_main(["runs/exported/tiny", "--collection", "rag24-sample", "--split", "test", "--k", "20",
                      "--doc-max-length", "32"]) == 0
    out = Path("runs") / "eval" / "exported-tiny-test"
    assert f"metrics: {out / 'metrics.json'}" in capsys.readouterr().out
    assert json.loads((work / out / "metrics.json").read_text())["model"] == "runs/exported/tiny"
