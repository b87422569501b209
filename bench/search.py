"""Benchmark: exact top-k search (the mining step) vs a plain torch.mm + topk baseline and the GEMM bound.

For each corpus size (synthetic 384-d float32 vectors in a memory-mapped .npy file, as the encoder writes them),
every repetition times, side by side:

* project  -- ``dance_analysis.index.search(queries, corpus, k, device="cpu")`` (faiss IndexFlatIP in corpus
  blocks with a running top-k merge and deterministic tie order);
* torch    -- the plain baseline: ``torch.topk(q_block @ corpus.T, k)`` over query blocks (score matrix <= 512 MB);
* k=1      -- the project's search keeping one hit per query: the same product and tiling with almost no
  selection, so project / k=1 is what keeping the top k costs and k=1 / bound what the blocked pass costs;
* bound    -- the matrix-multiply bound: 2 * nq * N * d FLOPs at the GEMM rate measured in this run (the faster
  of numpy and torch float32 matmul of a 2,000 x d by d x 65,536 product into a preallocated output), measured
  again in every repetition, next to the timed calls, and taken as the median (the machine may be shared).

Times are medians over the repetitions; peak memory is the largest anonymous resident memory (RssAnon, i.e. not
counting the memory-mapped corpus pages) sampled every 5 ms during the call, above what the process held before.

    .venv/bin/python bench/search.py [--sizes 10000 100000 1000000] [--queries 2000] [--k 200] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from peak_memory import PeakMemory


def make_corpus(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def gemm_rate(dim: int, reps: int = 2) -> tuple[float, float]:
    """Best float32 GEMM rate (FLOP/s) of numpy and of torch on a large product in this process."""
    import torch

    rng = np.random.default_rng(1)
    a = rng.standard_normal((2000, dim), dtype=np.float32)
    b = rng.standard_normal((65536, dim), dtype=np.float32)
    out = np.empty((2000, 65536), dtype=np.float32)
    flops = 2.0 * a.shape[0] * b.shape[0] * dim
    np.matmul(a, b.T, out=out)
    best_np = min(_timed(lambda: np.matmul(a, b.T, out=out)) for _ in range(reps))
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    torch.mm(ta, tb.T, out=tout)
    best_torch = min(_timed(lambda: torch.mm(ta, tb.T, out=tout)) for _ in range(reps))
    return flops / best_np, flops / best_torch


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def torch_baseline(queries: np.ndarray, corpus: np.ndarray, k: int):
    import torch

    with warnings.catch_warnings():  # a read-only memory map: torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        corpus_t = torch.from_numpy(np.asarray(corpus))  # shares the memory map
    block = max(1, (512 * 2**20) // (4 * corpus.shape[0]))
    scores, indices = [], []
    with torch.inference_mode():
        for start in range(0, len(queries), block):
            values, idx = torch.topk(torch.from_numpy(queries[start:start + block]) @ corpus_t.T, k, dim=1)
            scores.append(values.numpy())
            indices.append(idx.numpy())
    return np.concatenate(scores), np.concatenate(indices)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5, help="repetitions (corpora of 1M and more: --reps-large)")
    parser.add_argument("--reps-large", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where the corpus memmaps go (default: tmp)")
    args = parser.parse_args(argv)

    import faiss
    import torch

    from dance_analysis.index import search

    print(f"machine: {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), numpy {np.__version__}")
    rate_np, rate_torch = gemm_rate(args.dim)
    rate = max(rate_np, rate_torch)
    print(f"GEMM rate (float32, 2000x{args.dim} @ {args.dim}x65536): numpy {rate_np / 1e9:.0f} GFLOP/s, "
          f"torch {rate_torch / 1e9:.0f} GFLOP/s -> bound uses {rate / 1e9:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.sizes:
            corpus = make_corpus(Path(tmp) / f"corpus-{n}.npy", n, args.dim, seed=n)
            reps = args.reps if n < 1_000_000 else args.reps_large
            times = {"project": [], "torch": [], "k1": []}
            rates = []
            peaks = {"project": [], "torch": []}
            for rep in range(reps):
                rates.append(max(gemm_rate(args.dim)))
                for name in (("project", "torch", "k1") if rep % 2 == 0 else ("k1", "torch", "project")):
                    with PeakMemory() as memory:
                        start = time.perf_counter()
                        if name == "project":
                            result = search(queries, corpus, args.k, device="cpu")
                        elif name == "k1":
                            search(queries, corpus, 1, device="cpu")
                        else:
                            base_scores, base_indices = torch_baseline(queries, corpus, args.k)
                        times[name].append(time.perf_counter() - start)
                    peaks.setdefault(name, []).append(memory.delta)
            # Same answers: scores equal within float32 rounding, the same documents up to near-ties.
            score_diff = float(np.abs(result.scores - base_scores).max())
            overlap = np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(result.indices, base_indices)])
            bound = 2.0 * args.queries * n * args.dim / statistics.median(rates)
            project = statistics.median(times["project"])
            baseline = statistics.median(times["torch"])
            rows.append((n, reps, bound, project, baseline, max(peaks["project"]), max(peaks["torch"]),
                         statistics.median(times["k1"])))
            print(f"N={n:>9,}: project {', '.join(f'{t:.2f}' for t in times['project'])} s; "
                  f"torch {', '.join(f'{t:.2f}' for t in times['torch'])} s; max |score diff| {score_diff:.1e}, "
                  f"top-{args.k} overlap {overlap:.4f}; GEMM "
                  f"{', '.join(f'{r / 1e9:.0f}' for r in rates)} GFLOP/s", flush=True)
            del corpus

    print(f"\nexact top-{args.k} of {args.queries:,} queries, {args.dim}-d float32, medians of the repetitions")
    header = (f"{'corpus':>10} {'reps':>4} {'bound s':>8} {'project s':>9} {'torch s':>8} {'project/bound':>13} "
              f"{'torch/project':>13} {'peak MB project':>15} {'peak MB torch':>13} {'k=1/bound':>9} "
              f"{'project/k=1':>11}")
    print(header)
    print("-" * len(header))
    for n, reps, bound, project, baseline, peak_p, peak_t, k1 in rows:
        print(f"{n:>10,} {reps:>4} {bound:>8.2f} {project:>9.2f} {baseline:>8.2f} {project / bound:>13.2f} "
              f"{baseline / project:>13.2f} {peak_p:>15.0f} {peak_t:>13.0f} {k1 / bound:>9.2f} {project / k1:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
