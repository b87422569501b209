"""Load every arm of every fold and seed at its fixed step, and compute the experiment's statistics.

Besides the spaces handed to :func:`~dance_analysis.comparison.compare`, this module measures what the report
needs to show that training moved the models (``movement``), the claim metrics at every checkpoint of every run
(``trajectories``, on total-compute steps so that the stages line up with ANCE), and the dev-selected
checkpoints (``selections``, a secondary result).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import checkpoints
from ..analysis.claim_metrics import mmd2_linear_unbiased
from ..analysis.geometry import mean_pairwise_cosine
from ..atomic import building_dir, read_json, write_json
from ..comparison import Space, build_space, compare, fold_units, load_vectors
from ..data import fold_splits, load_collection
from ..errors import DanceError
from ..index import search
from ..metrics import evaluate_per_query
from ..training.config import load_recipe
from .arms import ARM_BY_NAME, ARMS, CONTRASTS, REFERENCE, START, TRAINED, Plan, run_dir

logger = logging.getLogger(__name__)

#: Passages (a fixed random sample, the same for every arm) for the document-side trajectory statistics.
TRAJECTORY_DOCS = 1000
#: (arm, compared with): the pairs whose test top 10 and parameters the movement table compares.
MOVEMENT_PAIRS = (("ance", "start"), ("dance-stage1", "ance"), ("dance", "dance-stage1"),
                  ("dance-control", "dance-stage1"), ("dance", "ance"), ("dance", "start"))


def _run_config(folder: Path):
    """The resolved recipe a run wrote (``config.yaml``)."""
    return load_recipe(folder / "config.yaml")


def encode_reference(runs_dir: Path, seed: int) -> Path:
    """Encode the corpus and all queries with the reference model (``minilm``, as published), at the ANCE runs'
    lengths, once; the vectors go to ``<runs_dir>/minilm/embeddings`` (a complete folder is reused)."""
    # torch: the reproduce package loads it only to encode the reference
    from ..model import DualEncoder

    # torch: as above
    from ..pipeline import embed_corpus, embed_queries

    folder = Path(runs_dir) / REFERENCE.name
    emb = folder / "embeddings"
    if (emb / "corpus.npy").is_file() and (emb / "queries.npy").is_file() and (folder / "meta.json").is_file():
        return folder
    first = run_dir(runs_dir, 0, TRAINED[0].name, seed)
    recipe = _run_config(first)
    lengths = read_json(first / checkpoints.checkpoint_name(0) / checkpoints.ENCODER_DIR / "encoder.json",
                        "the encoder's JSON options", kind=dict)
    model = DualEncoder.load(REFERENCE.backbone, query_max_length=lengths["query_max_length"],
                             doc_max_length=lengths["doc_max_length"])
    collection = load_collection(recipe.data.collection, min_relevance=recipe.data.min_relevance)
    batch = recipe.mining.encode_batch_size
    with building_dir(folder) as tmp:
        (tmp / "embeddings").mkdir()
        embed_corpus(model, collection, batch_size=batch, out=str(tmp / "embeddings" / "corpus"), device="cpu")
        embed_queries(model, collection, sorted(collection.queries), batch_size=batch,
                      out=str(tmp / "embeddings" / "queries"), device="cpu")
        write_json(tmp / "meta.json", {"backbone": REFERENCE.backbone, "encoder": model.config.to_dict(),
                                       "temperature": model.config.temperature})
    return folder


def selected_checkpoint(folder: Path) -> tuple[int, Path, float | None]:
    """``(step, path, dev MRR@10)`` of the run's best checkpoint (:func:`dance_analysis.checkpoints.run_best`: the
    one the trainer's ``best.json`` names, by the recipe's ``checkpoint.best_metric``, MRR@10 in the rag24
    recipes): the secondary, dev-selected result."""
    best = checkpoints.run_best(folder)
    if best is None:
        raise DanceError(f"{folder}: no checkpoint with dev {checkpoints.run_metric(folder).name}; did the run "
                         f"finish?")
    return best.step, best.path, (checkpoints.read_dev_metrics(best.path) or {}).get("MRR@10")


def _checkpoint(folder: Path, step: int) -> Path:
    path = Path(folder) / checkpoints.checkpoint_name(step)
    if not checkpoints.is_complete(path):
        raise DanceError(f"{path}: missing or incomplete; did the run finish its {step} steps?")
    return path


def _temperature(path: Path) -> float:
    return float(read_json(path / checkpoints.ENCODER_DIR / "encoder.json", "the encoder's JSON options",
                           kind=dict)["temperature"])


def parameters(encoder: Path) -> dict[str, np.ndarray]:
    """Every tensor of an ``encoder/`` folder (backbone and head safetensors), as float64 arrays."""
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for file in sorted(Path(encoder).glob("*.safetensors")):
        for name, value in load_file(str(file)).items():
            out[f"{file.stem}/{name}"] = np.asarray(value, dtype=np.float64)
    return out


def relative_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """``||a - b|| / ||b||`` over all parameters both share (same names and shapes)."""
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not shared:
        raise DanceError("the two encoders share no parameter")
    diff = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in shared)
    norm = sum(float(np.sum(b[k] ** 2)) for k in shared)
    return float(np.sqrt(diff / norm))


def top10_changed(a: Space, b: Space) -> float:
    """Share of the test queries whose ordered top 10 differs between two spaces of the same fold."""
    x, y = np.asarray(a.rankings.indices)[:, :10], np.asarray(b.rankings.indices)[:, :10]
    return float(np.mean(np.any(x != y, axis=1)))


def _trajectory_point(vectors: tuple, units, doc_rows: np.ndarray, collection) -> dict[str, float]:
    """Test ranking and geometry of one checkpoint's vectors (cheap statistics for the curves)."""
    corpus, queries = vectors
    q = np.asarray(queries.vectors, dtype=np.float32)[units.test_rows]
    d = np.asarray(corpus.vectors, dtype=np.float32)
    rankings = search(q, d, 100, query_ids=units.test_qids, doc_ids=corpus.ids, device="cpu")
    values = evaluate_per_query(rankings, collection.qrels, min_relevance=collection.min_relevance,
                                measures=("MRR@10", "nDCG@10"), query_ids=units.test_qids)
    docs = d[doc_rows]
    return {"q2d.MRR@10": float(np.mean(values["MRR@10"])), "q2d.nDCG@10": float(np.mean(values["nDCG@10"])),
            "query_mean_cosine": float(mean_pairwise_cosine(q)), "doc_mean_cosine": float(mean_pairwise_cosine(docs)),
            "query_doc_mmd2": float(mmd2_linear_unbiased(q, docs))}


