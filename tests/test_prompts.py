"""Prompts (model.query_prompt / model.document_prompt): the text put before every query / document, honoured by
the token caches (part of their key), encoding, training (saved in the checkpoint's encoder.json), dance-eval,
dance-mine, dance-analyze (--query-prompt / --document-prompt), and carried into dance-export (sentence-transformers'
prompts, used by encode_query / encode_document, checked by the export's probe). Without prompts every key and
vector is the one of before the option."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import train_support as ts
from dance_analysis.data.tokens import (
    _NON_TEXT_KEYS,
    VERSION,
    _query_items,
    cache_key,
    cached_tokens,
    tokenizer_fingerprint,
)
from dance_analysis.encode import encode_texts
from dance_analysis.errors import DanceError
from dance_analysis.model import DualEncoder, EncoderConfig

QP, DP = "query: ", "passage: "
TEXTS = ["what is a dense retriever", "hard negatives from a refreshed index " * 6, "x"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_setup):
    """The tiny setup with a dropout-free encoder ("plain") and the same encoder saved with prompts."""
    with tiny_setup(tmp_path_factory.mktemp("prompts"), dropout=0.0) as env:
        plain = env["plain"] = env["encoder"]
        env["prompted"] = env["root"] / "prompted"
        DualEncoder.load(str(plain), query_prompt=QP, document_prompt=DP).save(str(env["prompted"]))
        yield env


def _old_cache_key(collection, side, tokenizer, max_length):
    """The token cache key as it was computed before prompts existed."""
    if side == "doc":
        content = collection.corpus.fingerprint()
    else:
        digest = hashlib.sha256()
        for qid, text in _query_items(collection):
            digest.update(json.dumps([qid, text]).encode())
        content = digest.hexdigest()
    source = {k: v for k, v in collection.source.items() if k not in _NON_TEXT_KEYS}
    blob = json.dumps({"source": source, "content": content, "tokenizer": tokenizer_fingerprint(tokenizer),
                       "max_length": max_length, "side": side, "version": VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def test_without_prompts_the_config_record_and_cache_keys_are_those_of_before(env):
    config = EncoderConfig()
    assert "query_prompt" not in config.to_dict() and "document_prompt" not in config.to_dict()
    saved = json.loads((env["plain"] / "encoder.json").read_text())
    assert "query_prompt" not in saved and "document_prompt" not in saved
    from dance_analysis.data import load_collection

    collection = load_collection(str(env["manifest"]))
    tokenizer = DualEncoder.load(str(env["plain"])).tokenizer
    for side in ("doc", "query"):
        before = _old_cache_key(collection, side, tokenizer, 32)
        assert cache_key(collection, side, tokenizer, 32) == before
        assert cache_key(collection, side, tokenizer, 32, "") == before
        assert cache_key(collection, side, tokenizer, 32, QP) != before


def test_prompted_caches_hold_the_prompted_texts_and_plain_ones_are_unchanged(env):
    from dance_analysis.data import load_collection

    collection = load_collection(str(env["manifest"]))
    tokenizer = DualEncoder.load(str(env["plain"])).tokenizer
    cache_dir = env["root"] / "token-caches"
    plain = cached_tokens(collection, "query", tokenizer, 16, cache_dir=cache_dir, progress=False)
    prompted = cached_tokens(collection, "query", tokenizer, 16, cache_dir=cache_dir, progress=False, prompt=QP)
    assert plain.path != prompted.path and prompted.meta["prompt"] == QP and "prompt" not in plain.meta
    for row, (qid, text) in enumerate(_query_items(collection)):
        assert prompted.ids[row] == qid
        assert prompted.get(row).tolist() == tokenizer(QP + text, truncation=True, max_length=16)["input_ids"]
        assert plain.get(row).tolist() == tokenizer(text, truncation=True, max_length=16)["input_ids"]


def test_a_prompted_model_encodes_the_prompted_texts_and_keeps_its_prompts(env):
    plain = DualEncoder.load(str(env["plain"])).eval()
    prompted = DualEncoder.load(str(env["prompted"])).eval()
    assert (prompted.config.query_prompt, prompted.config.document_prompt) == (QP, DP)
    ids = [str(i) for i in range(len(TEXTS))]
    for side, prompt in (("query", QP), ("doc", DP)):
        ours = encode_texts(prompted, ids, TEXTS, side, progress=False).vectors
        expected = encode_texts(plain, ids, [prompt + t for t in TEXTS], side, progress=False).vectors
        assert np.array_equal(ours, expected)
        assert not np.allclose(ours, encode_texts(plain, ids, TEXTS, side, progress=False).vectors)
        batch = prompted.tokenize(TEXTS, side)
        with torch.no_grad():
            assert np.array_equal(prompted.encode(batch["input_ids"], batch["attention_mask"], side).numpy(), ours)
    # without prompts, encode_texts is tokenizer(text) then encode, as before
    batch = plain.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        direct = plain.encode(batch["input_ids"], batch["attention_mask"], "query").numpy()
    np.testing.assert_allclose(encode_texts(plain, ids, TEXTS, "query", progress=False).vectors, direct, atol=1e-6)
    with pytest.raises(Exception, match="query_prompt must be a string"):
        DualEncoder.load(str(env["plain"]), query_prompt=3)


def test_training_with_prompts_saves_them_and_its_vectors_are_the_prompted_ones(env):
    from dance_analysis.training.config import recipe_from_dict
    from dance_analysis.training.loop import train

    default = recipe_from_dict(ts.recipe_dict(env["manifest"], env["plain"], env["cache"])).validate()
    assert "query_prompt" not in default.model.overrides() and "document_prompt" not in default.model.overrides()
    recipe = recipe_from_dict(ts.recipe_dict(
        env["manifest"], env["plain"], env["cache"], name="prompted-run",
        model={"query_prompt": QP, "document_prompt": DP}, optim={"max_steps": 2, "warmup_steps": 1},
        mining={"refresh_every": 2}, log={"report_to": ["none"], "progress": False})).validate()
    run_dir = env["root"] / "prompted-run"
    train(recipe, run_dir)
    checkpoint = run_dir / "checkpoint-2"
    saved = json.loads((checkpoint / "encoder" / "encoder.json").read_text())
    assert saved["query_prompt"] == QP and saved["document_prompt"] == DP
    model = DualEncoder.load(str(checkpoint / "encoder")).eval()
    assert (model.config.query_prompt, model.config.document_prompt) == (QP, DP)
    from dance_analysis.data import load_collection

    collection = load_collection(str(env["manifest"]))
    query_ids = np.load(checkpoint / "embeddings" / "queries.ids.npy").tolist()
    queries = np.load(checkpoint / "embeddings" / "queries.npy")
    expected = encode_texts(model, query_ids, [collection.queries[q] for q in query_ids], "query",
                            progress=False).vectors
    np.testing.assert_allclose(queries, expected, atol=1e-5)
    corpus = np.load(checkpoint / "embeddings" / "corpus.npy")[:5]
    doc_ids = np.load(checkpoint / "embeddings" / "corpus.ids.npy")[:5].tolist()
    plain_texts = collection.corpus.texts(doc_ids)
    np.testing.assert_allclose(corpus, encode_texts(model, doc_ids, plain_texts, "doc", progress=False).vectors,
                               atol=1e-5)
    unprompted = DualEncoder.load(str(checkpoint / "encoder"), query_prompt="", document_prompt="").eval()
    assert not np.allclose(corpus, encode_texts(unprompted, doc_ids, plain_texts, "doc", progress=False).vectors,
                           atol=1e-4)
    # dance-analyze reuses the checkpoint's saved vectors for its own prompts, and re-encodes for other ones
    from dance_analysis.report.encode_subjects import release_models, subject_embeddings
    from dance_analysis.report.inputs import resolve_path

    subject = resolve_path(str(checkpoint)).subjects[0]
    wanted = np.asarray(doc_ids), np.asarray(query_ids[:3])
    same = {"query_prompt": QP, "document_prompt": DP}
    assert subject_embeddings(subject, collection, *wanted, progress=False, overrides=same)[2] == "saved"
    other = subject_embeddings(subject, collection, *wanted, progress=False, overrides={"query_prompt": ""})
    release_models()
    assert other[2] == "encoded"
    np.testing.assert_allclose(other[0].vectors, corpus, atol=1e-5)             # documents keep their prompt
    assert not np.allclose(other[1].vectors, queries[:3], atol=1e-4)


def test_dance_eval_takes_the_prompts_from_the_model_or_the_command_line(env, capsys):
    from dance_analysis.cli.eval import main as eval_main

    def run(model, name, *flags):
        out = env["root"] / "eval" / name
        assert eval_main([str(model), "--collection", str(env["manifest"]), "--split", "dev", "--k", "10",
                          "--run", str(out / "run.trec"), *flags]) == 0
        capsys.readouterr()
        return [line.split()[:5] for line in (out / "run.trec").read_text().splitlines()]   # not the run tag

    flagged = run(env["plain"], "flagged", "--query-prompt", QP, "--document-prompt", DP)
    assert flagged == run(env["prompted"], "saved")
    assert flagged != run(env["plain"], "plain")
    assert run(env["prompted"], "cleared", "--query-prompt", "", "--document-prompt", "") == run(env["plain"],
                                                                                                    "plain2")


def test_dance_mine_takes_the_prompts_from_the_model_or_the_command_line(env, capsys):
    from dance_analysis.cli.mine import main as mine_main

    def run(model, name, *flags):
        out = env["root"] / "mine" / f"{name}.jsonl"
        assert mine_main([str(model), "--collection", str(env["manifest"]), "--split", "train", "--top-k", "10",
                          "--n", "3", "--sampling", "top", "--precision", "fp32", "--out", str(out), *flags]) == 0
        capsys.readouterr()
        return out.read_text()

    flagged = run(env["plain"], "flagged", "--query-prompt", QP, "--document-prompt", DP)
    assert flagged == run(env["prompted"], "saved")
    assert flagged != run(env["plain"], "plain")


def test_dance_analyze_passes_the_prompts_and_encodes_with_them(env, monkeypatch):
    from dance_analysis.cli import analyze
    from dance_analysis.report import build

    seen = {}

    def fake_build_report(paths, *, settings, **kwargs):
        seen.update(settings.encoder_overrides)
        raise DanceError("stop here")

    monkeypatch.setattr(build, "build_report", fake_build_report)
    assert analyze.main([str(env["plain"]), "--query-prompt", QP, "--document-prompt", DP]) == 2
    assert seen == {"query_prompt": QP, "document_prompt": DP}

    from dance_analysis.data import load_collection
    from dance_analysis.report.encode_subjects import release_models, subject_embeddings
    from dance_analysis.report.inputs import resolve_path

    collection = load_collection(str(env["manifest"]))
    doc_ids = np.asarray(collection.corpus.ids[:6])
    query_ids = np.asarray(sorted(collection.queries)[:4])
    release_models()
    plain = resolve_path(str(env["plain"])).subjects[0]
    flagged = subject_embeddings(plain, collection, doc_ids, query_ids, progress=False,
                                 overrides={"query_prompt": QP, "document_prompt": DP})
    release_models()
    saved = subject_embeddings(resolve_path(str(env["prompted"])).subjects[0], collection, doc_ids, query_ids,
                               progress=False)
    release_models()
    unprompted = subject_embeddings(plain, collection, doc_ids, query_ids, progress=False)
    release_models()
    for a, b, c in zip(flagged[:2], saved[:2], unprompted[:2]):
        assert np.array_equal(a.vectors, b.vectors) and not np.allclose(a.vectors, c.vectors)


def test_export_carries_the_prompts_and_its_probe_covers_them(env, capsys, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    from dance_analysis.cli.export import main as export_main
    from dance_analysis.interop import sentence_transformers as export

    out = env["root"] / "exported"
    assert export_main([str(env["prompted"]), "--format", "sentence-transformers", str(out)]) == 0
    assert f"prompts: queries {QP!r}" in capsys.readouterr().out
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": QP, "document": DP}
    model = st.SentenceTransformer(str(out), device="cpu", trust_remote_code=False)
    prompted = DualEncoder.load(str(env["prompted"])).eval()
    ids = [str(i) for i in range(len(TEXTS))]
    np.testing.assert_allclose(model.encode_query(TEXTS, convert_to_numpy=True),
                               encode_texts(prompted, ids, TEXTS, "query", progress=False).vectors, atol=1e-5)
    np.testing.assert_allclose(model.encode_document(TEXTS, convert_to_numpy=True),
                               encode_texts(prompted, ids, TEXTS, "doc", progress=False).vectors, atol=1e-5)
    reloaded = DualEncoder.load(str(out))
    assert (reloaded.config.query_prompt, reloaded.config.document_prompt) == (QP, DP)

    # a folder that would leave the prompts out is caught by the probe and never written
    real = export._build

    def without_prompts(model, saved):
        st_model, router = real(model, saved)
        st_model.prompts = {}
        return st_model, router

    monkeypatch.setattr(export, "_build", without_prompts)
    lost = env["root"] / "lost-prompts"
    assert export_main([str(env["prompted"]), "--format", "sentence-transformers", str(lost)]) == 2
    assert "vectors differ from the model's" in capsys.readouterr().err and not lost.exists()


def test_a_sentence_transformers_folder_with_prompts_is_read_with_them(env, tmp_path):
    pytest.importorskip("sentence_transformers")
    out = env["root"] / "exported"
    if not out.is_dir():
        pytest.skip("needs the export test's folder")
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(out, folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config["prompts"] = {"query": "q: ", "document": "p: "}
    config_file.write_text(json.dumps(config))
    model = DualEncoder.load(str(folder))
    assert (model.config.query_prompt, model.config.document_prompt) == ("q: ", "p: ")
    pooling = next(p for p in folder.iterdir() if p.name.endswith("Pooling"))
    pooling_config = json.loads((pooling / "config.json").read_text())
    (pooling / "config.json").write_text(json.dumps({**pooling_config, "include_prompt": False}))
    with pytest.raises(Exception, match="include_prompt false"):
        DualEncoder.load(str(folder))
