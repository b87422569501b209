"""dance-export --format sentence-transformers: the folder loads with SentenceTransformer(OUT) (its own modules
only) and encodes queries and documents to the project's vectors within 1e-5, for every head, pooling and
normalisation on a tiny random encoder; separate towers and a document side without the LayerNorm go through a
query / document Router; a failed check writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_support as ts
from dance_analysis.cli.export import main as export_main
from dance_analysis.encode import encode_texts
from dance_analysis.model import DualEncoder

st = pytest.importorskip("sentence_transformers")

QUERIES = ["what is a dense retriever", "hard negatives from a refreshed index " * 6, "x"]
DOCS = ["ANCE mines negatives asynchronously.", "Contrastive dual learning for retrieval. " * 20,
        "A short one", "tokens " * 300]


def project_vectors(folder, side, texts):
    model = DualEncoder.load(str(folder))
    return encode_texts(model, [str(i) for i in range(len(texts))], texts, side, progress=False).vectors


def check_folder(encoder, out):
    model = st.SentenceTransformer(str(out), device="cpu", trust_remote_code=False)
    queries = model.encode_query(QUERIES, convert_to_numpy=True)
    docs = model.encode_document(DOCS, convert_to_numpy=True)
    np.testing.assert_allclose(queries, project_vectors(encoder, "query", QUERIES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(docs, project_vectors(encoder, "doc", DOCS), atol=1e-5, rtol=0)
    # plain encode is the document side
    np.testing.assert_allclose(model.encode(DOCS, convert_to_numpy=True), docs, atol=1e-6, rtol=0)
    # nothing but sentence-transformers' own modules, no code in the folder
    modules = json.loads((out / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    assert not list(out.rglob("*.py"))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random encoders: one per (head, pooling), queries cut at 16 tokens, documents at 32."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(head, pooling, normalize):
        key = (head, pooling, normalize)
        if key not in cache:
            base = ts.tiny_encoder(root / f"{head}-{pooling}", head=head, pooling=pooling, dropout=0.0)
            folder = root / f"{head}-{pooling}-{normalize}"
            DualEncoder.load(str(base), normalize=normalize).save(str(folder))
            cache[key] = folder
        return cache[key]

    return root, get


@pytest.mark.parametrize("head", ["linear+layernorm", "linear", "none"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_exported_folder_encodes_as_the_project(tiny, head, pooling, capsys, one_torch_thread):
    root, get = tiny
    normalize = (head, pooling) in {("linear+layernorm", "cls"), ("linear", "mean"), ("none", "cls")}
    for norm in (normalize, not normalize) if head == "linear+layernorm" else (normalize,):
        encoder = get(head, pooling, norm)
        out = root / "out" / encoder.name
        assert export_main([str(encoder), "--format", "sentence-transformers", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "one pipeline for both sides" in printed and "queries 16" in printed and "documents 32" in printed
        model = check_folder(encoder, out)
        names = [type(m).__name__ for m in model]
        expected = ["Transformer", "Pooling"] + {"none": [], "linear": ["Dense"],
                                                 "linear+layernorm": ["Dense", "LayerNorm"]}[head]
        assert names == expected + (["Normalize"] if norm else [])


def test_separate_towers_and_document_side_without_layernorm_use_a_router(tiny, capsys, one_torch_thread):
    root, get = tiny
    base = get("linear+layernorm", "cls", False)
    separate = root / "separate"
    model = DualEncoder.load(str(base), shared=False, normalize=True)
    with __import__("torch").no_grad():                    # make the towers differ
        for p in model.towers["doc"].parameters():
            p.add_(0.01 * __import__("torch").randn_like(p))
    model.save(str(separate))
    skip_ln = root / "skip-ln"
    DualEncoder.load(str(base), doc_layernorm=False, normalize=True).save(str(skip_ln))
    for encoder in (separate, skip_ln):
        out = root / "out" / encoder.name
        assert export_main([str(encoder), "--format", "sentence-transformers", str(out)]) == 0
        assert "Router" in capsys.readouterr().out
        check_folder(encoder, out)
    q = project_vectors(separate, "query", DOCS)
    d = project_vectors(separate, "doc", DOCS)
    assert np.abs(q - d).max() > 1e-3, "the towers do not differ: the test would not see a mix-up"


def test_a_failed_check_writes_nothing(tiny, monkeypatch, capsys):
    from dance_analysis.interop import sentence_transformers as export

    root, get = tiny
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    out = root / "never"
    assert export_main([str(get("linear", "cls", False)), "--format", "sentence-transformers", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in root.iterdir() if p.name.startswith(".never")]


def test_bad_checkpoint_exits_2(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing"), "--format", "sentence-transformers", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
