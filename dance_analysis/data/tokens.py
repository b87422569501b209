"""Token cache: every text of a corpus (or query set) tokenised once into memory-mapped arrays.

A cache is a folder::

    meta.json     {"format": "dance-token-cache", "version": 1, "count", "total_tokens", "dtype", "pad_id",
                   "max_length", "tokenizer", "tokenizer_class", "vocab_size"}
    tokens.bin    all token ids back to back (uint16 when the vocabulary fits, else int32), raw little-endian
    offsets.npy   int64 [count + 1]: row i is tokens[offsets[i]:offsets[i + 1]]
    lengths.npy   int32 [count]
    ids.npy       str [count]: the document / query id of each row

It is built in one streaming pass (texts are tokenised in chunks and appended to ``tokens.bin``), so memory
stays flat whatever the corpus size. Row ``i`` holds exactly
``tokenizer(text_i, truncation=True, max_length=max_length)["input_ids"]`` (a text whose fields are kept apart,
``doc_text: url-title-body``, first gets the tokenizer's separator token between them:
:func:`dance_analysis.data.formats.join_fields`). The folder is assembled under a
temporary name and renamed into place, so a cache is either complete or absent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import building_dir, read_json
from ..errors import DanceError
from ..faults import fault_point
from .cache import cache_root
from .collection import Collection, _IdAccumulator
from .formats import join_fields

if TYPE_CHECKING:
    import torch

FORMAT = "dance-token-cache"
VERSION = 1
DEFAULT_CHUNK = 2048
#: Rows per resumable part of a cache build (:func:`build_in_parts`): about 1.6 GB of TSV for MS MARCO documents.
PART_ROWS = 1 << 18
_UINT16_LIMIT = 1 << 16
#: Source keys that do not change any text (left out of the cache key).
_NON_TEXT_KEYS = {"min_relevance", "seed", "random_splits", "name"}


class TokenCache:
    """A memory-mapped token cache (see module docstring). Open with :meth:`open` or build with
    :func:`build_token_cache`."""

    def __init__(self, path: Path, meta: dict, ids: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                 tokens: np.ndarray):
        self.path = path
        self.meta = meta
        self.ids = ids
        self.lengths = lengths
        self.offsets = offsets
        self.tokens = tokens
        self.pad_id = int(meta["pad_id"])
        self.max_length = int(meta["max_length"])

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenCache:
        """Open a cache folder (token ids memory-mapped read-only); a damaged folder is a :class:`DanceError`."""
        folder = Path(path)
        meta_path = folder / "meta.json"
        meta = read_json(meta_path, "the meta.json of a token cache", kind=dict)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DanceError(f"{meta_path}: expected a {FORMAT} version {VERSION}, got "
                             f"{meta.get('format')!r} version {meta.get('version')!r}")
        try:
            ids = np.load(folder / "ids.npy", allow_pickle=False)
            lengths = np.load(folder / "lengths.npy", allow_pickle=False)
            offsets = np.load(folder / "offsets.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DanceError(f"{folder}: token cache arrays are missing or unreadable ({exc})") from None
        count, total = int(meta["count"]), int(meta["total_tokens"])
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        token_file = folder / "tokens.bin"
        size = token_file.stat().st_size if token_file.is_file() else -1
        if (len(ids) != count or len(lengths) != count or len(offsets) != count + 1
                or size != total * dtype.itemsize or (count and int(offsets[-1]) != total)):
            raise DanceError(f"{folder}: token cache is inconsistent (meta.json says {count} rows / {total} "
                             f"tokens; ids {len(ids)}, lengths {len(lengths)}, offsets {len(offsets)}, "
                             f"tokens.bin {size} bytes); delete the folder to rebuild it")
        tokens = (np.memmap(token_file, dtype=dtype, mode="r", shape=(total,)) if total
                  else np.zeros(0, dtype=dtype))
        return cls(folder, meta, ids, lengths, offsets, tokens)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, i: int) -> np.ndarray:
        """The token ids of row ``i`` (a read-only view)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a token cache of {len(self)} rows")
        i = int(i) % len(self)
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``: int64 tensors [B, L] padded with ``pad_id`` to the longest row."""
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        lengths = self.lengths[idx].astype(np.int64)
        width = int(lengths.max()) if len(idx) else 0
        input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        for row, (i, n) in enumerate(zip(idx.tolist(), lengths.tolist())):
            start = int(self.offsets[i])
            input_ids[row, :n] = self.tokens[start:start + n]
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return torch.from_numpy(input_ids), torch.from_numpy(mask)

    def __repr__(self) -> str:
        return (f"TokenCache({str(self.path)!r}, {len(self)} rows, {int(self.meta['total_tokens'])} tokens, "
                f"{self.meta['dtype']}, max_length={self.max_length})")


def token_dtype(tokenizer: Any) -> np.dtype:
    """uint16 when every token id (the full vocabulary with added tokens) fits in 16 bits, else int32."""
    return np.dtype(np.uint16) if len(tokenizer) <= _UINT16_LIMIT else np.dtype(np.int32)


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    # A text that keeps its fields apart (doc_text: url-title-body) gets the tokenizer's separator between them.
    separator = getattr(tokenizer, "sep_token", None)
    texts = [join_fields(text, separator) for text in texts]
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=False)
    return encoded["input_ids"]


def _chunks(items: Iterable[tuple[str, str]], batch_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """``(ids, texts)`` of ``batch_size`` items at a time; a text that is not a string is a DanceError."""
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, batch_size))
        if not chunk:
            return
        for record_id, text in chunk:
            if not isinstance(text, str):
                raise DanceError(f"text of {record_id!r} is {type(text).__name__}, expected str")
        yield [str(record_id) for record_id, _ in chunk], [text for _, text in chunk]


_WORKER_TOKENIZER: Any = None


def _start_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one process per core already
    _WORKER_TOKENIZER = tokenizer


def _flat(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths int32 [n], token ids int64, back to back)`` of tokenised rows."""
    lengths = np.fromiter((len(row) for row in encoded), dtype=np.int32, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    return lengths, flat


def _tokenize_in_worker(texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    # Arrays, not lists of ints: far less to pickle back to the main process.
    return _flat(_tokenize(_WORKER_TOKENIZER, texts, max_length))


def _encoded_chunks(chunks: Iterator[tuple[list[str], list[str]]], tokenizer: Any, max_length: int,
                    workers: int) -> Iterator[tuple[list[str], tuple[np.ndarray, np.ndarray]]]:
    """``(ids, (lengths, token ids back to back))`` per chunk, in order. With ``workers`` > 1 the chunks are
    tokenised by that many worker processes (each with its own copy of the tokenizer), at most ``2 * workers``
    chunks in flight, so memory stays bounded however long the stream."""
    if workers <= 1:
        for ids, texts in chunks:
            yield ids, _flat(_tokenize(tokenizer, texts, max_length))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")   # no fork of a process that may hold threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(tokenizer,)) as pool:
        pending: deque = deque()
        for ids, texts in chunks:
            pending.append((ids, pool.submit(_tokenize_in_worker, texts, max_length)))
            if len(pending) >= 2 * workers:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def build_token_cache(items: Iterable[tuple[str, str]], tokenizer: Any, max_length: int,
                      path: str | os.PathLike, total: int | None = None, desc: str = "tokenize", *,
                      batch_size: int = DEFAULT_CHUNK, progress: bool | None = None,
                      overwrite: bool = True, workers: int = 1, extra_meta: dict | None = None) -> TokenCache:
    """Tokenise ``(id, text)`` pairs in one streaming pass into a cache folder at ``path``.

    Texts go to ``tokenizer(chunk, truncation=True, max_length=max_length)`` ``batch_size`` at a time; the ids
    are appended to ``tokens.bin``, so only a few chunks of texts are in memory. ``workers`` > 1 tokenises the
    chunks in that many processes (the same ids, in the same order). ``progress=None`` shows a progress bar on a
    terminal only. An existing folder at ``path`` is replaced (kept, with ``overwrite=False``). ``extra_meta``
    is added to ``meta.json``.
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise DanceError(f"max_length must be a positive integer, got {max_length!r}")
    from tqdm.auto import tqdm

    final = Path(path)
    dtype = token_dtype(tokenizer)
    limit = _UINT16_LIMIT if dtype == np.uint16 else np.iinfo(np.int32).max
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = _IdAccumulator()
    lengths = array("i")
    count = 0
    written = 0
    with building_dir(final, replace=overwrite) as tmp:
        with open(tmp / "tokens.bin", "wb") as out, \
                tqdm(total=total, desc=desc, unit=" texts", disable=None if progress is None else not progress,
                     smoothing=0.05) as bar:
            for chunk_ids, (chunk_lengths, flat) in _encoded_chunks(_chunks(items, batch_size), tokenizer,
                                                                     max_length, workers):
                for record_id in chunk_ids:
                    ids.append(record_id)
                if len(flat) and (flat.min() < 0 or flat.max() >= limit):
                    raise DanceError(f"token id {int(flat.max())} does not fit the cache's {dtype} "
                                     f"(tokenizer length {len(tokenizer)})")
                out.write(flat.astype(dtype.newbyteorder("<"), copy=False).tobytes())
                lengths.frombytes(np.ascontiguousarray(chunk_lengths, dtype=np.int32).tobytes())
                count += len(chunk_ids)
                written += len(flat)
                bar.update(len(chunk_ids))
        id_array = ids.finish()
        if len(np.unique(id_array)) != len(id_array):
            raise DanceError(f"token cache {final}: the ids given are not unique")
        length_array = np.frombuffer(lengths, dtype=np.int32).copy() if count else np.zeros(0, np.int32)
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(length_array, out=offsets[1:])
        np.save(tmp / "ids.npy", id_array, allow_pickle=False)
        np.save(tmp / "lengths.npy", length_array, allow_pickle=False)
        np.save(tmp / "offsets.npy", offsets, allow_pickle=False)
        meta = {"format": FORMAT, "version": VERSION, "count": count, "total_tokens": written,
                "dtype": dtype.name, "pad_id": int(pad_id), "max_length": max_length,
                "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
                "tokenizer_class": type(tokenizer).__name__, "vocab_size": len(tokenizer), **(extra_meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TokenCache.open(final)


def tokenizer_fingerprint(tokenizer: Any) -> dict:
    """What identifies a tokenizer's output: its class, length and a hash of its full definition (or vocabulary).

    Not its name or folder: the tokenizer saved with a checkpoint's encoder is the one it was loaded from, and
    must open the same token caches (a resumed run, the async miner and the ranks of a prepared multi-process run
    load it from ``checkpoint-<step>/encoder``; a new key would tokenise the whole corpus again)."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        from tokenizers import Tokenizer

        # truncation / padding are call-time settings that the backend remembers from its last call
        definition = Tokenizer.from_str(backend.to_str())
        definition.no_truncation()
        definition.no_padding()
        digest.update(definition.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return {"class": type(tokenizer).__name__, "length": len(tokenizer), "definition": digest.hexdigest()}


def _query_items(collection: Collection) -> list[tuple[str, str]]:
    return [(qid, collection.queries[qid]) for qid in sorted(collection.queries)]


def cache_key(collection: Collection, side: str, tokenizer: Any, max_length: int, prompt: str = "") -> str:
    """Hash of (collection source and content, tokenizer, max_length, side, and the prompt when there is one) naming
    a cache folder; without a prompt the key is the one of caches built before prompts existed."""
    if side == "doc":
        content = collection.corpus.fingerprint()
    else:
        digest = hashlib.sha256()
        for qid, text in _query_items(collection):
            digest.update(json.dumps([qid, text]).encode())
        content = digest.hexdigest()
    source = {k: v for k, v in collection.source.items() if k not in _NON_TEXT_KEYS}
    parts = {"source": source, "content": content, "tokenizer": tokenizer_fingerprint(tokenizer),
             "max_length": max_length, "side": side, "version": VERSION}
    if prompt:
        parts["prompt"] = prompt
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_tokens(collection: Collection, side: str, tokenizer: Any, max_length: int,
                  cache_dir: str | os.PathLike | None = None, *, progress: bool | None = None, workers: int = 1,
                  build: bool = True, part_rows: int = PART_ROWS, prompt: str = "") -> TokenCache:
    """The token cache of a collection's documents (``side="doc"``, corpus order) or of all its queries
    (``side="query"``, sorted qid order), built on first use under ``cache_dir`` (default
    ``<cache>/tokens``) and reused while collection, tokenizer and ``max_length`` stay the same.

    A cache is built in parts of ``part_rows`` rows (``<folder>.parts/part-<i>/``, each a complete cache published
    atomically) that are then joined: an interrupted build resumes at the first missing part. ``workers`` > 1
    tokenises with that many processes. ``build=False`` never builds: a missing cache is a :class:`DanceError`
    (the ranks of a multi-process run only open the caches that ``dance-train --prepare`` built). ``prompt`` is put
    before every text (a model's ``query_prompt`` / ``document_prompt``); it is part of the cache key, and the
    prompt is recorded in ``meta.json``.
    """
    if side not in ("doc", "query"):
        raise DanceError(f"side must be 'doc' or 'query', got {side!r}")
    if not isinstance(prompt, str):
        raise DanceError(f"prompt must be a string, got {prompt!r}")
    key = cache_key(collection, side, tokenizer, max_length, prompt)
    folder = cache_folder(collection, side, max_length, key, cache_dir)
    if (folder / "meta.json").is_file():
        try:
            return TokenCache.open(folder)
        except DanceError:
            if not build:
                raise
            # damaged: rebuild below
    if not build:
        raise DanceError(f"{folder}: the {side} token cache of {collection.name} is missing; build it before "
                         f"the process group starts (dance-train RECIPE --prepare)")
    if side == "doc":
        items: Iterable[tuple[str, str]] = collection.corpus.iter_texts()
        total = len(collection.corpus)
    else:
        items = _query_items(collection)
        total = len(items)
    if prompt:
        items = ((record_id, prompt + text if isinstance(text, str) else text) for record_id, text in items)
    fault_point("token-cache", 0)
    return build_in_parts(items, tokenizer, max_length, folder, total=total, part_rows=part_rows,
                          desc=f"tokenize {collection.name} {side}s", progress=progress, workers=workers,
                          extra_meta={"prompt": prompt} if prompt else None)


def cache_folder(collection: Collection, side: str, max_length: int, key: str,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a token cache (``<cache_dir or <cache>/tokens>/<name>-<side>-<max_length>-<key>``)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "tokens"
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", collection.name)[:60]
    return root / f"{label}-{side}-{max_length}-{key}"


def _open_part(folder: Path, part_rows: int) -> TokenCache | None:
    if not (folder / "meta.json").is_file():
        return None
    try:
        part = TokenCache.open(folder)
    except DanceError:
        return None
    return part if part.meta.get("part_rows") == part_rows and len(part) <= part_rows else None


def build_in_parts(items: Iterable[tuple[str, str]], tokenizer: Any, max_length: int, path: str | os.PathLike, *,
                   total: int | None = None, part_rows: int = 0, desc: str = "tokenize",
                   progress: bool | None = None, workers: int = 1, extra_meta: dict | None = None) -> TokenCache:
    """:func:`build_token_cache` in resumable parts of ``part_rows`` rows (0: one part), joined at the end.

    Parts live in ``<path>.parts/part-<i>/``; a part left complete by an interrupted build is reused (its rows are
    read from ``items`` again but not tokenised; their ids must be the same). The joined cache is byte-for-byte
    the cache one :func:`build_token_cache` pass writes; the parts folder is removed once it is in place.
    """
    final = Path(path)
    part_rows = int(part_rows) if part_rows and part_rows > 0 else (1 << 62)
    parts_root = final.with_name(final.name + ".parts")
    parts_root.mkdir(parents=True, exist_ok=True)
    iterator = iter(items)
    parts: list[TokenCache] = []
    while True:
        folder = parts_root / f"part-{len(parts):05d}"
        part = _open_part(folder, part_rows)
        if part is not None:
            seen = [str(record_id) for record_id, _ in itertools.islice(iterator, len(part))]
            if seen != part.ids.tolist():
                raise DanceError(f"{folder}: the rows of this part of an interrupted build are not those of the "
                                 f"collection any more; delete {parts_root} and build again")
        else:
            rows = itertools.islice(iterator, part_rows)
            part = build_token_cache(rows, tokenizer, max_length, folder, total=total,
                                     desc=f"{desc} (part {len(parts) + 1})" if part_rows < (1 << 62) else desc,
                                     progress=progress, workers=workers,
                                     extra_meta={**(extra_meta or {}), "part_rows": part_rows})
        parts.append(part)
        if len(part) < part_rows:
            break
    joined = _join_parts(parts, final)
    import shutil

    shutil.rmtree(parts_root, ignore_errors=True)
    return joined


def _join_parts(parts: list[TokenCache], final: Path) -> TokenCache:
    """Publish the concatenation of ``parts`` (in order) as the cache ``final``."""
    import shutil

    meta = {k: v for k, v in parts[0].meta.items() if k != "part_rows"}
    ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, dtype="<U1")
    if len(np.unique(ids)) != len(ids):
        raise DanceError(f"token cache {final}: the ids given are not unique")
    lengths = np.concatenate([p.lengths for p in parts]).astype(np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    meta.update(count=int(len(lengths)), total_tokens=int(offsets[-1]))
    with building_dir(final, replace=final.exists()) as tmp:
        with open(tmp / "tokens.bin", "wb") as out:
            for part in parts:
                with open(part.path / "tokens.bin", "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        np.save(tmp / "ids.npy", ids, allow_pickle=False)
        np.save(tmp / "lengths.npy", lengths, allow_pickle=False)
        np.save(tmp / "offsets.npy", offsets, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TokenCache.open(final)
