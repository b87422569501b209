"""Collections from files: manifests (YAML or dict) and folders (BEIR); qrels assembly and checks.

A manifest names the files of a collection in one of the formats of
:data:`dance_analysis.data.formats.FORMATS`::

    format: msmarco-doc            # or msmarco-passage, beir, ... (any registered format)
    name: msmarco-doc-dev          # optional (default: the manifest's / corpus file's name)
    corpus: msmarco-docs.tsv.gz
    queries: {train: msmarco-doctrain-queries.tsv.gz, dev: msmarco-docdev-queries.tsv.gz}
    qrels:   {train: msmarco-doctrain-qrels.tsv.gz,   dev: msmarco-docdev-qrels.tsv.gz}
    min_relevance: 1               # optional
    random_splits: {seed: 13, train: 0.6, dev: 0.2, test: 0.2}   # optional: seeded splits of all queries
    doc_text: url-title-body       # optional (msmarco-doc): the reference code's document text (default title-body)

``queries`` / ``qrels`` map split names to files (a split's queries are those of its query file, or, without
one, the judged queries of its qrels file); a single path instead of a mapping gives no named splits. Relative
paths are resolved against the manifest's folder. A malformed YAML manifest is an :class:`InputError` naming
the file and the line of the offending key; a malformed dict manifest a :class:`DanceError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DanceError, InputError
from .collection import Collection, Corpus, FileCorpus
from .formats import FORMATS, CollectionFormat, QrelsTable, folder_format, read_queries
from .splits import DEFAULT_FRACTIONS, seeded_splits

logger = logging.getLogger(__name__)

_MANIFEST_KEYS = {"format", "name", "corpus", "queries", "qrels", "min_relevance", "random_splits", "doc_text"}
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


class _Manifest:
    """Where a manifest came from, to name it in errors: a YAML file (path and the line of each top-level key)
    or a dict (no file)."""

    def __init__(self, path: Path | None = None, text: str | None = None):
        self.path = path
        self.lines: dict[str, int] = {}
        if text is not None:
            import yaml

            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if isinstance(node, yaml.MappingNode):
                self.lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value
                              if isinstance(key, yaml.ScalarNode)}

    def error(self, expected: str, key: str | None = None, got: object = None) -> DanceError:
        """An :class:`InputError` naming the file and the line of ``key`` (a dict manifest: a DanceError)."""
        if self.path is None:
            return DanceError(f"manifest: expected {expected}" + (f", got {got!r}" if got is not None else ""))
        shown = None if got is None else got if isinstance(got, str) else repr(got)
        return InputError(self.path, expected, line=self.lines.get(key) if key else None, got=shown)


def _random_splits(spec: object, qids: Iterable[str], where: _Manifest) -> dict[str, list[str]]:
    if not isinstance(spec, Mapping):
        raise where.error("random_splits as a mapping such as {seed: 13, train: 0.6, dev: 0.2, test: 0.2}",
                          "random_splits", spec)
    spec = dict(spec)
    seed = spec.pop("seed", 13)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise where.error("an integer random_splits.seed", "random_splits", seed)
    return seeded_splits(qids, seed=seed, fractions=spec or DEFAULT_FRACTIONS)


def _resolve(value: object, base: Path, what: str, where: _Manifest) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise where.error(f"a file path for {what}", what.split(".")[0], value)
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_files(value: object, base: Path, what: str, where: _Manifest) -> str | dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(split): _resolve(path, base, f"{what}.{split}", where) for split, path in value.items()}
    return _resolve(value, base, what, where)


def load_manifest(manifest: Mapping | str | os.PathLike, *, min_relevance: int | None = None,
                  strict: bool = False, doc_text: str | None = None) -> Collection:
    """Load a collection from a manifest dict or a YAML manifest file (see the module docstring); ``doc_text``
    overrides the manifest's."""
    if isinstance(manifest, (str, os.PathLike)):
        import yaml

        path = Path(manifest)
        try:
            text = path.read_text(encoding="utf-8-sig")
            data = yaml.safe_load(text)
        except OSError as exc:
            raise InputError(path, "a readable YAML manifest", got=str(exc)) from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(path, "a YAML manifest", got=str(exc).splitlines()[0]) from None
        if not isinstance(data, Mapping):
            raise InputError(path, "a YAML mapping with format, corpus, queries and qrels")
        where = _Manifest(path, text)
        base = path.resolve().parent
        default_name = path.stem
    else:
        data = manifest
        where = _Manifest()
        base = Path.cwd()
        default_name = None
    unknown = [key for key in data if key not in _MANIFEST_KEYS]
    if unknown:
        raise where.error(f"manifest keys among {', '.join(sorted(_MANIFEST_KEYS))} (unknown manifest key "
                          f"{unknown[0]!r})", str(unknown[0]))
    fmt: CollectionFormat | None = FORMATS.get(data.get("format")) if isinstance(data.get("format"), str) else None
    if fmt is None:
        raise where.error(f"a format among {', '.join(FORMATS)}", "format", data.get("format"))
    for key in ("corpus", "queries"):
        if key not in data:
            raise where.error(f"a {key!r} entry")
    corpus_path = _resolve(data["corpus"], base, "corpus", where)
    queries_files = _resolve_files(data["queries"], base, "queries", where)
    qrels_files = _resolve_files(data.get("qrels"), base, "qrels", where)
    name = str(data.get("name") or default_name or Path(corpus_path).name.split(".")[0])
    if min_relevance is None:
        min_relevance = data.get("min_relevance", 1)
        if not isinstance(min_relevance, int) or isinstance(min_relevance, bool):
            raise where.error("an integer grade for min_relevance", "min_relevance", min_relevance)
    effective_min = min_relevance

    doc_text = doc_text or data.get("doc_text")
    if doc_text is not None:
        valid = ["title-body", *fmt.doc_texts]
        if doc_text not in valid:
            raise where.error(f"doc_text one of {', '.join(valid)} for the {fmt.name} format", "doc_text", doc_text)
        if doc_text == "title-body":
            doc_text = None
    corpus = FileCorpus.open(corpus_path, fmt.name, doc_text=doc_text)
    queries: dict[str, str] = {}
    query_splits: dict[str, list[str]] = {}
    query_file_items = queries_files.items() if isinstance(queries_files, dict) else [(None, queries_files)]
    for split, qpath in query_file_items:
        part = read_queries(qpath, fmt.queries)
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
        tables = [(split, fmt.qrels(qpath)) for split, qpath in items]
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
            raise where.error("either split-keyed query/qrels files or random_splits, not both", "random_splits")
        splits = _random_splits(data["random_splits"], queries, where)

    source: dict = {"format": fmt.name, "name": name, "corpus": corpus_path, "queries": queries_files,
                    "min_relevance": effective_min}
    if qrels_files is not None:
        source["qrels"] = qrels_files
    if "random_splits" in data:
        source["random_splits"] = dict(data["random_splits"])
    if doc_text is not None:
        source["doc_text"] = doc_text
    return Collection(name=name, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)


