"""Load every arm's selected model of every fold and compute the experiment's statistics."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..atomic import building_dir, write_json
from ..comparison import FoldUnits, Space, build_space, compare, fold_units, load_vectors
from ..errors import DanceError
from ..training import checkpoint as ckpt
from ..training.config import load_recipe
from .arms import ARMS, CONTRASTS, TRAINED, ZERO_SHOT, run_dir

logger = logging.getLogger(__name__)

SELECTION_METRIC = "MRR@10"


def _run_config(folder: Path):
    """The resolved recipe a run wrote (``config.yaml``)."""
    return load_recipe(folder / "config.yaml")


def encode_zero_shot(runs_dir: Path, reference_run: Path) -> Path:
    """Encode the corpus and all queries with the backbone as published, at the reference run's lengths, once.

    The backbone is the reference run's ``model.backbone`` (the ANCE arm's start); the vectors go to
    ``<runs_dir>/zero-shot/embeddings``; a complete folder is reused.
    """
    from ..data import load_collection
    from ..model import DualEncoder
    from ..pipeline import embed_corpus, embed_queries

    folder = Path(runs_dir) / ZERO_SHOT.name
    emb = folder / "embeddings"
    if (emb / "corpus.npy").is_file() and (emb / "queries.npy").is_file() and (folder / "meta.json").is_file():
        return folder
    recipe = _run_config(reference_run)
    lengths = json.loads((reference_run / "checkpoint-0" / "encoder" / "encoder.json").read_text(encoding="utf-8"))
    model = DualEncoder.load(recipe.model.backbone, query_max_length=lengths["query_max_length"],
                             doc_max_length=lengths["doc_max_length"])
    collection = load_collection(recipe.data.collection, min_relevance=recipe.data.min_relevance)
    batch = recipe.mining.encode_batch_size
    with building_dir(folder) as tmp:
        (tmp / "embeddings").mkdir()
        embed_corpus(model, collection, batch_size=batch, out=str(tmp / "embeddings" / "corpus"), device="cpu")
        embed_queries(model, collection, sorted(collection.queries), batch_size=batch,
                      out=str(tmp / "embeddings" / "queries"), device="cpu")
        write_json(tmp / "meta.json", {"backbone": recipe.model.backbone, "encoder": model.config.to_dict(),
                                       "temperature": model.config.temperature})
    return folder


def selected_checkpoint(folder: Path) -> tuple[int, Path, float]:
    """The run's checkpoint with the best dev MRR@10 (earliest on ties): the one that represents the arm."""
    best = ckpt.best_checkpoint(folder, SELECTION_METRIC)
    if best is None:
        raise DanceError(f"{folder}: no checkpoint with dev {SELECTION_METRIC}; did the run finish?")
    return best


def evaluate_all(runs_dir: Path, folds: int, zero_shot: Path, *, log: Callable[[str], None] = logger.info) -> dict:
    """Spaces of every arm on every fold, then :func:`~dance_analysis.comparison.compare`."""
    from ..data import cross_validation_splits, load_collection

    reference = run_dir(runs_dir, 0, TRAINED[0].name)
    recipe = _run_config(reference)
    collection = load_collection(recipe.data.collection, min_relevance=recipe.data.min_relevance)
    zs_meta = json.loads((zero_shot / "meta.json").read_text(encoding="utf-8"))
    zs_corpus, zs_queries = load_vectors(zero_shot / "embeddings")
    corpus_ids, query_ids = zs_corpus.ids, zs_queries.ids
    spaces: list[dict[str, Space]] = []
    selections: list[dict] = []
    for fold in range(folds):
        fold_recipe = _run_config(run_dir(runs_dir, fold, TRAINED[0].name))
        data = fold_recipe.data
        if data.folds != folds or data.fold != fold:
            raise DanceError(f"{run_dir(runs_dir, fold, TRAINED[0].name)}: trained on fold {data.fold} of "
                             f"{data.folds}, expected fold {fold} of {folds}")
        splits = cross_validation_splits(collection.queries, data.folds, fold, seed=data.fold_seed)
        units: FoldUnits = fold_units(collection, fold, splits, corpus_ids, query_ids)
        per_arm = {ZERO_SHOT.name: build_space(ZERO_SHOT.name, units, zs_corpus, zs_queries,
                                               float(zs_meta["temperature"]), collection)}
        for arm in TRAINED:
            folder = run_dir(runs_dir, fold, arm.name)
            step, path, dev = selected_checkpoint(folder)
            corpus, queries = load_vectors(path / "embeddings", corpus_ids, query_ids)
            encoder = json.loads((path / "encoder" / "encoder.json").read_text(encoding="utf-8"))
            per_arm[arm.name] = build_space(arm.name, units, corpus, queries, float(encoder["temperature"]),
                                            collection)
            selections.append({"fold": fold, "arm": arm.name, "checkpoint": path.name, "step": step,
                               "dev_MRR@10": dev, "run": str(folder)})
        log(f"fold {fold}: {len(units.test_qids)} test queries, {len(units.anchors)} relevant passages, "
            f"query pool {len(units.pool_qids)}; selected " +
            ", ".join(f"{s['arm']} step {s['step']}" for s in selections if s["fold"] == fold))
        spaces.append(per_arm)
    results = compare(spaces, [arm.name for arm in ARMS], CONTRASTS, log=log)
    results["selections"] = selections
    results["folds"] = [{"fold": s[ZERO_SHOT.name].units.fold, "test_queries": len(s[ZERO_SHOT.name].units.test_qids),
                         "relevant_passages": len(s[ZERO_SHOT.name].units.anchors),
                         "query_pool": len(s[ZERO_SHOT.name].units.pool_qids)} for s in spaces]
    results["collection"] = {"name": collection.name, "source": collection.source,
                             "min_relevance": collection.min_relevance, "documents": int(len(corpus_ids)),
                             "queries": int(len(query_ids)), "backbone": str(zs_meta.get("backbone"))}
    results["_spaces"] = spaces  # arrays for the run files, per-unit table and figures; not written to JSON
    return results
