"""`python -m dance_analysis.reproduce` end to end on a tiny collection: runs, zero-shot start, report, TREC run
files that ir-measures scores like the report, README tables computed from metrics.json, resume without retraining.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import reproduce_support as rs
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
    root = experiment["root"]
    qrels: dict[str, dict[str, int]] = {}
    qrels_lines = (root / "collection" / "test-qrels.tsv").read_text().splitlines()
    for qid, _, doc, grade in (line.split() for line in qrels_lines):
        qrels.setdefault(qid, {})[doc] = int(grade)
    assert rs.check_run_files(root / "report", qrels) == 5


def test_readme_tables_are_the_means_and_spreads_of_metrics_json(experiment):
    root = experiment["root"]
    rs.check_readme_tables(root / "report", [root / "report" / "README.md", root / "README.md"])
    readme = (root / "README.md").read_text()
    assert "stale" not in readme and readme.startswith("# project") and readme.rstrip().endswith("more text")


def test_readme_claims_table_has_every_claim_and_its_computed_verdict(experiment):
    rs.check_claims_table(experiment["root"] / "report")


def test_missing_readme_markers_is_a_clear_error(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# no markers\n")
    with pytest.raises(Exception, match="rag24-results"):
        reproduce.replace_section(path, "x")
    assert path.read_text() == "# no markers\n"
