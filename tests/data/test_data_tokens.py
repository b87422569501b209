"""Token cache: rows equal the tokenizer's own output, padding / masks, uint16 vs int32, reopen, cache keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dance_analysis.data import (
    Collection,
    InMemoryCorpus,
    TokenCache,
    build_token_cache,
    cached_tokens,
    load_collection,
)
from dance_analysis.data.tokens import cache_key
from dance_analysis.errors import DanceError

EDGE_TEXTS = ["a", "Ünïcödé façade — “quotes” 東京 🙂", "x " * 2000, "trailing spaces   ", "tab\tinside"]


@pytest.fixture(scope="module")
def sample():
    return load_collection("rag24-sample")


@pytest.fixture(scope="module")
def items(sample):
    """Real passages (the first 700, several chunks) plus edge cases."""
    docs = []
    for doc_id, text in sample.corpus.iter_texts():
        docs.append((doc_id, text))
        if len(docs) == 700:
            break
    return docs + [(f"edge{i}", t) for i, t in enumerate(EDGE_TEXTS)]


def test_rows_equal_the_tokenizer_output(items, minilm_tokenizer, tmp_path):
    cache = build_token_cache(iter(items), minilm_tokenizer, 96, tmp_path / "cache", total=len(items),
                              batch_size=128)
    assert cache.ids.tolist() == [i for i, _ in items]
    assert cache.tokens.dtype == np.uint16 and cache.meta["dtype"] == "uint16"
    assert cache.pad_id == minilm_tokenizer.pad_token_id
    for row, (_doc_id, text) in enumerate(items):
        expected = minilm_tokenizer(text, truncation=True, max_length=96)["input_ids"]
        assert cache.get(row).tolist() == expected, row
        assert cache.lengths[row] == len(expected)
    assert cache.lengths.max() == 96 and cache.lengths.min() >= 2
    assert int(cache.offsets[-1]) == int(cache.lengths.sum()) == cache.meta["total_tokens"]

    reopened = TokenCache.open(tmp_path / "cache")
    assert reopened.ids.tolist() == cache.ids.tolist()
    assert isinstance(reopened.tokens, np.memmap)
    assert all(reopened.get(r).tolist() == cache.get(r).tolist() for r in range(0, len(items), 37))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary folders left


def test_batch_pads_to_the_longest_with_masks(items, minilm_tokenizer, tmp_path):
    cache = build_token_cache(items[:40], minilm_tokenizer, 64, tmp_path / "c")
    rows = [5, 39, 0]
    input_ids, mask = cache.batch(rows)
    texts = [items[r][1] for r in rows]
    reference = minilm_tokenizer(texts, truncation=True, max_length=64, padding="longest", return_tensors="pt")
    assert input_ids.dtype == torch.long and mask.dtype == torch.long
    assert torch.equal(input_ids, reference["input_ids"])
    assert torch.equal(mask, reference["attention_mask"])
    short = build_token_cache([("s", "hi"), ("l", "a much longer text than the other one")], minilm_tokenizer,
                              64, tmp_path / "short")
    ids, m = short.batch([0, 1])
    assert ids.shape == (2, int(short.lengths.max()))
    assert (ids[0, int(short.lengths[0]):] == short.pad_id).all() and m[0].sum() == short.lengths[0]
    empty_ids, empty_mask = short.batch([])
    assert empty_ids.shape == (0, 0) and empty_mask.shape == (0, 0)
    with pytest.raises(IndexError):
        short.batch([2])


class BigVocabTokenizer:
    """A stand-in tokenizer with a 100,000-token vocabulary (ids beyond uint16)."""

    name_or_path = "big-vocab"
    pad_token_id = 1

    def __len__(self):
        return 100_000

    def __call__(self, texts, truncation, max_length, **kwargs):
        rows = [[99_999] + [70_000 + len(w) for w in t.split()][: max_length - 2] + [2] for t in texts]
        return {"input_ids": rows}


def test_int32_when_the_vocabulary_does_not_fit_uint16(tmp_path):
    cache = build_token_cache([("a", "one two three"), ("b", "four")], BigVocabTokenizer(), 4, tmp_path / "c")
    assert cache.tokens.dtype == np.int32 and cache.meta["dtype"] == "int32"
    assert cache.get(0).tolist() == [99_999, 70_003, 70_003, 2]
    assert TokenCache.open(tmp_path / "c").get(1).tolist() == [99_999, 70_004, 2]


def test_failed_build_leaves_nothing_and_existing_cache_untouched(minilm_tokenizer, tmp_path):
    build_token_cache([("a", "first")], minilm_tokenizer, 8, tmp_path / "c")

    def broken():
        yield "a", "fine"
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError):
        build_token_cache(broken(), minilm_tokenizer, 8, tmp_path / "c", batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert TokenCache.open(tmp_path / "c").ids.tolist() == ["a"]
    with pytest.raises(DanceError, match="not unique"):
        build_token_cache([("a", "x"), ("a", "y")], minilm_tokenizer, 8, tmp_path / "d")
    with pytest.raises(DanceError, match="max_length"):
        build_token_cache([("a", "x")], minilm_tokenizer, 0, tmp_path / "e")


def test_damaged_cache_is_a_clear_error(minilm_tokenizer, tmp_path):
    cache = build_token_cache([("a", "some words"), ("b", "more")], minilm_tokenizer, 8, tmp_path / "c")
    with open(cache.path / "tokens.bin", "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(DanceError, match="inconsistent"):
        TokenCache.open(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text("{")
    with pytest.raises(DanceError, match="meta.json"):
        TokenCache.open(tmp_path / "c")


def toy(texts: dict[str, str], queries: dict[str, str]) -> Collection:
    return Collection("toy collection", InMemoryCorpus(texts), queries, {}, {}, 1, {"format": "toy"})


def test_cached_tokens_builds_once_and_keys_on_content(minilm_tokenizer, tmp_path, monkeypatch):
    c = toy({"d2": "second doc", "d1": "first doc"}, {"q2": "query two", "q1": "query one"})
    docs = cached_tokens(c, "doc", minilm_tokenizer, 16, cache_dir=tmp_path)
    assert docs.ids.tolist() == ["d2", "d1"]  # corpus order
    queries = cached_tokens(c, "query", minilm_tokenizer, 8, cache_dir=tmp_path)
    assert queries.ids.tolist() == ["q1", "q2"]  # sorted qid order
    assert queries.get(0).tolist() == minilm_tokenizer("query one", truncation=True, max_length=8)["input_ids"]

    import dance_analysis.data.tokens as tokens_module

    def no_rebuild(*args, **kwargs):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(tokens_module, "build_token_cache", no_rebuild)
    minilm_tokenizer(["warm up"], truncation=True, max_length=3)  # call-time settings must not change the key
    assert cached_tokens(c, "doc", minilm_tokenizer, 16, cache_dir=tmp_path).path == docs.path
    monkeypatch.undo()

    keys = {cache_key(c, "doc", minilm_tokenizer, 16), cache_key(c, "doc", minilm_tokenizer, 17),
            cache_key(c, "query", minilm_tokenizer, 16),
            cache_key(toy({"d2": "second doc!", "d1": "first doc"}, c.queries), "doc", minilm_tokenizer, 16),
            cache_key(c, "doc", BigVocabTokenizer(), 16)}
    assert len(keys) == 5
    same_text_other_threshold = Collection("toy collection", c.corpus, c.queries, {}, {}, 2,
                                           {"format": "toy", "min_relevance": 2})
    assert cache_key(same_text_other_threshold, "doc", minilm_tokenizer, 16) == cache_key(
        Collection("toy collection", c.corpus, c.queries, {}, {}, 1, {"format": "toy", "min_relevance": 1}),
        "doc", minilm_tokenizer, 16)
    with pytest.raises(DanceError, match="side"):
        cached_tokens(c, "docs", minilm_tokenizer, 16, cache_dir=tmp_path)
    meta = json.loads((docs.path / "meta.json").read_text())
    assert meta["max_length"] == 16 and meta["vocab_size"] == len(minilm_tokenizer)


def test_cached_tokens_of_a_file_corpus(minilm_tokenizer, tmp_path):
    (tmp_path / "docs.tsv").write_text("".join(f"D{i}\tu\ttitle {i}\tbody {i}\n" for i in range(30)))
    (tmp_path / "q.tsv").write_text("1\tquery\n")
    c = load_collection({"format": "msmarco-doc", "corpus": str(tmp_path / "docs.tsv"),
                         "queries": str(tmp_path / "q.tsv")})
    cache = cached_tokens(c, "doc", minilm_tokenizer, 12, cache_dir=tmp_path / "tokens")
    assert len(cache) == 30
    assert cache.get(7).tolist() == minilm_tokenizer("title 7 body 7", truncation=True, max_length=12)["input_ids"]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_parallel_parts_write_the_cache_of_one_pass(items, minilm_tokenizer, tmp_path):
    from dance_analysis.data.tokens import build_in_parts

    one = build_token_cache(iter(items), minilm_tokenizer, 64, tmp_path / "one", batch_size=64)
    parts = build_in_parts(iter(items), minilm_tokenizer, 64, tmp_path / "parts", part_rows=250, workers=2)
    assert _files(parts.path) == _files(one.path)
    assert not (tmp_path / "parts.parts").exists()


def test_an_interrupted_build_resumes_at_the_first_missing_part(items, minilm_tokenizer, tmp_path):
    from dance_analysis.data.tokens import build_in_parts

    class Interrupted(Exception):
        pass

    def stream(stop_at=None):
        for i, item in enumerate(items):
            if i == stop_at:
                raise Interrupted
            yield item

    class Counting:
        """The tokenizer, counting the texts it is given."""

        def __init__(self, inner):
            self.inner, self.texts = inner, 0

        def __call__(self, texts, **kwargs):
            self.texts += len(texts)
            return self.inner(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

    with pytest.raises(Interrupted):
        build_in_parts(stream(stop_at=560), minilm_tokenizer, 64, tmp_path / "cache", part_rows=250)
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in (tmp_path / "cache.parts").iterdir()) == ["part-00000", "part-00001"]
    counting = Counting(minilm_tokenizer)
    resumed = build_in_parts(stream(), counting, 64, tmp_path / "cache", part_rows=250)
    assert counting.texts == len(items) - 500          # the two complete parts were not tokenised again
    one = build_token_cache(iter(items), minilm_tokenizer, 64, tmp_path / "one")
    assert _files(resumed.path) == _files(one.path)


def test_a_tokenizer_saved_elsewhere_keeps_its_caches(sample, minilm_tokenizer, tmp_path):
    """A checkpoint's encoder saves the tokenizer it was loaded from: reloaded from there, it names the same cache
    (a resumed run, the miner and the ranks of a prepared run tokenise nothing again)."""
    from transformers import AutoTokenizer

    minilm_tokenizer.save_pretrained(tmp_path / "encoder")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "encoder")
    assert reloaded.name_or_path != minilm_tokenizer.name_or_path
    assert cache_key(sample, "query", reloaded, 32) == cache_key(sample, "query", minilm_tokenizer, 32)


def test_the_reference_document_text_url_sep_title_sep_body(minilm_tokenizer, tmp_path):
    """Manifest (or recipe) ``doc_text: url-title-body``: each document is ``url <sep> title <sep> body`` with the
    tokenizer's own separator token, as the ANCE / DANCE reference code builds it; its caches are not FirstP's."""
    import yaml

    from dance_analysis.errors import InputError

    (tmp_path / "docs.tsv").write_text("".join(f"D{i}\thttp://x.org/{i}\tTitle {i}\tbody {i}\n" for i in range(5)))
    (tmp_path / "q.tsv").write_text("1\tquery\n")
    manifest = {"format": "msmarco-doc", "corpus": "docs.tsv", "queries": "q.tsv"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**manifest, "doc_text": "url-title-body"}))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(manifest))
    reference = load_collection(str(tmp_path / "m.yaml"))
    overridden = load_collection(str(tmp_path / "plain.yaml"), doc_text="url-title-body")
    plain = load_collection(str(tmp_path / "plain.yaml"))
    assert reference.source["doc_text"] == overridden.source["doc_text"] == "url-title-body"
    assert "doc_text" not in plain.source
    cache = cached_tokens(reference, "doc", minilm_tokenizer, 32, cache_dir=tmp_path / "tokens")
    expected = minilm_tokenizer("http://x.org/3[SEP]Title 3[SEP]body 3", truncation=True, max_length=32)
    assert cache.get(3).tolist() == expected["input_ids"]
    assert cache.get(3).tolist().count(minilm_tokenizer.sep_token_id) == 3
    assert cache_key(reference, "doc", minilm_tokenizer, 32) == cache_key(overridden, "doc", minilm_tokenizer, 32)
    assert cache_key(reference, "doc", minilm_tokenizer, 32) != cache_key(plain, "doc", minilm_tokenizer, 32)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**manifest, "doc_text": "body-only"}))
    with pytest.raises(InputError, match=r"bad.yaml.*doc_text"):
        load_collection(str(tmp_path / "bad.yaml"))
    (tmp_path / "p.tsv").write_text("P1\tsome passage\n")
    (tmp_path / "passages.yaml").write_text(yaml.safe_dump({"format": "msmarco-passage", "corpus": "p.tsv",
                                                            "queries": "q.tsv", "doc_text": "url-title-body"}))
    with pytest.raises(InputError, match="doc_text"):
        load_collection(str(tmp_path / "passages.yaml"))
