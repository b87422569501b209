"""DualEncoder: pooling, heads, normalisation, the document-LayerNorm quirk, towers, save/load, ANCE import."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dance_analysis.errors import DanceError, InputError
from dance_analysis.model import DualEncoder, EncoderConfig

TEXTS = [
    "what is vicarious trauma",
    "Dense retrieval maps queries and documents into one vector space, and scores them by inner product.",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 12,
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, minilm_tokenizer):
    """A tiny random BERT (2 layers, hidden 32) saved as a plain Hugging Face folder with the MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("bert")
    config = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def load(folder, **overrides) -> DualEncoder:
    torch.manual_seed(2)
    model = DualEncoder.load(str(folder), query_max_length=16, doc_max_length=32, **overrides)
    return model.eval()


def manual(model: DualEncoder, texts, side: str) -> torch.Tensor:
    """The encoder's formula computed by hand, one text at a time, without padding."""
    tower = model.tower(side)
    rows = []
    for text in texts:
        ids = model.tokenizer(text, truncation=True, max_length=model.config.max_length(side))["input_ids"]
        hidden = tower.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]  # [L, h], no mask needed
        x = hidden[0] if model.config.pooling == "cls" else hidden.sum(0) / hidden.shape[0]
        head = tower.head
        if head.kind != "none":
            x = head.linear.weight @ x + head.linear.bias
        if head.kind == "linear+layernorm" and (side == "query" or model.config.doc_layernorm):
            mu, var = x.mean(), ((x - x.mean()) ** 2).mean()
            x = (x - mu) / torch.sqrt(var + head.norm.eps) * head.norm.weight + head.norm.bias
        if model.config.normalize:
            x = x / torch.sqrt((x * x).sum())
        rows.append(x)
    return torch.stack(rows)


