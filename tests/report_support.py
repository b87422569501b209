"""Helpers for the report tests: checkpoints, runs and embedding folders written by hand after the checkpoint
contract (DESIGN.md / the trainer's layout), with embeddings and negatives written with numpy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

XSS_ID = "<script>alert(1)</script>"
XSS_TEXT = '" onerror=alert(2) x="<img src=x onerror=alert(3)>'


def fake_space(collection, dim: int, seed: int, *, concentrate: float, anisotropy: float):
    """Corpus and query vectors (all documents, all queries in sorted id order) with some structure.

    Documents: a shared offset (``anisotropy``) plus Gaussian noise with decaying variances. Queries: a mix of
    their relevant documents' mean (weight ``concentrate``) and their own noise plus a query-only offset.
    """
    rng = np.random.default_rng(seed)
    doc_ids = np.asarray(collection.corpus.ids).astype(str)
    scales = 1.0 / np.sqrt(np.arange(1, dim + 1))
    offset = rng.normal(size=dim)
    docs = rng.normal(size=(len(doc_ids), dim)) * scales + anisotropy * offset
    row = {d: i for i, d in enumerate(doc_ids.tolist())}
    query_ids = np.asarray(sorted(collection.queries), dtype=str)
    q_offset = rng.normal(size=dim)
    queries = np.empty((len(query_ids), dim))
    for i, qid in enumerate(query_ids.tolist()):
        rel = [row[d] for d in collection.relevant(qid) if d in row]
        own = rng.normal(size=dim) * scales + (1 - concentrate) * 2.0 * q_offset
        queries[i] = concentrate * docs[rel].mean(axis=0) + (1 - concentrate) * own if rel else own
    return doc_ids, docs.astype(np.float32), query_ids, queries.astype(np.float32)


def write_embeddings(folder: Path, doc_ids, docs, query_ids, queries, meta: dict | None = None) -> Path:
    """An embeddings folder: corpus.npy, corpus.ids.npy, queries.npy, queries.ids.npy (+ meta.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "corpus.npy", np.asarray(docs, dtype=np.float32), allow_pickle=False)
    np.save(folder / "corpus.ids.npy", np.asarray(doc_ids, dtype=str), allow_pickle=False)
    np.save(folder / "queries.npy", np.asarray(queries, dtype=np.float32), allow_pickle=False)
    np.save(folder / "queries.ids.npy", np.asarray(query_ids, dtype=str), allow_pickle=False)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def write_negatives(folder: Path, collection, doc_ids, docs, query_ids, queries, *, objective: str, step: int,
                    seed: int, top_k: int = 50, n: int = 5) -> Path:
    """A negatives/ folder as the contract describes, mined with plain numpy from the given vectors."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    split = "train" if "train" in collection.splits else "all"
    train = [q for q in collection.split_queries(split) if collection.relevant(q)]
    q_row = {q: i for i, q in enumerate(query_ids.tolist())}
    d_row = {d: i for i, d in enumerate(doc_ids.tolist())}
    tq = queries[[q_row[q] for q in train]]
    scores = tq @ docs.T
    top = np.argsort(-scores, axis=1)[:, :top_k]
    doc_neg = np.full((len(train), n), -1, dtype=np.int64)
    for i, q in enumerate(train):
        cand = [d for d in top[i] if doc_ids[d] not in collection.relevant(q)]
        pick = rng.choice(cand, size=min(n, len(cand)), replace=False)
        doc_neg[i, :len(pick)] = pick
    pairs = np.asarray([(i, d_row[d]) for i, q in enumerate(train) for d in sorted(collection.relevant(q))],
                       dtype=np.int64)
    np.save(folder / "corpus_ids.npy", np.asarray(doc_ids, dtype=str), allow_pickle=False)
    np.save(folder / "train_query_ids.npy", np.asarray(train, dtype=str), allow_pickle=False)
    np.save(folder / "doc_negatives.npy", doc_neg, allow_pickle=False)
    np.save(folder / "pairs.npy", pairs, allow_pickle=False)
    np.save(folder / "doc_counts.npy", np.bincount(doc_neg[doc_neg >= 0], minlength=len(doc_ids)).astype(np.int64),
            allow_pickle=False)
    if objective == "dance":
        qs = docs[pairs[:, 1]] @ tq.T
        topq = np.argsort(-qs, axis=1)[:, :top_k]
        q_neg = np.full((len(pairs), n), -1, dtype=np.int64)
        for p, (qi, di) in enumerate(pairs.tolist()):
            cand = [j for j in topq[p] if doc_ids[di] not in collection.relevant(train[j])]
            pick = rng.choice(cand, size=min(n, len(cand)), replace=False) if cand else []
            q_neg[p, :len(pick)] = pick
        np.save(folder / "query_negatives.npy", q_neg, allow_pickle=False)
        q_counts = np.bincount(q_neg[q_neg >= 0], minlength=len(train)).astype(np.int64)
    else:
        q_counts = np.zeros(len(train), dtype=np.int64)
    np.save(folder / "query_counts.npy", q_counts, allow_pickle=False)
    (folder / "meta.json").write_text(json.dumps({"step": step, "top_k": top_k, "n": n, "seed": seed}))
    return folder


def write_checkpoint(run_dir: Path, step: int, collection, *, objective: str, encoder: Path | None,
                     seed: int = 0, dim: int = 32, embeddings: bool = True, negatives: bool = True,
                     dev_mrr: float | None = None, concentrate: float = 0.5, anisotropy: float = 1.0,
                     temperature: float | None = None) -> Path:
    """One checkpoint-<step>/ folder after the contract."""
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    if encoder is not None:
        shutil.copytree(encoder, folder / "encoder")
    temperature = temperature if temperature is not None else (0.01 if objective == "dance" else 1.0)
    meta = {"step": step, "objective": objective, "collection": collection.source,
            "splits": {"train": "train", "dev": "dev"}, "seed": seed, "temperature": temperature,
            "complete": True}
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    if dev_mrr is not None:
        (folder / "dev_metrics.json").write_text(json.dumps({"MRR@10": dev_mrr, "MRR@100": dev_mrr + 0.01}))
    if embeddings or negatives:
        doc_ids, docs, query_ids, queries = fake_space(collection, dim, seed * 1000 + step, concentrate=concentrate,
                                                       anisotropy=anisotropy)
        if embeddings:
            write_embeddings(folder / "embeddings", doc_ids, docs, query_ids, queries)
        if negatives:
            write_negatives(folder / "negatives", collection, doc_ids, docs, query_ids, queries,
                            objective=objective, step=step, seed=seed)
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    return folder


def write_run(run_dir: Path, collection, *, objective: str, steps=(10, 20, 30), encoder: Path | None = None,
              seed: int = 0, dim: int = 32, dev=(0.1, 0.3, 0.2), concentrate=(0.3, 0.5, 0.6),
              anisotropy=(2.0, 1.5, 1.2)) -> Path:
    """A run folder: config.yaml, metrics.jsonl and one checkpoint per step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"objective": objective, "seed": seed,
                                                         "collection": collection.source}))
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step in range(1, max(steps) + 1):
            fh.write(json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-5}) + "\n")
            if step in steps:
                fh.write(json.dumps({"step": step, "dev": {"MRR@10": 0.1}}) + "\n")
        fh.write('{"step": 99, "lo')                      # a line still being written
    for i, step in enumerate(steps):
        write_checkpoint(run_dir, step, collection, objective=objective, encoder=encoder, seed=seed, dim=dim,
                         dev_mrr=dev[i] if dev is not None else None, concentrate=concentrate[i],
                         anisotropy=anisotropy[i])
    return run_dir


