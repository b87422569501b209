"""The trainer pieces the cross-validated experiment needs: fold splits, the identity head, query-side top-k,
refresh geometry, and step-0 vectors taken from the starting checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis.data import cross_validation_splits
from dance_analysis.errors import DanceError
from dance_analysis.mining import NegativeSet
from dance_analysis.model import DualEncoder, EncoderHead
from dance_analysis.training.config import recipe_from_dict
from dance_analysis.training.loop import train


def test_cross_validation_folds_partition_the_queries():
    qids = [f"q{i}" for i in range(23)]
    tests = []
    for fold in range(5):
        parts = cross_validation_splits(qids, 5, fold, seed=3)
        assert sorted(parts["train"] + parts["dev"] + parts["test"]) == sorted(qids)
        assert parts["dev"] == cross_validation_splits(qids, 5, (fold + 1) % 5, seed=3)["test"]
        assert len(parts["test"]) in (4, 5)
        tests += parts["test"]
    assert sorted(tests) == sorted(qids)
    assert cross_validation_splits(qids, 5, 0, seed=3) != cross_validation_splits(qids, 5, 0, seed=4)
    with pytest.raises(DanceError, match="folds must be"):
        cross_validation_splits(qids, 2, 0)
    with pytest.raises(DanceError, match="fold must be"):
        cross_validation_splits(qids, 5, 5)


def test_recipe_rejects_a_fold_outside_the_folds_and_a_zero_query_top_k():
    with pytest.raises(DanceError, match="data.fold"):
        recipe_from_dict({"data": {"folds": 5, "fold": 5}}).validate()
    with pytest.raises(DanceError, match="query_top_k"):
        recipe_from_dict({"mining": {"query_top_k": 0}}).validate()
    with pytest.raises(DanceError, match="head_init"):
        recipe_from_dict({"model": {"head_init": "zeros"}})


def test_identity_head_starts_at_the_backbone_vectors():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    head = EncoderHead("linear+layernorm", 8, init="identity")
    expected = torch.nn.functional.layer_norm(x, (8,), eps=1e-5)
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(EncoderHead("linear", 8, init="identity")(x), x)
    assert not torch.allclose(EncoderHead("linear", 8)(x), x)
    with pytest.raises(DanceError, match="out_dim"):
        EncoderHead("linear", 8, out_dim=4, init="identity")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pieces")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "manifest": ts.write_tiny_collection(root / "coll", n_train=24, n_dev=8),
           "backbone": ts.tiny_encoder(root / "model", dropout=0.0, head="none", pooling="mean")}
    torch.set_num_threads(threads)


def _train(tiny, name, **sections):
    recipe = recipe_from_dict(ts.recipe_dict(tiny["manifest"], tiny["backbone"], tiny["root"] / "cache",
                                             **sections)).validate()
    return train(recipe, tiny["root"] / name)


def test_dance_run_on_a_fold_mines_query_negatives_from_the_query_top_k(tiny):
    _train(tiny, "fold1", data={"folds": 4, "fold": 1}, mining={"query_top_k": 3, "n": 4},
           model={"head": "linear+layernorm", "head_init": "identity", "normalize": False}, optim={"max_steps": 6})
    ckpt0 = tiny["root"] / "fold1" / "checkpoint-0"
    negatives = NegativeSet.load(ckpt0 / "negatives")
    assert negatives.meta["query_top_k"] == 3
    # every query negative is among the 3 nearest training queries of its pair's passage
    corpus = np.load(ckpt0 / "embeddings" / "corpus.npy")
    queries = np.load(ckpt0 / "embeddings" / "queries.npy")
    all_ids = np.load(ckpt0 / "embeddings" / "queries.ids.npy", allow_pickle=False).astype(str)
    rows = {q: i for i, q in enumerate(all_ids)}
    train_vectors = queries[[rows[q] for q in negatives.train_query_ids]]
    checked = 0
    for (qrow, drow), negs in zip(negatives.pairs, negatives.query_negatives):
        top3 = np.argsort(-(train_vectors @ corpus[drow]), kind="stable")[:3]
        for neg in negs[negs >= 0]:
            assert neg in top3
            checked += 1
    assert checked > 0
    # the run trained on the fold's training part: none of fold 1's test or dev queries
    from dance_analysis.data import load_collection

    parts = cross_validation_splits(load_collection(str(tiny["manifest"])).queries, 4, 1)
    assert not set(negatives.train_query_ids.tolist()) & set(parts["test"] + parts["dev"])
    record = json.loads((ckpt0 / "refresh.json").read_text())
    assert {"queries.mean_cosine", "qd.mmd2", "negatives.above_positive"} <= set(record["geometry"])


def test_step0_vectors_come_from_the_start_only_when_they_are_exact(tiny):
    _train(tiny, "start", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={"refresh_every": 2},
           model={"head": "linear+layernorm", "head_init": "identity", "normalize": False})
    start = tiny["root"] / "start"
    # normalisation tuning from it: step 0 takes the start's vectors, L2-normalised, without encoding
    _train(tiny, "normalised", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={
        "refresh_every": 2, "cache_initial_embeddings": True}, model={"backbone": str(start), "normalize": True,
                                                                      "select": "last"})
    rec = json.loads((tiny["root"] / "normalised" / "checkpoint-0" / "refresh.json").read_text())
    assert rec.get("embeddings_from_cache") is True
    before = np.load(start / "checkpoint-2" / "embeddings" / "corpus.npy")
    after = np.load(tiny["root"] / "normalised" / "checkpoint-0" / "embeddings" / "corpus.npy")
    np.testing.assert_allclose(after, before / np.linalg.norm(before, axis=1, keepdims=True), atol=1e-6)
    fresh = DualEncoder.load(str(tiny["root"] / "normalised" / "checkpoint-0" / "encoder"))
    from dance_analysis.data import load_collection
    from dance_analysis.pipeline import embed_corpus

    encoded = embed_corpus(fresh, load_collection(str(tiny["manifest"])), progress=False).vectors
    np.testing.assert_allclose(after, encoded, atol=1e-5)
    # another pooling changes the vectors: the refresh encodes
    _train(tiny, "other", loss={"objective": "ance"}, optim={"max_steps": 2}, mining={
        "refresh_every": 2, "cache_initial_embeddings": True}, model={"backbone": str(start), "pooling": "cls",
                                                                      "select": "last"})
    rec = json.loads((tiny["root"] / "other" / "checkpoint-0" / "refresh.json").read_text())
    assert not rec.get("embeddings_from_cache")


# ----------------------------------------------------------------------------- the report of an experiment
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report folder written from a synthetic results dict: two folds, an untrained start, ANCE and DANCE
    with two training seeds each, the movement, trajectories, selections and training logs the experiment
    passes."""
    import gzip as _gzip

    import reproduce_support as rs
    from dance_analysis.comparison import statistics as st
    from dance_analysis.reproduce.timing import Clock
    from dance_analysis.reproduce.write import write_outputs

    root = tmp_path_factory.mktemp("written")
    coll, folds = rs.synthetic_experiment()
    mp = pytest.MonkeyPatch()
    mp.setattr(st, "UNIT_RESAMPLES", 2000)
    mp.setattr(st, "SET_RESAMPLES", 50)
    try:
        results = st.compare(folds, ["start", "ance", "dance"],
                             [("dance", "ance", "the paper's contrast"), ("ance", "start", "ANCE vs its start")],
                             log=lambda m: None)
    finally:
        mp.undo()
    runs = []
    for fold in range(2):
        for arm in ("ance", "dance"):
            for seed in (1, 2):
                folder = root / "runs" / f"fold{fold}" / f"{arm}-seed{seed}"
                folder.mkdir(parents=True)
                (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 0.5 + seed}) + "\n")
                runs.append({"fold": fold, "seed": seed, "arm": arm, "path": str(folder)})
    results["experiment"] = {
        "command": "make reproduce", "invocation": ["python", "-m", "dance_analysis.reproduce"], "folds": 2,
        "fold_seed": 13, "seed": [1, 2], "overrides": [], "runs_dir": str(root / "runs"),
        "arms": [{"name": "start", "label": "start <i>L3</i>", "recipe": None, "starts_from": None},
                 {"name": "ance", "label": "ANCE", "recipe": "train/rag24-ance.yaml", "starts_from": "start"},
                 {"name": "dance", "label": "DANCE & <script>x</script>", "recipe": "train/rag24-dance.yaml",
                  "starts_from": "ance"}]}
    results["movement"] = [{"fold": f, "seed": s, "arm": arm, "vs": vs, "mrr10_change": 0.01 * s,
                            "top10_changed_share": 0.5, "relative_param_distance": 0.02}
                           for f in range(2) for s in (1, 2) for arm, vs in (("ance", "start"), ("dance", "ance"))]
    results["trajectories"] = [{"fold": f, "seed": s, "arm": arm, "step": base + step,
                                "metrics": {"q2d.MRR@10": 0.5 + 0.001 * (base + step) + 0.01 * s,
                                            "query_mean_cosine": 0.6 - 0.001 * step, "dev.MRR@10": 0.4}}
                               for f in range(2) for s in (1, 2)
                               for arm, base in (("ance", 0), ("dance", 30)) for step in (0, 10, 20, 30)]
    results["selections"] = [{"fold": f, "arm": arm, "seed": s, "step": 20, "dev_MRR@10": 0.41}
                             for f in range(2) for arm in ("ance", "dance") for s in (1, 2)]
    results["runs"] = runs
    results["branch_checks"] = [{"fold": f, "seed": s, "arm": "dance", "parent": "ance", "branch_step": 30,
                                 "max_direction_difference": 2e-7} for f in range(2) for s in (1, 2)]
    results["folds"] = [{"fold": f, "test_queries": len(folds[f]["start"][0].units.test_qids),
                         "relevant_passages": len(folds[f]["start"][0].units.anchors),
                         "query_pool": len(folds[f]["start"][0].units.pool_qids)} for f in range(2)]
    results["collection"] = {"name": coll.name, "source": {}, "min_relevance": coll.min_relevance,
                             "documents": len(coll.corpus.ids), "queries": len(coll.queries), "backbone": "tiny"}
    results["_spaces"] = folds
    readme = root / "README.md"
    readme.write_text("# project\n\n<!-- rag24-results:start -->\nold\n<!-- rag24-results:end -->\n")
    out = write_outputs(results, root / "report", readme, Clock(root / "timings.json"))
    real_qrels = {q: dict(j) for q, j in coll.qrels.items() if coll.topics[q] == q}
    return {"out": out, "readme": readme, "qrels": real_qrels, "runs": runs, "gzip": _gzip}


