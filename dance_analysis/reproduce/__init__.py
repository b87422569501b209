"""`make reproduce`: the paper's ANCE -> DANCE contrast on the built-in rag24-sample, cross-validated over every query.

Design (Li et al., DANCE, ICTIR 2021, section 3; the arms in :mod:`dance_analysis.reproduce.arms`):

1. Arms, all from the same all-MiniLM-L6-v2 backbone: ``zero-shot`` (the backbone as published, cosine);
   ``ance`` (pooled vector -> identity-initialised Linear -> LayerNorm, dot product, q->d loss with ANCE
   negatives, ``train/rag24-ance.yaml``); ``dance-stage1`` (normalisation tuning from the fold's selected ANCE
   checkpoint: cosine / 0.01, q->d only); ``dance`` (from the fold's selected stage-1 checkpoint, + 0.1 x d->q).
2. 5-fold cross-validation over all 301 queries (``data.folds``): in fold f the model trains on three folds,
   selects its checkpoint on the next one (dev MRR@10 at every refresh) and is tested on fold f, so every query
   with a relevant passage is tested once by a model that neither trained nor selected on it.
3. Statistics (:mod:`dance_analysis.comparison`): per-query values pooled over folds, paired randomisation
   tests and bootstrap CIs; set statistics per fold with a bootstrap inside the folds; three-way verdicts.
4. Outputs in ``reports/rag24/`` (:mod:`dance_analysis.reproduce.write`): ``index.html``, ``metrics.json``, one
   TREC run per arm (``runs/<arm>.trec.gz``, every tested query once), ``per_unit.csv`` and ``README.md``; the
   project README's results section between the ``rag24-results`` markers.

Every step is resumable: a finished training run is kept, a started one resumes from its last checkpoint, the
zero-shot vectors are encoded once; the report is rebuilt beside ``reports/rag24`` and swapped in when complete.
Wall time is summed over invocations in ``<runs-dir>/reproduce-timings.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli.common import user_errors_exit_2
from ..logs import messages_shown
from .arms import ARMS, TRAINED, ZERO_SHOT, run_dir, train_command
from .timing import Clock
from .write import README_END, README_START

logger = logging.getLogger(__name__)

FOLDS = 5
FOLD_SEED = 13
SEED = 1
COMMAND = "make reproduce"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dance_analysis.reproduce", description=__doc__.split("\n\n")[0],
        epilog="Interrupted? Run the same command again: finished runs are kept, a started one resumes from its "
               "last checkpoint, and the report is rebuilt.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=FOLDS, help=f"cross-validation folds (default: {FOLDS})")
    parser.add_argument("--fold-seed", type=int, default=FOLD_SEED,
                        help=f"seed of the query shuffle that makes the folds (default: {FOLD_SEED})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"training seed of every run (default: {SEED})")
    parser.add_argument("--runs-dir", default="runs/rag24", help="where the runs go (default: runs/rag24)")
    parser.add_argument("--out", default="reports/rag24", help="report folder (default: reports/rag24)")
    parser.add_argument("--readme", default="README.md",
                        help="project README whose rag24-results section is replaced (default: README.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override passed to every dance-train (repeatable)")
    return parser


@user_errors_exit_2
def main(argv: Sequence[str] | None = None) -> int:
    with messages_shown():
        return _run(_parser().parse_args(argv), argv)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from ..cli import train

    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock(runs_dir / "reproduce-timings.json")

    for fold in range(args.folds):
        for arm in TRAINED:
            cmd = train_command(arm, runs_dir, fold, args.folds, args.fold_seed, args.seed, args.overrides)
            print(f"== dance-train {' '.join(cmd)}", flush=True)
            with clock.stage(f"fold{fold}/{arm.name}"):
                status = train.main(cmd)
            if status:
                return status

    from .evaluate import encode_zero_shot, evaluate_all
    from .write import write_outputs

    with clock.stage("zero-shot encoding"):
        zero_shot = encode_zero_shot(runs_dir, run_dir(runs_dir, 0, TRAINED[0].name))
    with clock.stage("evaluation and statistics"):
        results = evaluate_all(runs_dir, args.folds, zero_shot, log=lambda m: print(m, flush=True))
    with clock.stage("report"):
        results["experiment"] = {
            "command": COMMAND, "invocation": ["python", "-m", "dance_analysis.reproduce", *(argv or sys.argv[1:])],
            "folds": args.folds, "fold_seed": args.fold_seed, "seed": args.seed, "overrides": args.overrides,
            "arms": [{"name": a.name, "label": a.label, "recipe": a.recipe, "starts_from": a.starts_from}
                     for a in ARMS],
            "runs_dir": str(runs_dir)}
        clock.finish()
        out = write_outputs(results, Path(args.out), Path(args.readme), clock)
    print(f"report: {out / 'index.html'}\nresults: {out / 'README.md'} (wall time {clock.duration()})")
    return 0


__all__ = ["main", "COMMAND", "README_START", "README_END", "ZERO_SHOT"]