def encode(model: DualEncoder, texts, side: str) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(**model.tokenize(texts, side), side=side)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("head", ["none", "linear", "linear+layernorm"])
@pytest.mark.parametrize("normalize", [False, True])
def test_variants_equal_the_formula_by_hand(bert_dir, pooling, head, normalize):
    model = load(bert_dir, pooling=pooling, head=head, normalize=normalize)
    for side in ("query", "doc"):
        got = encode(model, TEXTS, side)  # padded batch: padding must not change any vector
        with torch.inference_mode():
            expected = manual(model, TEXTS, side)
        assert got.shape == (len(TEXTS), model.dim) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
        if normalize:
            torch.testing.assert_close(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    assert model.dim == 32


def test_doc_layernorm_quirk_skips_layernorm_on_documents_only(bert_dir):
    model = load(bert_dir, head="linear+layernorm", normalize=True, doc_layernorm=False)
    with torch.inference_mode():
        query, doc = encode(model, TEXTS, "query"), encode(model, TEXTS, "doc")
        tower = model.tower("doc")
        batch = model.tokenize(TEXTS, "doc")
        cls = tower.backbone(**batch).last_hidden_state[:, 0]
        expected_doc = F.normalize(tower.head.linear(cls), dim=-1)
        batch = model.tokenize(TEXTS, "query")
        cls = tower.backbone(**batch).last_hidden_state[:, 0]
        expected_query = F.normalize(tower.head.norm(tower.head.linear(cls)), dim=-1)
    torch.testing.assert_close(doc, expected_doc, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(query, expected_query, atol=1e-5, rtol=1e-4)
    # the same short text (no truncation on either side) gets different vectors on the two sides
    assert (query[0] - doc[0]).abs().max() > 1e-3
    with torch.inference_mode():
        torch.testing.assert_close(doc, manual(model, TEXTS, "doc"), atol=2e-5, rtol=1e-4)


def test_invalid_options_are_clear_errors(bert_dir):
    with pytest.raises(DanceError, match="doc_layernorm"):
        load(bert_dir, head="linear", doc_layernorm=False)
    with pytest.raises(DanceError, match="pooling must be one of cls, mean, max"):
        load(bert_dir, pooling="median")
    with pytest.raises(DanceError, match="head must be one of"):
        load(bert_dir, head="mlp")
    with pytest.raises(DanceError, match="unknown encoder option.*poolng"):
        load(bert_dir, poolng="mean")
    with pytest.raises(DanceError, match="temperature"):
        load(bert_dir, temperature=0)
    with pytest.raises(DanceError, match="longer than the backbone allows"):
        DualEncoder.load(str(bert_dir), doc_max_length=600)
    model = load(bert_dir)
    with pytest.raises(DanceError, match="side must be"):
        model.tokenize(["x"], "passage")


def test_tokenize_truncates_each_side_to_its_length(bert_dir):
    model = load(bert_dir)
    long_text = "word " * 100
    assert model.tokenize([long_text], "query")["input_ids"].shape == (1, 16)
    assert model.tokenize([long_text], "doc")["input_ids"].shape == (1, 32)
    batch = model.tokenize(["a b", long_text], "doc")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["attention_mask"].sum(1).tolist() == [4, 32]


def test_separate_towers_start_equal_and_train_apart(bert_dir):
    shared = load(bert_dir, head="linear")
    separate = load(bert_dir, head="linear", shared=False)
    assert separate.tower("query") is not separate.tower("doc")
    assert shared.tower("query") is shared.tower("doc")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) == 2 * count(shared)
    short = [TEXTS[0], TEXTS[2], "dense retrieval"]  # not truncated on either side
    before_query = encode(separate, short, "query")
    torch.testing.assert_close(encode(separate, short, "doc"), before_query)
    with torch.no_grad():
        separate.tower("doc").head.linear.bias.add_(1.0)
    torch.testing.assert_close(encode(separate, short, "query"), before_query)
    assert (encode(separate, short, "doc") - before_query).abs().min() > 0.5


def test_training_mode_gives_gradients_to_backbone_and_head(bert_dir):
    model = load(bert_dir, head="linear+layernorm", normalize=True, temperature=0.01).train()
    q = model.encode_query(**model.tokenize(TEXTS[:2], "query"))
    d = model.encode_doc(**model.tokenize(TEXTS[2:], "doc"))
    scores = model.score(q, d)
    torch.testing.assert_close(scores, (q @ d.T) / 0.01)
    F.cross_entropy(scores, torch.tensor([0, 1])).backward()
    assert model.head.linear.weight.grad.abs().sum() > 0
    assert model.backbone.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("options", [
    dict(pooling="cls", head="linear+layernorm", normalize=True, temperature=0.01),
    dict(pooling="mean", head="none"),
    dict(pooling="cls", head="linear+layernorm", normalize=True, doc_layernorm=False),
    dict(pooling="mean", head="linear", shared=False),
])
def test_save_load_round_trip(bert_dir, tmp_path, options):
    model = load(bert_dir, **options)
    if not model.config.shared:  # make the towers differ, so that the round trip must keep both
        with torch.no_grad():
            model.tower("doc").head.linear.weight.mul_(-1)
    out = tmp_path / "enc"
    model.save(out)
    names = set(os.listdir(out))
    assert "encoder.json" in names and "tokenizer.json" in names
    if model.config.shared:
        assert "model.safetensors" in names and ("head.safetensors" in names) == (model.head.kind != "none")
    else:
        for sub in ("query", "doc"):
            assert {"model.safetensors", "config.json", "head.safetensors"} <= set(os.listdir(out / sub))
    assert json.loads((out / "encoder.json").read_text())["pooling"] == options["pooling"]

    loaded = DualEncoder.load(str(out)).eval()
    assert loaded.config == model.config
    for side in ("query", "doc"):
        torch.testing.assert_close(encode(loaded, TEXTS, side), encode(model, TEXTS, side), atol=1e-6, rtol=0)
    # saving again over the folder replaces it, leaving no temporary folder behind
    loaded.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_overrides_apply_to_a_saved_folder(tiny_model_dir):
    model = DualEncoder.load(str(tiny_model_dir), doc_max_length=8, normalize=True)
    assert model.config.doc_max_length == 8 and model.config.normalize
    assert model.config.head == "linear+layernorm" and model.config.query_max_length == 16
    assert model.tokenize(["word " * 50], "doc")["input_ids"].shape == (1, 8)
    with pytest.raises(DanceError, match="doc_layernorm"):
        DualEncoder.load(str(tiny_model_dir), head="none", doc_layernorm=False)


def test_missing_models_are_dance_errors(tmp_path):
    with pytest.raises(DanceError, match="no such model folder"):
        DualEncoder.load(str(tmp_path / "nope"))
    with pytest.raises(DanceError, match="no-such-model"):
        DualEncoder.load("nobody-at-all/no-such-model")
    with pytest.raises(DanceError, match="config.json"):
        DualEncoder.load(str(tmp_path))  # an empty folder
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DanceError, match="got a file"):
        DualEncoder.load(str(tmp_path / "file.txt"))


