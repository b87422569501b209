"""Benchmark: the project's metrics vs ir-measures on a synthetic MS MARCO passage dev-sized run.

6,980 queries x 1,000 retrieved passages (6.98 million run lines) over an 8,841,823-passage id space, 1-4 relevant
passages per query (a third of the queries get graded judgements 1-3), scores distinct within each query (no ties,
so that every ir-measures provider orders the run like trec_eval). Both sides compute MRR@10, MRR@100, R@100,
R@1000, nDCG@10 and MAP; the script checks that every per-query value is equal (|diff| < 1e-9) and prints the
median times of several repetitions and their ratio.

    .venv/bin/python bench/metrics.py [--queries 6980] [--depth 1000] [--reps 3] [--file]

ir-measures gets the run as the dict of dicts it converts everything to (building that dict is not timed), so
the ratio is its most favourable one. With --file, both also score from a TREC run file (read + evaluate).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dance_analysis.index import Rankings
from dance_analysis.metrics import DEFAULT_MEASURES, evaluate, evaluate_per_query

N_PASSAGES = 8_841_823


def make_run(n_queries: int, depth: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    doc_ids = np.arange(N_PASSAGES).astype(str)
    query_ids = np.asarray([str(1_000_000 + 17 * i) for i in range(n_queries)])
    indices = np.empty((n_queries, depth), dtype=np.int64)
    for start in range(0, n_queries, 500):
        stop = min(start + 500, n_queries)
        # Distinct passages per query: a random offset plus a random stride (co-prime sampling is overkill).
        base = rng.integers(0, N_PASSAGES, (stop - start, 1))
        steps = rng.integers(1, 8000, (stop - start, 1))
        indices[start:stop] = (base + steps * np.arange(depth)) % N_PASSAGES
    # Strictly decreasing scores per row (float32 steps of 2**-10 on a random offset stay exact and distinct).
    scores = (rng.uniform(50, 60, (n_queries, 1)) - np.arange(depth) / 1024.0).astype(np.float32)
    qrels: dict[str, dict[str, int]] = {}
    for row, qid in enumerate(query_ids):
        n_rel = int(rng.integers(1, 5))
        judged = {}
        for _ in range(n_rel):
            if rng.random() < 0.7:  # a retrieved relevant passage, often near the top
                place = int(min(rng.geometric(0.08) - 1, depth - 1))
                doc = doc_ids[indices[row, place]]
            else:
                doc = str(rng.integers(0, N_PASSAGES))
            judged[str(doc)] = int(rng.integers(1, 4)) if row % 3 == 0 else 1
        qrels[str(qid)] = judged
    return Rankings(query_ids, doc_ids, indices, scores), qrels


def ir_measures_names():
    from ir_measures import AP, RR, R, nDCG

    return [RR @ 10, RR @ 100, R @ 100, R @ 1000, nDCG @ 10, AP]


def median_time(fn, reps: int):
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=6980)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--file", action="store_true", help="also time reading a TREC run file on both sides")
    args = parser.parse_args(argv)
    import ir_measures

    print(f"building a synthetic run: {args.queries} queries x {args.depth} = {args.queries * args.depth:,} lines")
    rankings, qrels = make_run(args.queries, args.depth)
    measures = ir_measures_names()
    names = list(DEFAULT_MEASURES)

    start = time.perf_counter()
    run = {}
    for row, qid in enumerate(rankings.query_ids.tolist()):
        run[qid] = dict(zip(rankings.doc_ids[rankings.indices[row]].tolist(), rankings.scores[row].tolist()))
    print(f"dict-of-dict run for ir-measures built in {time.perf_counter() - start:.1f} s (not timed below)")
    # Keep the inputs (millions of Python objects) out of the garbage collector's scans, for both sides.
    gc.collect()
    gc.freeze()

    # One untimed warm-up call each (first-touch page faults), then the timed repetitions, interleaved.
    evaluate(rankings, qrels)
    ir_measures.calc_aggregate(measures, qrels, run)
    ours_all, theirs_all, ours_cpu, theirs_cpu = [], [], [], []
    for _ in range(args.reps):
        cpu = time.process_time()
        t, _, ours = median_time(lambda: evaluate(rankings, qrels), 1)
        ours_cpu.append(time.process_time() - cpu)
        ours_all.append(t)
        cpu = time.process_time()
        t, _, theirs = median_time(lambda: ir_measures.calc_aggregate(measures, qrels, run), 1)
        theirs_cpu.append(time.process_time() - cpu)
        theirs_all.append(t)
    ours_t, theirs_t = statistics.median(ours_all), statistics.median(theirs_all)

    # Per-query equality.
    per_query = evaluate_per_query(rankings, qrels)
    position = {q: i for i, q in enumerate(per_query["query_ids"].tolist())}
    worst = 0.0
    count = 0
    for metric in ir_measures.iter_calc(measures, qrels, run):
        name = names[measures.index(metric.measure)]
        worst = max(worst, abs(per_query[name][position[metric.query_id]] - metric.value))
        count += 1
    mean_diff = max(abs(ours[n] - theirs[m]) for n, m in zip(names, measures))
    equal = worst < 1e-9 and mean_diff < 1e-9 and count == len(names) * len(position)

    print(f"\n{'measure':<8} {'project':>10} {'ir-measures':>12}")
    for name, measure in zip(names, measures):
        print(f"{name:<8} {ours[name]:>10.6f} {theirs[measure]:>12.6f}")
    print(f"queries evaluated: {ours['queries']}; per-query values compared: {count:,}; "
          f"max |diff| per query {worst:.1e}, of means {mean_diff:.1e} -> {'EQUAL' if equal else 'DIFFERENT'}")
    print(f"\nproject evaluate():         median {ours_t:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ours_all)})")
    print(f"ir-measures calc_aggregate: median {theirs_t:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in theirs_all)})")
    print(f"speed-up (ir-measures / project): {theirs_t / ours_t:.1f}x wall time (target >= 3x); CPU time "
          f"(user + system) medians {statistics.median(ours_cpu):.2f} s vs {statistics.median(theirs_cpu):.2f} s "
          f"-> {statistics.median(theirs_cpu) / statistics.median(ours_cpu):.1f}x")

    if args.file:
        from dance_analysis.runs import read_trec_run, write_trec_run

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "run.trec"
            start = time.perf_counter()
            write_trec_run(path, rankings, tag="bench")
            print(f"\nrun file written in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
            file_ours, _, from_file = median_time(lambda: evaluate(read_trec_run(path), qrels), 1)
            file_theirs, _, from_file_theirs = median_time(
                lambda: ir_measures.calc_aggregate(measures, qrels, ir_measures.read_trec_run(str(path))), 1)
            same = all(abs(from_file[n] - from_file_theirs[m]) < 1e-9 for n, m in zip(names, measures))
            print(f"from the file: project read_trec_run + evaluate {file_ours:.1f} s, ir-measures read_trec_run "
                  f"+ calc_aggregate {file_theirs:.1f} s -> {file_theirs / file_ours:.1f}x, means "
                  f"{'equal' if same else 'DIFFERENT'}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
