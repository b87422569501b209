"""Hard negatives for a query split outside training: what ``dance-mine`` runs.

One call, :func:`mine_split`: the split's queries with a relevant document and the whole corpus as vectors (saved
embeddings of a checkpoint when it has them, else encoded with the model), an exact inner-product search of the
top ``top_k`` documents per query, and :func:`dance_analysis.mining.mine_document_negatives` with the same
:class:`~dance_analysis.mining.CandidateRules` the recipes take (``mining.range_min`` ...). The result,
:class:`SplitNegatives`, carries the negatives with their scores, the rules' counts and the false-negative
diagnostics of :mod:`dance_analysis.analysis.snapshot`; :mod:`dance_analysis.interop.training_data` writes it as
sentence-transformers or Tevatron training data, :meth:`SplitNegatives.write_ids` as ids and scores.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoints
from .atomic import atomic_file, building_dir
from .embeddings import Embeddings
from .errors import DanceError
from .index import search
from .mining import (
    CandidateRules,
    MiningStats,
    document_positive_scores,
    mine_document_negatives,
    negative_grades,
    pair_scores,
    positive_pairs,
)

logger = logging.getLogger(__name__)

__all__ = ["SplitNegatives", "mine_split", "model_of", "save_vectors", "saved_embeddings_folder", "summary_table"]


@dataclass
class SplitNegatives:
    """The negatives mined for the queries of one split.

    ``query_ids`` str [nq] (the split's queries with a relevant document), ``corpus_ids`` str [N],
    ``negatives`` int64 [nq, n] (indices into ``corpus_ids``, rank order for ``top`` sampling, -1 padding),
    ``negative_scores`` float32 [nq, n] (NaN at padding), ``positives`` the relevant document ids of each query,
    ``positive_scores`` their scores, ``stats`` the rules' counts, ``diagnostics`` the share of negatives scoring at
    or above the positive, margin quantiles and (graded judgments) the share judged partly relevant;
    ``settings`` what produced them (model, collection, split, rules, ...).
    """

    query_ids: np.ndarray
    corpus_ids: np.ndarray
    negatives: np.ndarray
    negative_scores: np.ndarray
    positives: list[list[str]]
    positive_scores: list[list[float]]
    stats: MiningStats
    diagnostics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Negatives asked for per query."""
        return int(self.negatives.shape[1])

    def rows(self):
        """Per query: ``(query id, [(positive id, score)], [(negative id, score)])``, negatives in drawing order."""
        for i, qid in enumerate(self.query_ids.tolist()):
            keep = self.negatives[i] >= 0
            negs = [(str(self.corpus_ids[d]), float(s)) for d, s in zip(self.negatives[i][keep],
                                                                          self.negative_scores[i][keep])]
            yield qid, list(zip(self.positives[i], self.positive_scores[i])), negs

    def write_ids(self, path: str | os.PathLike) -> Path:
        """One JSON line per query, written atomically: ``{"query_id", "positive_ids", "positive_scores",
        "negative_ids", "negative_scores"}`` (scores are inner products of the model's vectors)."""
        with atomic_file(path, "w") as handle:
            for qid, positives, negatives in self.rows():
                handle.write(json.dumps({
                    "query_id": qid,
                    "positive_ids": [d for d, _ in positives], "positive_scores": [round(s, 6) for _, s in positives],
                    "negative_ids": [d for d, _ in negatives], "negative_scores": [round(s, 6) for _, s in negatives],
                }) + "\n")
        return Path(path)


def saved_embeddings_folder(model: str | os.PathLike) -> Path | None:
    """The folder of saved embeddings (:data:`dance_analysis.checkpoints.EMBEDDING_FILES`) that ``model`` names: a
    checkpoint's ``embeddings/``, or the folder itself; ``None`` when there is none."""
    return checkpoints.saved_embeddings(model)


def model_of(model: str | os.PathLike) -> str:
    """What ``model`` stands for: a run folder of dance-train -> its best checkpoint (the one the trainer's
    ``best.json`` and dance-analyze pick, :func:`dance_analysis.checkpoints.run_checkpoint`); anything else
    unchanged."""
    path = Path(model)
    if path.is_dir() and not (path / checkpoints.CHECKPOINT_FILE).is_file() and checkpoints.list_checkpoints(path):
        return str(checkpoints.run_checkpoint(path, "best"))
    return str(model)


def _vectors(model: str, collection, query_ids: list[str], *, reencode: bool, batch_size: int, device: str,
             overrides: dict, progress: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(query vectors [nq, d] in ``query_ids`` order, corpus vectors [N, d] in corpus order, where they came from)."""

    corpus_ids = np.asarray(collection.corpus.ids).astype(str)
    folder = None if reencode or overrides else saved_embeddings_folder(model)
    if folder is not None:
        corpus = Embeddings.load(folder / "corpus")
        queries = Embeddings.load(folder / "queries")
        if np.array_equal(corpus.ids, corpus_ids) and set(query_ids) <= set(queries.ids.tolist()):
            corpus.check_finite()
            return (np.asarray(queries.subset(query_ids).check_finite().vectors), corpus.vectors,
                    f"saved embeddings in {folder}")
        if Path(model).resolve() == folder.resolve():
            raise DanceError(f"{folder}: the saved embeddings do not cover {collection.name} (expected the corpus "
                             f"ids in collection order and every query of the split)")
        logger.info("%s: the saved embeddings are of another collection; encoding", folder)
    # torch: mining from saved vectors (and this module's import) runs without it
    from .pipeline import embed_corpus, embed_queries, load_model

    encoder = load_model(str(model), **overrides)
    corpus = embed_corpus(encoder, collection, batch_size=batch_size, device=device, progress=progress)
    queries = embed_queries(encoder, collection, query_ids, batch_size=batch_size, device=device,
                            progress=progress)
    return np.asarray(queries.vectors), corpus.vectors, "encoded"


def save_vectors(folder: str | os.PathLike, corpus_ids, corpus_vectors, query_ids, query_vectors) -> Path:
    """Write a folder of saved embeddings (``corpus.npy``, ``corpus.ids.npy``, ``queries.npy``,
    ``queries.ids.npy``) atomically: what ``dance-mine`` and ``dance-analyze`` accept as MODEL."""

    with building_dir(folder) as tmp:
        Embeddings(np.asarray(corpus_ids).astype(str), np.asarray(corpus_vectors)).save(tmp / "corpus")
        Embeddings(np.asarray(query_ids).astype(str), np.asarray(query_vectors)).save(tmp / "queries")
    return Path(folder)


def mine_split(model: str | os.PathLike, collection, split: str, *, n: int = 20, top_k: int = 200,
               rules: CandidateRules | None = None, seed: int = 0, exclude_grade: int | None = None,
               reencode: bool = False, batch_size: int = 64, device: str = "auto",
               overrides: dict | None = None, progress: bool = True,
               vectors: tuple[np.ndarray, np.ndarray] | None = None,
               save_embeddings: str | os.PathLike | None = None) -> SplitNegatives:
    """Mine ``n`` document negatives for every query of ``split`` that has a relevant document.

    ``model``: a checkpoint (its saved embeddings are used when they cover the collection, unless ``reencode``
    or encoder ``overrides`` are given), a run folder (its best checkpoint, :func:`model_of`), a folder of saved
    embeddings, or anything :func:`dance_analysis.pipeline.load_model` loads. ``vectors`` (query vectors in split
    order, corpus vectors in corpus order) skips both.
    ``save_embeddings``: a folder to keep the vectors in (:func:`save_vectors`), to mine again without encoding.
    Candidates: the exact top ``top_k`` documents, minus documents judged with a grade >= ``exclude_grade``
    (``None``: 1, as the trainer), narrowed by ``rules``; drawn with ``numpy.random.default_rng(seed)``.
    """
    # scipy (analysis/): this module's import stays light for dance-mine
    from .analysis.snapshot import negative_score_margins, partly_relevant_share

    if n < 1:
        raise DanceError(f"n must be >= 1, got {n}")
    if top_k < 1:
        raise DanceError(f"top_k must be >= 1, got {top_k}")
    rules = rules or CandidateRules()
    if rules.range_max is not None and rules.range_max > top_k:
        raise DanceError(f"range_max ({rules.range_max}) must be <= top_k ({top_k}): only top_k are retrieved")
    query_ids = collection.evaluable(collection.split_queries(split))
    if not query_ids:
        raise DanceError(f"split {split!r} of {collection.name} has no query with a relevant document")
    corpus_ids = np.asarray(collection.corpus.ids).astype(str)
    source = "given vectors"
    if vectors is None:
        query_vectors, corpus_vectors, source = _vectors(model_of(model), collection, query_ids, reencode=reencode,
                                                         batch_size=batch_size, device=device,
                                                         overrides=dict(overrides or {}), progress=progress)
    else:
        query_vectors, corpus_vectors = vectors
    if save_embeddings is not None:
        save_vectors(save_embeddings, corpus_ids, corpus_vectors, query_ids, query_vectors)
    k = min(top_k, len(corpus_ids))
    rankings = search(query_vectors, corpus_vectors, k, query_ids=query_ids, doc_ids=corpus_ids,
                      device="cpu" if device == "cpu" else "auto")
    relevant = {q: collection.relevant(q) for q in query_ids}
    pairs = positive_pairs(query_ids, corpus_ids, relevant)
    grade = 1 if exclude_grade is None else int(exclude_grade)
    judged = {q: dict(collection.qrels.get(q, {})) for q in query_ids}
    positive_scores = (document_positive_scores(query_vectors, corpus_vectors, pairs, len(query_ids))
                       if rules.needs_positive_scores else None)
    stats = MiningStats()
    negatives, _ = mine_document_negatives(rankings, judged, n, np.random.default_rng(seed), top_k, min_grade=grade,
                                           rules=rules, positive_scores=positive_scores, stats=stats)
    drawn_rows, drawn_cols = np.nonzero(negatives >= 0)
    negative_scores = np.full(negatives.shape, np.nan)
    negative_scores[drawn_rows, drawn_cols] = pair_scores(
        query_vectors, corpus_vectors, np.stack([drawn_rows, negatives[drawn_rows, drawn_cols]], axis=1))
    pos_lists: list[list[str]] = [[] for _ in query_ids]
    pos_scores: list[list[float]] = [[] for _ in query_ids]
    for (row, doc), score in zip(pairs.tolist(), pair_scores(query_vectors, corpus_vectors, pairs).tolist()):
        pos_lists[row].append(str(corpus_ids[doc]))
        pos_scores[row].append(score)
    margins = negative_score_margins(query_vectors, corpus_vectors, pairs, negatives)
    diagnostics: dict[str, float] = {}
    if margins.size:
        diagnostics["negatives.above_positive"] = float((margins >= 0).mean())
        for name, value in zip(("q10", "q50", "q90"), np.quantile(margins, [0.1, 0.5, 0.9])):
            diagnostics[f"negatives.margin_{name}"] = float(value)
    if collection.min_relevance >= 2:
        share = partly_relevant_share(negative_grades(negatives, np.asarray(query_ids), corpus_ids, judged),
                                      collection.min_relevance)
        if np.isfinite(share):
            diagnostics["negatives.partly_relevant"] = share
    settings = {"model": model_of(model), "collection": collection.name, "split": split, "queries": len(query_ids),
                "documents": len(corpus_ids), "top_k": int(top_k), "n": int(n), "seed": int(seed),
                "exclude_grade": grade, "min_relevance": int(collection.min_relevance), "vectors": source,
                "rules": rules.to_dict()}
    return SplitNegatives(query_ids=np.asarray(query_ids), corpus_ids=corpus_ids, negatives=negatives,
                          negative_scores=negative_scores.astype(np.float32), positives=pos_lists,
                          positive_scores=pos_scores, stats=stats, diagnostics=diagnostics, settings=settings)


_RULE_LABELS = {"rank_window": "rank window", "absolute_margin": "absolute margin",
                "relative_margin": "relative margin", "max_score": "max score"}


def summary_table(result: SplitNegatives) -> str:
    """The counts of a mining run as a text table: candidates, skipped by each rule in effect, what was left and
    drawn, queries short of negatives, and the false-negative diagnostics."""
    s = result.stats
    rules = result.settings.get("rules") or {}
    active = {"rank_window": rules.get("range_min", 0) > 0 or rules.get("range_max") is not None,
              "absolute_margin": rules.get("absolute_margin") is not None,
              "relative_margin": rules.get("relative_margin") is not None,
              "max_score": rules.get("max_score") is not None}
    setting = {"rank_window": f"[{rules.get('range_min', 0)}, {rules.get('range_max') or result.settings['top_k']})"
                              f" of {rules.get('rank_window', 'retrieved')}",
               "absolute_margin": f"s > pos - {rules.get('absolute_margin')}",
               "relative_margin": f"s > pos - |pos| * {rules.get('relative_margin')}",
               "max_score": f"s > {rules.get('max_score')}"}

    def share(count: int, total: int) -> str:
        return f"{count / total:7.2%}" if total else "      -"

    lines = [f"{'':<32} {'count':>10} {'share':>8}",
             f"{'retrieved (top ' + str(result.settings['top_k']) + ')':<32} {s.retrieved:>10,}",
             f"{'  judged, excluded (grade >= ' + str(result.settings['exclude_grade']) + ')':<32} "
             f"{s.judged:>10,} {share(s.judged, s.retrieved)}",
             f"{'candidates':<32} {s.candidates:>10,}"]
    for rule, label in _RULE_LABELS.items():
        if active[rule] or s.skipped.get(rule):
            lines.append(f"{'  skipped: ' + label:<32} {s.skipped.get(rule, 0):>10,} "
                         f"{share(s.skipped.get(rule, 0), s.candidates)}  {setting[rule]}")
    lines += [f"{'left to draw from':<32} {s.eligible:>10,} {share(s.eligible, s.candidates)}",
              f"{'drawn (' + rules.get('sampling', 'random') + ', n = ' + str(result.n) + ')':<32} {s.drawn:>10,}",
              f"{'queries short of negatives':<32} {s.rows_short:>10,} {share(s.rows_short, s.rows)}"
              f"  of {s.rows} queries; {s.rows_empty} with none"]
    d = result.diagnostics
    if "negatives.above_positive" in d:
        lines.append(f"{'negatives scoring >= positive':<32} {'':>10} {d['negatives.above_positive']:7.2%}")
        lines.append(f"{'s(q, d-) - s(q, d+), q10/50/90':<32} {'':>10} "
                     f"{d['negatives.margin_q10']:+.4f} / {d['negatives.margin_q50']:+.4f} / "
                     f"{d['negatives.margin_q90']:+.4f}")
    if "negatives.partly_relevant" in d:
        lines.append(f"{'judged partly relevant':<32} {'':>10} {d['negatives.partly_relevant']:7.2%}"
                     f"  (1 <= grade < {result.settings['min_relevance']})")
    return "\n".join(lines)