def test_written_report_files(written):
    out = written["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "ance-seed1.trec.gz", "ance-seed2.trec.gz", "dance-seed1.trec.gz", "dance-seed2.trec.gz", "start.trec.gz"]
    for run in written["runs"]:
        log = out / "logs" / f"fold{run['fold']}" / f"{run['arm']}-seed{run['seed']}.metrics.jsonl.gz"
        with written["gzip"].open(log, "rt") as handle:
            assert handle.read() == (Path(run["path"]) / "metrics.jsonl").read_text()
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"files", "seeds", "movement", "trajectories", "selections", "levels", "contrasts", "claims"} <= set(metrics)
    assert metrics["settings"]["p_floor_unit"] == pytest.approx(1 / 2001)      # 2,000 resamples in this test
    header = (out / "per_unit.csv").read_text().splitlines()[0]
    assert header == "metric,fold,unit,cluster,arm,seed,value"


def test_written_tables_agree_with_metrics_json_and_the_run_files(written):
    import reproduce_support as rs

    out = written["out"]
    rs.check_readme_tables(out, [out / "README.md", written["readme"]])
    rs.check_claims_table(out)
    assert rs.check_run_files(out, written["qrels"]) == 5
    rs.check_main_contrast_with_scipy(out)
    text = (out / "README.md").read_text()
    assert "## Do the models move?" in text and "| 0 | 1 | ANCE | start <i>L3</i> | +0.0100 | 50.0 % | 0.0200 |" in text
    assert "## Dev-selected checkpoints (secondary)" in text and "## Trajectories" in text
    assert "held-out statements MRR@10" in text
    assert "Branch check" in text and "over 4 stage runs: 2e-07" in text


def test_written_page_escapes_text_from_data(written):
    html = (written["out"] / "index.html").read_text()
    assert "<script>x</script>" not in html and "DANCE &amp; &lt;script&gt;x&lt;/script&gt;" in html
    assert "<i>L3</i>" not in html and "start &lt;i&gt;L3&lt;/i&gt;" in html
    for anchor in ('id="table-arms"', 'id="table-movement"', 'id="fig-trajectories"', 'id="table-selections"'):
        assert anchor in html


def test_p_values_are_never_finer_than_the_resampling():
    from dance_analysis.reproduce.write import fmt_p

    assert fmt_p(0.0, 999) == "< 1/1000"
    assert fmt_p(0.0009, 999) == "< 1/1000"
    assert fmt_p(0.002, 999) == "0.0020"
    assert fmt_p(2 / 10_001, 10_000) == "0.0002"
    assert fmt_p(0.00003, 2 ** 20, exact=True) == "3.0e-05"
    assert fmt_p(None) == "n/a" and fmt_p(0.5) == "0.5000"
