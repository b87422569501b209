"""dance-mine: mine hard negatives for a query split with a model, with the recipes' candidate rules, and write
them as ids or as sentence-transformers / Tevatron training data.

    dance-mine minilm --collection rag24-sample --split train --out negatives.jsonl
    dance-mine runs/demo-dance/checkpoint-40 --split train --relative-margin 0.05 --sampling top --n 5 \\
        --format sentence-transformers --out train-st.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import DanceError
from ..mining import CandidateRules
from ..training.config import MiningConfig
from .common import add_prompt_arguments, encoder_overrides, user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
MODEL is a checkpoint folder written by dance-train (its saved embeddings are used when they cover the
collection: nothing is encoded), a run folder of dance-train (its best checkpoint: the one best.json names, as
dance-analyze picks it), a folder of saved embeddings (corpus.npy, corpus.ids.npy, queries.npy,
queries.ids.npy), a model folder (a sentence-transformers folder is read with its own modules), a hub name or
the alias `minilm`.

Candidates of a query: its exact top --top-k documents minus every document judged with a grade >=
--exclude-grade (default 1, as the trainer), then the rules in this order: the rank window (--range-min,
--range-max; --rank-window says whether they count retrieved positions, as FlagEmbedding's
--range_for_sampling, or the candidates left after the positives and the score rules, as sentence-transformers'
mine_hard_negatives), --absolute-margin (skip s > pos - m), --relative-margin (skip s > pos - |pos| * m),
--max-score. pos is the lowest score of the query's relevant documents. --n of the rest are drawn at random
(--sampling random, the paper) or taken in rank order (--sampling top). The options are the recipe keys
mining.range_min ... mining.sampling, mining.exclude_grade; the defaults are the paper's (top 200, 20 at random).

--format ids (default): one JSON line per query with the positive and negative ids and scores.
--format sentence-transformers: (query, positive, negative_1 .. negative_n) rows, one per relevant document,
  readable by datasets.load_dataset("json", data_files=FILE); pairs with fewer than n negatives are left out.
--format tevatron: Tevatron's training lines {query_id, query, positive_passages, negative_passages}.
--format flagembedding: FlagEmbedding's fine-tuning lines {query, pos, neg} (texts; negatives in rank order).

The summary table counts the candidates, what each rule skipped, what was drawn, the queries short of
negatives, and the false-negative diagnostics: the share of negatives scoring at or above their positive, the
quantiles of s(q, d-) - s(q, d+), and (graded judgments) the share of drawn negatives judged partly relevant.
"""


def _help(name: str) -> str:

    fields = {f.name: f for f in dataclasses.fields(MiningConfig)}
    return fields[name].metadata["help"].replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dance-mine", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder, embeddings folder, model folder, hub "
                                                       "name or 'minilm'")
    parser.add_argument("--collection", default="rag24-sample",
                        help="collection: rag24-sample, irds:<id>, a BEIR folder or a YAML manifest "
                             "(default: %(default)s)")
    parser.add_argument("--split", default="train", help="query split to mine for (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSONL file to write")
    parser.add_argument("--format", default="ids", choices=("ids", "sentence-transformers", "tevatron",
                                                            "flagembedding"),
                        help="what to write (default: %(default)s; see below)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a file at --out (or a folder at --save-embeddings) that dance-mine did not "
                             "write (without it such a path is never replaced; earlier outputs are)")
    parser.add_argument("--min-relevance", type=int, default=None,
                        help="grade that counts as relevant (default: the collection's, 2 for rag24-sample)")
    rules = parser.add_argument_group("mining options (the recipe keys mining.<name>)")
    rules.add_argument("--top-k", type=int, default=200, help=_help("top_k") + " (default: %(default)s)")
    rules.add_argument("--n", type=int, default=20, help=_help("n") + " (default: %(default)s)")
    rules.add_argument("--range-min", type=int, default=0, help=_help("range_min") + " (default: %(default)s)")
    rules.add_argument("--range-max", type=int, default=None, help=_help("range_max"))
    rules.add_argument("--rank-window", default="retrieved", choices=("retrieved", "candidates"),
                       help=_help("rank_window") + " (default: %(default)s)")
    rules.add_argument("--absolute-margin", type=float, default=None, help=_help("absolute_margin"))
    rules.add_argument("--relative-margin", type=float, default=None, help=_help("relative_margin"))
    rules.add_argument("--max-score", type=float, default=None, help=_help("max_score"))
    rules.add_argument("--sampling", default="random", choices=("random", "top"),
                       help=_help("sampling") + " (default: %(default)s)")
    rules.add_argument("--exclude-grade", type=int, default=None, help=_help("exclude_grade"))
    rules.add_argument("--seed", type=int, default=0, help="seed of the random draw (default: %(default)s)")
    encoding = parser.add_argument_group("encoding (when MODEL has no saved embeddings)")
    encoding.add_argument("--reencode", action="store_true", help="encode even when saved embeddings exist")
    encoding.add_argument("--save-embeddings", type=Path, default=None, metavar="DIR",
                          help="keep the corpus and query vectors in DIR (a folder MODEL can name next time: "
                               "mining again skips encoding)")
    encoding.add_argument("--query-max-length", type=int, default=None, help="override the model's query length")
    encoding.add_argument("--doc-max-length", type=int, default=None, help="override the model's document length")
    add_prompt_arguments(encoding)
    encoding.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    encoding.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    encoding.add_argument("--precision", default="auto", choices=("fp32", "bf16", "bf16-weights", "auto"),
                          help="encoding precision: fp32; bf16 (autocast); bf16-weights (a bf16 copy of the "
                               "model); auto (as the trainer's refreshes): where the hardware has native bf16, the "
                               "fastest of the two that a short measurement on this corpus finds faster and whose "
                               "top-20 neighbours agree with fp32, else fp32 (default: %(default)s)")
    return parser


