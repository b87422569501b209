"""`python -m dance_analysis.reproduce` end to end on a tiny collection: runs, zero-shot start, report, TREC run
files that ir-measures scores like the report, README tables computed from metrics.json, resume without retraining.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import train_support as ts
from dance_analysis import reproduce

START, END = reproduce.README_START, reproduce.README_END


def _tiny_collection_with_test_split(root):
    """The tiny train/dev collection plus a test split of 10 queries named like its training queries."""
    import yaml

    manifest = ts.write_tiny_collection(root, n_train=24, n_dev=8)
    rng = np.random.default_rng(5)
    docs = [line.split("\t") for line in (root / "docs.tsv").read_text().splitlines()]
    with open(root / "test-queries.tsv", "w") as fq, open(root / "test-qrels.tsv", "w") as fr:
        for j in range(10):
            doc = int(rng.integers(0, len(docs)))
            fq.write(f"T{j}\twhat about {docs[doc][2]}\n")
            fr.write(f"T{j} 0 {docs[doc][0]} 1\n")
            fr.write(f"T{j} 0 {docs[(doc + 3) % len(docs)][0]} 0\n")
    spec = yaml.safe_load(manifest.read_text())
    spec["queries"]["test"] = "test-queries.tsv"
    spec["qrels"]["test"] = "test-qrels.tsv"
    manifest.write_text(yaml.safe_dump(spec))
    return manifest


def _args(tmp_path, manifest, encoder, seeds):
    sets = {"model.backbone": encoder, "model.temperature": 0.5, "model.query_max_length": 16,
            "model.doc_max_length": 32, "data.collection": manifest, "optim.max_steps": 4, "optim.warmup_steps": 1,
            "optim.batch_size": 8, "optim.lr": 1e-3, "mining.refresh_every": 2, "mining.top_k": 20, "mining.n": 4,
            "mining.encode_batch_size": 16, "log.progress": False, "log.tensorboard": False}
    args = ["--seeds", *map(str, seeds), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
            "--readme", str(tmp_path / "README.md")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def _table(text: str, first_header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``| first_header |``: first cell -> other cells."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith(f"| {first_header} |"):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) != {"-"}:
                rows[cells[0]] = cells[1:]
    return rows


def _mean_std(cell: str) -> tuple[float, float]:
    match = re.fullmatch(r"(-?[\d.]+)(?: ± ([\d.]+))?", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2) or 0.0)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    import torch

    tmp_path = tmp_path_factory.mktemp("reproduce")
    old, threads = os.environ.get("DANCE_CACHE"), torch.get_num_threads()
    os.environ["DANCE_CACHE"] = str(tmp_path / "cache")
    torch.set_num_threads(1)
    try:
        manifest = _tiny_collection_with_test_split(tmp_path / "collection")
        encoder = ts.tiny_encoder(tmp_path / "model", dropout=0.0, query_max_length=16, doc_max_length=32)
        (tmp_path / "README.md").write_text(f"# project\n\n{START}\nstale\n{END}\n\nmore text\n")
        # An interrupted experiment: only seed 1 ran; the second invocation adds seed 2 and must not retrain seed 1.
        assert reproduce.main(_args(tmp_path, manifest, encoder, [1])) == 0
        runs = tmp_path / "runs"
        seed1_mtimes = {p: p.stat().st_mtime_ns for p in runs.glob("*-seed1/checkpoint-*/encoder/*")}
        assert reproduce.main(_args(tmp_path, manifest, encoder, [1, 2])) == 0
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("DANCE_CACHE", None)
        else:
            os.environ["DANCE_CACHE"] = old
    return {"root": tmp_path, "manifest": manifest, "seed1_mtimes": seed1_mtimes}


def test_outputs_exist_and_seed_one_was_not_retrained(experiment):
    root = experiment["root"]
    report = root / "report"
    for name in ("index.html", "metrics.json", "README.md"):
        assert (report / name).is_file(), name
    names = sorted(p.name for p in (report / "runs").iterdir())
    assert names == sorted(f"{n}.test.trec.gz" for n in ("zero-shot", "ance-seed1", "dance-seed1", "ance-seed2",
                                                        "dance-seed2"))
    mtimes = experiment["seed1_mtimes"]
    assert mtimes and all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    sessions = json.loads((root / "runs" / "reproduce-timings.json").read_text())["sessions"]
    assert len(sessions) == 2 and "ance-seed2" in sessions[1]["stages"] and "ance-seed2" not in sessions[0]["stages"]


def test_zero_shot_is_the_untrained_start_of_every_run(experiment):
    runs = experiment["root"] / "runs"
    zero = np.load(runs / "zero-shot" / "corpus.npy")
    for run in ("ance-seed1", "dance-seed2"):
        np.testing.assert_array_equal(zero, np.load(runs / run / "checkpoint-0" / "embeddings" / "corpus.npy"))
    trained = np.load(runs / "ance-seed1" / "checkpoint-4" / "embeddings" / "corpus.npy")
    assert not np.array_equal(zero, trained)


def test_run_files_score_like_the_report_with_ir_measures(experiment):
    import ir_measures
    from ir_measures import R, RR, nDCG

    root = experiment["root"]
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    min_rel = metrics["collection"]["min_relevance"]
    qrels = [ir_measures.Qrel(qid, doc, int(grade)) for qid, _, doc, grade in
             (line.split() for line in (root / "collection" / "test-qrels.tsv").read_text().splitlines())]
    evaluable = {q.query_id for q in qrels if q.relevance >= min_rel}
    qrels = [q for q in qrels if q.query_id in evaluable]
    for run in metrics["runs"]:
        subject = next(s for s in run["subjects"] if s["label"] == run["representative"])
        path = root / "report" / "runs" / f"{run['name']}.test.trec.gz"
        run_lines = list(ir_measures.read_trec_run(str(path)))
        scored = ir_measures.calc_aggregate([nDCG @ 10, R(rel=min_rel) @ 100], qrels, run_lines)
        # MRR@10 as trec_eval's recip_rank cut at rank 10 (ir-measures' own RR@k breaks score ties another way).
        rr = {m.query_id: m.value for m in ir_measures.pytrec_eval.iter_calc([RR(rel=min_rel)], qrels, run_lines)}
        mrr10 = np.mean([v if v > 0 and round(1 / v) <= 10 else 0.0 for v in (rr.get(q, 0.0) for q in evaluable)])
        q2d = subject["ranking"]["q2d"]
        assert len(evaluable) == q2d["queries"]
        assert scored[nDCG @ 10] == pytest.approx(q2d["nDCG@10"], abs=1e-9)
        assert scored[R(rel=min_rel) @ 100] == pytest.approx(q2d["R@100"], abs=1e-9)
        assert mrr10 == pytest.approx(q2d["MRR@10"], abs=1e-9)


def test_readme_tables_are_the_means_and_spreads_of_metrics_json(experiment):
    root = experiment["root"]
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    columns = [("q2d", "MRR@10"), ("q2d", "nDCG@10"), ("q2d", "R@100"), ("d2q", "MRR@10")]
    values: dict[str, list[list[float]]] = {}
    for run in metrics["runs"]:
        side = {"ance": "ANCE", "dance": "DANCE"}.get(run.get("objective") or "", "MiniLM zero-shot (start)")
        ranking = next(s for s in run["subjects"] if s["label"] == run["representative"])["ranking"]
        values.setdefault(side, []).append([ranking[t][k] for t, k in columns])
    for text in ((root / "report" / "README.md").read_text(), (root / "README.md").read_text()):
        table = _table(text, "model")
        assert set(table) == set(values)
        for side, rows in values.items():
            rows = np.array(rows)
            assert int(table[side][0]) == len(rows)
            for j, cell in enumerate(table[side][1:]):
                mean, std = _mean_std(cell)
                assert mean == pytest.approx(rows[:, j].mean(), abs=5e-5)
                assert std == pytest.approx(rows[:, j].std(ddof=1) if len(rows) > 1 else 0.0, abs=5e-5)
    readme = (root / "README.md").read_text()
    assert "stale" not in readme and readme.startswith("# project") and readme.rstrip().endswith("more text")


def test_readme_claims_table_has_every_claim_and_its_computed_verdict(experiment):
    root = experiment["root"]
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    text = (root / "report" / "README.md").read_text()
    lines = [line for line in text.splitlines() if re.match(r"\| C\d \|", line)]
    assert len(lines) == len(metrics["claims"]["rows"])
    verdicts = {v["claim"]: v["verdict"] for v in metrics["claims"]["verdicts"]}
    for line, row in zip(lines, metrics["claims"]["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["claim"] and cells[5] == row["verdict"] and cells[6] == verdicts[row["claim"]]


def test_missing_readme_markers_is_a_clear_error(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# no markers\n")
    with pytest.raises(Exception, match="rag24-results"):
        reproduce.replace_section(path, "x")
    assert path.read_text() == "# no markers\n"
