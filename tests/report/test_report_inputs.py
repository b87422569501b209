"""dance-analyze inputs: what each PATH resolves to, which checkpoint stands for a run, which collection is used,
and the selection of analysed queries / documents (no model, no report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dance_analysis.data import load_collection
from dance_analysis.errors import DanceError
from dance_analysis.report.compute import AnalysisSettings, select_items
from dance_analysis.report.encode_subjects import check_dims, subject_embeddings
from dance_analysis.report.inputs import collection_spec, resolve_inputs, resolve_path
from report_support import write_beir, write_checkpoint, write_embeddings


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A BEIR collection of 40 documents and 12 queries (3 relevant documents each, one judged non-relevant)."""
    root = tmp_path_factory.mktemp("small")
    docs = {f"d{i}": f"document number {i} about topic {i % 7}" for i in range(40)}
    queries = {f"q{j}": f"question {j} on topic {j % 7}" for j in range(12)}
    qrels = {f"q{j}": {f"d{(3 * j + k) % 40}": 1 for k in range(3)} for j in range(12)}
    for j in range(12):
        qrels[f"q{j}"][f"d{(3 * j + 5) % 40}"] = 0
    folder = write_beir(root / "beir", docs, queries, qrels, split="test")
    return load_collection(str(folder))


def test_alias_and_missing_paths(tmp_path):
    run = resolve_path("minilm")
    assert run.kind == "model" and run.subjects[0].model_source == "minilm"
    with pytest.raises(DanceError, match="no such file"):
        resolve_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DanceError, match="no checkpoint, model or embeddings"):
        resolve_path(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DanceError, match="is a file"):
        resolve_path(str(tmp_path / "file.txt"))
    with pytest.raises(DanceError, match="no PATH"):
        resolve_inputs([])


def test_run_folder_orders_checkpoints_numerically_and_picks_best_dev(small, tmp_path):
    run_dir = tmp_path / "run"
    for step, dev in ((100, 0.2), (20, 0.5), (3, 0.1)):
        write_checkpoint(run_dir, step, small, objective="dance", encoder=None, dim=8, dev_mrr=dev,
                         negatives=False)
    (run_dir / "checkpoint-7").mkdir()            # no checkpoint.json: skipped, recorded
    (run_dir / "checkpoint-x").mkdir()            # not a checkpoint name: ignored
    run = resolve_path(str(run_dir))
    assert run.kind == "run"
    assert [s.step for s in run.subjects] == [3, 20, 100]
    assert run.representative.step == 20 and "MRR@10" in run.selection
    assert run.skipped == ["checkpoint-7: no checkpoint.json"]
    assert run.objective == "dance"
    assert run.subjects[0].temperature() == (0.01, "checkpoint.json")


def test_run_without_dev_metrics_is_represented_by_its_last_checkpoint(small, tmp_path):
    run_dir = tmp_path / "run"
    for step in (5, 50, 10):
        write_checkpoint(run_dir, step, small, objective="ance", encoder=None, dim=8, negatives=False)
    run = resolve_path(str(run_dir))
    assert run.representative.step == 50 and run.selection.startswith("last")
    assert run.training_log == []                  # no metrics.jsonl


def test_training_log_keeps_loss_lines_only(small, tmp_path):
    from report_support import write_run

    run = resolve_path(str(write_run(tmp_path / "run", small, objective="ance", steps=(2, 4), dim=8,
                                     dev=(0.1, 0.2), concentrate=(0.5, 0.5), anisotropy=(1.0, 1.0))))
    assert run.training_log == [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]


def test_single_checkpoint_embeddings_folder_and_model_folder(small, tmp_path, tiny_model_dir):
    ckpt = write_checkpoint(tmp_path / "r", 4, small, objective="ance", encoder=None, dim=8)
    run = resolve_path(str(ckpt))
    assert run.kind == "checkpoint" and run.name == "r/checkpoint-4"
    subject = run.subjects[0]
    assert subject.embeddings_dir == ckpt / "embeddings" and subject.negatives_dir == ckpt / "negatives"

    emb = write_embeddings(tmp_path / "emb", ["a"], np.zeros((1, 4)), ["q"], np.zeros((1, 4)),
                           meta={"collection": "rag24-sample"})
    run = resolve_path(str(emb))
    assert run.kind == "embeddings" and run.subjects[0].collection_spec == "rag24-sample"

    run = resolve_path(str(tiny_model_dir))
    assert run.kind == "model" and run.subjects[0].encoder_config["pooling"] == "cls"
    # Two PATHs with the same name get distinct names.
    names = [r.name for r in resolve_inputs([str(tiny_model_dir), str(tiny_model_dir)])]
    assert names == ["encoder", "encoder (2)"]