def test_corrupt_or_missing_files_are_named(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "head.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(DanceError, match=str(broken / "head.safetensors")):
        DualEncoder.load(str(broken))
    (broken / "head.safetensors").unlink()
    with pytest.raises(DanceError, match="head.safetensors"):
        DualEncoder.load(str(broken))
    shutil.copy(tiny_model_dir / "head.safetensors", broken / "head.safetensors")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DanceError, match=str(broken / "model.safetensors")):
        DualEncoder.load(str(broken))
    (broken / "model.safetensors").unlink()
    with pytest.raises(DanceError, match="no weights file"):
        DualEncoder.load(str(broken))
    (broken / "encoder.json").write_text("{not json")
    with pytest.raises(InputError, match="encoder.json"):
        DualEncoder.load(str(broken))
    (broken / "encoder.json").write_text(json.dumps({"pooling": "cls", "colour": "red"}))
    with pytest.raises(DanceError, match="colour"):
        DualEncoder.load(str(broken))


def test_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "executed"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                                           "AutoModel": "modeling_evil.EvilModel"}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(DanceError):
        DualEncoder.load(str(folder))
    assert not marker.exists()


def test_minilm_alias_configuration():
    model = DualEncoder.load("minilm")
    assert model.config == EncoderConfig(backbone="minilm", pooling="mean", head="none", normalize=True,
                                         query_max_length=64, doc_max_length=256)
    assert model.dim == 384 and model.pad_token_id == 0