def _count(n: int, noun: str) -> str:
    """``n`` with its noun, plural when n != 1 ("1 row", "13 queries")."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n:,} {noun if n == 1 else plural}"


#: The keys of the first line of each JSONL layout dance-mine writes (an earlier output is replaced).
_OUR_KEYS = ({"query_id", "positive_ids", "negative_ids"}, {"query", "positive"},
             {"query_id", "query", "positive_passages", "negative_passages"}, {"query", "pos", "neg"})


def _is_mined_jsonl(path: Path) -> bool:
    # its imports: dance-mine --help stays fast
    from ..outputs import first_json_line

    record = first_json_line(path)
    return record is not None and any(keys <= set(record) for keys in _OUR_KEYS)


def _is_embeddings_folder(path: Path) -> bool:
    # its imports: dance-mine --help stays fast
    from ..checkpoints import EMBEDDING_FILES

    names = {p.name for p in path.iterdir()}
    return set(EMBEDDING_FILES) <= names and \
        all(name.endswith(".npy") or name == "meta.json" for name in names)


def _check_outputs(args) -> None:
    """Refuse, before any work, paths that hold something dance-mine did not write (:mod:`dance_analysis.
    outputs`)."""
    # its imports: dance-mine --help stays fast
    from ..outputs import check_output_file, check_output_folder

    check_output_file(args.out, ours=_is_mined_jsonl, what="a JSONL file of mined negatives",
                      overwrite=args.overwrite)
    if args.save_embeddings is not None:
        check_output_folder(args.save_embeddings, ours=_is_embeddings_folder,
                            what="a folder of saved embeddings", overwrite=args.overwrite)


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # hashlib, subprocess, ...: dance-mine --help stays fast
    from ..data import load_collection

    # torch: dance-mine --help stays fast
    from ..encode import encoding_precision

    # its imports: dance-mine --help stays fast
    from ..hard_negatives import mine_split, summary_table

    # its imports: dance-mine --help stays fast
    from ..interop.training_data import FORMATS, output_path

    if args.exclude_grade is not None and args.exclude_grade < 1:
        raise DanceError(f"--exclude-grade must be >= 1, got {args.exclude_grade}")
    rules = CandidateRules(range_min=args.range_min, range_max=args.range_max, rank_window=args.rank_window,
                           absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
                           max_score=args.max_score, sampling=args.sampling)
    overrides = encoder_overrides(args)
    _check_outputs(args)
    collection = load_collection(args.collection, min_relevance=args.min_relevance)
    with encoding_precision(args.precision) as precision:
        result = mine_split(args.model, collection, args.split, n=args.n, top_k=args.top_k, rules=rules,
                            seed=args.seed, exclude_grade=args.exclude_grade, reencode=args.reencode,
                            batch_size=args.batch_size, device=args.device, overrides=overrides,
                            save_embeddings=args.save_embeddings)
    written = FORMATS[args.format](output_path(args.out), result, collection)
    s = result.settings
    name = Path(str(args.model).rstrip("/")).name
    if s["model"] != str(args.model):   # a run folder: the checkpoint that stands for it
        name += f" (its best checkpoint, {Path(s['model']).name})"
    print(f"{name} on {collection.name} / {args.split}: {s['queries']} queries, {s['documents']} documents "
          f"({s['vectors']})")
    if precision.used:
        print(f"{precision.describe()} "
              f"(--precision {args.precision})")
    print(summary_table(result))
    row = "query and relevant passage" if args.format == "sentence-transformers" else "query"
    print(f"wrote {_count(written['rows'], f'{args.format} row')} (one per {row}): {args.out}")
    if written["short"]:
        why = f"fewer than {args.n} negatives" if args.format == "sentence-transformers" else "no negative"
        print(f"left out: {_count(written['short'], 'row')} of {_count(written['short_queries'], 'query')} "
              f"with {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
