"""Negative mining for ANCE / DANCE from precomputed rankings (numpy only; no index dependency).

Document negatives (ANCE): for each training query, the top-K documents of the current index minus its labelled
positives and duplicates; N of them drawn uniformly at random without replacement (paper: K = 200, N = 20).
Query negatives (DANCE): for each positive pair (q, d+), the top-K training queries of d+ minus every query whose
labelled positives include d+ (q among them); N drawn uniformly at random.

The rankings are any object with the fields of :class:`dance_analysis.index.Rankings`: ``query_ids`` (str [nq]),
``doc_ids`` (str [N]), ``indices`` (int64 [nq, k], -1 = no hit) and ``scores``. The mined negatives and the counts
of how often each document / query was drawn are kept in a :class:`NegativeSet`, saved as the checkpoint's
``negatives/`` folder.

Which candidates may be drawn, and how, is set by :class:`CandidateRules` (the defaults are the paper's: every
retrieved candidate but the judged positives, drawn uniformly at random): a rank window (``range_min`` /
``range_max``, as sentence-transformers' ``mine_hard_negatives`` and FlagEmbedding's ``--range_for_sampling``),
margins against the positive's score (a candidate is skipped when its score exceeds ``pos - absolute_margin`` or
``pos - |pos| * relative_margin``), a maximum score, and ``top`` instead of ``random`` sampling. NV-Retriever
(Moreira et al., arXiv 2407.15831, 2024, the section on positive-aware mining methods) compares these rules; its
best setting is the relative margin with the top candidates ("TopK-PercPos", 95 %). How many candidates each rule
skipped is counted in a :class:`MiningStats`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import building_dir, read_json
from .errors import DanceError, InputError

__all__ = [
    "CandidateRules",
    "MiningStats",
    "mine_document_negatives",
    "mine_query_negatives",
    "rotation_slice",
    "positive_pairs",
    "document_positive_scores",
    "pair_scores",
    "negative_grades",
    "NegativeSet",
    "summary",
    "summary_line",
]

Positives = Mapping[str, Any]   # qid -> set of docids, or qid -> {docid: grade}

_ROW_CHUNK = 32768              # rows sampled at a time (bounds the memory of the random keys)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _positive_set(labels: Any, min_grade: int) -> set[str]:
    """The labelled positives of one query: a set / list of ids, or a {id: grade} dict (grade >= min_grade)."""
    if labels is None:
        return set()
    if isinstance(labels, Mapping):
        return {str(d) for d, grade in labels.items() if grade >= min_grade}
    return {str(d) for d in labels}


def _lookup(ids: np.ndarray, wanted: Iterable[str]) -> np.ndarray:
    """Index of each wanted id in ``ids`` (-1 when absent), via a sorted search (no per-id Python dict)."""
    wanted = np.asarray(list(wanted), dtype=str)
    if len(wanted) == 0 or len(ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, wanted)
    pos_clipped = np.minimum(pos, len(ids) - 1)
    found = sorted_ids[pos_clipped] == wanted
    return np.where(found, order[pos_clipped], -1).astype(np.int64)


def _check_rankings(rankings: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        query_ids = np.asarray(rankings.query_ids).astype(str)
        doc_ids = np.asarray(rankings.doc_ids).astype(str)
        indices = np.asarray(rankings.indices)
    except AttributeError as exc:
        raise DanceError(f"{what}: expected rankings with query_ids, doc_ids, indices fields ({exc})") from None
    if indices.ndim != 2 or indices.shape[0] != len(query_ids):
        raise DanceError(f"{what}: expected indices of shape [{len(query_ids)}, k], got {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise DanceError(f"{what}: expected integer indices, got dtype {indices.dtype}")
    if indices.size and (indices.min() < -1 or indices.max() >= len(doc_ids)):
        raise DanceError(f"{what}: indices must lie in [-1, {len(doc_ids)}), got "
                         f"[{indices.min()}, {indices.max()}]")
    return query_ids, doc_ids, indices.astype(np.int64, copy=False)


def _ranking_scores(rankings: Any, shape: tuple[int, int]) -> np.ndarray:
    """The first ``shape[1]`` score columns of ``rankings`` (float64), checked against the indices' shape."""
    scores = getattr(rankings, "scores", None)
    if scores is None:
        raise DanceError("the margin / max_score rules need rankings with scores")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != shape[0] or scores.shape[1] < shape[1]:
        raise DanceError(f"expected scores of shape [{shape[0]}, >= {shape[1]}], got {scores.shape}")
    return scores[:, :shape[1]]


def _top_columns(indices: np.ndarray, top_k: int | None) -> np.ndarray:
    if top_k is None:
        return indices
    if top_k < 1:
        raise DanceError(f"top_k must be >= 1, got {top_k}")
    return indices[:, :top_k]     # rankings with fewer than top_k columns: all of them are within the top_k


SAMPLINGS = ("random", "top")
#: What range_min / range_max count: positions in the retrieved list, or among the candidates left by the rules.
RANK_WINDOWS = ("retrieved", "candidates")
#: The rules that skip candidates, in the order they are applied (``rank_window`` last when it counts candidates).
RULES = ("rank_window", "absolute_margin", "relative_margin", "max_score")


