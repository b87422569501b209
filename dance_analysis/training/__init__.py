"""Training of ANCE / DANCE dual encoders with negatives from a refreshed ANN index (``dance-train``).

Modules, one job each: ``config`` (typed recipes; ``config_help`` prints them with their help), ``loop`` (the trainer:
the step, its checkpoints, the run), ``setup`` (setting the trainer up: process group, start, model, optimisation),
``refresher`` (the one interface the loop calls for negatives: sync or async), ``refresh`` (one refresh: encode,
search, mine, evaluate), ``async_refresh`` (the separate miner process and its GPU), ``data`` (the run's inputs:
collection, query splits, token caches), ``embeddings_cache`` (vectors shared by initial refreshes), ``prepare``
(``dance-train --prepare``: token caches before a multi-process run; with ``--mine-step0`` the step-0 negatives
too), ``run_folder`` (the run directory), ``run_log`` (metrics log, TensorBoard, messages), ``result`` (what a run
returns and writes at its end), ``optim`` (AdamW or LAMB, and the schedule), ``instances`` (the instance stream),
``state`` (trainer state for exact resume, committing checkpoints), ``checkpoint`` (writing checkpoint folders),
``step_values`` (losses and counters kept on the device between logging steps), ``distributed`` (torchrun / DDP,
polled waits, gathers with gradients), ``faults`` (fault-injection points for the tests). The run folder's names
and its readers are :mod:`dance_analysis.checkpoints` (one floor down: the report reads it the same way).

Files a change touches: a new refresh mode is a class in ``refresher.py`` (the methods of ``Refresher`` and a
``for_trainer`` constructor, placing what it needs), its entry in ``refresher.REFRESHERS``, its name among the choices
of ``MiningConfig.mode`` (``config.py``) and its tests; ``loop.py`` and ``setup.py`` stay as they are. A new input of a
run: ``data.py``. How the step-0 negatives are made: ``Refresher.start`` (``prepare.py`` for ``--mine-step0``). A new
file in a checkpoint folder: its name in ``dance_analysis/checkpoints.py``, its writer (``checkpoint.py``, ``state.py``
or ``refresh.py``) and, when something reads it, a reader in ``checkpoints.py``. A new ranking measure: one entry in
``dance_analysis.metrics.RANKING_MEASURES``.

    from dance_analysis.training import load_recipe, train
    result = train(load_recipe("train/demo-dance.yaml"), "runs/demo-dance")
"""

from __future__ import annotations

from .config import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe", "train"]


def train(recipe: Recipe, output_dir=None, **kwargs):
    """Train ``recipe`` into ``output_dir``; see :func:`dance_analysis.training.loop.train`."""
    # torch: `import dance_analysis.training` (recipes, --help) stays light
    from .loop import train as _train

    return _train(recipe, output_dir, **kwargs)
