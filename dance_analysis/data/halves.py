"""Split a query set into two seeded halves, each with its query file and its qrels file: the MS MARCO document dev
queries, so that checkpoints are selected on one half and results are reported on the other (the reference code
selected on TREC DL 2019, the test set it reported; here the halves never share a query).

    python -m dance_analysis.data.halves msmarco-docdev-queries.tsv.gz msmarco-docdev-qrels.tsv.gz data/msmarco-doc

writes ``docdev-half1-queries.tsv``, ``docdev-half1-qrels.tsv``, ``docdev-half2-queries.tsv`` and
``docdev-half2-qrels.tsv`` into the folder (``--prefix`` changes ``docdev``; ``--seed`` the shuffle). Only queries
with at least one judgment are kept; they are shuffled with :func:`dance_analysis.data.splits.seeded_splits` (the
sorted ids, ``numpy.random.default_rng(seed)``), so the halves are the same on every machine. Queries are written
as ``qid <TAB> text``, judgments as ``qid 0 docid grade`` (MS MARCO document qrels), in the input's order.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..atomic import write_text
from ..errors import DanceError
from .formats import parse_query_tsv, read_qrels, read_queries
from .splits import DEFAULT_SEED, seeded_splits

HALVES = ("half1", "half2")


def split_in_halves(queries: str | os.PathLike, qrels: str | os.PathLike, out_dir: str | os.PathLike, *,
                    seed: int = DEFAULT_SEED, prefix: str = "docdev") -> dict[str, dict[str, Path]]:
    """Write the two halves (see the module docstring); returns ``{"half1": {"queries": path, "qrels": path},
    "half2": ...}``. Files are written atomically; a query judged but missing from ``queries`` is an error."""
    texts = read_queries(queries, parse_query_tsv)
    table = read_qrels(qrels)
    judged = list(dict.fromkeys(table.qids))
    unknown = [q for q in judged if q not in texts]
    if unknown:
        raise DanceError(f"{qrels}: {len(unknown)} judged query id(s) are not in {queries}, e.g. {unknown[0]!r}")
    if len(judged) < 2:
        raise DanceError(f"{qrels}: expected judgments for at least 2 queries to split in halves, got {len(judged)}")
    parts = seeded_splits(judged, seed=seed, fractions={HALVES[0]: 0.5, HALVES[1]: 0.5})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for half in HALVES:
        members = set(parts[half])
        query_lines = [f"{qid}\t{text}\n" for qid, text in texts.items() if qid in members]
        qrels_lines = [f"{qid} 0 {docid} {int(grade)}\n"
                       for qid, docid, grade in zip(table.qids, table.docids, table.grades) if qid in members]
        paths = {"queries": out / f"{prefix}-{half}-queries.tsv", "qrels": out / f"{prefix}-{half}-qrels.tsv"}
        write_text(paths["queries"], "".join(query_lines))
        write_text(paths["qrels"], "".join(qrels_lines))
        written[half] = paths
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m dance_analysis.data.halves QUERIES QRELS OUT_DIR [--seed N] [--prefix NAME]``."""
    parser = argparse.ArgumentParser(prog="python -m dance_analysis.data.halves",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("queries", help="query file: qid <TAB> text (plain or gzip)")
    parser.add_argument("qrels", help="qrels file: qid 0 docid grade (plain or gzip)")
    parser.add_argument("out_dir", help="folder for the four files")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"shuffle seed (default {DEFAULT_SEED})")
    parser.add_argument("--prefix", default="docdev", help="file name prefix (default docdev)")
    args = parser.parse_args(argv)
    try:
        written = split_in_halves(args.queries, args.qrels, args.out_dir, seed=args.seed, prefix=args.prefix)
    except DanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for half, paths in written.items():
        count = sum(1 for _ in open(paths["queries"], encoding="utf-8"))
        print(f"{half}: {count} queries -> {paths['queries']}, {paths['qrels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
