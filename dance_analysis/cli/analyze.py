"""dance-analyze: one self-contained HTML report on the embedding spaces of checkpoints, runs or models.

    dance-analyze runs/demo-ance runs/demo-dance
    dance-analyze runs/demo-dance/checkpoint-40 --split test
    dance-analyze minilm --collection rag24-sample --split test --sample 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DanceError
from ..report.progress import ReportProgress
from .common import add_prompt_arguments, encoder_overrides, user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
Each PATH is one of:
  a checkpoint folder (checkpoint.json)        one subject
  a run folder (checkpoint-<step>/ folders)     every checkpoint in step order (a trajectory); the trainer's best
                                                checkpoint stands for the run: the one best.json names, else the
                                                best by the recipe's checkpoint.best_metric (default MRR@10), else
                                                the last (dance-mine and the experiment pick the same one)
  a Trainer output folder (checkpoint-<step>/   a run of the models saved by a transformers / sentence-transformers
    model folders with trainer_state.json)      Trainer; the trainer's best_model_checkpoint (else the best logged
                                                *MRR@10, else the last) stands for the run; give --collection
  a model folder or the alias 'minilm'          encoded on the collection (a Hugging Face, DualEncoder.save or
                                                sentence-transformers folder, read with its own modules)
  a folder of saved embeddings                  corpus.npy, corpus.ids.npy, queries.npy, queries.ids.npy
                                                (optional meta.json {"collection": ...})
Several PATHs are compared side by side (typically an ANCE run and a DANCE run). Embeddings saved in a checkpoint
are reused; other subjects are encoded. The collection is --collection, else the one the checkpoints record.

--sample N analyses N queries of the split (drawn with --seed) and a sub-corpus: every judged document of those
queries plus N other documents drawn with the seed (ranking numbers are then those of the sub-corpus; the report
says so). Without it, every query of the split with a relevant document and the whole corpus are analysed.

Writes DIR/index.html (self-contained: figures inline, no network request), DIR/metrics.json and CSV tables,
all at once (nothing is written when an input is bad). DIR is --out, else runs/reports/<name>/ (runs/ is ignored
by git; the committed reports/ are never written by default), <name> being --name or made from the inputs'
paths (runs/demo-dance/checkpoint-40 -> demo-dance-checkpoint-40, the alias -> minilm; a short hash is added
when that folder holds the report of other inputs). An earlier report is replaced only with --overwrite.

q2d: queries retrieve documents (MRR@10, nDCG@10, ...); d2q: each relevant document retrieves its queries among
all analysed queries (DANCE's dual task). The claims C1-C5 of the DANCE paper (listed in the README) get a
verdict from the numbers: reproduced, contradicted, inconclusive, not measurable here (the design cannot move the
metric), or not compared (the inputs hold no ANCE-trained and DANCE-trained pair to compare, e.g. one model).

Shows one line per input and a progress bar (--verbose: also every statistic as it is computed; --quiet:
nothing), then a short summary on stdout.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of dance-analyze."""
    parser = argparse.ArgumentParser(prog="dance-analyze", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="checkpoint, run folder, model folder, 'minilm', or saved-embeddings folder")
    parser.add_argument("--collection", default=None,
                        help="collection: rag24-sample, irds:<id>, a BEIR folder or a YAML manifest "
                             "(default: the one recorded in the checkpoints)")
    parser.add_argument("--split", default=None,
                        help="query split to analyse, or 'all' (default: test when the collection has it, else all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: runs/reports/<name>/, see below)")
    parser.add_argument("--name", default=None, help="report name (default: made from the inputs' paths, joined "
                                                     "by -vs-)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier report in the report folder (without it, an existing report is "
                             "never replaced)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="analyse N queries and a sub-corpus (see below)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every sample and of UMAP (default: 0)")
    parser.add_argument("--min-relevance", type=int, default=None,
                        help="grade that counts as relevant (default: the collection's)")
    parser.add_argument("--umap-points", type=int, default=1000,
                        help="points per subject in the UMAP picture, half queries, half documents "
                             "(default: %(default)s)")
    parser.add_argument("--export-projections", action="store_true",
                        help="also write every analysed query and passage with its PCA / UMAP coordinates, id, "
                             "side, run / checkpoint, text snippet and relevance: DIR/projections.parquet and "
                             "TensorBoard projector files in DIR/projector/ (tensorboard --logdir DIR/projector)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--query-max-length", type=int, default=None, help="override the models' query length")
    parser.add_argument("--doc-max-length", type=int, default=None, help="override the models' document length")
    add_prompt_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "bf16-weights", "auto"),
                        help="precision of the subjects that are encoded: fp32; bf16 (autocast); bf16-weights "
                             "(a bf16 copy of the model); auto: where the hardware has native bf16, the fastest "
                             "of the two that a short measurement finds faster and whose top-20 neighbours agree "
                             "with fp32, else fp32; vectors are float32 (default: %(default)s: the report's "
                             "numbers are claims)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="no progress output")
    output.add_argument("--verbose", action="store_true",
                        help="also print every statistic as it is computed (keys as in metrics.json)")
    return parser


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    """Analyse the PATHs, write the report, print the claims table and the report's path; 2 on bad input."""
    args = build_parser().parse_args(argv)
    # torch: dance-analyze --help stays fast
    from ..encode import encoding_precision

    # scipy: dance-analyze --help stays fast
    from ..report.build import build_report, claims_text

    # scipy: dance-analyze --help stays fast
    from ..report.compute import AnalysisSettings

    for flag, value in (("--sample", args.sample), ("--umap-points", args.umap_points),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise DanceError(f"{flag} must be a positive integer, got {value}")
    overrides = encoder_overrides(args)
    settings = AnalysisSettings(split=args.split, sample=args.sample, seed=args.seed, umap_points=args.umap_points,
                                batch_size=args.batch_size, device=args.device, progress=not args.quiet,
                                encoder_overrides=overrides, export_projections=args.export_projections)
    progress = ReportProgress(enabled=not args.quiet, verbose=args.verbose)
    command = ["dance-analyze", *(argv if argv is not None else sys.argv[1:])]
    try:
        with encoding_precision(args.precision) as precision:
            result = build_report(args.paths, collection=args.collection, out=args.out, name=args.name,
                                  settings=settings, min_relevance=args.min_relevance, command=command,
                                  progress=progress, overwrite=args.overwrite)
    finally:
        progress.close()
    # numpy: dance-analyze --help stays fast
    from ..metrics import PRIMARY_METRIC

    primary = PRIMARY_METRIC.name
    results = result.results
    selection = results["selection"]
    print(f"{results['collection']['name']} / {selection['split']}: {selection['queries']} queries, "
          f"{selection['documents']} documents")
    for run in results["runs"]:
        for subject in run["subjects"]:
            if subject["label"] == run["representative"]:
                q2d, d2q = subject["ranking"]["q2d"], subject["ranking"]["d2q"]
                print(f"  {run['name']}: documents for queries (q2d) {primary} {_num(q2d.get(primary))}, nDCG@10 "
                      f"{_num(q2d.get('nDCG@10'))}; queries for documents (d2q) {primary} {_num(d2q.get(primary))}")
    claims = results["comparison"]["claims"]
    if claims and all(claim["verdict"] == "not compared" for claim in claims):
        print("claims C1-C5 (DANCE vs ANCE): not compared (the inputs hold no ANCE-trained and DANCE-trained pair)")
    else:
        print("claims C1-C5 (DANCE vs ANCE; effect of DANCE - ANCE with its 95 % CI):")
        print(claims_text(results))
    if args.precision != "fp32" and precision.used:
        print(f"{precision.describe()} "
              f"(--precision {args.precision}; the report's command line records it)")
    if args.export_projections:
        print(f"projections: {result.out / 'projections.parquet'} and {result.out / 'projector'}/ "
              f"(tensorboard --logdir {result.out / 'projector'})")
    print(f"report: {result.index}  ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
