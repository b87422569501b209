"""Ranking metrics from :class:`~dance_analysis.index.Rankings`, vectorised, equal to trec_eval / ir-measures.

Measures (names accepted by :func:`evaluate`; ``k`` is any positive integer):

* ``"MRR@k"`` (also ``"RR@k"``; ``"MRR"`` without cutoff): reciprocal rank of the first relevant document within
  the top k.
* ``"R@k"`` (also ``"Recall@k"``): fraction of the query's relevant documents retrieved in the top k.
* ``"P@k"``: relevant documents in the top k, divided by k.
* ``"nDCG@k"`` (``"nDCG"`` without cutoff): normalised discounted cumulative gain.
* ``"MAP"`` (also ``"AP"``): average precision over the whole ranking.

``DEFAULT_MEASURES`` = MRR@10, MRR@100, R@100, R@1000, nDCG@10, MAP (what a refresh logs as dev metrics);
``RANKING_MEASURES`` = MRR@10, MRR@100, R@100, nDCG@10 (what the report and the experiment compute per query);
``PRIMARY_METRIC`` = MRR@10, higher is better: the one named metric that picks the checkpoint standing for a run
(a recipe's ``checkpoint.best_metric`` names another, :func:`primary_metric`), as sentence-transformers evaluators
declare one primary metric with its direction.

Conventions (stated once, followed by every number this module returns):

1. **Order.** A ranking is evaluated in the order trec_eval gives a run: score descending, and among equal scores
   document id descending (string comparison); the stored order and any rank column are not used. This is what
   makes the values equal to trec_eval (pytrec_eval, ir-measures' default provider for R, P, nDCG, AP, RR) even
   when scores tie. Note: ir-measures routes RR *with a cutoff* (``RR@10``) to its MS MARCO provider, which
   breaks ties by document id *ascending*; on a run with tied scores around a relevant document that one can
   differ from trec_eval and from this module. Without ties all agree.
2. **Relevance.** A document is relevant when it is judged with grade >= ``min_relevance`` (trec_eval's
   ``-l``); unjudged documents are not relevant. MRR, R, P and MAP use this binary relevance; the number of
   relevant documents of a query counts every qrels entry with grade >= ``min_relevance`` (also documents
   that were not retrieved or are not in the corpus).
3. **Gains.** nDCG uses the raw grade as the gain (trec_eval ``ndcg_cut``: linear gains, log2(rank + 1)
   discount; grades <= 0 and unjudged documents gain 0), independent of ``min_relevance``; the ideal ranking
   is built from all judged grades > 0 of the query.
4. **Averaging.** The mean is taken over every *evaluated* query: the queries of ``query_ids`` (default: every
   query of the qrels) that have at least one relevant document. A query that is not in the rankings, or
   retrieves no relevant document, scores 0 (official MS MARCO semantics: divide by the number of queries with
   judgements, not by the number of queries in the run; trec_eval's ``-c``). :func:`evaluate` also returns
   the number of evaluated queries under the key ``"queries"``.

Rows must not repeat a document (search never does; :func:`~dance_analysis.runs.read_trec_run` refuses it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DanceError
from .index import Rankings

__all__ = ["DEFAULT_MEASURES", "LOWER_IS_BETTER", "PRIMARY_METRIC", "RANKING_MEASURES", "Measure", "PrimaryMetric",
           "evaluate", "evaluate_per_query", "parse_measure", "primary_metric"]

DEFAULT_MEASURES: tuple[str, ...] = ("MRR@10", "MRR@100", "R@100", "R@1000", "nDCG@10", "MAP")
#: The ranking measures the report (``q2d``), the experiment and the comparison compute per query, in table order.
RANKING_MEASURES: tuple[str, ...] = ("MRR@10", "MRR@100", "R@100", "nDCG@10")
#: Named metrics where a lower value is better (the ranking measures are all higher-is-better): the evaluation loss
#: a transformers ``Trainer`` logs (``eval_loss``, read as ``loss`` by dance-analyze).
LOWER_IS_BETTER: frozenset[str] = frozenset({"loss", "eval_loss"})


@dataclass(frozen=True)
class PrimaryMetric:
    """A named metric and its direction: what picks the best of several checkpoints.

    ``name`` is a key of the dev metrics (``dev_metrics.json``, e.g. ``"MRR@10"``); ``higher_is_better`` its
    direction. :meth:`pick` is the one rule: the best value among those present and finite, the earliest on ties.
    """

    name: str
    higher_is_better: bool = True

    def value(self, metrics: Mapping[str, Any] | None) -> float | None:
        """This metric's finite value in ``metrics``, or ``None`` (absent, null, NaN, not a number)."""
        if not isinstance(metrics, Mapping):
            return None
        value = metrics.get(self.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
        return float(value)

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def pick(self, values: Sequence[float | None]) -> int | None:
        """Index of the best value (``None`` entries skipped; the first on ties), ``None`` when none has one."""
        best = None
        for i, value in enumerate(values):
            if value is not None and (best is None or self.better(value, values[best])):
                best = i
        return best

    def describe(self) -> str:
        """``"MRR@10 (higher is better)"``."""
        return f"{self.name} ({'higher' if self.higher_is_better else 'lower'} is better)"


#: The primary metric: MRR@10 (MS MARCO's official passage measure; the paper's section 5 claims are about it).
PRIMARY_METRIC = PrimaryMetric("MRR@10", higher_is_better=True)


def primary_metric(metric: str | PrimaryMetric | None = None) -> PrimaryMetric:
    """The :class:`PrimaryMetric` a name stands for: ``None`` -> :data:`PRIMARY_METRIC`; a ranking measure (any
    name :func:`parse_measure` accepts) is higher-is-better; a name in :data:`LOWER_IS_BETTER` lower-is-better;
    any other name (a key some evaluator logs) higher-is-better."""
    if metric is None:
        return PRIMARY_METRIC
    if isinstance(metric, PrimaryMetric):
        return metric
    name = str(metric)
    return PrimaryMetric(name, higher_is_better=name not in LOWER_IS_BETTER)

_KINDS = {"mrr": "RR", "rr": "RR", "r": "R", "recall": "R", "p": "P", "ndcg": "nDCG", "map": "AP", "ap": "AP"}
_NAME = re.compile(r"^\s*([A-Za-z]+)\s*(?:@\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Measure:
    """A parsed measure name: ``kind`` in RR, R, P, nDCG, AP and ``cutoff`` (None = the whole ranking)."""

    name: str
    kind: str
    cutoff: int | None


def parse_measure(name: str) -> Measure:
    """Parse ``"MRR@10"``, ``"RR@10"``, ``"R@100"``, ``"Recall@100"``, ``"P@5"``, ``"nDCG@10"``, ``"MAP"``, ...

    Case-insensitive. Raises DanceError for anything else.
    """
    match = _NAME.match(str(name))
    kind = _KINDS.get(match.group(1).lower()) if match else None
    cutoff = int(match.group(2)) if match and match.group(2) is not None else None
    valid = kind is not None and (cutoff is None or cutoff >= 1)
    if valid and kind in ("R", "P") and cutoff is None:
        valid = False
    if valid and kind == "AP" and cutoff is not None:
        valid = False
    if not valid:
        raise DanceError(f"unknown measure {name!r}: expected MRR@k, RR@k, R@k, Recall@k, P@k, nDCG@k, nDCG, "
                         f"MRR or MAP (k a positive integer)")
    return Measure(str(name), kind, cutoff)


def reciprocal_rank(relevant: np.ndarray, cutoff: int | None) -> np.ndarray:
    """RR@k per row of a boolean [m, n] relevance matrix in rank order: 1 / (rank of the first relevant document
    within the top k), 0 if none (Kantor & Voorhees 2000; MS MARCO MRR@10; trec_eval ``recip_rank`` on the run
    cut at k)."""
    top = relevant[:, :cutoff]
    hit = top.any(axis=1)
    first = top.argmax(axis=1)
    return np.where(hit, 1.0 / (first + 1.0), 0.0)


def recall(relevant: np.ndarray, num_relevant: np.ndarray, cutoff: int) -> np.ndarray:
    """R@k = |relevant in top k| / |relevant in the qrels| (trec_eval ``recall_k``); 0 when nothing is relevant."""
    found = relevant[:, :cutoff].sum(axis=1)
    return np.divide(found, num_relevant, out=np.zeros(len(found)), where=num_relevant > 0)


def precision(relevant: np.ndarray, cutoff: int) -> np.ndarray:
    """P@k = |relevant in top k| / k, also when fewer than k documents were retrieved (trec_eval ``P_k``)."""
    return relevant[:, :cutoff].sum(axis=1) / float(cutoff)


def average_precision(relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """AP = (1 / |relevant in the qrels|) * sum over ranks i holding a relevant document of P@i
    (trec_eval ``map``; Buckley & Voorhees 2000); 0 when nothing is relevant."""
    rows, cols = np.nonzero(relevant)
    hits = np.cumsum(relevant, axis=1, dtype=np.int32)[rows, cols]
    total = np.bincount(rows, weights=hits / (cols + 1.0), minlength=relevant.shape[0])
    return np.divide(total, num_relevant, out=np.zeros(len(total)), where=num_relevant > 0)


def dcg(gains: np.ndarray, cutoff: int | None) -> np.ndarray:
    """DCG@k = sum_{i=1..k} gain_i / log2(i + 1) per row of a gain matrix in rank order (Jarvelin & Kekalainen
    2002, linear gains as trec_eval ``ndcg_cut``)."""
    top = gains[:, :cutoff]
    return (top / np.log2(np.arange(2, top.shape[1] + 2, dtype=np.float64))).sum(axis=1)


def ndcg(gains: np.ndarray, ideal: np.ndarray, cutoff: int | None) -> np.ndarray:
    """nDCG@k = DCG@k / IDCG@k, IDCG@k from the ideal gains (each row sorted descending); 0 when IDCG is 0."""
    actual = dcg(gains, cutoff)
    best = dcg(ideal, cutoff)
    return np.divide(actual, best, out=np.zeros(len(actual)), where=best > 0)


def evaluate(rankings: Rankings, qrels: Mapping[str, Mapping[str, int]], *, min_relevance: int = 1,
             measures: Iterable[str] = DEFAULT_MEASURES,
             query_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of each measure over the evaluated queries, plus ``"queries"``: how many were evaluated.

    Args:
        rankings: the runs to score (rows in any order; see the module docstring for the tie order used).
        qrels: query id -> document id -> grade.
        min_relevance: a judged grade >= this is relevant (MRR, R, P, MAP; also selects the evaluated queries).
        measures: measure names (see :func:`parse_measure`).
        query_ids: the queries to average over (default: all queries of ``qrels``); only those with at least one
            relevant document are evaluated; those missing from ``rankings`` score 0.

    Raises DanceError when no query has a relevant document.
    """
    per_query = evaluate_per_query(rankings, qrels, min_relevance=min_relevance, measures=measures,
                                   query_ids=query_ids)
    n = len(per_query["query_ids"])
    if n == 0:
        raise DanceError(f"no query to evaluate: none of the {'given' if query_ids is not None else 'qrels'} "
                         f"queries has a document with grade >= {min_relevance}")
    out: dict[str, float] = {name: float(values.mean()) for name, values in per_query.items()
                             if name != "query_ids"}
    out["queries"] = n
    return out


def evaluate_per_query(rankings: Rankings, qrels: Mapping[str, Mapping[str, int]], *, min_relevance: int = 1,
                       measures: Iterable[str] = DEFAULT_MEASURES,
                       query_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-query values: ``{"query_ids": str [n], <measure>: float64 [n], ...}`` over the evaluated queries (in
    the order of ``query_ids``, or of the qrels), same conventions as :func:`evaluate`."""
    if isinstance(measures, str):
        raise DanceError("measures must be a list of names, not one string")
    parsed = [parse_measure(m) for m in measures]

    # 1. The evaluated queries and their judgements, flattened.
    candidates = list(qrels.keys()) if query_ids is None else [str(q) for q in query_ids]
    evaluated: list[str] = []
    seen: set[str] = set()
    q_pos: list[int] = []
    q_doc: list[str] = []
    q_grade: list[int] = []
    for qid in candidates:
        if qid in seen:
            continue
        seen.add(qid)
        judged = qrels.get(qid) or {}
        if not any(int(g) >= min_relevance for g in judged.values()):
            continue
        position = len(evaluated)
        evaluated.append(qid)
        for doc, grade in judged.items():
            q_pos.append(position)
            q_doc.append(str(doc))
            q_grade.append(int(grade))
    n_eval = len(evaluated)
    judged_pos = np.asarray(q_pos, dtype=np.int64)
    judged_grade = np.asarray(q_grade, dtype=np.int64)
    num_relevant = np.bincount(judged_pos[judged_grade >= min_relevance], minlength=n_eval).astype(np.float64)

    # 2. Rows of the rankings that belong to evaluated queries.
    ranked_qids = np.asarray(rankings.query_ids)
    ranked_qids = ranked_qids if ranked_qids.dtype.kind == "U" else ranked_qids.astype(str)
    if len(np.unique(ranked_qids)) != len(ranked_qids):
        raise DanceError("rankings hold the same query id in more than one row")
    row_of = {q: i for i, q in enumerate(ranked_qids.tolist())}
    present = [(e, row_of[q]) for e, q in enumerate(evaluated) if q in row_of]
    eval_pos = np.asarray([e for e, _ in present], dtype=np.int64)
    rows = np.asarray([r for _, r in present], dtype=np.int64)
    indices = np.asarray(rankings.indices)
    scores = np.asarray(rankings.scores)
    if not (len(rows) == len(indices) and np.array_equal(rows, np.arange(len(rows)))):
        indices, scores = indices[rows], scores[rows]
    valid = indices >= 0

    # 3. Grade of every ranked document (judged mask + grade), in the stored order.
    grade, judged = _lookup_grades(rankings.doc_ids, indices, valid, eval_pos, judged_pos, q_doc, judged_grade)

    # 4. Put each row into trec_eval order where the stored order could differ in a way that matters.
    grade, judged = _trec_order(rankings.doc_ids, indices, scores, valid, grade, judged)

    relevant = judged & (grade >= min_relevance)
    positive = judged & (grade > 0)
    ndcg_cutoffs = [m.cutoff for m in parsed if m.kind == "nDCG"]
    ideal = _ideal_gains(judged_pos, judged_grade, n_eval, max((c or 0 for c in ndcg_cutoffs), default=0),
                         None in ndcg_cutoffs)
    rel_count = num_relevant[eval_pos]

    out: dict[str, np.ndarray] = {"query_ids": np.asarray(evaluated, dtype=str)}
    for measure in parsed:
        if measure.kind == "RR":
            value = reciprocal_rank(relevant, measure.cutoff)
        elif measure.kind == "R":
            value = recall(relevant, rel_count, measure.cutoff)
        elif measure.kind == "P":
            value = precision(relevant, measure.cutoff)
        elif measure.kind == "AP":
            value = average_precision(relevant, rel_count)
        else:
            top = slice(None, measure.cutoff)
            gains = np.where(positive[:, top], grade[:, top], 0).astype(np.float64)
            value = ndcg(gains, ideal[eval_pos], measure.cutoff)
        full = np.zeros(n_eval, dtype=np.float64)
        full[eval_pos] = value
        out[measure.name] = full
    return out


def _lookup_grades(doc_ids: np.ndarray, indices: np.ndarray, valid: np.ndarray, eval_pos: np.ndarray,
                   judged_pos: np.ndarray, judged_doc: list[str], judged_grade: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(grade int [m, k], judged bool [m, k]) of each ranked document for its query.

    The distinct ranked documents are matched to the judged names by a vectorised 64-bit hash of their code
    points (a direct-address filter, then a sorted look-up), and every hash match is confirmed by comparing the
    strings, so collisions cost time, never correctness. No Python loop runs over the ranked entries."""
    small = len(judged_grade) == 0 or int(np.abs(judged_grade).max()) < 2**31
    grade = np.zeros(indices.shape, dtype=np.int32 if small else np.int64)
    judged = np.zeros(indices.shape, dtype=bool)
    if len(judged_doc) == 0 or indices.size == 0:
        return grade, judged
    names, slot_of_judgement = np.unique(np.asarray(judged_doc, dtype=str), return_inverse=True)
    n_docs = len(doc_ids)
    all_valid = bool(valid.all())
    ranked = np.zeros(n_docs, dtype=bool)
    ranked[indices.reshape(-1) if all_valid else indices[valid]] = True
    distinct = np.flatnonzero(ranked)
    distinct_hash = _hash_strings(doc_ids, distinct)
    name_hash = _hash_strings(names)
    table_bits = 24
    table = np.zeros(1 << table_bits, dtype=bool)
    table[name_hash >> np.uint64(64 - table_bits)] = True
    maybe = np.flatnonzero(table[distinct_hash >> np.uint64(64 - table_bits)])
    order = np.argsort(name_hash, kind="stable")
    sorted_hash = name_hash[order]
    at = np.minimum(np.searchsorted(sorted_hash, distinct_hash[maybe]), len(names) - 1)
    same_hash = sorted_hash[at] == distinct_hash[maybe]
    maybe, at = maybe[same_hash], at[same_hash]
    # Confirm by string equality (equal hashes of different names are possible in principle; runs of names
    # with one hash are followed to their end).
    slot = np.full(n_docs, -1, dtype=np.int32 if len(names) < 2**31 else np.int64)
    candidate_names = np.asarray(doc_ids)[distinct[maybe]].astype(str)
    pending = np.ones(len(maybe), dtype=bool)
    while pending.any():
        ok = pending & (names[order[at]] == candidate_names)
        slot[distinct[maybe[ok]]] = order[at[ok]]
        pending &= ~ok
        at = at + 1
        pending &= at < len(names)
        at = np.minimum(at, len(names) - 1)
        pending &= sorted_hash[at] == distinct_hash[maybe]
    # (query, name) codes of the judgements, and of the ranked entries that carry a judged name.
    n_names = len(names)
    codes = judged_pos * n_names + slot_of_judgement.reshape(-1)
    code_order = np.argsort(codes, kind="stable")
    codes_sorted = codes[code_order]
    entry_slot = slot[indices] if all_valid else np.where(valid, slot[np.where(valid, indices, 0)], -1)
    cand = np.nonzero(entry_slot >= 0)
    if len(cand[0]) == 0:
        return grade, judged
    entry_codes = eval_pos[cand[0]] * n_names + entry_slot[cand]
    hit_at = np.minimum(np.searchsorted(codes_sorted, entry_codes), len(codes_sorted) - 1)
    hit = codes_sorted[hit_at] == entry_codes
    rows_hit, cols_hit = cand[0][hit], cand[1][hit]
    grade[rows_hit, cols_hit] = judged_grade[code_order[hit_at[hit]]]
    judged[rows_hit, cols_hit] = True
    return grade, judged


def _hash_strings(strings: np.ndarray, rows: np.ndarray | None = None, chunk: int = 1 << 18) -> np.ndarray:
    """Polynomial hash sum_j code_j * P**j (mod 2**64) over the code points of each string of a numpy unicode
    array (of ``strings[rows]`` when ``rows`` is given, gathered a chunk at a time); trailing padding adds
    nothing, so equal strings hash alike whatever the array's width."""
    strings = np.asarray(strings)
    if strings.dtype.kind != "U":
        strings = strings.astype(str)
    count = len(strings) if rows is None else len(rows)
    width = strings.dtype.itemsize // 4
    hashed = np.zeros(count, dtype=np.uint64)
    if width == 0 or count == 0:
        return hashed
    powers = np.array([pow(0x100000001B3, j, 1 << 64) for j in range(width)], dtype=np.uint64)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        part = strings[start:stop] if rows is None else strings[rows[start:stop]]
        codes = np.ascontiguousarray(part).view(np.uint32).reshape(stop - start, width).astype(np.uint64)
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            hashed[start:stop] = codes @ powers
    return hashed


def _trec_order(doc_ids: np.ndarray, indices: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                grade: np.ndarray, judged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder (grade, judged) of the rows whose stored order may differ from trec_eval's in a way that can change
    a metric: rows not sorted by score, and rows with a tie group (equal scores) that holds a judged document.
    Empty places go last."""
    m, k = indices.shape
    if m == 0 or k < 2:
        return grade, judged
    s = scores
    nxt_valid = valid[:, 1:]
    unsorted = (nxt_valid & (~valid[:, :-1] | (s[:, :-1] < s[:, 1:]))).any(axis=1)
    tie_next = nxt_valid & valid[:, :-1] & (s[:, :-1] == s[:, 1:])
    # Only rows with a tie and a judged document can be affected; look at their tie groups.
    risky = unsorted.copy()
    check = np.flatnonzero(tie_next.any(axis=1) & judged.any(axis=1) & ~unsorted)
    if len(check):
        # Tie groups: a new group starts wherever the previous place is not tied to this one.
        starts = np.ones((len(check), k), dtype=bool)
        starts[:, 1:] = ~tie_next[check]
        group = np.cumsum(starts.reshape(-1)) - 1
        n_groups = int(group[-1]) + 1
        size = np.bincount(group, minlength=n_groups)
        judged_in = np.bincount(group, weights=judged[check].reshape(-1), minlength=n_groups)
        risky_group = (size > 1) & (judged_in > 0)
        risky[check] = risky_group[group].reshape(len(check), k).any(axis=1)
    rows = np.flatnonzero(risky)
    if len(rows) == 0:
        return grade, judged
    sub_idx = indices[rows]
    sub_valid = valid[rows]
    names = np.asarray(doc_ids)[np.where(sub_valid, sub_idx, 0)].astype(str, copy=False)
    _, name_rank = np.unique(names, return_inverse=True)
    name_rank = name_rank.reshape(sub_idx.shape)
    primary = np.where(sub_valid, -s[rows].astype(np.float64), np.inf)
    order = np.lexsort((-name_rank, primary), axis=-1)
    grade = grade.copy()
    judged = judged.copy()
    grade[rows] = np.take_along_axis(grade[rows], order, axis=1)
    judged[rows] = np.take_along_axis(judged[rows], order, axis=1)
    return grade, judged


def _ideal_gains(judged_pos: np.ndarray, judged_grade: np.ndarray, n_eval: int, depth: int,
                 whole: bool) -> np.ndarray:
    """[n_eval, depth] matrix of each query's positive grades sorted descending (zero-padded); ``whole``: as
    deep as the longest list of positive grades."""
    positive = judged_grade > 0
    pos, gr = judged_pos[positive], judged_grade[positive]
    order = np.lexsort((-gr, pos))
    pos, gr = pos[order], gr[order]
    counts = np.bincount(pos, minlength=n_eval)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_eval else np.zeros(0, np.int64)
    rank = np.arange(len(pos)) - starts[pos] if len(pos) else np.zeros(0, np.int64)
    width = max(depth, int(counts.max()) if whole and len(counts) else 0, 1)
    ideal = np.zeros((n_eval, width), dtype=np.float64)
    keep = rank < width
    ideal[pos[keep], rank[keep]] = gr[keep]
    return ideal