def evaluate_all(runs_dir: Path, folds: int, seeds: Sequence[int], steps: dict[str, Plan], reference: Path, *,
                 log: Callable[[str], None] = logger.info) -> dict:
    """Spaces of every arm on every fold (one per seed for the trained arms), then
    :func:`~dance_analysis.comparison.compare`; plus movement, trajectories, selections and the run folders."""

    first = run_dir(runs_dir, 0, TRAINED[0].name, seeds[0])
    recipe = _run_config(first)
    collection = load_collection(recipe.data.collection, min_relevance=recipe.data.min_relevance)
    ref_meta = read_json(reference / "meta.json", "the reference embeddings' JSON record", kind=dict)
    ref_corpus, ref_queries = load_vectors(reference / "embeddings")
    corpus_ids, query_ids = ref_corpus.ids, ref_queries.ids
    doc_rows = np.sort(np.random.default_rng(0).choice(len(corpus_ids), min(TRAJECTORY_DOCS, len(corpus_ids)),
                                                       replace=False))
    spaces: list[dict[str, list[Space]]] = []
    selections, movement, trajectories, runs = [], [], [], []
    for fold in range(folds):
        fold_recipe = _run_config(run_dir(runs_dir, fold, TRAINED[0].name, seeds[0]))
        data = fold_recipe.data
        if data.folds != folds or data.fold != fold:
            raise DanceError(f"{run_dir(runs_dir, fold, TRAINED[0].name, seeds[0])}: trained on fold {data.fold} "
                             f"of {data.folds}, expected fold {fold} of {folds}")
        splits = fold_splits(collection, data.folds, fold, seed=data.fold_seed)
        units = fold_units(collection, fold, splits, corpus_ids, query_ids)

        def space(arm: str, path: Path, seed: int | None = None, units=units) -> Space:
            corpus, queries = load_vectors(path / "embeddings", corpus_ids, query_ids)
            return build_space(arm, units, corpus, queries, _temperature(path), collection, seed=seed)

        start_path = _checkpoint(run_dir(runs_dir, fold, "ance", seeds[0]), 0)
        per_arm: dict[str, list[Space]] = {
            REFERENCE.name: [build_space(REFERENCE.name, units, ref_corpus, ref_queries,
                                         float(ref_meta["temperature"]), collection)],
            START.name: [space(START.name, start_path)]}
        start_params = parameters(start_path / "encoder")
        finals: dict[tuple[str, int], Path] = {}
        for arm in TRAINED:
            plan = steps[arm.name]
            per_arm[arm.name] = []
            for seed in seeds:
                folder = run_dir(runs_dir, fold, arm.name, seed)
                final = _checkpoint(folder, plan.steps)
                finals[arm.name, seed] = final
                per_arm[arm.name].append(space(arm.name, final, seed))
                runs.append({"fold": fold, "seed": seed, "arm": arm.name, "path": str(folder)})
                points = {}
                for step, path in checkpoints.list_checkpoints(folder):
                    point = _trajectory_point(load_vectors(path / "embeddings", corpus_ids, query_ids), units,
                                              doc_rows, collection)
                    point["dev.MRR@10"] = (checkpoints.read_dev_metrics(path) or {}).get("MRR@10")
                    points[step] = point
                    trajectories.append({"fold": fold, "seed": seed, "arm": arm.name, "step": plan.offset + step,
                                         "metrics": point})
                best_step, _, dev = selected_checkpoint(folder)
                selections.append({"fold": fold, "seed": seed, "arm": arm.name, "step": best_step,
                                   "total_step": plan.offset + best_step, "dev_MRR@10": dev,
                                   "test_MRR@10": points[best_step]["q2d.MRR@10"], "run": str(folder)})
        for seed_index, seed in enumerate(seeds):
            params = {arm.name: parameters(finals[arm.name, seed] / "encoder") for arm in TRAINED}
            params[START.name] = start_params
            for arm, other in MOVEMENT_PAIRS:
                a = per_arm[arm][seed_index]
                b = per_arm[other][seed_index if ARM_BY_NAME[other].recipe else 0]
                movement.append({"fold": fold, "seed": seed, "arm": arm, "vs": other,
                                 "mrr10_change": float(np.mean(a.per_query["MRR@10"]) - np.mean(b.per_query["MRR@10"])),
                                 "top10_changed_share": top10_changed(a, b),
                                 "relative_param_distance": relative_distance(params[arm], params[other])})
        log(f"fold {fold}: {len(units.test_qids)} test queries, {len(units.anchors)} relevant passages, "
            f"query pool {len(units.pool_qids)}; " + ", ".join(
                f"{m['arm']} vs {m['vs']} seed {m['seed']}: top 10 changed for {m['top10_changed_share']:.0%}"
                for m in movement if m["fold"] == fold and m["vs"] != "start"))
        spaces.append(per_arm)
    results = compare(spaces, [arm.name for arm in ARMS], CONTRASTS, log=log)
    results.update(selections=selections, movement=movement, trajectories=trajectories, runs=runs,
                   branch_checks=branch_checks(runs_dir, folds, seeds, steps, corpus_ids, query_ids))
    results["folds"] = [{"fold": s[START.name][0].units.fold, "test_queries": len(s[START.name][0].units.test_qids),
                         "relevant_passages": len(s[START.name][0].units.anchors),
                         "query_pool": len(s[START.name][0].units.pool_qids)} for s in spaces]
    results["collection"] = {"name": collection.name, "source": collection.source,
                             "min_relevance": collection.min_relevance, "documents": int(len(corpus_ids)),
                             "queries": int(len(query_ids)), "backbone": recipe.model.backbone,
                             "reference": str(ref_meta.get("backbone"))}
    results["_spaces"] = spaces  # arrays for the run files, per-unit table and figures; not written to JSON
    return results


