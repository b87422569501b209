"""Models and encoding for ``dance-analyze``: the subjects that have no saved vectors (or are asked for other
prompts) are encoded here with their model; the model loaded last is kept for the next call.

:mod:`dance_analysis.report.inputs` resolves the command line and reads saved vectors; this module is the part that
loads weights and computes vectors (through :func:`dance_analysis.pipeline.encode_ids`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DanceError
from .inputs import RunInput, Subject, check_rows_finite, read_encoder_json, saved_dim, saved_subset

__all__ = ["check_dims", "load_model", "probe_dim", "release_models", "subject_embeddings"]

#: The model loaded last (key, model): checking the inputs loads every model once, and the one checked last
#: (the only one, for a single model) is reused for encoding instead of being loaded again.
_LAST_MODEL: list = []


def load_model(subject: Subject, overrides: dict | None = None):
    """Load the subject's encoder (a :class:`DanceError` names the folder when the weights are unreadable)."""
    # torch: a report from saved vectors runs without it
    from ..model import DualEncoder

    if subject.model_source is None:
        raise DanceError(f"{subject.path}: no encoder to load (expected an encoder/ folder)")
    options = {**subject.model_overrides, **(overrides or {})}
    key = (subject.model_source, json.dumps(options, sort_keys=True, default=str))
    if _LAST_MODEL and _LAST_MODEL[0][0] == key:
        return _LAST_MODEL[0][1]
    _LAST_MODEL.clear()
    try:
        model = DualEncoder.load(subject.model_source, **options)
    except DanceError:
        raise
    except Exception as exc:  # a corrupt or foreign model folder
        raise DanceError(f"{subject.model_source}: cannot load the model ({type(exc).__name__}: {exc}); expected "
                         f"a model folder with readable weights") from exc
    _LAST_MODEL.append((key, model))
    return model


def release_models() -> None:
    """Forget the cached model (frees its memory)."""
    _LAST_MODEL.clear()


def probe_dim(subject: Subject, overrides: dict | None = None) -> int:
    """The embedding size of a subject, from its saved vectors (checked for NaN / inf, which raises
    :class:`DanceError` naming the file and rows, :func:`~dance_analysis.report.inputs.saved_dim`) or by loading
    its model (which checks the weights)."""
    if subject.embeddings_dir is not None:
        return saved_dim(subject.embeddings_dir)
    model = load_model(subject, overrides)
    return int(model.dim)


def check_dims(runs: Sequence[RunInput], overrides: dict | None = None) -> int:
    """Check every subject before any work: saved vectors finite, weights loadable, and one embedding size for
    all (needed for comparisons and shared projections); returns that size."""
    dims: dict[str, int] = {}
    for run in runs:
        for subject in run.subjects:
            dims[subject.label] = probe_dim(subject, overrides)
    distinct = sorted(set(dims.values()))
    if len(distinct) > 1:
        listed = ", ".join(f"{label}: {dim}" for label, dim in dims.items())
        raise DanceError(f"the inputs have different embedding sizes ({listed}); expected one size so that they "
                         f"can be compared in one report (analyse them separately)")
    return distinct[0]


def _encode(model, collection, side: str, wanted: np.ndarray, *, batch_size: int, device, progress: bool,
            label: str):
    """:func:`dance_analysis.pipeline.encode_ids`, then every vector checked finite."""
    # torch: a report from saved vectors runs without it
    from ..pipeline import encode_ids

    embeddings = encode_ids(model, collection, side, wanted, batch_size=batch_size, device=device, progress=progress)
    check_rows_finite(embeddings.vectors, embeddings.ids, None, f"{label} ({side} vectors just encoded)")
    return embeddings


def _changes_prompts(subject: Subject, overrides: dict | None) -> bool:
    """Whether ``overrides`` give a prompt other than the one the subject's saved vectors were encoded with."""
    asked = {k: v for k, v in (overrides or {}).items() if k in ("query_prompt", "document_prompt")}
    if not asked:
        return False
    saved = read_encoder_json(Path(subject.model_source)) if subject.model_source is not None else None
    return any((saved or {}).get(k, "") != v for k, v in asked.items())


def subject_embeddings(subject: Subject, collection, doc_ids: np.ndarray, query_ids: np.ndarray, *,
                       batch_size: int = 64, device: str = "auto", progress: bool = True,
                       overrides: dict | None = None):
    """``(corpus, queries, source)``: the subject's vectors for ``doc_ids`` and ``query_ids`` (in that order).

    Saved embeddings are reused (``source`` = "saved") unless ``overrides`` change the model's prompts; otherwise
    the subject's model encodes the texts (``source`` = "encoded"). NaN / infinite vectors raise
    :class:`DanceError` naming the file and rows.
    """
    doc_ids = np.asarray(doc_ids).astype(str)
    query_ids = np.asarray(query_ids).astype(str)
    if subject.embeddings_dir is not None and not _changes_prompts(subject, overrides):
        corpus = saved_subset(subject.embeddings_dir / "corpus", doc_ids, "corpus vectors")
        queries = saved_subset(subject.embeddings_dir / "queries", query_ids, "query vectors")
        return corpus, queries, "saved"
    model = load_model(subject, overrides)
    model.eval()
    corpus = _encode(model, collection, "doc", doc_ids, batch_size=batch_size, device=device, progress=progress,
                     label=subject.label)
    queries = _encode(model, collection, "query", query_ids, batch_size=batch_size, device=device,
                      progress=progress, label=subject.label)
    return corpus, queries, "encoded"