def _find(folder: Path, names: Iterable[str], label: str) -> Path:
    for candidate in names:
        if (folder / candidate).is_file():
            return folder / candidate
    raise InputError(folder, f"a {label} folder with {next(iter(names))}")


def is_beir_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder of a registered folder format (a BEIR ``corpus.jsonl`` or ``.jsonl.gz``)."""
    return folder_format(path) is not None


def load_folder(folder: str | os.PathLike, *, format: str = "beir", min_relevance: int | None = None,
                strict: bool = False, name: str | None = None) -> Collection:
    """Load a collection folder of a registered folder format (BEIR: ``corpus.jsonl``, ``queries.jsonl`` and
    ``qrels/<split>.tsv``, one split per file).

    The corpus streams from disk; every query of the query file is kept; a split's queries are the known
    queries judged in its qrels file.
    """
    fmt = FORMATS[format]
    layout = fmt.folder
    if layout is None:
        raise DanceError(f"the {format} format does not come as a folder; name its files in a manifest")
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InputError(root, f"a {layout.label} folder ({layout.corpus[0]}, {layout.queries[0]}, "
                               f"{layout.qrels.replace('*', '<split>')})")
    corpus_path = _find(root, layout.corpus, layout.label)
    queries_path = _find(root, layout.queries, layout.label)
    qrels_dir = root / Path(layout.qrels).parent
    qrels_paths = sorted(root.glob(layout.qrels))
    if not qrels_paths:
        raise InputError(qrels_dir, f"a {qrels_dir.name}/ folder with one <split>{Path(layout.qrels).suffix} "
                                    f"file per split")
    corpus = FileCorpus.open(corpus_path, fmt.name)
    queries = read_queries(queries_path, fmt.queries)
    tables = {p.stem: fmt.qrels(p) for p in qrels_paths}
    qrels = build_qrels(tables.values(), queries, corpus, strict=strict)
    splits = {split: [q for q in dict.fromkeys(tables[split].qids) if q in queries]
              for split in _split_names(tables)}
    effective_min = 1 if min_relevance is None else min_relevance
    name = name or root.name
    source = {"format": fmt.name, "name": name, "path": str(root), "min_relevance": effective_min}
    return Collection(name=name, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)


def load_beir(folder: str | os.PathLike, *, min_relevance: int | None = None, strict: bool = False,
              name: str | None = None) -> Collection:
    """Load a BEIR folder (:func:`load_folder` with the ``beir`` format)."""
    return load_folder(folder, format="beir", min_relevance=min_relevance, strict=strict, name=name)
