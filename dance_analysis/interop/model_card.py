"""The model card (``README.md``) that ``dance-export`` writes into a sentence-transformers folder.

Front matter (what the Hugging Face Hub reads; :class:`huggingface_hub.ModelCard` loads it back):
``library_name: sentence-transformers``, ``pipeline_tag: sentence-similarity``, ``base_model`` (the recipe's
backbone when it names a Hub model; the alias ``minilm`` is ``sentence-transformers/all-MiniLM-L6-v2``), ``tags``
(sentence-transformers, dense-retrieval, ance / dance, dance-analysis), ``datasets`` (the collection's name) and a
``model-index`` with the checkpoint's dev metrics (``dev_metrics.json``: the refresh that mined its negatives).

Body: what the model is, how to use it (``encode_query`` / ``encode_document``), the resolved training recipe
(the run's ``config.yaml``), how the negatives were mined (the recipe's ``mining`` section and the checkpoint's
``negatives/meta.json``), the geometry of the space at that checkpoint (the statistics the trainer logged at its
refresh, :func:`dance_analysis.analysis.snapshot.refresh_geometry`; computed from the checkpoint's saved
embeddings when the log has none) and the export's own check. A source that is not a checkpoint (a model folder,
a hub name, the alias) gets the front matter and the usage only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..analysis.snapshot import refresh_geometry
from ..atomic import read_json
from ..checkpoints import read_metrics_log

__all__ = ["model_card", "HUB_NAMES"]

#: Backbone aliases and the Hub models they stand for.
HUB_NAMES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
#: Dev metrics shown in the model-index, with the names the Hub's metric types use.
_METRIC_TYPES = {"MRR@10": "mrr_at_10", "MRR@100": "mrr_at_100", "nDCG@10": "ndcg_at_10", "R@100": "recall_at_100",
                 "R@1000": "recall_at_1000", "MAP": "map"}


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; ``None`` when it is missing or unreadable (the card leaves the part out)."""
    return read_json(path, invalid=None)


def _hub_id(name: Any) -> str | None:
    """``name`` when it reads as a Hub model id (``owner/name``, not a path on this machine), else None."""
    if not isinstance(name, str):
        return None
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists():
        return name
    return None


def _collection_name(spec: Any) -> str | None:
    """A short name for the collection a checkpoint records: the built-in name, the ir_datasets id, a manifest's
    ``name``, else the folder / file name."""
    if isinstance(spec, dict):
        spec = spec.get("name") or spec.get("path") or spec.get("manifest")
    if not isinstance(spec, str) or not spec:
        return None
    if spec.startswith("irds:"):
        return spec[len("irds:"):]
    path = Path(spec)
    if path.is_file():
        try:
            manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            manifest = None
        if isinstance(manifest, dict) and isinstance(manifest.get("name"), str):
            return manifest["name"]
        return path.stem
    return path.name or spec


def _refresh_geometry(run_dir: Path, step: int) -> dict[str, float] | None:
    """The space statistics the trainer logged at the last refresh at or before ``step`` (metrics.jsonl)."""
    best = None
    for record in read_metrics_log(run_dir):
        geometry = record.get("geometry")
        at = record.get("step")
        if isinstance(geometry, dict) and isinstance(at, int) and at <= step and (best is None or at >= best[0]):
            best = (at, {k: float(v) for k, v in geometry.items() if isinstance(v, (int, float))})
    return best[1] if best else None