@dataclass(frozen=True)
class CandidateRules:
    """Which retrieved candidates may be drawn as negatives, and how N of them are drawn.

    The candidates of a row are its retrieved entries (the first ``top_k`` columns of the rankings) minus empty
    places (-1), repeated entries and the judged positives. Then, in this order:

    - ``range_min`` / ``range_max`` (0-based, half-open ``[range_min, range_max)``; ``range_max`` None = every
      retrieved column): with ``rank_window="retrieved"`` they are positions in the retrieved list, positives
      and skipped candidates included (FlagEmbedding's ``--range_for_sampling 2-200`` is ``range_min=2,
      range_max=200``); with ``rank_window="candidates"`` they are positions among the candidates that are left
      after the positives and the score rules below, as sentence-transformers' ``mine_hard_negatives`` counts
      them (``range_min=5`` then always skips the five best remaining candidates).
    - ``absolute_margin``: skip a candidate whose score s > pos - absolute_margin.
    - ``relative_margin``: skip a candidate whose score s > pos - |pos| * relative_margin, which is
      pos * (1 - relative_margin) for pos >= 0. The absolute value keeps the threshold below the positive when
      its score is negative (there pos * (1 - m) would lie above it); sentence-transformers uses the same form.
    - ``max_score``: skip a candidate whose score s > max_score.

    ``pos`` is the positive's score: for document negatives the LOWEST score among the query's positive pairs
    (the query's negatives serve every one of its positive pairs, so a negative must pass against each; the same
    choice as sentence-transformers), for query negatives the score s(q, d+) of the pair itself. A row without a
    positive score (NaN) has nothing skipped by the margins. Scores are those of the rankings (inner products).

    ``sampling``: ``random`` draws min(N, #left) of the remaining candidates uniformly without replacement (the
    paper); ``top`` takes the first N in rank order (NV-Retriever's TopK-* methods). The defaults are the paper's
    (Xiong et al., ANCE, ICLR 2021, section 3: the top 200 minus the positives, N drawn at random).
    """

    range_min: int = 0
    range_max: int | None = None
    rank_window: str = "retrieved"
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling: str = "random"

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise DanceError(f"mining rules: {message}")

        if isinstance(self.range_min, bool) or not isinstance(self.range_min, (int, np.integer)) \
                or self.range_min < 0:
            fail(f"range_min must be an integer >= 0, got {self.range_min!r}")
        if self.range_max is not None and (isinstance(self.range_max, bool)
                                           or not isinstance(self.range_max, (int, np.integer))
                                           or self.range_max <= self.range_min):
            fail(f"range_max must be an integer > range_min ({self.range_min}), or None, got {self.range_max!r}")
        if self.rank_window not in RANK_WINDOWS:
            fail(f"rank_window must be one of {', '.join(RANK_WINDOWS)}, got {self.rank_window!r}")
        if self.sampling not in SAMPLINGS:
            fail(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        for name in ("absolute_margin", "relative_margin", "max_score"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                fail(f"{name} must be a finite number or None, got {value!r}")

    @property
    def needs_scores(self) -> bool:
        """True when a rule reads the candidates' scores."""
        return any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score))

    @property
    def needs_positive_scores(self) -> bool:
        """True when a margin rule compares the candidates with the positive's score."""
        return self.absolute_margin is not None or self.relative_margin is not None

    @property
    def is_default(self) -> bool:
        """True for the paper's rules (the whole retrieved list minus the positives, drawn at random)."""
        return self == CandidateRules()

    def to_dict(self) -> dict[str, Any]:
        """The rules as a JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass
class MiningStats:
    """What the rules did to the candidates of one or more mining calls (counts add up over calls).

    ``rows`` mined rows (queries, or positive pairs for query negatives); ``retrieved`` retrieved entries (not -1);
    ``repeated`` entries dropped as repeats of an earlier entry of the row; ``judged`` entries dropped as judged
    positives (or, for query negatives, queries judged on d+ and q itself); ``candidates`` what was left;
    ``skipped`` candidates skipped by each rule (each counted by the first rule that skips it, in the order of
    :data:`RULES`); ``eligible`` candidates left to draw from; ``drawn`` negatives drawn; ``rows_short`` rows with
    fewer than N negatives drawn (``rows_empty`` of them with none); ``n`` the N asked for.
    """

    rows: int = 0
    retrieved: int = 0
    repeated: int = 0
    judged: int = 0
    candidates: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    eligible: int = 0
    drawn: int = 0
    rows_short: int = 0
    rows_empty: int = 0
    n: int = 0

    def add(self, other: MiningStats) -> MiningStats:
        """Add the counts of ``other`` to these (in place); returns self."""
        for name in ("rows", "retrieved", "repeated", "judged", "candidates", "eligible", "drawn", "rows_short",
                     "rows_empty"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for rule in RULES:
            self.skipped[rule] = self.skipped.get(rule, 0) + other.skipped.get(rule, 0)
        self.n = max(self.n, other.n)
        return self

    def to_dict(self, prefix: str = "") -> dict[str, int]:
        """Flat JSON-able counts: ``{prefix}candidates``, ``{prefix}skipped.<rule>``, ... ."""
        out = {f"{prefix}{name}": int(getattr(self, name)) for name in
               ("rows", "retrieved", "repeated", "judged", "candidates", "eligible", "drawn", "rows_short",
                "rows_empty")}
        out.update({f"{prefix}skipped.{rule}": int(self.skipped.get(rule, 0)) for rule in RULES})
        return out


def _duplicates(candidates: np.ndarray) -> np.ndarray:
    """True where an entry repeats an earlier entry of its row (in a stable sort of each row, an entry equal to
    its predecessor is a later occurrence)."""
    order = np.argsort(candidates, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(candidates, order, axis=1)
    dup_sorted = np.zeros(candidates.shape, dtype=bool)
    dup_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
    duplicate = np.zeros(candidates.shape, dtype=bool)
    np.put_along_axis(duplicate, order, dup_sorted, axis=1)
    return duplicate


def _eligible(candidates: np.ndarray, excluded: np.ndarray, scores: np.ndarray | None,
              positive_scores: np.ndarray | None, rules: CandidateRules,
              stats: MiningStats | None) -> np.ndarray:
    """The entries of each row that may be drawn (bool, same shape as ``candidates``), counting what each rule
    skipped into ``stats``. See :class:`CandidateRules` for the order of the rules."""
    rows, k = candidates.shape
    retrieved = candidates >= 0
    repeated = retrieved & _duplicates(candidates)
    judged = retrieved & ~repeated & excluded
    keep = retrieved & ~repeated & ~excluded
    skipped = dict.fromkeys(RULES, 0)
    n_candidates = int(keep.sum())

    def apply(rule: str, hit: np.ndarray) -> None:
        nonlocal keep
        hit = keep & hit
        skipped[rule] += int(hit.sum())
        keep = keep & ~hit

    columns = np.arange(k)
    range_max = k if rules.range_max is None else rules.range_max
    if rules.rank_window == "retrieved" and (rules.range_min > 0 or range_max < k):
        apply("rank_window", ((columns < rules.range_min) | (columns >= range_max))[None, :])
    if rules.needs_scores:
        if scores is None:
            raise DanceError("the margin / max_score rules need the rankings' scores")
        score = np.asarray(scores, dtype=np.float64)
        if score.shape != candidates.shape:
            raise DanceError(f"scores of shape {score.shape} do not match the candidates {candidates.shape}")
        if rules.needs_positive_scores:
            if positive_scores is None:
                raise DanceError("the margin rules need the positive's score of every row (positive_scores=)")
            pos = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
            if len(pos) != rows:
                raise DanceError(f"expected {rows} positive scores (one per row), got {len(pos)}")
            with np.errstate(invalid="ignore"):
                if rules.absolute_margin is not None:
                    apply("absolute_margin", score > (pos - rules.absolute_margin)[:, None])
                if rules.relative_margin is not None:
                    apply("relative_margin", score > (pos - np.abs(pos) * rules.relative_margin)[:, None])
        if rules.max_score is not None:
            apply("max_score", score > rules.max_score)
    if rules.rank_window == "candidates" and (rules.range_min > 0 or range_max < k):
        position = np.cumsum(keep, axis=1) - 1        # rank among the candidates left, at the kept entries
        apply("rank_window", (position < rules.range_min) | (position >= range_max))
    if stats is not None:
        stats.add(MiningStats(rows=rows, retrieved=int(retrieved.sum()), repeated=int(repeated.sum()),
                              judged=int(judged.sum()), candidates=n_candidates, skipped=skipped,
                              eligible=int(keep.sum())))
    return keep


def _sample_rows(candidates: np.ndarray, eligible: np.ndarray, n: int, rng: np.random.Generator,
                 sampling: str = "random") -> np.ndarray:
    """Draw up to n eligible entries of each row without replacement; -1 padding at the end of the row.

    ``random``: uniform random keys per entry, the n smallest keys among the eligible ones: a uniformly random
    n-subset in a uniformly random order. ``top``: the first n eligible entries in column (rank) order; no random
    numbers are drawn.
    """
    rows, k = candidates.shape
    out = np.full((rows, n), -1, dtype=np.int64)
    if rows == 0 or k == 0 or n == 0:
        return out
    take = min(n, k)
    if sampling == "top":
        order = np.argsort(~eligible, axis=1, kind="stable")[:, :take]
        picked = np.take_along_axis(candidates, order, axis=1)
        out[:, :take] = np.where(np.take_along_axis(eligible, order, axis=1), picked, -1)
        return out
    for start in range(0, rows, _ROW_CHUNK):
        stop = min(rows, start + _ROW_CHUNK)
        cand = candidates[start:stop]
        valid = eligible[start:stop]
        keys = rng.random(cand.shape)
        keys[~valid] = 2.0
        if take < k:
            part = np.argpartition(keys, take - 1, axis=1)[:, :take]
            part_keys = np.take_along_axis(keys, part, axis=1)
            chosen = np.take_along_axis(part, np.argsort(part_keys, axis=1, kind="stable"), axis=1)
        else:
            chosen = np.argsort(keys, axis=1, kind="stable")
        chosen_keys = np.take_along_axis(keys, chosen, axis=1)
        picked = np.take_along_axis(cand, chosen, axis=1)
        out[start:stop, :take] = np.where(chosen_keys < 2.0, picked, -1)
    return out


def _draw(candidates: np.ndarray, excluded: np.ndarray, scores: np.ndarray | None,
          positive_scores: np.ndarray | None, n: int, rng: np.random.Generator | int | None,
          rules: CandidateRules | None, stats: MiningStats | None) -> np.ndarray:
    rules = rules or CandidateRules()
    own = MiningStats()
    eligible = _eligible(candidates, excluded, scores, positive_scores, rules, own)
    negatives = _sample_rows(candidates, eligible, n, _as_rng(rng), rules.sampling)
    if stats is not None:
        drawn = (negatives >= 0).sum(axis=1)
        own.drawn = int(drawn.sum())
        own.rows_short = int((drawn < n).sum())
        own.rows_empty = int((drawn == 0).sum()) if n else 0
        own.n = n
        stats.add(own)
    return negatives


def _counts(negatives: np.ndarray, size: int) -> np.ndarray:
    drawn = negatives[negatives >= 0]
    return np.bincount(drawn, minlength=size).astype(np.int64)


def mine_document_negatives(rankings: Any, positives: Positives, n: int,
                            rng: np.random.Generator | int | None, top_k: int | None = None, *,
                            min_grade: int = 1, rules: CandidateRules | None = None,
                            positive_scores: np.ndarray | None = None,
                            stats: MiningStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw document negatives for every query of ``rankings`` (the ANCE negatives).

    Candidates of query i: its top_k retrieved documents (all columns of ``rankings.indices`` when top_k is None
    or larger than the rankings), minus -1 entries, minus its labelled positives, minus repeated documents.
    ``min(n, #candidates)`` of them are drawn uniformly at random without replacement (paper: top_k=200, n=20).
    ``positives`` maps a query id to a set of doc ids, or to {doc id: grade}, where grade >= ``min_grade`` counts
    as a labelled positive (default 1: any positively judged document is never used as a negative). Queries
    absent from ``positives`` have none excluded.
    ``rules`` (:class:`CandidateRules`; None = the paper's) narrow the candidates and choose random or top
    sampling; the margin rules need ``positive_scores`` (float [nq]: per query the lowest score of its positive
    pairs, NaN for none; :func:`document_positive_scores`), the score rules read ``rankings.scores``. ``stats``
    (a :class:`MiningStats`) receives the counts of what each rule skipped.
    ``rng`` is a numpy Generator or a seed; the result is deterministic for a given seed.
    Returns (negatives int64 [nq, n]: indices into rankings.doc_ids, -1 padding at the end of the row;
    counts int64 [N]: how many times each document was drawn).
    """
    if n < 0:
        raise DanceError(f"n must be >= 0, got {n}")
    query_ids, doc_ids, indices = _check_rankings(rankings, "document rankings")
    candidates = _top_columns(indices, top_k)
    # Labelled positives as (row, doc index) codes.
    rows, wanted = [], []
    for row, qid in enumerate(query_ids):
        for docid in _positive_set(positives.get(qid), min_grade):
            rows.append(row)
            wanted.append(docid)
    doc_index = _lookup(doc_ids, wanted)
    keep = doc_index >= 0
    num_docs = max(len(doc_ids), 1)
    positive_codes = np.asarray(rows, dtype=np.int64)[keep] * num_docs + doc_index[keep]
    codes = np.arange(len(query_ids), dtype=np.int64)[:, None] * num_docs + candidates
    excluded = np.isin(codes, positive_codes) if len(positive_codes) else np.zeros(candidates.shape, dtype=bool)
    scores = _ranking_scores(rankings, candidates.shape) if rules is not None and rules.needs_scores else None
    negatives = _draw(candidates, excluded, scores, positive_scores, n, rng, rules, stats)
    return negatives, _counts(negatives, len(doc_ids))


