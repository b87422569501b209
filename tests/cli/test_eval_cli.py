"""dance-eval end to end on the real sample with a tiny random model: run file, metrics JSON, ir-measures."""

from __future__ import annotations

import json

import ir_measures
import pytest

from dance_analysis.cli.eval import main
from dance_analysis.data import load_collection


def test_eval_writes_run_and_metrics_equal_to_ir_measures(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "out" / "run.trec"
    status = main([str(tiny_model_dir), "--collection", "rag24-sample", "--split", "test", "--k", "100",
                   "--run", str(run), "--doc-max-length", "32", "--query-max-length", "16"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "MRR@10" in printed and str(run) in printed

    record = json.loads((run.parent / "metrics.json").read_text())
    assert record["encode_precision"] == {"requested": "fp32", "used": {"doc": ["fp32"], "query": ["fp32"]}}
    collection = load_collection("rag24-sample")
    query_ids = collection.evaluable(collection.split_queries("test"))
    assert record["queries"] == len(query_ids) > 0

    qrels = [ir_measures.Qrel(q, d, g) for q in query_ids for d, g in collection.qrels[q].items()]
    run_rows = list(ir_measures.read_trec_run(str(run)))
    per_query = {}
    for m in ir_measures.iter_calc([ir_measures.RR(rel=2) @ 10, ir_measures.nDCG @ 10], qrels, run_rows):
        per_query.setdefault(str(m.measure), {})[m.query_id] = m.value
    expected_rr = sum(per_query["RR(rel=2)@10"].get(q, 0.0) for q in query_ids) / len(query_ids)
    expected_ndcg = sum(per_query["nDCG@10"].get(q, 0.0) for q in query_ids) / len(query_ids)
    assert record["metrics"]["MRR@10"] == pytest.approx(expected_rr, abs=1e-12)
    assert record["metrics"]["nDCG@10"] == pytest.approx(expected_ndcg, abs=1e-12)


def test_eval_unknown_split_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    status = main([str(tiny_model_dir), "--collection", "rag24-sample", "--split", "nope",
                   "--run", str(tmp_path / "r.trec")])
    assert status == 2
    err = capsys.readouterr().err
    assert "nope" in err and "train" in err
    assert not (tmp_path / "r.trec").exists()


def test_eval_help_explains_conventions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "MS MARCO" in capsys.readouterr().out
