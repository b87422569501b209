"""Benchmark of the embedding-space statistics on N x 384 float32 vectors (N = 10k, 100k, 1M by default).

Each size runs in its own subprocess, so the peak resident memory (``ru_maxrss``) of one size is not inflated
by another. Measured per size: anisotropy (mean pairwise cosine, norm statistics, mean-vector ratio, PCA
spectrum, IsoScore + effective rank + I(W)), uniformity (exact up to 20,000 points, else 1,000,000 sampled
pairs), query-document statistics (centroid distance, cross cosine, alignment), and negative-sampling
statistics (softmax over top-100 scores per row; count distribution + Lorenz curve over N items).
Target (issue 4): 100,000 x 384 within 30 s and 2 GB.

    python bench/analysis.py                  # all sizes
    python bench/analysis.py --sizes 10000 100000 --json bench/analysis.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DIM = 384
TOP_K = 100


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(n: int, seed: int = 0) -> dict:
    """Run every statistic on one synthetic N x 384 matrix in this process; returns timings and memory."""
    import numpy as np

    from dance_analysis import analysis as A

    baseline = _rss_mb()
    rng = np.random.default_rng(seed)
    # anisotropic synthetic embeddings: a common direction plus decaying per-dimension scales
    x = np.empty((n, DIM), dtype=np.float32)
    common = rng.normal(size=DIM).astype(np.float32)
    scales = np.linspace(1.0, 0.1, DIM).astype(np.float32)
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        x[start:stop] = rng.standard_normal((stop - start, DIM), dtype=np.float32) * scales + 0.3 * common
    nq = max(n // 10, 2)
    q = x[:nq]
    pairs = np.stack([np.arange(nq), rng.integers(0, n, nq)], axis=1)
    scores = rng.standard_normal((n, TOP_K), dtype=np.float32)
    scores.sort(axis=1)
    scores = scores[:, ::-1]
    positive = np.zeros((n, TOP_K), dtype=bool)
    positive[:, 0] = True
    counts = rng.poisson(0.5, size=n) * (rng.random(n) < 0.7)
    after_data = _rss_mb()

    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    results: dict[str, object] = {}

    def timed(label, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        results[label] = fn()
        times[label] = time.perf_counter() - t0
        cpu[label] = time.process_time() - c0

    timed("mean_pairwise_cosine", lambda: A.mean_pairwise_cosine(x))
    timed("norm_stats", lambda: A.norm_stats(x))
    timed("mean_vector_norm_ratio", lambda: A.mean_vector_norm_ratio(x))
    timed("covariance", lambda: A.covariance(x))            # shared by the PCA spectrum and the isotropy scores
    cov = results["covariance"]
    timed("pca_spectrum", lambda: A.variance_explained(A.pca_spectrum(x, cov=cov), ks=(1, 10, 50)))
    timed("isotropy_stats", lambda: A.isotropy_stats(x, cov=cov))
    anisotropy = sum(times.values())
    timed("uniformity", lambda: A.uniformity(x, t=2.0, seed=seed))
    timed("centroid_distance+cross_cosine", lambda: (A.centroid_distance(q, x), A.cross_mean_cosine(q, x)))
    timed("alignment", lambda: A.alignment(q, x, pairs))
    t_sampling0 = time.perf_counter()
    timed("softmax_stats", lambda: A.softmax_stats(scores, positive, temperature=1.0)["entropy_norm_mean"])
    timed("count_distribution_stats+lorenz", lambda: (A.count_distribution_stats(counts),
                                                      A.lorenz_curve(counts)[1][50]))
    sampling = time.perf_counter() - t_sampling0
    uni = results["uniformity"]
    return {
        "n": n, "dim": DIM, "top_k": TOP_K,
        "input_mb": round(x.nbytes / 2**20, 1), "scores_mb": round(scores.nbytes / 2**20, 1),
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_total_s": round(sum(cpu.values()), 2),
        "load_average": os.getloadavg()[0],
        "anisotropy_s": round(anisotropy, 2), "uniformity_s": round(times["uniformity"], 2),
        "sampling_s": round(sampling, 2),
        "target_s": round(anisotropy + times["uniformity"] + sampling, 2),
        "total_s": round(sum(times.values()), 2),
        "uniformity_method": uni["method"], "uniformity_pairs": uni["pairs"],
        "rss_baseline_mb": round(baseline, 1), "rss_after_data_mb": round(after_data, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "peak_rss_above_data_mb": round(_rss_mb() - after_data, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.seed)))
        return 0
    rows = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n), "--seed",
                               str(args.seed)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"N={n}: failed\n{proc.stderr}", file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        ok = ""
        if n == 100_000:
            ok = "  (target <= 30 s, <= 2048 MB: " + (
                "met)" if row["target_s"] <= 30 and row["peak_rss_mb"] <= 2048 else "MISSED)")
        print(f"N={n:>9,} x {DIM}: anisotropy {row['anisotropy_s']:6.2f} s, uniformity {row['uniformity_s']:6.2f} s "
              f"({row['uniformity_method']}, {row['uniformity_pairs']:,} pairs), sampling {row['sampling_s']:5.2f} s"
              f" | these three {row['target_s']:6.2f} s, all {row['total_s']:6.2f} s (CPU {row['cpu_total_s']:.2f} s,"
              f" load {row['load_average']:.1f}) | peak RSS "
              f"{row['peak_rss_mb']:7.1f} MB (input {row['input_mb']} MB + scores {row['scores_mb']} MB){ok}",
              flush=True)
        for k, v in row["seconds"].items():
            print(f"    {k:<34} {v:8.3f} s wall {row['cpu_seconds'][k]:8.3f} s CPU")
    if args.json:
        from dance_analysis.atomic import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
