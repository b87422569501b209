"""Benchmark: approximate (faiss ANN) search vs exact search -- time, memory, and the recall it costs.

For each corpus size, a synthetic corpus of 384-d vectors is written to a memory-mapped float32 .npy file (as the
encoder writes embeddings): a mixture of Gaussians around 1,000 random centres (centre + noise, every row then
normalised to unit length), so that, as with real embeddings, the corpus has cluster structure for an ANN index
to exploit (on structureless i.i.d. Gaussian vectors every ANN index does badly, which says little about real
use). Queries are drawn the same way around the same centres. ``--data PATH.npy`` uses a real embedding file
instead (its first --sizes rows; queries are then other rows of it plus a little noise).

Compared, for 2,000 queries and k = 200, side by side in one process:

* exact  -- ``dance_analysis.index.search(queries, corpus, k, device="cpu")``, the reference for recall;
* ``IVF<nlist>,Flat`` (nlist = the power of two nearest sqrt(N)) at 2-3 nprobe values;
* ``HNSW32`` at 2 efSearch values (built on one thread: ``ann_search``'s default, for identical rebuilds);
* ``IVF<nlist>,PQ48`` (48 bytes per vector) at 2 nprobe values.

Columns: build s (train + add, once per index; ``exact`` has none), search s, speed-up = exact search s / (ANN
search s), recall@10 and recall@200 = mean share of the exact top-10 / top-200 found in the ANN top-10 / top-200,
index MB (the serialised faiss index: vectors or codes, ids, centroids, links; exact search keeps no index, the
float32 corpus itself is shown), peak MB = the largest anonymous resident memory (RssAnon: not counting the
memory-mapped corpus pages) sampled every 5 ms during build + search, above what the process held before (memory
that an earlier index freed but the allocator kept can hide part of a later index's peak: read it as a lower
bound, and the index MB column as the steady-state size).
Times are medians over --reps repetitions (the build is repeated too). The machine may be shared: absolute times
are noisy, the speed-ups are measured side by side in the same repetitions.

    .venv/bin/python bench/ann.py [--sizes 100000 1000000] [--queries 2000] [--k 200] [--reps 3]
        [--no-hnsw-above N] [--data embeddings.npy]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peak_memory import PeakMemory


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    """``n`` unit vectors: a random centre each, plus isotropic Gaussian noise of ``noise`` per coordinate."""
    picked = centres[rng.integers(0, len(centres), size=n)]
    block = picked + noise * rng.standard_normal(picked.shape, dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block.astype(np.float32)


def make_corpus(path: Path, n: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, centres.shape[1]))
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        out[start:stop] = clustered(rng, centres, stop - start, noise)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def recall(approx: np.ndarray, exact: np.ndarray, depth: int) -> float:
    """Mean share of each row's exact top-``depth`` found in its approximate top-``depth``."""
    hits = [len(np.intersect1d(a[:depth], e[:depth][e[:depth] >= 0])) / depth for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def nearest_power_of_two(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--centres", type=int, default=1000, help="Gaussian centres of the synthetic corpus")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="noise per coordinate around a centre (centres have norm ~1, so 0.05 adds noise "
                             "of norm ~1 at d=384: a row has cosine ~0.7 with its centre; default: %(default)s)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-hnsw-above", type=int, default=None,
                        help="skip HNSW for corpora larger than this (its build is the slowest)")
    parser.add_argument("--data", type=Path, default=None, help="a real embedding matrix (.npy) instead")
    parser.add_argument("--workdir", type=Path, default=None, help="where the corpus memmaps go (default: tmp)")
    args = parser.parse_args(argv)

    import faiss

    from dance_analysis.ann import build_index, index_nbytes, search_index
    from dance_analysis.index import search

    print(f"machine: {os.cpu_count()} cpus, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"numpy {np.__version__}", flush=True)
    rng = np.random.default_rng(0)
    real = np.load(args.data, mmap_mode="r") if args.data else None
    dim = real.shape[1] if real is not None else args.dim
    centres = rng.standard_normal((args.centres, dim), dtype=np.float32) / np.sqrt(dim)
    if real is None:
        queries = clustered(rng, centres, args.queries, args.noise)

    tables = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.sizes:
            if real is not None:
                n = min(n, len(real) - args.queries)
                corpus = real[:n]
                picked = real[n:n + args.queries].astype(np.float32)
                queries = picked + 0.01 * rng.standard_normal(picked.shape, dtype=np.float32)
            else:
                corpus = make_corpus(Path(tmp) / f"corpus-{n}.npy", n, centres, args.noise, seed=n)
            nlist = nearest_power_of_two(math.sqrt(n))
            probes = [p for p in (8, 32, 128) if p < nlist] or [max(1, nlist // 4)]
            configs = [(f"IVF{nlist},Flat", [f"nprobe={p}" for p in probes])]
            if args.no_hnsw_above is None or n <= args.no_hnsw_above:
                configs.append(("HNSW32", ["efSearch=64", "efSearch=256"]))
            if dim % 48 == 0:
                configs.append((f"IVF{nlist},PQ48", [f"nprobe={p}" for p in probes[-2:]]))
            times: dict[tuple[str, str], dict[str, list[float]]] = {}
            results: dict[tuple[str, str], np.ndarray] = {}
            sizes: dict[str, int] = {}
            exact = None
            for rep in range(args.reps):
                with PeakMemory() as memory:
                    start = time.perf_counter()
                    exact = search(queries, corpus, args.k, device="cpu")
                    elapsed = time.perf_counter() - start
                entry = times.setdefault(("exact", ""), {"build": [], "search": [], "peak": []})
                entry["search"].append(elapsed)
                entry["peak"].append(memory.delta)
                for description, settings in configs:
                    with PeakMemory() as memory:
                        start = time.perf_counter()
                        built = build_index(corpus, description)
                        build_s = time.perf_counter() - start
                        for params in settings:
                            start = time.perf_counter()
                            ranked = search_index(built, queries, args.k, params=params, description=description)
                            search_s = time.perf_counter() - start
                            entry = times.setdefault((description, params), {"build": [], "search": [], "peak": []})
                            entry["build"].append(build_s)
                            entry["search"].append(search_s)
                            results[(description, params)] = ranked.indices
                    for params in settings:
                        times[(description, params)]["peak"].append(memory.delta)
                    if description not in sizes:
                        sizes[description] = index_nbytes(built)
                    del built
                    print(f"N={n:,} rep {rep + 1}: {description} build {build_s:.1f}s, "
                          + ", ".join(f"{p} {times[(description, p)]['search'][-1]:.2f}s" for p in settings),
                          flush=True)
                print(f"N={n:,} rep {rep + 1}: exact {times[('exact', '')]['search'][-1]:.2f}s", flush=True)
            exact_s = statistics.median(times[("exact", "")]["search"])
            rows = [("exact (index.search)", "", float("nan"), exact_s, 1.0, 1.0, 1.0,
                     n * dim * 4 / 2**20, max(times[("exact", "")]["peak"]))]
            for description, settings in configs:
                for params in settings:
                    entry = times[(description, params)]
                    search_s = statistics.median(entry["search"])
                    rows.append((description, params, statistics.median(entry["build"]), search_s,
                                 exact_s / search_s, recall(results[(description, params)], exact.indices, 10),
                                 recall(results[(description, params)], exact.indices, args.k),
                                 sizes[description] / 2**20, max(entry["peak"])))
            tables.append((n, rows))
            del corpus

    source = f"rows of {args.data}" if args.data else (f"clustered synthetic ({args.centres} centres, noise "
                                                       f"{args.noise}, unit rows)")
    for n, rows in tables:
        print(f"\n### N = {n:,}: {dim}-d float32 {source}; {args.queries:,} queries, k = {args.k}, medians of "
              f"{args.reps} repetitions\n")
        print("| index | params | build s | search s | speed-up vs exact | recall@10 | "
              f"recall@{args.k} | index MB | peak RSS MB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for description, params, build_s, search_s, speedup, r10, rk, index_mb, peak in rows:
            build = "-" if math.isnan(build_s) else f"{build_s:.1f}"
            print(f"| {description} | {params or '-'} | {build} | {search_s:.2f} | {speedup:.1f}x | {r10:.4f} | "
                  f"{rk:.4f} | {index_mb:.0f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
