"""dance-train: train an ANCE or DANCE dual encoder with negatives from a refreshed ANN index.

    dance-train train/demo-dance.yaml
    dance-train train/demo-dance.yaml --set optim.max_steps=100 --set mining.refresh_every=50 --output-dir runs/x
    dance-train train/demo-dance.yaml --resume
    dance-train train/rag24-dance.yaml --prepare          # then:
    torchrun --nproc_per_node=2 -m dance_analysis.cli.train train/rag24-dance.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DanceError
from .common import user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
RECIPE is a YAML file with the sections model, data, loss, optim, mining, checkpoint, log and distributed (see
train/*.yaml, --print-config and dance_analysis/training/config.py for every key and its default). --set
overrides any key, e.g. --set optim.lr=1e-5 --set data.collection=my-manifest.yaml; values are read as YAML.

The run directory (default runs/<recipe name>) receives config.yaml (the resolved recipe), metrics.jsonl,
TensorBoard events (tensorboard/), summary.json and checkpoint-<step>/ folders with the encoder, the trainer
state, the negatives and their sampling counts, the embeddings and the dev metrics of each refresh.
A non-empty run directory is refused unless --resume (continue from its last checkpoint; the recipe must be
the same) or --overwrite (delete it first) is given.

A multi-process run (torchrun) starts from a prepared run directory: first run the same command with --prepare
and without torchrun (one process: it builds the token caches with --workers processes; run it again to resume
it), then launch torchrun, whose processes mine the step-0 negatives together (encoding and search split over
them) and write checkpoint-0. --prepare --mine-step0 mines them in the preparing process instead (one device,
checkpoint-0 before torchrun; the earlier behaviour). --resume and --overwrite are for the training command.

The environment variable OMP_WAIT_POLICY defaults to PASSIVE (idle CPU threads sleep rather than spin).

Exit status: 0 done, 2 a problem with the recipe, the data or the paths, including an output that cannot be
written (disk full, file size limit, a parent that is a file; the last complete checkpoint is kept and named),
3 the loss became NaN or infinite (the last good checkpoint is kept).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dance-train", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", metavar="RECIPE", help="training recipe (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value (repeatable)")
    parser.add_argument("--output-dir", default=None, help="run directory (default: runs/<recipe name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    group.add_argument("--overwrite", action="store_true", help="delete the output directory's run first")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe, each key with its help as a comment, and exit")
    parser.add_argument("--prepare", action="store_true",
                        help="prepare the run directory and exit: token caches (the training job mines the step-0 "
                             "negatives, sharded over its processes); "
                             "needed before a multi-process (torchrun) run, resumable")
    parser.add_argument("--mine-step0", action="store_true",
                        help="with --prepare: also mine the step-0 negatives in this one process (checkpoint-0)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="with --prepare: processes that tokenise the caches (default: the CPU count)")
    return parser


def _prepare_command(args) -> str:
    """The ``dance-train ... --prepare`` command line for the arguments of this one."""
    import shlex

    parts = ["dance-train", args.recipe, *[f"--set {shlex.quote(o)}" for o in args.overrides]]
    if args.output_dir:
        parts += ["--output-dir", args.output_dir]
    return " ".join(parts + ["--prepare"])


def _finished(run_dir, recipe) -> bool:
    """``--resume`` of a run whose last checkpoint is at ``optim.max_steps`` already: say that there is nothing
    to do (with its checkpoints) and return True. The recipe is checked against the run's as a resume checks it."""
    # torch: dance-train --help stays fast
    from ..training import checkpoint as ckpt

    # numpy: dance-train --help stays fast
    from ..training.run_folder import check_run_dir

    last = check_run_dir(run_dir, recipe, resume=True, overwrite=False)
    step = ckpt.checkpoint_step(last) if last is not None else None
    if step is None or step < recipe.optim.max_steps:
        return False
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{run_dir}: finished already ({last.name}, step {step} of {recipe.optim.max_steps}); nothing to do "
              f"(--overwrite trains it again, --set optim.max_steps=N with a new --output-dir trains longer)")
        print(f"final checkpoint: {last}")
        best = ckpt.best_checkpoint(run_dir, recipe.checkpoint.best_metric)
        if best is not None:
            print(f"best checkpoint: {best[1]} ({recipe.checkpoint.best_metric} {best[2]:.4f})")
    return True


def _check_gpu_search(recipe) -> None:
    """A recipe that trains or mines on a GPU stops before any work when faiss cannot search there although its GPU
    package is installed (:func:`dance_analysis.index.faiss_gpu_problem`): never a silent fall-back."""
    if recipe.optim.device == "cpu" and recipe.mining.device == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        # numpy: dance-train --help stays fast
        from ..index import check_gpu_search

        check_gpu_search()


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with the async miner (or anything else),
    # spinning threads of one process starve the other (2-4x slower steps measured on 2 cores). Set before torch
    # is imported; an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # yaml, numpy: dance-train --help stays fast
    from ..training.config import load_recipe

    # yaml, numpy: dance-train --help stays fast
    from ..training.config_help import dump_recipe_with_help

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        # torch: dance-train --help stays fast
        from ..training.precision import machine_note

        sys.stdout.write(dump_recipe_with_help(recipe) + machine_note(recipe))
        return 0
    _check_gpu_search(recipe)
    from pathlib import Path

    run_dir = Path(args.output_dir) if args.output_dir else Path("runs") / recipe.name
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.mine_step0 and not args.prepare:
        raise DanceError("--mine-step0 is an option of --prepare (dance-train RECIPE --prepare --mine-step0)")
    if args.prepare:
        if world > 1:
            raise DanceError("--prepare runs in one process, before torchrun: run it without torchrun")
        if args.resume:
            raise DanceError("--prepare resumes by itself; --resume is for the training command")
        # torch: dance-train --help stays fast
        from ..training.prepare import prepare

        prepare(recipe, run_dir, workers=args.workers, overwrite=args.overwrite, mine_step0=args.mine_step0)
        print(f"prepared: {run_dir}")
        return 0
    if world > 1:
        # torch: dance-train --help stays fast
        from ..training.prepare import require_prepared

        try:
            require_prepared(run_dir, recipe, _prepare_command(args))
        except DanceError:
            if int(os.environ.get("RANK", "0")) != 0:
                return 2    # rank 0 says what to run: one line, not one per rank
            raise
    if args.resume and _finished(run_dir, recipe):
        return 0
    # torch: dance-train --help stays fast
    from ..training.loop import train

    try:
        result = train(recipe, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    except OSError as exc:  # a file problem the trainer did not name more precisely: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        raise DanceError(f"{where}{exc.strerror or exc}") from None
    if result.final_checkpoint is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {result.final_checkpoint}")
        if result.best:
            print(f"best checkpoint: {result.best['path']} ({result.best['metric']} {result.best['value']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