def mine_query_negatives(rankings_doc_to_query: Any, pairs: Any, query_positives: Positives, n: int,
                         rng: np.random.Generator | int | None, top_k: int | None = None, *,
                         corpus_ids: np.ndarray | None = None, min_grade: int = 1,
                         rules: CandidateRules | None = None, positive_scores: np.ndarray | None = None,
                         stats: MiningStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw query negatives for every positive pair (q, d+) (the DANCE dual-task negatives).

    ``rankings_doc_to_query`` ranks TRAINING QUERIES for documents: its ``query_ids`` are the ids of the anchor
    documents (every d+ of ``pairs`` must be among them), its ``doc_ids`` are the training query ids and its
    indices point into them.
    ``pairs``: the positive pairs, either (query id, doc id) string pairs, or an int array [np, 2] of
    (row in the training query id array ``rankings_doc_to_query.doc_ids``, index in ``corpus_ids``), the
    ``pairs`` layout of the checkpoint contract (then ``corpus_ids`` is required).
    Candidates of pair (q, d+): the top_k queries of d+, minus -1 entries, minus repeated queries, minus every
    query whose labelled positives (``query_positives``: qid -> set of doc ids or {doc id: grade >= min_grade})
    include d+, and minus q itself. ``min(n, #candidates)`` are drawn uniformly at random without replacement.
    ``rules``, ``positive_scores`` (float [np]: s(q, d+) of each pair; :func:`pair_scores`) and ``stats`` as in
    :func:`mine_document_negatives`; a candidate query q- scores s(q-, d+) (the rankings' scores).
    Returns (negatives int64 [np, n]: indices into the training query id array, -1 padding at the end;
    counts int64 [nq]: how many times each training query was drawn).
    """
    if n < 0:
        raise DanceError(f"n must be >= 0, got {n}")
    anchor_ids, train_qids, indices = _check_rankings(rankings_doc_to_query, "query rankings")
    candidates_all = _top_columns(indices, top_k)
    pair_array = np.asarray(pairs) if not isinstance(pairs, np.ndarray) else pairs
    if len(pair_array) == 0:
        return np.zeros((0, n), dtype=np.int64), np.zeros(len(train_qids), dtype=np.int64)
    if pair_array.ndim != 2 or pair_array.shape[1] != 2:
        raise DanceError(f"expected pairs of shape [np, 2], got {pair_array.shape}")
    if np.issubdtype(pair_array.dtype, np.integer):
        if corpus_ids is None:
            raise DanceError("integer pairs index the corpus: pass corpus_ids= with them")
        corpus_ids = np.asarray(corpus_ids).astype(str)
        if pair_array.size and (pair_array[:, 0].min() < 0 or pair_array[:, 0].max() >= len(train_qids)
                                or pair_array[:, 1].min() < 0 or pair_array[:, 1].max() >= len(corpus_ids)):
            raise DanceError("integer pairs out of range: expected (row < "
                             f"{len(train_qids)}, doc index < {len(corpus_ids)})")
        pair_q = pair_array[:, 0].astype(np.int64)
        pair_doc_ids = corpus_ids[pair_array[:, 1]]
    else:
        pair_str = pair_array.astype(str)
        pair_q = _lookup(train_qids, pair_str[:, 0])
        pair_doc_ids = pair_str[:, 1]
    anchor_rows = _lookup(anchor_ids, pair_doc_ids)
    if (anchor_rows < 0).any():
        missing = pair_doc_ids[np.flatnonzero(anchor_rows < 0)[0]]
        raise DanceError(f"positive document {missing!r} has no row in the document-to-query rankings")
    # Queries whose labelled positives include each anchor document, as (anchor row, query index) codes.
    q_of, d_of = [], []
    for qid, labels in query_positives.items():
        for docid in _positive_set(labels, min_grade):
            q_of.append(str(qid))
            d_of.append(docid)
    q_index = _lookup(train_qids, q_of)
    a_index = _lookup(anchor_ids, d_of)
    keep = (q_index >= 0) & (a_index >= 0)
    num_q = max(len(train_qids), 1)
    excluded_codes = a_index[keep] * num_q + q_index[keep]
    candidates = candidates_all[anchor_rows]
    codes = anchor_rows[:, None] * num_q + candidates
    excluded = np.isin(codes, excluded_codes) if len(excluded_codes) else np.zeros(candidates.shape, dtype=bool)
    excluded |= (candidates == pair_q[:, None]) & (pair_q[:, None] >= 0)
    scores = None
    if rules is not None and rules.needs_scores:
        scores = _ranking_scores(rankings_doc_to_query, candidates_all.shape)[anchor_rows]
    negatives = _draw(candidates, excluded, scores, positive_scores, n, rng, rules, stats)
    return negatives, _counts(negatives, len(train_qids))


def rotation_slice(n_queries: int, fraction: float, refresh_index: int, seed: int) -> np.ndarray:
    """The training queries mined at one refresh when only a fraction is re-mined each time (the reference's
    "chunk factor").

    A permutation of range(n_queries) drawn from ``seed`` is split into ceil(1 / fraction) nearly equal chunks;
    refresh number ``refresh_index`` gets chunk ``refresh_index % n_chunks``. Consecutive refreshes therefore
    visit every query once per cycle; the chunks partition the queries. fraction = 1 returns all queries.
    Returns the chunk's query indices, int64, sorted ascending.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise DanceError(f"fraction must be in (0, 1], got {fraction!r}")
    if n_queries < 0:
        raise DanceError(f"n_queries must be >= 0, got {n_queries}")
    n_chunks = max(1, math.ceil(1.0 / fraction - 1e-9))
    permutation = np.random.default_rng(seed).permutation(n_queries)
    chunk = np.array_split(permutation, n_chunks)[refresh_index % n_chunks]
    return np.sort(chunk).astype(np.int64)


def positive_pairs(train_query_ids: Iterable[str], corpus_ids: Iterable[str], positives: Positives, *,
                   min_grade: int = 1) -> np.ndarray:
    """The positive training pairs as the contract's ``pairs`` array: int64 [np, 2] of (row in train_query_ids,
    index in corpus_ids), ordered by query row, then document index. Labelled positives that are not in the
    corpus are skipped. ``positives``: qid -> set of doc ids or {doc id: grade}, grade >= ``min_grade``."""
    train_query_ids = np.asarray(list(train_query_ids)).astype(str)
    corpus_ids = np.asarray(list(corpus_ids)).astype(str)
    rows, wanted = [], []
    for row, qid in enumerate(train_query_ids):
        for docid in sorted(_positive_set(positives.get(qid), min_grade)):
            rows.append(row)
            wanted.append(docid)
    doc_index = _lookup(corpus_ids, wanted)
    pairs = np.stack([np.asarray(rows, dtype=np.int64), doc_index], axis=1) if rows else np.zeros((0, 2), np.int64)
    pairs = pairs[pairs[:, 1] >= 0]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order].astype(np.int64)


def pair_scores(query_vectors: np.ndarray, corpus_vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """s(q, d+) = q . d+ (float64 [np]) of each pair (query row, corpus row) of ``pairs``, in blocks (no
    [np, dim] float32 copy of a float16 corpus)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), 8192):
        block = pairs[start:start + 8192]
        q = np.asarray(query_vectors[block[:, 0]], dtype=np.float32)
        d = np.asarray(corpus_vectors[block[:, 1]], dtype=np.float32)
        out[start:start + len(block)] = np.einsum("ij,ij->i", q, d)
    return out


def document_positive_scores(query_vectors: np.ndarray, corpus_vectors: np.ndarray, pairs: np.ndarray,
                             n_queries: int) -> np.ndarray:
    """Per query row, the LOWEST score of its positive pairs (float64 [n_queries], NaN for a query without
    one): the ``pos`` of the document-side margin rules (:class:`CandidateRules`)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.full(n_queries, np.inf)
    np.minimum.at(out, pairs[:, 0], pair_scores(query_vectors, corpus_vectors, pairs))
    out[np.isinf(out)] = np.nan
    return out


def negative_grades(negatives: np.ndarray, row_ids: np.ndarray, negative_ids: np.ndarray,
                    qrels: Mapping[str, Mapping[str, int]]) -> np.ndarray:
    """The judged grade of every drawn negative for its row's query: int64 like ``negatives``, 0 for an unjudged
    negative, -1 at empty places. ``negatives`` [rows, n] index ``negative_ids``; row i belongs to query
    ``row_ids[i]``; ``qrels`` is qid -> {doc id: grade}."""
    negatives = np.asarray(negatives, dtype=np.int64)
    out = np.where(negatives >= 0, 0, -1).astype(np.int64)
    row_ids = np.asarray(row_ids).astype(str)
    negative_ids = np.asarray(negative_ids).astype(str)
    rows, wanted, grades = [], [], []
    for row, qid in enumerate(row_ids.tolist()):
        for docid, grade in (qrels.get(qid) or {}).items():
            rows.append(row)
            wanted.append(str(docid))
            grades.append(int(grade))
    if not rows or negatives.size == 0:
        return out
    index = _lookup(negative_ids, wanted)
    keep = index >= 0
    width = max(len(negative_ids), 1)
    codes = np.asarray(rows, dtype=np.int64)[keep] * width + index[keep]
    grade_of = np.asarray(grades, dtype=np.int64)[keep]
    order = np.argsort(codes, kind="stable")
    codes, grade_of = codes[order], grade_of[order]
    drawn = negatives >= 0
    lookup = np.arange(len(negatives), dtype=np.int64)[:, None] * width + np.maximum(negatives, 0)
    pos = np.minimum(np.searchsorted(codes, lookup), len(codes) - 1)
    found = drawn & (codes[pos] == lookup)
    out[found] = grade_of[pos[found]]
    return out


_META_KEYS = ("step", "top_k", "n", "seed")
_FILES = {
    "corpus_ids": "corpus_ids.npy",
    "train_query_ids": "train_query_ids.npy",
    "doc_negatives": "doc_negatives.npy",
    "pairs": "pairs.npy",
    "query_negatives": "query_negatives.npy",
    "doc_counts": "doc_counts.npy",
    "query_counts": "query_counts.npy",
}


@dataclass
class NegativeSet:
    """The negatives mined at one refresh: the checkpoint's ``negatives/`` folder.

    Fields (the checkpoint contract):
        meta             {"step": int, "top_k": int, "n": int, "seed": int} (further JSON keys are kept)
        corpus_ids       str [ndocs]
        train_query_ids  str [nq]
        doc_negatives    int64 [nq, n]  indices into corpus_ids, -1 padding (rows of queries not mined at this
                         refresh, e.g. outside the rotation chunk, are all -1)
        pairs            int64 [np, 2]  (row in train_query_ids, index in corpus_ids) of the positive pairs
        query_negatives  int64 [np, n]  indices into train_query_ids, -1 padding; None for ANCE
        doc_counts       int64 [ndocs]  times each document was drawn as a negative at this refresh
        query_counts     int64 [nq]     times each training query was drawn (zeros for ANCE)
    """

    meta: dict
    corpus_ids: np.ndarray
    train_query_ids: np.ndarray
    doc_negatives: np.ndarray
    pairs: np.ndarray
    query_negatives: np.ndarray | None
    doc_counts: np.ndarray
    query_counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.corpus_ids = np.asarray(self.corpus_ids).astype(str)
        for name in ("doc_negatives", "pairs", "query_negatives", "doc_counts", "query_counts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, np.ndarray):
                setattr(self, name, np.asarray(value, dtype=np.int64))
        self.train_query_ids = np.asarray(self.train_query_ids).astype(str)
        if self.query_counts is None:
            self.query_counts = np.zeros(len(self.train_query_ids), dtype=np.int64)

    @property
    def n(self) -> int:
        """Negatives per line (the N of the paper)."""
        return int(self.meta["n"])

    @property
    def has_query_negatives(self) -> bool:
        """True for a DANCE set (query negatives mined), False for ANCE."""
        return self.query_negatives is not None

    # ------------------------------------------------------------------ validation
    def validate(self, where: str | os.PathLike | None = None) -> None:
        """Check shapes, dtypes and index ranges; raise DanceError (InputError naming the file when ``where``
        is a folder) on the first problem."""
        def fail(name: str, expected: str, got: str) -> None:
            if where is None:
                raise DanceError(f"negatives: {name}: expected {expected}, got {got}")
            filename = "meta.json" if name == "meta" else _FILES[name]
            raise InputError(Path(where) / filename, expected, got=got)

        if not isinstance(self.meta, dict):
            fail("meta", "a JSON object", type(self.meta).__name__)
        for key in _META_KEYS:
            value = self.meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail("meta", f"a non-negative integer {key!r}", repr(value))
        n = self.n
        ndocs, nq = len(self.corpus_ids), len(self.train_query_ids)
        for name in ("corpus_ids", "train_query_ids"):
            if getattr(self, name).ndim != 1:
                fail(name, "a 1-d array of ids", f"shape {getattr(self, name).shape}")

        def check_int(name: str, shape: tuple[int | None, ...], low: int, high: int | None) -> None:
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
                fail(name, "an integer array", getattr(array, "dtype", type(array)).__str__())
            if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
                fail(name, f"shape {tuple('*' if s is None else s for s in shape)}", f"shape {array.shape}")
            if array.size and (array.min() < low or (high is not None and array.max() >= high)):
                bound = f"[{low}, {high})" if high is not None else f">= {low}"
                fail(name, f"values in {bound}", f"[{array.min()}, {array.max()}]")

        check_int("doc_negatives", (nq, n), -1, ndocs)
        check_int("pairs", (None, 2), 0, None)
        if self.pairs.size and (self.pairs[:, 0].max() >= nq or self.pairs[:, 1].max() >= ndocs):
            fail("pairs", f"rows < {nq} and document indices < {ndocs}",
                 f"max ({self.pairs[:, 0].max()}, {self.pairs[:, 1].max()})")
        if self.query_negatives is not None:
            check_int("query_negatives", (len(self.pairs), n), -1, nq)
        check_int("doc_counts", (ndocs,), 0, None)
        check_int("query_counts", (nq,), 0, None)

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | os.PathLike) -> None:
        """Write the ``negatives/`` folder atomically (:func:`dance_analysis.atomic.building_dir`): built beside
        it, then swapped in; an existing folder of the same name is replaced without a gap.
        Arrays are .npy without pickles; ids are fixed-width unicode arrays.
        """
        self.validate()
        with building_dir(directory) as tmp:
            arrays = {
                "corpus_ids": self.corpus_ids.astype(str),
                "train_query_ids": self.train_query_ids.astype(str),
                "doc_negatives": self.doc_negatives.astype(np.int64),
                "pairs": self.pairs.astype(np.int64),
                "doc_counts": self.doc_counts.astype(np.int64),
                "query_counts": self.query_counts.astype(np.int64),
            }
            if self.query_negatives is not None:
                arrays["query_negatives"] = self.query_negatives.astype(np.int64)
            for name, array in arrays.items():
                np.save(tmp / _FILES[name], array, allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> NegativeSet:
        """Read a ``negatives/`` folder (npy with ``allow_pickle=False``) and validate it.

        A missing, unreadable or inconsistent file raises :class:`InputError` naming it.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise DanceError(f"{directory}: expected a negatives folder (meta.json, doc_negatives.npy, ...)")
        meta_path = directory / "meta.json"
        meta = read_json(meta_path, "a JSON object with step, top_k, n, seed")
        arrays: dict[str, np.ndarray | None] = {}
        for name, filename in _FILES.items():
            path = directory / filename
            if name == "query_negatives" and not path.exists():
                arrays[name] = None
                continue
            try:
                arrays[name] = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise InputError(path, "a .npy array", got="no such file") from None
            except (OSError, ValueError, EOFError) as exc:
                raise InputError(path, "a readable .npy array without pickles", got=str(exc)) from None
        for name in ("corpus_ids", "train_query_ids"):
            if arrays[name].dtype.kind not in "US":
                raise InputError(directory / _FILES[name], "an array of string ids",
                                 got=f"dtype {arrays[name].dtype}")
        result = cls(meta=meta, **arrays)  # type: ignore[arg-type]
        result.validate(directory)
        return result

    # ------------------------------------------------------------------ training instances
    def instances(self, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """The training quadruplets, int64 [M, 4] of (q_row, d_pos, d_neg, q_neg).

        q_row and q_neg index ``train_query_ids``; d_pos and d_neg index ``corpus_ids``. Each positive pair
        (q, d+) is a line with N doc negatives (the row of q in ``doc_negatives``) and, for DANCE, N query
        negatives (its row in ``query_negatives``); it is unrolled into N quadruplets (q, d+, d-_i, q-_i), as in
        the paper. Lines with fewer than N negatives on a side REPEAT theirs cyclically (slot i takes valid
        negative i mod m), so every line contributes exactly N quadruplets; lines with no negative at all on a
        needed side (including queries not mined at this refresh) are skipped. For ANCE, q_neg is -1.
        With ``rng`` (a Generator or seed) the quadruplets are shuffled; with None they stay in line order.
        """
        n = self.n
        if n == 0 or len(self.pairs) == 0:
            return np.zeros((0, 4), dtype=np.int64)
        q_rows, d_pos = self.pairs[:, 0], self.pairs[:, 1]
        doc_side = _compact(self.doc_negatives[q_rows])
        m_doc = (doc_side >= 0).sum(axis=1)
        keep = m_doc > 0
        if self.query_negatives is not None:
            query_side = _compact(self.query_negatives)
            m_query = (query_side >= 0).sum(axis=1)
            keep &= m_query > 0
        slots = np.arange(n)
        idx = slots[None, :] % np.maximum(m_doc, 1)[:, None]
        d_neg = np.take_along_axis(doc_side, idx, axis=1)[keep]
        if self.query_negatives is not None:
            idx_q = slots[None, :] % np.maximum(m_query, 1)[:, None]
            q_neg = np.take_along_axis(query_side, idx_q, axis=1)[keep]
        else:
            q_neg = np.full_like(d_neg, -1)
        lines = int(keep.sum())
        out = np.stack([np.repeat(q_rows[keep], n), np.repeat(d_pos[keep], n),
                        d_neg.reshape(-1), q_neg.reshape(-1)], axis=1).astype(np.int64)
        assert out.shape == (lines * n, 4)
        if rng is not None:
            out = out[_as_rng(rng).permutation(len(out))]
        return out


def _compact(rows: np.ndarray) -> np.ndarray:
    """Move the valid (>= 0) entries of each row to the front, keeping their order."""
    order = np.argsort(rows < 0, axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)


def summary(neg_set: NegativeSet) -> dict:
    """A small summary of one refresh's negatives (numbers only; see :func:`summary_line`).

    Keys: step, n, top_k, queries, mined_queries (rows with >= 1 doc negative), pairs, doc_negatives_drawn,
    distinct_docs, queries_short (mined rows with fewer than n candidates), and for DANCE
    query_negatives_drawn, distinct_queries, pairs_short (0 < drawn < n), pairs_without_query_negatives.
    """
    n = neg_set.n
    drawn_doc = (neg_set.doc_negatives >= 0).sum(axis=1)
    out: dict[str, Any] = {
        "step": int(neg_set.meta.get("step", 0)),
        "n": n,
        "top_k": int(neg_set.meta.get("top_k", 0)),
        "queries": int(len(neg_set.train_query_ids)),
        "mined_queries": int((drawn_doc > 0).sum()),
        "pairs": int(len(neg_set.pairs)),
        "doc_negatives_drawn": int(neg_set.doc_counts.sum()),
        "distinct_docs": int((neg_set.doc_counts > 0).sum()),
        "queries_short": int(((drawn_doc > 0) & (drawn_doc < n)).sum()),
    }
    if neg_set.query_negatives is not None:
        drawn_q = (neg_set.query_negatives >= 0).sum(axis=1)
        out.update({
            "query_negatives_drawn": int(neg_set.query_counts.sum()),
            "distinct_queries": int((neg_set.query_counts > 0).sum()),
            "pairs_short": int(((drawn_q > 0) & (drawn_q < n)).sum()),
            "pairs_without_query_negatives": int((drawn_q == 0).sum()),
        })
    return out


def summary_line(neg_set: NegativeSet) -> str:
    """:func:`summary` as one line, e.g. ``negatives@500: 120/150 queries, 2400 doc negs (1733 distinct) ...``."""
    s = summary(neg_set)
    line = (f"negatives@{s['step']}: {s['mined_queries']}/{s['queries']} queries mined, "
            f"{s['doc_negatives_drawn']} doc negatives ({s['distinct_docs']} distinct docs), "
            f"{s['queries_short']} queries with < {s['n']} candidates")
    if "query_negatives_drawn" in s:
        line += (f"; {s['query_negatives_drawn']} query negatives ({s['distinct_queries']} distinct queries), "
                 f"{s['pairs_short'] + s['pairs_without_query_negatives']} pairs with < {s['n']} candidates")
    return line