def _saved_geometry(checkpoint: Path) -> dict[str, float] | None:
    """:func:`~dance_analysis.analysis.snapshot.refresh_geometry` of the checkpoint's saved embeddings."""
    folder = checkpoint / "embeddings"
    if not (folder / "queries.npy").is_file() or not (folder / "corpus.npy").is_file():
        return None
    queries = np.load(folder / "queries.npy", mmap_mode="r", allow_pickle=False)
    corpus = np.load(folder / "corpus.npy", mmap_mode="r", allow_pickle=False)
    return refresh_geometry(queries, corpus)


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(source: str | os.PathLike, *, dim: int, query_max_length: int, doc_max_length: int,
               router: bool, max_abs_diff: float, repo_id: str | None = None) -> str:
    """The ``README.md`` text for the export of ``source`` (see the module docstring)."""
    from huggingface_hub import EvalResult, ModelCardData

    folder = Path(str(source)).expanduser()
    checkpoint = folder if (folder / "checkpoint.json").is_file() else None
    run_dir = checkpoint.parent if checkpoint is not None else None
    meta = (_read_json(checkpoint / "checkpoint.json") if checkpoint else None) or {}
    dev = (_read_json(checkpoint / "dev_metrics.json") if checkpoint else None) or {}
    recipe = None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        try:
            recipe = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            recipe = None
    recipe = recipe if isinstance(recipe, dict) else {}
    model_section = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    backbone = model_section.get("backbone") if model_section else (str(source) if checkpoint is None else None)
    base_model = _hub_id(backbone)
    objective = str(meta.get("objective") or (recipe.get("loss") or {}).get("objective") or "")
    collection = _collection_name(meta.get("collection") or (recipe.get("data") or {}).get("collection"))
    splits = meta.get("splits") if isinstance(meta.get("splits"), dict) else {}
    dev_split = splits.get("dev") or (recipe.get("data") or {}).get("dev_split") or "dev"
    step = meta.get("step")
    name = repo_id.split("/")[-1] if repo_id else (f"{objective or 'dense'}-retriever" +
                                                    (f"-step-{step}" if step is not None else ""))

    results = []
    if collection:
        for key, metric_type in _METRIC_TYPES.items():
            value = dev.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                results.append(EvalResult(task_type="retrieval", task_name="Retrieval", dataset_type=collection,
                                          dataset_name=collection, dataset_split=str(dev_split),
                                          metric_type=metric_type, metric_name=key, metric_value=float(value)))
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval",
            "dance-analysis"] + ([objective] if objective else [])
    data = ModelCardData(library_name="sentence-transformers", pipeline_tag="sentence-similarity",
                         base_model=base_model, tags=tags, datasets=[collection] if collection else None,
                         model_name=name, eval_results=results or None)

    title = f"{name}: a dense retriever trained with {objective.upper() or 'dance-analysis'}"
    where = repr(repo_id or "path/to/this/folder")
    parts = [f"# {title}", "",
             f"A sentence-transformers folder written by `dance-export` from `{source}`"
             + (f" (training step {step})" if step is not None else "")
             + (f", fine-tuned from `{base_model}`" if base_model else "")
             + f". Vectors: {dim} dimensions; scores are dot products. Queries are cut at {query_max_length} "
               f"tokens, documents at {doc_max_length}"
             + ("; queries and documents take separate routes" if router else "") + ".",
             "", "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             f"model = SentenceTransformer({where})",
             'queries = model.encode_query(["what is dense retrieval"])',
             'documents = model.encode_document(["Dense retrieval encodes queries and passages as vectors."])',
             "print(model.similarity(queries, documents))", "```", "",
             "Encode queries with `encode_query` and documents with `encode_document`: the vectors equal those "
             f"of the trained model (the export checked them on probe texts: largest difference "
             f"{max_abs_diff:.1e}, allowed 1e-5)."]
    if dev:
        rows = [(key, _fmt(value)) for key, value in dev.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        parts += ["", f"## Dev metrics ({collection or 'collection'} / {dev_split}, at this checkpoint)", "",
                  _table(rows, ("metric", "value"))]
    mining = recipe.get("mining") if isinstance(recipe.get("mining"), dict) else None
    negatives_meta = _read_json(checkpoint / "negatives" / "meta.json") if checkpoint else None
    if mining or negatives_meta:
        parts += ["", "## How the negatives were mined", ""]
        if mining:
            mode = mining.get("mode", "sync")
            parts.append(f"From the model's own index, rebuilt every {mining.get('refresh_every', '?')} steps "
                         f"({'in a separate process, as ANCE' if mode == 'async' else 'synchronously'}): for each "
                         f"training query, {mining.get('n', '?')} negatives drawn "
                         f"({mining.get('sampling', 'random')}) from its top {mining.get('top_k', '?')} documents "
                         f"minus the judged ones"
                         + ("; DANCE also mines query negatives for the dual (document-to-query) loss"
                            if objective == "dance" else "") + ".")
        if isinstance(negatives_meta, dict):
            shown = {k: negatives_meta[k] for k in ("step", "top_k", "n", "seed") if k in negatives_meta}
            if shown:
                parts.append("The negatives this checkpoint trained on: "
                             + ", ".join(f"{k} {v}" for k, v in shown.items()) + ".")
    geometry = None
    if checkpoint is not None and isinstance(step, int):
        geometry = _refresh_geometry(run_dir, step) or _saved_geometry(checkpoint)
    if geometry:
        parts += ["", "## Geometry of the space at this checkpoint", "",
                  "Mean pairwise cosine of each side (anisotropy), uniformity of the documents (Wang & Isola, "
                  "t = 2), linear-kernel MMD² between queries and documents, mean norms, and how the mined "
                  "negatives score against their positives:", "",
                  _table([(key, _fmt(value)) for key, value in geometry.items()], ("statistic", "value"))]
    if recipe:
        parts += ["", "## Training recipe (resolved)", "", "```yaml",
                  yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```"]
    parts += ["", "Trained and exported with dance-analysis (ANCE: Xiong et al., ICLR 2021; DANCE: Li et al., "
                  "ICTIR 2021)."]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts) + "\n"
