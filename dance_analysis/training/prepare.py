"""Preparing a run before any process group exists: ``dance-train RECIPE --prepare``.

A multi-process run (``torchrun``) must not spend its first hours with rank 0 building token caches while the other
ranks wait in a collective (the process-group timeout would end it). So the work that only one process can do is
done first, in one process, with every core:

1. the token caches of the corpus and of the queries, tokenised by ``workers`` processes in resumable parts
   (:func:`dance_analysis.data.tokens.cached_tokens`);
2. only with ``--mine-step0``: the step-0 refresh with the starting weights in this one process (corpus and query
   embeddings, the step-0 negatives, the dev metrics), published as ``checkpoint-0/`` with the starting encoder;
3. ``prepared.json``, written last, which says the folder is ready.

Each stage keeps what an interrupted run finished (complete cache parts, a complete ``checkpoint-0``), so running
``--prepare`` again resumes. Then ``torchrun ... dance-train RECIPE --output-dir RUN_DIR`` trains: every rank opens
the caches (none builds one); without ``checkpoint-0`` the ranks mine the step-0 negatives together, as every sync
refresh (encoding split over the ranks, search and mining on rank 0 while the others meet it in small
collectives), and write ``checkpoint-0``; with it they load its encoder and train on its negatives. In the async
layout the miner process takes over from the step-0 set. The trainer refuses to start a multi-process run in a
folder that was not prepared (:func:`require_prepared`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..atomic import building_dir, write_json
from ..checkpoints import (  # noqa: F401 - the read-only part of preparing, re-exported for the trainer
    DEV_METRICS_FILE,
    NEGATIVES_DIR,
    PREPARED_FILE,
    REFRESH_FILE,
    check_prepared,
    prepared_checkpoint,
    read_prepared,
    require_prepared,
)
from ..checkpoints import step0_settings as _step0_settings
from ..device import pick_device
from ..logs import NOTICE
from . import checkpoint as ckpt
from . import refresh
from .config import Recipe
from .data import prepare_data
from .run_folder import CONFIG_FILE, check_run_dir, init_run_dir, start_model
from .state import checkpoint_meta

logger = logging.getLogger(__name__)


def prepare(recipe: Recipe, run_dir: str | os.PathLike, *, workers: int | None = None, overwrite: bool = False,
            progress: bool | None = None, mine_step0: bool = False) -> Path | None:
    """Prepare ``run_dir`` for ``recipe`` (see the module docstring); returns ``checkpoint-0`` when there is one
    (``mine_step0``), else ``None`` (the training job mines step 0).

    ``workers`` (default: the CPU count) processes tokenise the caches. A folder that is already prepared for the
    recipe is left as it is (``mine_step0`` adds ``checkpoint-0`` to one prepared without it, before training has
    written a checkpoint); a half-prepared one is completed; ``overwrite`` starts from an empty folder.
    """
    import time


    run_dir = Path(run_dir)
    workers = max(1, int(workers or os.cpu_count() or 1))
    checkpoint = run_dir / "checkpoint-0"
    if not overwrite and check_prepared(run_dir, recipe):
        found = ckpt.list_checkpoints(run_dir)
        if found or not mine_step0:
            logger.log(NOTICE, "%s is already prepared (%s)", run_dir, found[-1][1].name if found else
                       "token caches; the training job mines the step-0 negatives")
            return checkpoint if ckpt.is_complete(checkpoint) else None
    half_prepared = not overwrite and (run_dir / CONFIG_FILE).is_file() and not any(
        step > 0 for step, _ in ckpt.list_checkpoints(run_dir, complete_only=False))
    if not half_prepared:
        check_run_dir(run_dir, recipe, resume=False, overwrite=overwrite)
    elif checkpoint.is_dir():
        check_run_dir(run_dir, recipe, resume=True, overwrite=False)   # the same recipe as the first attempt

    started = time.perf_counter()
    model, start = start_model(recipe)
    data = prepare_data(recipe, model.tokenizer, model.config.query_max_length, model.config.doc_max_length,
                        workers=workers, build=True,
                        prompts=(model.config.query_prompt, model.config.document_prompt))
    caches = time.perf_counter() - started
    logger.log(NOTICE, "token caches ready in %.1fs (%d worker process(es)): %s, %s", caches, workers,
                data.doc_tokens.path, data.query_tokens.path)
    init_run_dir(run_dir, recipe, resume=True, overwrite=overwrite and not half_prepared, fresh=False)
    if mine_step0 and not ckpt.is_complete(checkpoint):
        _mine_step0(model, start, data, recipe, run_dir, progress)
    mined = ckpt.is_complete(checkpoint)
    write_json(run_dir / PREPARED_FILE, {
        "settings": _step0_settings(recipe), "checkpoint": checkpoint.name if mined else None,
        "token_caches": {"doc": str(data.doc_tokens.path), "query": str(data.query_tokens.path)},
        "workers": workers, "seconds": round(time.perf_counter() - started, 1)})
    logger.log(NOTICE, "prepared %s in %.1fs; start training with torchrun ... --output-dir %s%s", run_dir,
               time.perf_counter() - started, run_dir,
               "" if mined else " (its processes mine the step-0 negatives together)")
    return checkpoint if mined else None


def _mine_step0(model, start: Path | None, data, recipe: Recipe, run_dir: Path, progress: bool | None) -> None:
    """The step-0 refresh in this one process, published as ``checkpoint-0`` with the starting encoder (``dance-train
    --prepare --mine-step0``)."""

    device = pick_device(recipe.optim.device)
    tmp = ckpt.begin_checkpoint(run_dir, 0)
    model = model.to(device)
    result = refresh.run_refresh(model, data, recipe, 0, out_dir=tmp, device=device, progress=progress,
                                 reuse_cache=recipe.mining.cache_initial_embeddings, start=start, refresh_index=0)
    model.save(tmp / "encoder")
    meta = checkpoint_meta(recipe, data.collection.source, model.config.temperature, world_size=1)
    ckpt.commit_checkpoint(tmp, run_dir, 0, {**meta, "prepared": True})
    logger.log(NOTICE, refresh.summary_line(result.record(), recipe.checkpoint.best_metric, "| step-0 negatives"))


def publish_prepared_set(checkpoint: Path, set_dir: Path) -> None:
    """Publish the negatives (and the refresh record) of a prepared ``checkpoint-0`` as the async miner's set
    ``set_dir`` (``refresh/step-0``), so that the trainer adopts it and the miner goes on from it."""
    import shutil


    with building_dir(set_dir) as tmp:
        shutil.copytree(checkpoint / NEGATIVES_DIR, tmp / NEGATIVES_DIR)
        for name in (REFRESH_FILE, DEV_METRICS_FILE):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
