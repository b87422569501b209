"""Collections from files: MS MARCO manifests (YAML or dict) and BEIR folders; qrels assembly and checks.

A manifest names the files of an MS MARCO-style collection::

    format: msmarco-doc            # or msmarco-passage
    name: msmarco-doc-dev          # optional (default: the manifest's / corpus file's name)
    corpus: msmarco-docs.tsv.gz
    queries: {train: msmarco-doctrain-queries.tsv.gz, dev: msmarco-docdev-queries.tsv.gz}
    qrels:   {train: msmarco-doctrain-qrels.tsv.gz,   dev: msmarco-docdev-qrels.tsv.gz}
    min_relevance: 1               # optional
    random_splits: {seed: 13, train: 0.6, dev: 0.2, test: 0.2}   # optional: seeded splits of all queries

``queries`` / ``qrels`` map split names to files (a split's queries are those of its query file, or, without
one, the judged queries of its qrels file); a single path instead of a mapping gives no named splits. Relative
paths are resolved against the manifest's folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import DanceError, InputError
from .collection import Collection, Corpus, FileCorpus
from .formats import QrelsTable, parse_beir_query, read_beir_qrels, read_qrels, read_queries
from .splits import DEFAULT_FRACTIONS, seeded_splits

logger = logging.getLogger(__name__)

MANIFEST_FORMATS = ("msmarco-doc", "msmarco-passage")
_MANIFEST_KEYS = {"format", "name", "corpus", "queries", "qrels", "min_relevance", "random_splits"}
_SPLIT_ORDER = ("train", "dev", "validation", "test")


def _examples(values: Iterable[str], limit: int = 3) -> str:
    shown = []
    for value in values:
        shown.append(repr(value))
        if len(shown) == limit:
            break
    return ", ".join(shown)


def build_qrels(tables: Iterable[QrelsTable], queries: Mapping[str, str], corpus: Corpus, *,
                strict: bool = False, level: int = logging.WARNING) -> dict[str, dict[str, int]]:
    """Merge qrels tables into ``{qid: {docid: grade}}``, keeping only known queries and corpus documents.

    Judgments naming a query id not in ``queries`` or a document id not in ``corpus`` are counted, reported at
    logging ``level`` and dropped; with ``strict`` they raise :class:`InputError` instead. Two different grades
    for the same (query, document) are an :class:`InputError`.
    """
    qrels: dict[str, dict[str, int]] = {}
    for table in tables:
        if not len(table):
            continue
        doc_known = corpus.contains(table.docids)
        unknown_q: dict[str, None] = {}
        unknown_d: dict[str, None] = {}
        dropped = 0
        first_bad: int | None = None
        for qid, docid, grade, line, known in zip(table.qids, table.docids, table.grades, table.lines,
                                                  doc_known.tolist()):
            q_known = qid in queries
            if not (q_known and known):
                dropped += 1
                if first_bad is None:
                    first_bad = line
                if not q_known:
                    unknown_q[qid] = None
                if not known:
                    unknown_d[docid] = None
                continue
            judged = qrels.setdefault(qid, {})
            previous = judged.get(docid)
            if previous is not None and previous != grade:
                raise InputError(table.path, f"one grade per (query, document); ({qid!r}, {docid!r}) already "
                                             f"has grade {previous}", line=line, got=str(grade))
            judged[docid] = grade
        if dropped:
            parts = []
            if unknown_q:
                parts.append(f"{len(unknown_q)} unknown query id(s) (e.g. {_examples(unknown_q)})")
            if unknown_d:
                parts.append(f"{len(unknown_d)} unknown document id(s) (e.g. {_examples(unknown_d)})")
            summary = f"{dropped} of {len(table)} judgment(s) name " + " and ".join(parts)
            if strict:
                raise InputError(table.path, f"qrels naming only known query and document ids ({summary}; "
                                             "this is the first such line)", line=first_bad)
            logger.log(level, "%s: dropped %s", table.path, summary)
    return qrels


def _split_names(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [n for n in _SPLIT_ORDER if n in names]
    return known + sorted(n for n in names if n not in known)


def _random_splits(spec: object, qids: Iterable[str]) -> dict[str, list[str]]:
    if not isinstance(spec, Mapping):
        raise DanceError("random_splits must be a mapping such as {seed: 13, train: 0.6, dev: 0.2, test: 0.2}")
    spec = dict(spec)
    seed = spec.pop("seed", 13)
    if not isinstance(seed, int):
        raise DanceError(f"random_splits.seed must be an integer, got {seed!r}")
    return seeded_splits(qids, seed=seed, fractions=spec or DEFAULT_FRACTIONS)


def _resolve(value: object, base: Path, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise DanceError(f"manifest {what}: expected a file path, got {value!r}")
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_files(value: object, base: Path, what: str) -> str | dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(split): _resolve(path, base, f"{what}.{split}") for split, path in value.items()}
    return _resolve(value, base, what)


def load_manifest(manifest: Mapping | str | os.PathLike, *, min_relevance: int | None = None,
                  strict: bool = False) -> Collection:
    """Load an MS MARCO-style collection from a manifest dict or a YAML manifest file (see module docstring)."""
    if isinstance(manifest, (str, os.PathLike)):
        import yaml

        path = Path(manifest)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise InputError(path, "a readable YAML manifest", got=str(exc)) from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(path, "a YAML manifest", got=str(exc).splitlines()[0]) from None
        if not isinstance(data, Mapping):
            raise InputError(path, "a YAML mapping with format, corpus, queries and qrels")
        base = path.resolve().parent
        default_name = path.stem
    else:
        data = manifest
        base = Path.cwd()
        default_name = None
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise DanceError(f"unknown manifest key(s) {sorted(unknown)}; expected some of {sorted(_MANIFEST_KEYS)}")
    fmt = data.get("format")
    if fmt not in MANIFEST_FORMATS:
        raise DanceError(f"manifest format must be one of {', '.join(MANIFEST_FORMATS)}, got {fmt!r}")
    for key in ("corpus", "queries"):
        if key not in data:
            raise DanceError(f"manifest needs a {key!r} entry")
    corpus_path = _resolve(data["corpus"], base, "corpus")
    queries_files = _resolve_files(data["queries"], base, "queries")
    qrels_files = _resolve_files(data.get("qrels"), base, "qrels")
    name = str(data.get("name") or default_name or Path(corpus_path).name.split(".")[0])
    effective_min = min_relevance if min_relevance is not None else data.get("min_relevance", 1)
    if not isinstance(effective_min, int) or isinstance(effective_min, bool):
        raise DanceError(f"min_relevance must be an integer grade, got {effective_min!r}")

    corpus = FileCorpus.open(corpus_path, fmt)
    queries: dict[str, str] = {}
    query_splits: dict[str, list[str]] = {}
    query_file_items = queries_files.items() if isinstance(queries_files, dict) else [(None, queries_files)]
    for split, qpath in query_file_items:
        part = read_queries(qpath)
        for qid, text in part.items():
            if qid in queries and queries[qid] != text:
                raise InputError(qpath, f"the same text for query {qid!r} as in the other query files",
                                 got=text)
            queries[qid] = text
        if split is not None:
            query_splits[split] = list(part)

    tables: list[tuple[str | None, QrelsTable]] = []
    if qrels_files is not None:
        items = qrels_files.items() if isinstance(qrels_files, dict) else [(None, qrels_files)]
        tables = [(split, read_qrels(qpath)) for split, qpath in items]
    qrels = build_qrels((t for _, t in tables), queries, corpus, strict=strict)

    splits: dict[str, list[str]] = {}
    for split in _split_names([*query_splits, *(s for s, _ in tables if s is not None)]):
        if split in query_splits:
            splits[split] = query_splits[split]
        else:
            table = next(t for s, t in tables if s == split)
            splits[split] = [q for q in dict.fromkeys(table.qids) if q in queries]
    if "random_splits" in data:
        if splits:
            raise DanceError("a manifest gives either split-keyed query/qrels files or random_splits, not both")
        splits = _random_splits(data["random_splits"], queries)

    source: dict = {"format": fmt, "name": name, "corpus": corpus_path, "queries": queries_files,
                    "min_relevance": effective_min}
    if qrels_files is not None:
        source["qrels"] = qrels_files
    if "random_splits" in data:
        source["random_splits"] = dict(data["random_splits"])
    return Collection(name=name, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)


def _find(folder: Path, names: Iterable[str], what: str) -> Path:
    for candidate in names:
        if (folder / candidate).is_file():
            return folder / candidate
    raise InputError(folder, f"a BEIR folder with {what}")


def is_beir_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a BEIR ``corpus.jsonl`` (or ``.jsonl.gz``)."""
    folder = Path(path)
    return folder.is_dir() and any((folder / n).is_file() for n in ("corpus.jsonl", "corpus.jsonl.gz"))