def test_incomplete_or_malformed_checkpoint_json(small, tmp_path):
    ckpt = write_checkpoint(tmp_path / "r", 1, small, objective="ance", encoder=None, dim=8, negatives=False)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(DanceError, match="complete"):
        resolve_path(str(ckpt))
    (ckpt / "checkpoint.json").write_text("{not json")
    with pytest.raises(DanceError, match=r"checkpoint.json:1"):
        resolve_path(str(ckpt))


def test_collection_comes_from_the_command_line_or_the_checkpoints(small, tmp_path):
    a = resolve_path(str(write_checkpoint(tmp_path / "a", 1, small, objective="ance", encoder=None, dim=8,
                                          negatives=False)))
    assert collection_spec([a]) == small.source
    assert collection_spec([a], "rag24-sample") == "rag24-sample"
    with pytest.raises(DanceError, match="--collection"):
        collection_spec([resolve_path("minilm")])
    other = write_embeddings(tmp_path / "emb", ["a"], np.zeros((1, 8)), ["q"], np.zeros((1, 8)),
                             meta={"collection": "rag24-sample"})
    with pytest.raises(DanceError, match="different collections"):
        collection_spec([a, resolve_path(str(other))])


def test_different_embedding_sizes_are_refused(small, tmp_path):
    a = write_checkpoint(tmp_path / "a", 1, small, objective="ance", encoder=None, dim=8, negatives=False)
    b = write_checkpoint(tmp_path / "b", 1, small, objective="dance", encoder=None, dim=6, negatives=False)
    runs = resolve_inputs([str(a), str(b)])
    with pytest.raises(DanceError, match="different embedding sizes.*8.*6"):
        check_dims(runs)
    assert check_dims(runs[:1]) == 8


def test_saved_embeddings_are_subset_in_order_and_nan_rows_are_named(small, tmp_path):
    ckpt = write_checkpoint(tmp_path / "a", 1, small, objective="ance", encoder=None, dim=8, negatives=False)
    subject = resolve_path(str(ckpt)).subjects[0]
    docs = np.asarray(["d5", "d1", "d30"])
    queries = np.asarray(["q3", "q0"])
    corpus, qs, source = subject_embeddings(subject, small, docs, queries)
    assert source == "saved"
    saved_ids = np.load(ckpt / "embeddings" / "corpus.ids.npy")
    saved = np.load(ckpt / "embeddings" / "corpus.npy")
    expected = saved[[int(np.flatnonzero(saved_ids == d)[0]) for d in docs]]
    np.testing.assert_array_equal(corpus.ids, docs)
    np.testing.assert_array_equal(corpus.vectors, expected)
    np.testing.assert_array_equal(qs.ids, queries)

    saved[[int(np.flatnonzero(saved_ids == "d1")[0])], 2] = np.nan
    np.save(ckpt / "embeddings" / "corpus.npy", saved)
    row = int(np.flatnonzero(saved_ids == "d1")[0])
    with pytest.raises(DanceError, match=rf"corpus.npy: 1 vector\(s\) hold NaN or inf, rows {row} \(d1\)"):
        subject_embeddings(subject, small, docs, queries)
    with pytest.raises(DanceError, match="lack 1 id"):
        subject_embeddings(subject, small, np.asarray(["d5", "unknown-doc"]), queries)


def test_selection_whole_split_and_sample(small):
    full = select_items(small, AnalysisSettings(split="test"))
    assert len(full.query_ids) == 12 and len(full.doc_ids) == 40 and not full.sampled
    # Positive pairs: exactly the grade >= 1 judgments.
    pairs = {(full.query_ids[q], full.doc_ids[d]) for q, d in full.pairs.tolist()}
    expected = {(q, d) for q, rel in small.qrels.items() for d, g in rel.items() if g >= 1}
    assert pairs == expected

    sampled = select_items(small, AnalysisSettings(split="test", sample=4, seed=3))
    assert len(sampled.query_ids) == 4 and sampled.sampled
    judged = {d for q in sampled.query_ids for d in small.qrels[q]}
    assert judged <= set(sampled.doc_ids.tolist())
    assert len(sampled.doc_ids) == len(judged) + 4
    again = select_items(small, AnalysisSettings(split="test", sample=4, seed=3))
    np.testing.assert_array_equal(sampled.query_ids, again.query_ids)
    np.testing.assert_array_equal(sampled.doc_ids, again.doc_ids)
    with pytest.raises(DanceError, match="unknown split"):
        select_items(small, AnalysisSettings(split="nope"))
