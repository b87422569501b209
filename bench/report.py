"""Benchmark of a whole `dance-analyze` report on the built-in sample (6,011 passages, 301 queries) with saved
embeddings. Target (issue 4): at most 60 s on this machine.

By default two runs are written after the checkpoint contract (an ANCE and a DANCE run, 3 checkpoints each,
384-dimensional synthetic embeddings of every passage and query, negatives/ folders), and the report comparing
them is timed end to end in a fresh process (`python -m dance_analysis.cli.analyze`: imports, checks, every
statistic of every checkpoint, UMAP, figures, HTML). Each repetition is a new process; the first one after an
installation also pays numba's one-off compilation of UMAP (cached on disk afterwards).

    python bench/report.py                       # 2 runs x 3 checkpoints, dim 384, 2 repetitions
    python bench/report.py --runs 1 --checkpoints 1 --dim 768
    python bench/report.py --paths runs/demo-ance runs/demo-dance     # time real runs instead
    python bench/report.py --json bench/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 60.0


def write_runs(root: Path, *, runs: int, checkpoints: int, dim: int, seed: int = 0) -> list[Path]:
    """Runs of checkpoints with saved embeddings and negatives for every document and query of the sample."""
    from dance_analysis.data import load_collection
    from dance_analysis.index import search
    from dance_analysis.mining import NegativeSet, mine_document_negatives, mine_query_negatives, positive_pairs

    collection = load_collection("rag24-sample")
    doc_ids = np.asarray(collection.corpus.ids).astype(str)
    query_ids = np.asarray(sorted(collection.queries), dtype=str)
    train = np.asarray([q for q in collection.split_queries("train") if collection.relevant(q)], dtype=str)
    q_row = {q: i for i, q in enumerate(query_ids.tolist())}
    d_row = {d: i for i, d in enumerate(doc_ids.tolist())}
    rng = np.random.default_rng(seed)
    paths = []
    for r in range(runs):
        objective = "ance" if r % 2 == 0 else "dance"
        run_dir = root / f"{objective}-{r}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(f"objective: {objective}\nseed: {r}\n")
        for c in range(checkpoints):
            step = 1000 * (c + 1)
            folder = run_dir / f"checkpoint-{step}"
            (folder / "embeddings").mkdir(parents=True)
            scales = 1.0 / np.sqrt(np.arange(1, dim + 1))
            docs = (rng.normal(size=(len(doc_ids), dim)) * scales + rng.normal(size=dim)).astype(np.float32)
            mix = 0.3 + 0.1 * c + 0.2 * (objective == "dance")
            queries = rng.normal(size=(len(query_ids), dim)).astype(np.float32) * scales
            for qid, rel in collection.qrels.items():
                rows = [d_row[d] for d, g in rel.items() if g >= collection.min_relevance and d in d_row]
                if rows:
                    queries[q_row[qid]] = mix * docs[rows].mean(axis=0) + (1 - mix) * queries[q_row[qid]]
            for name, ids, vectors in (("corpus", doc_ids, docs), ("queries", query_ids, queries)):
                np.save(folder / "embeddings" / f"{name}.npy", vectors.astype(np.float32), allow_pickle=False)
                np.save(folder / "embeddings" / f"{name}.ids.npy", ids, allow_pickle=False)
            tq = queries[[q_row[q] for q in train]]
            rankings = search(tq, docs, 200, query_ids=train, doc_ids=doc_ids)
            positives = {q: collection.relevant(q) for q in train.tolist()}
            doc_neg, doc_counts = mine_document_negatives(rankings, positives, 20, step, top_k=200)
            pairs = positive_pairs(train, doc_ids, positives)
            query_neg, query_counts = None, np.zeros(len(train), dtype=np.int64)
            if objective == "dance":
                anchors = np.unique(pairs[:, 1])
                d2q = search(docs[anchors], tq, min(200, len(train)), query_ids=doc_ids[anchors], doc_ids=train)
                query_neg, query_counts = mine_query_negatives(d2q, pairs, positives, 20, step, top_k=200,
                                                               corpus_ids=doc_ids)
            NegativeSet(meta={"step": step, "top_k": 200, "n": 20, "seed": step}, corpus_ids=doc_ids,
                        train_query_ids=train, doc_negatives=doc_neg, pairs=pairs, query_negatives=query_neg,
                        doc_counts=doc_counts, query_counts=query_counts).save(folder / "negatives")
            (folder / "dev_metrics.json").write_text(json.dumps({"MRR@10": 0.2 + 0.05 * c}))
            (folder / "checkpoint.json").write_text(json.dumps({
                "step": step, "objective": objective, "collection": collection.source,
                "splits": {"train": "train", "dev": "dev"}, "seed": r,
                "temperature": 0.01 if objective == "dance" else 1.0, "complete": True}))
        paths.append(run_dir)
    return paths


def time_report(paths: list[str], out: Path, extra: list[str]) -> tuple[float, dict]:
    """Wall time of one report in a fresh process, and the stage timings it records."""
    command = [sys.executable, "-m", "dance_analysis.cli.analyze", *paths, "--out", str(out), "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"dance-analyze failed ({done.returncode}):\n{done.stderr}")
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    return seconds, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", default=None, help="time these PATHs instead of synthetic runs")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=2, help="reports timed, each in a new process")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further dance-analyze options after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        root = Path(tmp)
        if args.paths:
            paths = args.paths
        else:
            started = time.perf_counter()
            paths = [str(p) for p in write_runs(root / "runs", runs=args.runs, checkpoints=args.checkpoints,
                                                  dim=args.dim)]
            print(f"wrote {args.runs} run(s) x {args.checkpoints} checkpoint(s), dim {args.dim}, in "
                  f"{time.perf_counter() - started:.1f} s")
        results = []
        for i in range(args.repeat):
            seconds, timings = time_report(paths, root / f"report-{i}", extra)
            results.append({"seconds": round(seconds, 2), "timings": timings})
            stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
            verdict = "OK" if seconds <= TARGET_SECONDS else "ABOVE TARGET"
            print(f"report {i + 1}: {seconds:.1f} s wall ({verdict}, target {TARGET_SECONDS:.0f} s); stages: {stages}")
        try:
            load = os.getloadavg()
        except OSError:
            load = None
        record = {"paths": paths if args.paths else None, "runs": args.runs, "checkpoints": args.checkpoints,
                  "dim": args.dim, "cpus": os.cpu_count(), "load_average": load, "reports": results}
        if args.json:
            args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
