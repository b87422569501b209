"""Embeddings: npy round trip (memmap, float32/float16), atomic writes, consistency checks, subset, finiteness."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dance_analysis.embeddings import Embeddings
from dance_analysis.errors import DanceError


def make(n=7, d=5, dtype=np.float32, seed=0) -> Embeddings:
    rng = np.random.default_rng(seed)
    ids = np.array([f"doc-{i}" for i in range(n)])
    return Embeddings(ids, rng.standard_normal((n, d)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_memmaps_and_keeps_everything(tmp_path, dtype):
    emb = make(dtype=dtype)
    emb.save(tmp_path / "sub" / "corpus")
    assert sorted(os.listdir(tmp_path / "sub")) == ["corpus.ids.npy", "corpus.npy"]  # no temporary files left
    loaded = Embeddings.load(tmp_path / "sub" / "corpus")
    assert isinstance(loaded.vectors, np.memmap) and loaded.vectors.dtype == dtype
    assert loaded.ids.dtype.kind == "U" and loaded.ids.tolist() == emb.ids.tolist()
    np.testing.assert_array_equal(loaded.vectors, emb.vectors)
    assert loaded.path == str(tmp_path / "sub" / "corpus.npy") and len(loaded) == 7 and loaded.dim == 5
    in_memory = Embeddings.load(str(tmp_path / "sub" / "corpus.npy"), mmap=False)  # ".npy" suffix accepted
    assert not isinstance(in_memory.vectors, np.memmap)
    np.testing.assert_array_equal(in_memory.vectors, emb.vectors)
    # plain npy, no pickles: numpy reads the files without allow_pickle
    assert np.load(tmp_path / "sub" / "corpus.ids.npy", allow_pickle=False).tolist() == emb.ids.tolist()


def test_overwrite_from_own_memmap(tmp_path):
    make(seed=1).save(tmp_path / "e")
    loaded = Embeddings.load(tmp_path / "e")
    expected = np.array(loaded.vectors)
    loaded.save(tmp_path / "e")  # rewriting the file it is mapped from
    np.testing.assert_array_equal(Embeddings.load(tmp_path / "e").vectors, expected)


def test_row_id_mismatch_names_the_file(tmp_path):
    make().save(tmp_path / "e")
    np.save(tmp_path / "e.ids.npy", np.array(["a", "b"]))
    with pytest.raises(DanceError, match=f"{tmp_path / 'e.npy'}: 7 vector rows but .*e.ids.npy has 2 ids"):
        Embeddings.load(tmp_path / "e")


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(DanceError, match=f"{tmp_path / 'x.npy'}: file is missing"):
        Embeddings.load(tmp_path / "x")
    make().save(tmp_path / "e")
    np.save(tmp_path / "e.ids.npy", np.array([{"a": 1}] * 7, dtype=object), allow_pickle=True)
    with pytest.raises(DanceError, match="e.ids.npy: cannot read it as npy"):
        Embeddings.load(tmp_path / "e")
    np.save(tmp_path / "e.ids.npy", np.arange(7))
    with pytest.raises(DanceError, match="e.ids.npy: expected a 1-d unicode id array"):
        Embeddings.load(tmp_path / "e")
    (tmp_path / "e.npy").write_bytes(b"garbage")
    with pytest.raises(DanceError, match="e.npy: cannot read it as npy"):
        Embeddings.load(tmp_path / "e")
    np.save(tmp_path / "e.npy", np.zeros((7, 3), dtype=np.int64))
    np.save(tmp_path / "e.ids.npy", np.array(list("abcdefg")))
    with pytest.raises(DanceError, match="e.npy: expected float32 or float16 vectors"):
        Embeddings.load(tmp_path / "e")


def test_constructor_checks_shapes():
    with pytest.raises(DanceError, match="3 vector rows but 2 ids"):
        Embeddings(np.array(["a", "b"]), np.zeros((3, 4), np.float32))
    with pytest.raises(DanceError, match="2-d"):
        Embeddings(np.array(["a"]), np.zeros(4, np.float32))
    assert Embeddings(["a", "b"], np.zeros((2, 1), np.float32)).ids.dtype.kind == "U"


def test_subset_keeps_requested_order(tmp_path):
    emb = make()
    emb.save(tmp_path / "e")
    loaded = Embeddings.load(tmp_path / "e")
    sub = loaded.subset(["doc-5", "doc-0", "doc-5"])
    assert sub.ids.tolist() == ["doc-5", "doc-0", "doc-5"]
    np.testing.assert_array_equal(sub.vectors, emb.vectors[[5, 0, 5]])
    assert not isinstance(sub.vectors, np.memmap)
    with pytest.raises(DanceError, match=r"2 id\(s\) have no vector in .*e.npy, e.g. 'x', 'y'"):
        loaded.subset(["doc-1", "x", "y"])


def test_check_finite_names_rows_and_file(tmp_path):
    emb = make(n=10)
    assert emb.check_finite() is emb
    emb.vectors[3, 1] = np.nan
    emb.vectors[8, 0] = -np.inf
    emb.save(tmp_path / "bad")
    loaded = Embeddings.load(tmp_path / "bad")
    with pytest.raises(DanceError) as info:
        loaded.check_finite(chunk_rows=4)  # the bad rows fall in different chunks
    message = str(info.value)
    assert str(tmp_path / "bad.npy") in message and "2 vector(s)" in message
    assert "3 (doc-3)" in message and "8 (doc-8)" in message and "doc-4" not in message
    half = Embeddings(emb.ids, emb.vectors.astype(np.float16))
    with pytest.raises(DanceError, match="not saved"):
        half.check_finite()