def write_beir(folder: Path, docs: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]],
               split: str = "test") -> Path:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, text in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in qrels.items():
            for doc_id, grade in rel.items():
                fh.write(f"{qid}\t{doc_id}\t{grade}\n")
    return folder


RUN_NAME_PAYLOAD = "run <img src=x onerror=alert(4)>"


def payload_collection(root: Path):
    """A small BEIR collection whose ids and texts carry HTML / script payloads (60 documents, 12 queries)."""
    from dance_analysis.data import load_collection

    docs = {f"d{i}": f"plain document {i} about topic {i % 6}" for i in range(60)}
    docs[XSS_ID] = XSS_TEXT
    queries = {f"q{j}": f"question {j} on topic {j % 6}" for j in range(12)}
    queries["q0"] = "<b>bold</b> question & </textarea><script>alert(5)</script>"
    qrels = {f"q{j}": {f"d{(5 * j + k) % 60}": 1 for k in range(3)} for j in range(12)}
    for q in qrels:
        qrels[q][XSS_ID] = 1
    return load_collection(str(write_beir(root / "payload-beir", docs, queries, qrels, split="test")))


def payload_runs(root: Path, collection) -> tuple[Path, Path]:
    """An ANCE and a DANCE run (two checkpoints each) on :func:`payload_collection`, one with an HTML run name."""
    ance = write_run(root / RUN_NAME_PAYLOAD, collection, objective="ance", steps=(1, 2), dim=16, dev=(0.1, 0.2),
                     concentrate=(0.2, 0.3), anisotropy=(2.0, 2.0))
    dance = write_run(root / "dance-run", collection, objective="dance", steps=(1, 2), dim=16, seed=1,
                      dev=(0.3, 0.2), concentrate=(0.6, 0.7), anisotropy=(1.0, 1.0))
    return ance, dance
