"""dance-analyze end to end: the minilm alias on the real sample, a checkpoint, a run folder, two runs side by side,
and bad inputs (one clear message, exit status 2, no report folder)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dance_analysis.cli.analyze import main
from dance_analysis.data import load_collection
from report_support import fake_space, write_checkpoint, write_embeddings, write_run
from reproduce_support import expected_verdict

FAST = ["--umap-points", "120", "--quiet"]


@pytest.fixture(scope="module")
def rag():
    return load_collection("rag24-sample")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, rag):
    """An ANCE run and a DANCE run, three checkpoints each, with saved embeddings and negatives (dim 32)."""
    root = tmp_path_factory.mktemp("runs")
    ance = write_run(root / "ance-run", rag, objective="ance", seed=0, concentrate=(0.15, 0.2, 0.25),
                     anisotropy=(3.0, 3.0, 2.5), dev=(0.1, 0.2, 0.15))
    dance = write_run(root / "dance-run", rag, objective="dance", seed=1, concentrate=(0.5, 0.6, 0.7),
                      anisotropy=(1.5, 1.2, 1.0), dev=(0.2, 0.25, 0.3))
    return ance, dance


def _report(out):
    results = json.loads((out / "metrics.json").read_text())
    html = (out / "index.html").read_text()
    return results, html


def _no_report(out):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


@pytest.mark.slow
def test_minilm_alias_on_the_sample(tmp_path, capsys):
    out = tmp_path / "minilm-report"
    status = main(["minilm", "--collection", "rag24-sample", "--split", "test", "--sample", "4",
                   "--doc-max-length", "128", "--out", str(out), *FAST])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'index.html'}" in printed and "C1" in printed and "not compared" in printed
    results, html = _report(out)
    subject = results["runs"][0]["subjects"][0]
    assert subject["embeddings_source"] == "encoded" and subject["dim"] == 384
    assert results["selection"]["queries"] == 4 and results["selection"]["sub_corpus"]
    # all-MiniLM-L6-v2 finds relevant passages among a few hundred: far above chance.
    assert subject["ranking"]["q2d"]["MRR@10"] > 0.3
    assert {c["verdict"] for c in results["comparison"]["claims"]} == {"not compared"}
    for table in ("ranking", "claims", "geometry", "query_document", "alignment_uniformity", "sampling"):
        assert (out / f"{table}.csv").is_file()
    assert 'id="fig-umap"' in html and 'id="fig-au-plane"' in html


def test_checkpoint_without_saved_embeddings_is_encoded(tmp_path, rag, tiny_model_dir, capsys):
    ckpt = write_checkpoint(tmp_path / "run", 40, rag, objective="dance", encoder=tiny_model_dir,
                            embeddings=False, negatives=False)
    out = tmp_path / "out"
    assert main([str(ckpt), "--sample", "6", "--out", str(out), *FAST]) == 0
    results, html = _report(out)
    subject = results["runs"][0]["subjects"][0]
    assert subject["embeddings_source"] == "encoded" and subject["dim"] == 32 and subject["step"] == 40
    assert results["collection"]["name"] == "rag24-sample"          # recorded in checkpoint.json
    assert results["selection"]["split"] == "test"
    assert subject["sampling"]["temperature"] == 0.01
    assert subject["sampling"]["trainer_counts"] is None
    assert "run/checkpoint-40" in html


def test_run_folder_is_a_trajectory(tmp_path, two_runs):
    ance, _ = two_runs
    out = tmp_path / "traj"
    assert main([str(ance), "--sample", "25", "--out", str(out), *FAST]) == 0
    results, html = _report(out)
    run = results["runs"][0]
    assert [s["step"] for s in run["subjects"]] == [10, 20, 30]
    assert run["representative"] == "ance-run/checkpoint-20"          # best dev MRR@10
    assert 'id="fig-trajectory"' in html
    assert {c["verdict"] for c in results["comparison"]["claims"]} == {"not compared"}
    # ANCE mines no query negatives: the trainer's query counts are recomputed with the DANCE sampler.
    trainer = run["subjects"][0]["sampling"]["trainer_counts"]
    assert "recomputed" in trainer["queries"]["source"] and trainer["queries"]["total"] > 0
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert [r["subject"] for r in rows] == [f"ance-run/checkpoint-{s}" for s in (10, 20, 30)]


def test_two_runs_side_by_side(tmp_path, two_runs, rag, capsys):
    ance, dance = two_runs
    out = tmp_path / "cmp"
    assert main([str(ance), str(dance), "--sample", "40", "--seed", "7", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    results, html = _report(out)
    cmp = results["comparison"]
    assert cmp["claims_from"] == ["dance-run", "ance-run"]
    reps = {run["name"]: next(s for s in run["subjects"] if s["label"] == run["representative"])
            for run in results["runs"]}
    assert reps["dance-run"]["label"] == "dance-run/checkpoint-30"

    # The claims come from the DANCE - ANCE contrast over the analysed queries; its MRR@10 effect is the mean
    # per-query difference of the two representatives, and every verdict follows the rule from its numbers.
    main_contrast = next(c for c in cmp["contrasts"] if (c["treatment"], c["control"]) == ("dance-run", "ance-run"))
    mrr = main_contrast["metrics"]["q2d.MRR@10"]
    assert mrr["effect"] == pytest.approx(reps["dance-run"]["ranking"]["q2d"]["MRR@10"]
                                          - reps["ance-run"]["ranking"]["q2d"]["MRR@10"], abs=1e-9)
    assert mrr["low"] <= mrr["effect"] <= mrr["high"] and 0 < mrr["p"] <= 1
    for claim in cmp["claims"]:
        assert claim["verdict"] in {"reproduced", "contradicted", "inconclusive", "not measurable here"}
        assert f"{claim['claim']}  {claim['verdict']}" in printed
        for row in claim["rows"]:
            if row["reason"] is None and row["low"] is not None:
                # One run per arm: a set (geometry) metric has no second seed, so its replicate rule cannot hold.
                assert row["verdict"] == expected_verdict(row), row
                if row.get("replicates") is not None:
                    assert row["verdict"] == "inconclusive"

    # Numbers against brute-force numpy on the saved embeddings of the DANCE representative.
    ckpt = dance / "checkpoint-30" / "embeddings"
    sel = results["selection"]
    doc_all = dict(zip(np.load(ckpt / "corpus.ids.npy").tolist(), np.load(ckpt / "corpus.npy")))
    q_all = dict(zip(np.load(ckpt / "queries.ids.npy").tolist(), np.load(ckpt / "queries.npy")))
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert len(rows) == 6
    from dance_analysis.report.compute import AnalysisSettings, select_items

    selection = select_items(rag, AnalysisSettings(sample=40, seed=7))
    assert sel["queries"] == len(selection.query_ids) and sel["documents"] == len(selection.doc_ids)
    D = np.stack([doc_all[d] for d in selection.doc_ids]).astype(np.float64)
    Q = np.stack([q_all[q] for q in selection.query_ids]).astype(np.float64)
    scores = Q @ D.T
    rr = []
    for i, qid in enumerate(selection.query_ids):
        order = np.argsort(-scores[i], kind="stable")[:10]
        hits = [k + 1 for k, j in enumerate(order) if rag.qrels[qid].get(selection.doc_ids[j], 0) >= 2]
        rr.append(1.0 / hits[0] if hits else 0.0)
    assert reps["dance-run"]["ranking"]["q2d"]["MRR@10"] == pytest.approx(np.mean(rr), abs=1e-6)
    units_q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    cos = units_q @ units_q.T
    n = len(Q)
    assert reps["dance-run"]["geometry"]["queries"]["mean_cosine"] == \
        pytest.approx((cos.sum() - n) / (n * (n - 1)), abs=1e-6)
    units_d = D / np.linalg.norm(D, axis=1, keepdims=True)
    align = np.mean([np.sum((units_q[q] - units_d[d]) ** 2) for q, d in selection.pairs.tolist()])
    assert reps["dance-run"]["alignment_uniformity"]["alignment"] == pytest.approx(align, rel=1e-5)

    # Both runs are in the plane, the UMAP, the CSV files and the page.
    assert results["umap"]["subjects"] == ["ance-run/checkpoint-20", "dance-run/checkpoint-30"]
    for fig in ("fig-au-plane", "fig-umap", "fig-trajectory", "fig-lorenz", "fig-softmax", "fig-cosines",
                "fig-spectrum", "fig-pca", "fig-rr-differences", "fig-sampling", "fig-distributions", "claim-C1"):
        assert f'id="{fig}"' in html
    claims_rows = list(csv.DictReader((out / "claims.csv").open()))
    assert {r["claim"] for r in claims_rows} == {"C1", "C2", "C3", "C4", "C5"}

    # Running again replaces the report only with --overwrite, and then as a whole.
    (out / "stale.csv").write_text("old\n")
    capsys.readouterr()
    assert main([str(ance), str(dance), "--sample", "40", "--seed", "7", "--out", str(out), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "stale.csv").exists()
    assert main([str(ance), str(dance), "--sample", "40", "--seed", "7", "--out", str(out), "--overwrite",
                 *FAST]) == 0
    assert not (out / "stale.csv").exists()


# ----------------------------------------------------------------------------------------------- bad input
def _fails(args, capsys, *fragments):
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_path_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _fails([str(tmp_path / "empty"), "--out", str(out)], capsys, "empty", "no checkpoint")
    _fails([str(tmp_path / "missing"), "--collection", "rag24-sample", "--out", str(out)], capsys, "missing")
    _no_report(out)


def test_corrupt_weights(tmp_path, rag, tiny_model_dir, capsys):
    ckpt = write_checkpoint(tmp_path / "run", 5, rag, objective="ance", encoder=tiny_model_dir, embeddings=False,
                            negatives=False)
    (ckpt / "encoder" / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    out = tmp_path / "out"
    _fails([str(ckpt), "--out", str(out)], capsys, "model.safetensors")
    _no_report(out)


def test_runs_with_different_embedding_sizes(tmp_path, rag, capsys):
    a = write_checkpoint(tmp_path / "a", 1, rag, objective="ance", encoder=None, dim=16, negatives=False)
    b = write_checkpoint(tmp_path / "b", 1, rag, objective="dance", encoder=None, dim=24, negatives=False)
    out = tmp_path / "out"
    _fails([str(a), str(b), "--out", str(out)], capsys, "different embedding sizes", "16", "24")
    _no_report(out)


def test_unknown_collection(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(["minilm", "--collection", "no-such-collection", "--out", str(out)], capsys, "no-such-collection")
    _no_report(out)


def test_nan_embeddings_name_file_and_rows_and_leave_no_report(tmp_path, rag, two_runs, capsys):
    ids = np.asarray(rag.corpus.ids).astype(str)
    qids = np.asarray(sorted(rag.queries), dtype=str)
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(len(ids), 32)).astype(np.float32)
    docs[17, 3] = np.inf
    emb = write_embeddings(tmp_path / "emb", ids, docs, qids, rng.normal(size=(len(qids), 32)),
                           meta={"collection": rag.source, "objective": "dance"})
    out = tmp_path / "out"
    _fails([str(two_runs[0]), str(emb), "--out", str(out), *FAST], capsys, str(emb / "corpus.npy"),
           f"rows 17 ({ids[17]})")
    _no_report(out)


def test_existing_foreign_out_folder_is_not_replaced(tmp_path, two_runs, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _fails([str(two_runs[0] / "checkpoint-10"), "--out", str(out), *FAST], capsys, "notes.txt")
    assert (out / "notes.txt").read_text() == "keep me"


def test_help_describes_paths(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "checkpoint-<step>" in text and "minilm" in text and "--sample" in text


# ----------------------------------------------------------------------------------------------- where reports go
def test_reports_go_under_runs_and_are_never_silently_replaced(tmp_path, rag, monkeypatch, capsys):
    """Two different inputs whose folders have the same names get two reports under runs/reports/ (not in the
    committed reports/); an earlier report is replaced only with --overwrite."""
    doc_ids, docs, query_ids, queries = fake_space(rag, 16, 3, concentrate=0.4, anisotropy=1.0)
    meta = {"collection": rag.source}
    first = write_embeddings(tmp_path / "a" / "exported" / "minilm", doc_ids, docs, query_ids, queries, meta)
    second = write_embeddings(tmp_path / "b" / "exported" / "minilm", doc_ids, docs[:, ::-1], query_ids,
                              queries[:, ::-1], meta)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["--sample", "12", "--umap-points", "40", "--quiet"]
    assert main([str(first), *args]) == 0
    one = work / "runs" / "reports" / "exported-minilm"
    assert f"report: {one.relative_to(work) / 'index.html'}" in capsys.readouterr().out
    before = (one / "metrics.json").read_bytes()
    assert main([str(second), *args]) == 0
    printed = capsys.readouterr().out
    others = [p for p in (work / "runs" / "reports").iterdir() if p != one]
    assert len(others) == 1 and others[0].name.startswith("exported-minilm-") and str(others[0].name) in printed
    assert (one / "metrics.json").read_bytes() == before                 # the first report is untouched
    assert json.loads((others[0] / "metrics.json").read_text())["provenance"]["inputs"] == [str(second.resolve())]
    assert not (work / "reports").exists()

    assert main([str(first), *args]) == 2                                # the same input again: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(one.relative_to(work)) in err and "--overwrite" in err
    assert (one / "metrics.json").read_bytes() == before
    assert main([str(first), *args, "--overwrite"]) == 0
    assert (one / "metrics.json").read_bytes() != before                 # replaced (a new creation time)


def test_output_is_a_bar_and_a_summary_keys_only_with_verbose(two_runs, tmp_path, capsys):
    ance, dance = two_runs
    assert main([str(ance), str(dance), "--sample", "30", "--umap-points", "40", "--out",
                 str(tmp_path / "quiet-keys")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    assert not [line for line in lines if line.startswith(("levels:", "contrast ", "["))], lines
    assert "ance-run: a run of 3 checkpoints; checkpoint-20 stands for it: best dev MRR@10 (0.2000)" in lines
    assert "dance-run: a run of 3 checkpoints" in captured.err and "checkpoint(s)" not in captured.err
    assert "queries for documents (d2q)" in captured.out and "effect of DANCE - ANCE" in captured.out

    assert main([str(ance), "--sample", "30", "--umap-points", "40", "--out", str(tmp_path / "verbose"),
                 "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "levels: " in captured.err
    assert "claims C1-C5 (DANCE vs ANCE): not compared" in captured.out