# --------------------------------------------------------------------------------------- ANCE-layout import
def _ance_checkpoint(folder: Path, tokenizer, fmt: str) -> dict[str, torch.Tensor]:
    """Write a tiny random RoBERTa in the released ANCE layout; return the saved tensors."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37, max_position_embeddings=514,
                           pad_token_id=0, type_vocab_size=1)
    config.architectures = ["RobertaDot_NLL_LN"]
    roberta = RobertaModel(config, add_pooling_layer=False)
    state = {f"roberta.{k}": v.clone() for k, v in roberta.state_dict().items()}
    state["embeddingHead.weight"] = torch.randn(32, 32) * 0.1
    state["embeddingHead.bias"] = torch.randn(32) * 0.1
    state["norm.weight"] = 1.0 + torch.randn(32) * 0.1
    state["norm.bias"] = torch.randn(32) * 0.1
    folder.mkdir()
    config.to_json_file(str(folder / "config.json"))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)  # the test is about the weights; any tokenizer does
    return state


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_ance_layout_import(tmp_path, minilm_tokenizer, fmt):
    from transformers import RobertaConfig, RobertaModel

    folder = tmp_path / "ance"
    state = _ance_checkpoint(folder, minilm_tokenizer, fmt)
    model = DualEncoder.load(str(folder)).eval()
    assert (model.config.pooling, model.config.head, model.config.normalize) == ("cls", "linear+layernorm", False)
    assert (model.config.query_max_length, model.config.doc_max_length) == (64, 512)
    assert torch.equal(model.head.linear.weight, state["embeddingHead.weight"])
    assert torch.equal(model.head.linear.bias, state["embeddingHead.bias"])
    assert torch.equal(model.head.norm.weight, state["norm.weight"])
    assert torch.equal(model.head.norm.bias, state["norm.bias"])

    # manual computation from the saved tensors: <s> vector -> embeddingHead -> LayerNorm(eps 1e-5)
    reference = RobertaModel(RobertaConfig.from_json_file(str(folder / "config.json")), add_pooling_layer=False)
    reference.load_state_dict({k[len("roberta."):]: v for k, v in state.items() if k.startswith("roberta.")})
    reference.eval()
    batch = model.tokenize(TEXTS, "doc")
    with torch.inference_mode():
        cls = reference(**batch).last_hidden_state[:, 0]
        x = cls @ state["embeddingHead.weight"].T + state["embeddingHead.bias"]
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        expected = (x - mu) / torch.sqrt(var + 1e-5) * state["norm.weight"] + state["norm.bias"]
    torch.testing.assert_close(encode(model, TEXTS, "doc"), expected, atol=1e-5, rtol=1e-4)

    # DANCE starts from it with normalisation; the import round-trips through our own folder
    dance = DualEncoder.load(str(folder), normalize=True, temperature=0.01).eval()
    torch.testing.assert_close(encode(dance, TEXTS, "doc"), F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-4)
    dance.save(tmp_path / "saved")
    again = DualEncoder.load(str(tmp_path / "saved")).eval()
    torch.testing.assert_close(encode(again, TEXTS, "query"), encode(dance, TEXTS, "query"), atol=1e-6, rtol=0)


def test_ance_layout_errors_name_the_file(tmp_path, minilm_tokenizer):
    folder = tmp_path / "ance"
    state = _ance_checkpoint(folder, minilm_tokenizer, "bin")
    weights = folder / "pytorch_model.bin"
    del state["roberta.encoder.layer.1.output.dense.weight"]
    torch.save(state, weights)
    with pytest.raises(DanceError, match=f"{weights}.*lack"):
        DualEncoder.load(str(folder))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(DanceError, match=str(weights)):
        DualEncoder.load(str(folder))


@pytest.mark.parametrize("shared,doc_layernorm", [(True, True), (True, False), (False, True), (False, False)])
def test_unused_parameters_are_exactly_those_without_a_gradient(bert_dir, shared, doc_layernorm):
    model = load(bert_dir, head="linear+layernorm", shared=shared, doc_layernorm=doc_layernorm, normalize=True)
    loss = 0.0
    for side in ("query", "doc"):
        batch = model.tokenize(TEXTS, side)
        loss = loss + model.encode(batch["input_ids"], batch["attention_mask"], side).sum()
    loss.backward()
    no_grad = sorted(name for name, p in model.named_parameters() if p.grad is None)
    assert sorted(model.unused_parameters()) == no_grad
    assert bool(no_grad) == (not shared and not doc_layernorm)


def _released_ance_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny RoBERTa exactly in the layout of the released ANCE checkpoints: pytorch_model.bin with roberta.* +
    embeddingHead.* + norm.* tensors, a transformers 2.x config.json (no model_type; keys of that time), and
    RoBERTa's byte-level BPE files vocab.json / merges.txt (trained here on a few texts); no tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([t.lower() for t in TEXTS] * 5 + ["http://example.org/page the title"] * 5,
                            vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    folder.mkdir()
    bpe.save_model(str(folder))
    vocab = bpe.get_vocab_size()
    config = {"architectures": ["RobertaForSequenceClassification"], "attention_probs_dropout_prob": 0.1,
              "finetuning_task": "msmarco", "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32,
              "initializer_range": 0.02, "intermediate_size": 37, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 514, "num_attention_heads": 2, "num_hidden_layers": 2, "num_labels": 2,
              "output_attentions": False, "output_hidden_states": False, "output_past": True, "pruned_heads": {},
              "torchscript": False, "type_vocab_size": 1, "use_bfloat16": False, "vocab_size": vocab,
              "is_decoder": False}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(4)
    roberta = RobertaModel(RobertaConfig(**{k: v for k, v in config.items() if k != "architectures"}),
                           add_pooling_layer=False)
    state = {f"roberta.{k}": v.clone() for k, v in roberta.state_dict().items()}
    state.update({"embeddingHead.weight": torch.randn(32, 32) * 0.1, "embeddingHead.bias": torch.randn(32) * 0.1,
                  "norm.weight": 1.0 + torch.randn(32) * 0.1, "norm.bias": torch.randn(32) * 0.1})
    torch.save(state, folder / "pytorch_model.bin")
    return state


def test_a_released_ance_checkpoint_in_its_original_layout(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path / "ance-firstp"
    state = _released_ance_folder(folder)
    reference_bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))

    def reference_ids(text, limit=64):   # <s> text </s> with the same BPE, straight from the tokenizers library
        ids = reference_bpe.encode(text).ids
        return [0] + ids[:limit - 2] + [2]

    model = DualEncoder.load(str(folder), lowercase=True).eval()
    assert (model.config.pooling, model.config.head, model.config.lowercase) == ("cls", "linear+layernorm", True)
    assert torch.equal(model.head.linear.weight, state["embeddingHead.weight"])
    assert torch.equal(model.head.norm.bias, state["norm.bias"])
    for text in TEXTS[:2]:
        batch = model.tokenize([text], "query")
        assert batch["input_ids"][0].tolist() == reference_ids(text.lower())
    # The reference code's document text: url <sep> title <sep> body, with RoBERTa's separator </s> (id 2).
    from dance_analysis.data.formats import FIELD_SEPARATOR

    fields = model.tokenize([FIELD_SEPARATOR.join(["http://example.org/page", "The Title", "Body"])], "doc")
    assert fields["input_ids"][0].tolist() == (reference_ids("http://example.org/page")[:-1] + [2]
                                               + reference_bpe.encode("the title").ids + [2]
                                               + reference_bpe.encode("body").ids + [2])

    # Saved in this project's layout and loaded again: same vectors, still lower-casing.
    model.save(tmp_path / "saved")
    again = DualEncoder.load(str(tmp_path / "saved")).eval()
    assert again.config.lowercase and again.tokenize(["Dense"], "query")["input_ids"].tolist() == \
        model.tokenize(["dense"], "query")["input_ids"].tolist()
    torch.testing.assert_close(encode(again, TEXTS, "doc"), encode(model, TEXTS, "doc"), atol=1e-6, rtol=0)

    # The weights without their tokenizer files: the tokenizer is named separately (recipe: model.tokenizer).
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (weights_only / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(DanceError, match="tokenizer"):
        DualEncoder.load(str(weights_only))
    named = DualEncoder.load(str(weights_only), tokenizer=str(tmp_path / "saved"), lowercase=True)
    assert named.tokenize(["Dense"], "query")["input_ids"][0].tolist() == reference_ids("dense")


def test_lowercase_names_its_own_token_caches(tmp_path, bert_dir):
    from dance_analysis.data import Collection, InMemoryCorpus
    from dance_analysis.data.tokens import cache_key

    collection = Collection("c", InMemoryCorpus({"d": "Text"}), {"q": "Query"}, {}, {})
    _released_ance_folder(tmp_path / "ance")
    cased = DualEncoder.load(str(tmp_path / "ance"))
    lowered = DualEncoder.load(str(tmp_path / "ance"), lowercase=True)
    assert cased.tokenize(["Dense"], "query")["input_ids"].tolist() != \
        lowered.tokenize(["Dense"], "query")["input_ids"].tolist()
    assert cache_key(collection, "doc", lowered.tokenizer, 16) != cache_key(collection, "doc", cased.tokenizer, 16)
    # MiniLM's tokenizer lower-cases already: the option leaves it as it is (and its caches).
    assert cache_key(collection, "doc", load(bert_dir, lowercase=True).tokenizer, 16) == \
        cache_key(collection, "doc", load(bert_dir).tokenizer, 16)
