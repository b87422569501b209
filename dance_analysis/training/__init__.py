"""Training of ANCE / DANCE dual encoders with negatives from a refreshed ANN index (``dance-train``).

Modules: ``config`` (typed recipes; ``config_help`` prints them with their help), ``loop`` (the trainer's loop),
``run_folder`` (the run directory), ``prepare`` (``dance-train --prepare``: token caches and step-0 negatives before a
multi-process run), ``run_log`` (metrics log, TensorBoard, messages), ``optim`` (AdamW or LAMB, and the schedule),
``instances`` (the instance stream), ``state`` (trainer state for exact resume, committing checkpoints),
``refresh`` (encode, search, mine, evaluate), ``async_refresh`` (the separate miner process and its GPU),
``checkpoint`` (checkpoint folders, exact resume state), ``distributed`` (torchrun / DDP, polled waits, gathers with
gradients), ``faults`` (fault-injection points for the tests).

    from dance_analysis.training import load_recipe, train
    result = train(load_recipe("train/demo-dance.yaml"), "runs/demo-dance")
"""

from __future__ import annotations

from .config import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe", "train"]


def train(recipe: Recipe, output_dir=None, **kwargs):
    """Train ``recipe`` into ``output_dir``; see :func:`dance_analysis.training.loop.train`."""
    from .loop import train as _train

    return _train(recipe, output_dir, **kwargs)