def load_beir(folder: str | os.PathLike, *, min_relevance: int | None = None, strict: bool = False,
              name: str | None = None) -> Collection:
    """Load a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (one split per file).

    The corpus streams from disk; every query of ``queries.jsonl`` is kept; a split's queries are the known
    queries judged in its qrels file.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InputError(root, "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    corpus_path = _find(root, ("corpus.jsonl", "corpus.jsonl.gz"), "corpus.jsonl")
    queries_path = _find(root, ("queries.jsonl", "queries.jsonl.gz"), "queries.jsonl")
    qrels_dir = root / "qrels"
    qrels_paths = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not qrels_paths:
        raise InputError(qrels_dir, "a qrels/ folder with one <split>.tsv file per split")
    corpus = FileCorpus.open(corpus_path, "beir")
    queries = read_queries(queries_path, parse_beir_query)
    tables = {p.stem: read_beir_qrels(p) for p in qrels_paths}
    qrels = build_qrels(tables.values(), queries, corpus, strict=strict)
    splits = {split: [q for q in dict.fromkeys(tables[split].qids) if q in queries]
              for split in _split_names(tables)}
    effective_min = 1 if min_relevance is None else min_relevance
    name = name or root.name
    source = {"format": "beir", "name": name, "path": str(root), "min_relevance": effective_min}
    return Collection(name=name, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)
