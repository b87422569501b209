"""dance-train: train an ANCE or DANCE dual encoder with negatives from a refreshed ANN index.

    dance-train train/demo-dance.yaml
    dance-train train/demo-dance.yaml --set optim.max_steps=100 --set mining.refresh_every=50 --output-dir runs/x
    dance-train train/demo-dance.yaml --resume
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
RECIPE is a YAML file with the sections model, data, loss, optim, mining, checkpoint and log (see train/*.yaml
and dance_analysis/training/config.py for every key and its default). --set overrides any key, e.g.
--set optim.lr=1e-5 --set data.collection=my-manifest.yaml; values are read as YAML.

The run directory (default runs/<recipe name>) receives config.yaml (the resolved recipe), metrics.jsonl,
TensorBoard events (tensorboard/), summary.json and checkpoint-<step>/ folders with the encoder, the trainer
state, the negatives and their sampling counts, the embeddings and the dev metrics of each refresh.
A non-empty run directory is refused unless --resume (continue from its last checkpoint; the recipe must be
the same) or --overwrite (delete it first) is given.

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
    return parser


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with the async miner (or anything else),
    # spinning threads of one process starve the other (2-4x slower steps measured on 2 cores). Set before torch
    # is imported; an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..training.config import load_recipe
    from ..training.config_help import dump_recipe_with_help

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        sys.stdout.write(dump_recipe_with_help(recipe))
        return 0
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
