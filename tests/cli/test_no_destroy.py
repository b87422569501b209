"""No command destroys a user's files: every command that writes refuses, before any work, an output path that
holds something it did not write itself (a file where a folder goes, a non-empty folder, a file of another kind)
with exit status 2 and one line naming the path, unless --overwrite is given; its own earlier outputs are replaced;
nothing is moved aside and left behind.

Commands: dance-eval (--run / --out), dance-mine (--out, --save-embeddings), dance-export (OUT), dance-analyze
(--out), dance-train (--output-dir) and the demo (which resumes only a run it started).
"""

from __future__ import annotations

import pytest

import train_support as ts
from dance_analysis.cli.analyze import main as analyze_main
from dance_analysis.cli.eval import main as eval_main
from dance_analysis.cli.export import main as export_main
from dance_analysis.cli.mine import main as mine_main
from dance_analysis.errors import DanceError
from dance_analysis.outputs import check_output_file, check_output_folder

USER_TEXT = "my own notes, not a run file\n"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return ts.write_tiny_collection(tmp_path_factory.mktemp("no-destroy") / "collection", n_docs=24, n_train=8,
                                    n_dev=6)


def snapshot(folder):
    """Every path below ``folder`` with the bytes of its files (hidden leftovers included)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def refused(capsys, path) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err


# ---------------------------------------------------------------------------------------------------- helpers
def test_the_checks(tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text(USER_TEXT)
    full = tmp_path / "full"
    full.mkdir()
    (full / "thesis.tex").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    never = lambda p: False  # noqa: E731
    always = lambda p: True  # noqa: E731
    with pytest.raises(DanceError, match="notes.txt: already holds a file"):
        check_output_file(user_file, ours=never, what="a TREC run file")
    check_output_file(user_file, ours=always, what="a TREC run file")            # an earlier output
    check_output_file(user_file, ours=never, what="a TREC run file", overwrite=True)
    with pytest.raises(DanceError, match="is a folder"):
        check_output_file(full, ours=always, what="a TREC run file", overwrite=True)
    with pytest.raises(DanceError, match="notes.txt: is a file, where a folder"):
        check_output_file(user_file / "run.trec", ours=always, what="a TREC run file", overwrite=True)
    check_output_file(tmp_path / "new" / "run.trec", ours=never, what="a TREC run file")
    check_output_folder(empty, ours=None, what="an empty folder")
    check_output_folder(tmp_path / "absent", ours=None, what="an empty folder")
    for path in (user_file, full):
        with pytest.raises(DanceError, match="nothing was written"):
            check_output_folder(path, ours=None, what="an empty folder")
        check_output_folder(path, ours=None, what="an empty folder", overwrite=True)
    check_output_folder(full, ours=always, what="an earlier output")


# ------------------------------------------------------------------------------------------------- dance-eval
def test_dance_eval_keeps_a_users_files(tiny_model_dir, manifest, tmp_path, capsys, one_torch_thread):
    base = [str(tiny_model_dir), "--collection", str(manifest), "--split", "dev", "--k", "10", "--device", "cpu"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.trec").write_text(USER_TEXT)
    before = snapshot(work)
    assert eval_main([*base, "--run", str(work / "run.trec")]) == 2
    refused(capsys, work / "run.trec")
    assert snapshot(work) == before
    # a metrics.json of the user's beside the run file
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text('{"mine": 1}')
    assert eval_main([*base, "--run", str(other / "fresh.trec")]) == 2
    refused(capsys, other / "metrics.json")
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json"]
    # a folder where the run file goes: refused even with --overwrite
    (tmp_path / "folder.trec").mkdir()
    (tmp_path / "folder.trec" / "keep").write_text("x")
    assert eval_main([*base, "--run", str(tmp_path / "folder.trec"), "--overwrite"]) == 2
    refused(capsys, tmp_path / "folder.trec")
    assert (tmp_path / "folder.trec" / "keep").read_text() == "x"
    # --out that is a file
    (tmp_path / "out-file").write_text(USER_TEXT)
    assert eval_main([*base, "--out", str(tmp_path / "out-file")]) == 2
    refused(capsys, tmp_path / "out-file")
    assert (tmp_path / "out-file").read_text() == USER_TEXT
    # an earlier dance-eval output is replaced; --overwrite replaces the user's file, with nothing left beside
    out = tmp_path / "eval"
    assert eval_main([*base, "--out", str(out)]) == 0
    assert eval_main([*base, "--out", str(out)]) == 0
    assert eval_main([*base, "--run", str(work / "run.trec"), "--overwrite"]) == 0
    assert (work / "run.trec").read_text().split()[1] == "Q0"
    assert sorted(p.name for p in work.iterdir()) == ["metrics.json", "run.trec"]


# ------------------------------------------------------------------------------------------------- dance-mine
def test_dance_mine_keeps_a_users_files(tiny_model_dir, manifest, tmp_path, capsys, one_torch_thread):
    base = [str(tiny_model_dir), "--collection", str(manifest), "--split", "train", "--top-k", "10", "--n", "2",
            "--device", "cpu", "--precision", "fp32"]
    user = tmp_path / "train.jsonl"
    user.write_text('{"text": "my corpus line"}\n')
    assert mine_main([*base, "--out", str(user)]) == 2
    refused(capsys, user)
    assert user.read_text() == '{"text": "my corpus line"}\n'
    keep = tmp_path / "vectors"
    keep.mkdir()
    (keep / "notes.md").write_text("mine")
    assert mine_main([*base, "--out", str(tmp_path / "neg.jsonl"), "--save-embeddings", str(keep)]) == 2
    refused(capsys, keep)
    assert sorted(p.name for p in keep.iterdir()) == ["notes.md"] and not (tmp_path / "neg.jsonl").exists()
    # earlier outputs of its own (any layout it writes) are replaced
    saved = tmp_path / "saved"
    for fmt in ("ids", "sentence-transformers", "tevatron"):
        assert mine_main([*base, "--out", str(tmp_path / "neg.jsonl"), "--format", fmt,
                          "--save-embeddings", str(saved)]) == 0
    assert mine_main([*base, "--out", str(user), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------- dance-export
def test_dance_export_keeps_a_users_folder(tiny_model_dir, tmp_path, capsys, one_torch_thread):
    pytest.importorskip("sentence_transformers")
    target = tmp_path / "exported"
    target.mkdir()
    (target / "paper.pdf").write_bytes(b"%PDF")
    assert export_main([str(tiny_model_dir), str(target), "--format", "sentence-transformers"]) == 2
    refused(capsys, target)
    assert sorted(p.name for p in target.iterdir()) == ["paper.pdf"]
    a_file = tmp_path / "model"
    a_file.write_text(USER_TEXT)
    assert export_main([str(tiny_model_dir), str(a_file), "--format", "sentence-transformers"]) == 2
    refused(capsys, a_file)
    assert a_file.read_text() == USER_TEXT
    # an empty folder is fine; --overwrite replaces a file or a folder as a whole, nothing left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main([str(tiny_model_dir), str(empty), "--format", "sentence-transformers"]) == 0
    assert export_main([str(tiny_model_dir), str(a_file), "--format", "sentence-transformers", "--overwrite"]) == 0
    assert export_main([str(tiny_model_dir), str(target), "--format", "sentence-transformers", "--overwrite"]) == 0
    assert (a_file / "modules.json").is_file() and not (target / "paper.pdf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "exported", "model"]


# ---------------------------------------------------------------------------------------------- dance-analyze
def test_dance_analyze_keeps_a_users_files(tmp_path, capsys):
    # the refusals come before anything is read or encoded: a missing input is never reached
    embeddings = tmp_path / "emb"
    a_file = tmp_path / "report.html"
    a_file.write_text("<p>mine</p>")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "draft.docx").write_bytes(b"x")
    for out, extra in ((a_file, []), (foreign, []), (foreign, ["--overwrite"])):
        before = snapshot(tmp_path)
        status = analyze_main(["minilm", "--collection", "rag24-sample", "--out", str(out), "--quiet", *extra])
        assert status == 2
        refused(capsys, out)
        assert snapshot(tmp_path) == before
    assert not embeddings.exists()


def test_dance_analyze_writes_into_an_empty_folder_and_replaces_only_with_overwrite(tmp_path, capsys, manifest,
                                                                                   tiny_model_dir,
                                                                                   one_torch_thread):
    out = tmp_path / "report"
    out.mkdir()
    args = [str(tiny_model_dir), "--collection", str(manifest), "--split", "dev", "--out", str(out), "--quiet",
            "--umap-points", "10", "--device", "cpu"]
    assert analyze_main(args) == 0
    capsys.readouterr()
    assert analyze_main(args) == 2
    refused(capsys, out)
    assert analyze_main([*args, "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name != "report"]


# ------------------------------------------------------------------------------------------ dance-train, demo
def test_dance_train_and_the_demo_keep_a_users_folder(tmp_path, capsys, monkeypatch):
    from dance_analysis import demo
    from dance_analysis.cli import train

    folder = tmp_path / "runs" / "demo-ance"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("my measurements\n")
    (folder / "config.txt").write_text("mine")
    before = snapshot(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "RUNS", (("train/demo-ance.yaml", "runs/demo-ance"),))
    calls = []
    real = train.main
    monkeypatch.setattr(train, "main", lambda args: calls.append(list(args)) or real(args))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "demo-ance.yaml").write_text((ts.REPO / "train" / "demo-ance.yaml").read_text())
    assert demo.main() == 2
    assert "--resume" not in calls[0]              # a folder the demo did not start is not resumed into
    err = capsys.readouterr().err
    assert "runs/demo-ance" in err and "not empty" in err
    assert snapshot(tmp_path / "runs") == before


def test_dance_train_resume_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    """--resume into a non-empty folder without config.yaml, metrics.jsonl or checkpoint-*/ stops before anything
    is written (it used to write its config.yaml and logs there)."""
    from dance_analysis.cli import train

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    monkeypatch.chdir(tmp_path)
    recipe = ts.REPO / "train" / "demo-ance.yaml"
    assert train.main([str(recipe), "--output-dir", str(folder), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "does not look like a dance-train run directory" in err and str(folder) in err
    assert snapshot(folder) == before
