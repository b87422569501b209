"""Collections (corpus, queries, graded qrels, named query splits) and the token cache.

``load_collection`` is the one entry point every command uses::

    load_collection("rag24-sample")                       # the built-in real sample (fetched once, cached)
    load_collection("irds:msmarco-document/dev")          # through ir_datasets, when installed
    load_collection("path/to/beir/scifact")               # a BEIR folder
    load_collection("msmarco-doc.yaml")                   # a YAML manifest of MS MARCO files
    load_collection({"format": "msmarco-passage", "corpus": ..., "queries": {...}, "qrels": {...}})
    load_collection(collection.source)                    # the same collection again (checkpoints record it)

This package knows nothing about models: tokenisation takes any Hugging Face tokenizer object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import DanceError
from .cache import cache_root
from .collection import Collection, Corpus, FileCorpus, InMemoryCorpus
from .formats import FORMATS, folder_format
from .irds import load_irds
from .loaders import load_folder, load_manifest
from .rag24 import DEFAULT_SEED, load_rag24, load_rag24_statements
from .splits import cross_validation_splits, fold_splits, seeded_splits
from .tokens import TokenCache, build_token_cache, cached_tokens

__all__ = [
    "cross_validation_splits", "fold_splits",
    "Collection", "Corpus", "FileCorpus", "InMemoryCorpus", "TokenCache", "build_token_cache", "cache_root",
    "cached_tokens", "load_collection", "seeded_splits",
]

_SPEC_HELP = ("expected 'rag24-sample', 'rag24-statements', 'irds:<dataset id>', a BEIR folder, a YAML manifest "
              "file, or a dict with a 'format' key")


def load_collection(spec: str | os.PathLike | Mapping, *, min_relevance: int | None = None,
                    strict: bool = False, doc_text: str | None = None) -> Collection:
    """Load a collection from a name, an ir_datasets id, a BEIR folder, a YAML manifest or a source dict.

    ``min_relevance`` overrides the collection's own threshold (2 for ``rag24-sample``, else the manifest's or
    1). With ``strict``, qrels naming unknown query or document ids are an error instead of a warning (except
    for ``rag24-sample``, whose qrels judge passages outside the sample by design).
    ``doc_text`` (manifests of the msmarco-doc format): ``url-title-body`` for the reference code's document text,
    ``title-body`` (FirstP's title and body) or ``None`` (the manifest's choice).
    The returned ``collection.source`` is a JSON-able dict that loads the same collection again.
    """
    if doc_text is not None:
        return _with_doc_text(spec, doc_text, min_relevance=min_relevance, strict=strict)
    if min_relevance is not None and (not isinstance(min_relevance, int) or isinstance(min_relevance, bool)):
        raise DanceError(f"min_relevance must be an integer grade, got {min_relevance!r}")
    if isinstance(spec, Mapping):
        return _load_source(spec, min_relevance=min_relevance, strict=strict)
    if not isinstance(spec, (str, os.PathLike)):
        raise DanceError(f"cannot load a collection from {spec!r}; {_SPEC_HELP}")
    text = str(spec)
    if text == "rag24-sample":
        return load_rag24(min_relevance=min_relevance)
    if text == "rag24-statements":
        return load_rag24_statements(min_relevance=min_relevance)
    if text.startswith("irds:"):
        return load_irds(text, min_relevance=min_relevance, strict=strict)
    path = Path(text).expanduser()
    if path.is_dir():
        fmt = folder_format(path)
        if fmt is None:
            raise DanceError(f"{path} is a folder without corpus.jsonl; {_SPEC_HELP}")
        return load_folder(path, format=fmt.name, min_relevance=min_relevance, strict=strict)
    if path.is_file():
        return load_manifest(path, min_relevance=min_relevance, strict=strict)
    raise DanceError(f"unknown collection {text!r}: no such file or folder; {_SPEC_HELP}")


def _with_doc_text(spec, doc_text: str, *, min_relevance: int | None, strict: bool) -> Collection:
    if isinstance(spec, Mapping) and "corpus" in spec:
        return load_manifest(spec, min_relevance=min_relevance, strict=strict, doc_text=doc_text)
    if isinstance(spec, (str, os.PathLike)) and Path(spec).expanduser().is_file():
        return load_manifest(Path(spec).expanduser(), min_relevance=min_relevance, strict=strict, doc_text=doc_text)
    if doc_text == "title-body":
        return load_collection(spec, min_relevance=min_relevance, strict=strict)
    raise DanceError(f"doc_text {doc_text!r} needs a collection manifest (format msmarco-doc), got {spec!r}")


def _load_source(spec: Mapping, *, min_relevance: int | None, strict: bool) -> Collection:
    fmt = spec.get("format")
    if min_relevance is None and "min_relevance" in spec:
        min_relevance = spec["min_relevance"]
    if fmt == "rag24-sample":
        return load_rag24(min_relevance=min_relevance, seed=int(spec.get("seed", DEFAULT_SEED)))
    if fmt == "rag24-statements":
        return load_rag24_statements(min_relevance=min_relevance, seed=int(spec.get("seed", DEFAULT_SEED)))
    if fmt == "irds":
        ids = spec.get("ids") or spec.get("id")
        if not ids:
            raise DanceError("an irds collection source needs 'ids' (a list of ir_datasets ids)")
        return load_irds([ids] if isinstance(ids, str) else list(ids), min_relevance=min_relevance,
                         strict=strict)
    if isinstance(fmt, str) and fmt in FORMATS:
        if FORMATS[fmt].folder is not None and "corpus" not in spec:   # the source of a folder (BEIR)
            if "path" not in spec:
                raise DanceError(f"a {fmt} collection source needs 'path' (the {FORMATS[fmt].folder.label} "
                                 f"folder)")
            return load_folder(spec["path"], format=fmt, min_relevance=min_relevance, strict=strict,
                               name=spec.get("name"))
        return load_manifest(spec, min_relevance=min_relevance, strict=strict)
    raise DanceError(f"unknown collection format {fmt!r}; expected one of rag24-sample, irds, "
                     f"{', '.join(FORMATS)}")