def branch_checks(runs_dir: Path, folds: int, seeds: Sequence[int], steps: dict[str, Plan],
                  corpus_ids: np.ndarray, query_ids: np.ndarray) -> list[dict]:
    """The built-in check that a stage starts where its parent was at the branch step: the largest difference
    between the cosine of every (query, passage) direction of the stage's step-0 vectors and of the parent's
    vectors at the branch step (0 up to rounding; the stages' step 0 reuses the parent's vectors, normalised)."""
    out = []
    for fold in range(folds):
        for seed in seeds:
            for arm in TRAINED:
                plan = steps[arm.name]
                if not arm.starts_from:
                    continue
                mine = load_vectors(_checkpoint(run_dir(runs_dir, fold, arm.name, seed), 0) / "embeddings",
                                    corpus_ids, query_ids)
                parent = load_vectors(_checkpoint(run_dir(runs_dir, fold, arm.starts_from, seed), plan.branch)
                                      / "embeddings", corpus_ids, query_ids)
                gap = max(float(np.max(np.abs(_unit(m.vectors) - _unit(p.vectors)))) for m, p in zip(mine, parent))
                out.append({"fold": fold, "seed": seed, "arm": arm.name, "parent": arm.starts_from,
                            "branch_step": plan.branch, "max_direction_difference": gap})
    return out


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
