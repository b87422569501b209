"""`make reproduce`: the paper's ANCE -> DANCE chain on the built-in sample, cross-validated, with seeds.

Design (Li et al., DANCE, ICTIR 2021, section 3; arms and branch points in :mod:`dance_analysis.reproduce.arms`,
step numbers in the recipes ``train/rag24-*.yaml``; fixed before the runs it reports):

1. Data: ``rag24-statements`` (:mod:`dance_analysis.data.statements`): the sample's 6,011 passages; training
   queries are the cited statements of the RAG answers of the training topics; the real queries of the held-out
   topics are the test (the held-out topics' statements a second test). 2-fold cross-validation over the 301
   topics: every real query with a relevant passage is tested once, by models that never saw its topic.
2. Arms: ``start`` (all-MiniLM-L6-v2 cut to 3 layers, identity Linear + LayerNorm head: where ANCE starts),
   ``minilm`` (the full model zero-shot, a reference), ``ance`` (120 steps), ``dance-stage1`` (normalisation
   tuning branched from ANCE at step 60, 60 steps), ``dance`` (+ 0.1 x the dual loss, branched from stage 1 at
   step 30, 30 steps) and ``dance-control`` (the same with dual weight 1.0): every trained arm ends at 120 steps
   of compute, and is evaluated there (the dev-selected checkpoints are a secondary result).
3. Seeds: every trained arm of every fold is trained with each seed of ``--seeds``; statistics average the seeds
   per query and resample queries and seeds (:mod:`dance_analysis.comparison`).
4. Outputs in ``reports/rag24/`` (:mod:`dance_analysis.reproduce.write`): ``index.html``, ``metrics.json``, one
   TREC run per arm and seed, each run's ``metrics.jsonl``, ``per_unit.csv``, ``README.md``, and the project
   README's results section between the ``rag24-results`` markers.

Every step is resumable: a finished training run is kept, a started one resumes from its last checkpoint, the
reference arm is encoded once; the report is rebuilt beside ``reports/rag24`` and swapped in when complete.
Wall time is summed over invocations in ``<runs-dir>/reproduce-timings.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..atomic import read_json
from ..cli import train
from ..cli.common import user_errors_exit_2
from ..logs import messages_shown
from ..outputs import check_output_folder
from .arms import ARMS, START, TRAINED, plans, train_command
from .evaluate import encode_reference, evaluate_all
from .timing import Clock
from .write import README_END, README_START, write_outputs

logger = logging.getLogger(__name__)

FOLDS = 2
FOLD_SEED = 13
SEEDS = (1, 2, 3)
COMMAND = "make reproduce"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dance_analysis.reproduce", description=__doc__.split("\n\n")[0],
        epilog="Interrupted? Run the same command again: finished runs are kept, a started one resumes from its "
               "last checkpoint, and the report is rebuilt.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=FOLDS, help=f"cross-validation folds (default: {FOLDS})")
    parser.add_argument("--fold-seed", type=int, default=FOLD_SEED,
                        help=f"seed of the query shuffle that makes the folds (default: {FOLD_SEED})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help=f"training seeds; every trained arm of every fold is trained once per seed "
                             f"(default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--scale-down", type=int, default=1, metavar="D",
                        help="divide every step count of the recipes by D (a smoke run; default: 1)")
    parser.add_argument("--runs-dir", default="runs/rag24", help="where the runs go (default: runs/rag24)")
    parser.add_argument("--out", default="reports/rag24", help="report folder (default: reports/rag24)")
    parser.add_argument("--readme", default="README.md",
                        help="project README whose rag24-results section is replaced (default: README.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even when it holds something else than an earlier report of this "
                             "experiment (without it, such a folder stops the run before any training)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override passed to every dance-train (repeatable)")
    return parser


@user_errors_exit_2
def main(argv: Sequence[str] | None = None) -> int:
    with messages_shown():
        return _run(_parser().parse_args(argv), argv)


def _is_report(folder: Path) -> bool:
    """An earlier report of this experiment: its metrics.json names the experiment."""
    record = read_json(folder / "metrics.json", kind=dict, invalid=None)
    return record is not None and "experiment" in record


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    check_output_folder(args.out, ours=_is_report, what="a report of this experiment", overwrite=args.overwrite)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock(runs_dir / "reproduce-timings.json")

    steps = plans(args.scale_down)
    for seed in args.seeds:           # all folds of the first seed first: an interrupted run has whole seeds
        for fold in range(args.folds):
            for arm in TRAINED:
                cmd = train_command(arm, runs_dir, fold, args.folds, args.fold_seed, seed, args.overrides,
                                    steps[arm.name])
                print(f"== dance-train {' '.join(cmd)}", flush=True)
                with clock.stage(f"fold{fold}/{arm.name}-seed{seed}"):
                    status = train.main(cmd)
                if status:
                    return status

    with clock.stage("reference encoding"):
        reference = encode_reference(runs_dir, args.seeds[0])
    with clock.stage("evaluation and statistics"):
        results = evaluate_all(runs_dir, args.folds, args.seeds, steps, reference,
                               log=lambda m: print(m, flush=True))
    with clock.stage("report"):
        results["experiment"] = {
            "command": COMMAND, "invocation": ["python", "-m", "dance_analysis.reproduce", *(argv or sys.argv[1:])],
            "folds": args.folds, "fold_seed": args.fold_seed, "seeds": list(args.seeds),
            "scale_down": args.scale_down, "overrides": args.overrides,
            "arms": [{"name": a.name, "label": a.label, "recipe": a.recipe, "starts_from": a.starts_from,
                      **({"steps": steps[a.name].steps, "branch_step": steps[a.name].branch,
                          "total_steps": steps[a.name].offset + steps[a.name].steps} if a.recipe else {})}
                     for a in ARMS],
            "runs_dir": str(runs_dir)}
        clock.finish()
        out = write_outputs(results, Path(args.out), Path(args.readme), clock)
    print(f"report: {out / 'index.html'}\nresults: {out / 'README.md'} (wall time {clock.duration()})")
    return 0


__all__ = ["main", "COMMAND", "README_START", "README_END", "START"]
