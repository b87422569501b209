"""Run the analysis functions on every subject and gather one JSON-able results dict (plus arrays for figures).

The numbers all come from :mod:`dance_analysis.analysis` (pure functions), :func:`dance_analysis.metrics.evaluate`,
:func:`dance_analysis.index.search` and the samplers of :mod:`dance_analysis.mining`; this module only chooses
the inputs (which queries, which documents, which pairs), calls them, and names the results. The claims, the
ranking levels with CIs and the paired differences come from :mod:`dance_analysis.comparison` through
:func:`dance_analysis.report.claims_panel.compare_inputs`.

What is analysed (recorded in the results under ``"selection"``):

- queries: the queries of the split that have at least one relevant document (``--sample N``: N of them, drawn
  with the seed);
- documents: the whole corpus; with ``--sample N``, a sub-corpus: every judged document of the chosen queries
  plus N other documents drawn with the seed (ranking metrics are then those of a sub-corpus, flagged in the
  report);
- positive pairs: (query, document) with grade >= the collection's ``min_relevance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import analysis as A
from ..analysis import aligned_pca, count_distribution_stats, lorenz_curve, procrustes_align, umap_project
from ..embeddings import Embeddings
from ..errors import DanceError
from ..index import search
from ..metrics import RANKING_MEASURES, evaluate
from ..mining import NegativeSet, mine_document_negatives, mine_query_negatives
from ..runtime import Timer, enable_numba_cache, single_threaded_blas
from .claims_panel import compare_inputs
from .encode_subjects import release_models, subject_embeddings
from .inputs import RunInput, Subject

#: q2d measures reported: the one list of ranking measures (MS MARCO convention, see dance_analysis.metrics).
Q2D_MEASURES = RANKING_MEASURES
#: Recall cut-offs of the dual task d2q.
D2Q_KS = (1, 10, 100)
#: Explained-variance cut-offs (first k principal components).
PC_KS = (1, 10, 50)
#: Bins of the per-row entropy histograms (normalised entropy in [0, 1]).
ENTROPY_BINS = 20
#: Points of the Lorenz curves.
LORENZ_POINTS = 101
#: Principal components shown in the spectrum figure.
SPECTRUM_COMPONENTS = 50


@dataclass
class AnalysisSettings:
    """Knobs of one report (all recorded in the provenance section)."""

    split: str | None = None          # None: "test" when the collection has it, else "all"
    sample: int | None = None         # analyse at most this many queries (and a sub-corpus), see module doc
    seed: int = 0
    k: int = 100                      # q2d ranking depth for the metrics
    top_k: int = 200                  # candidates of the sampling softmax / samplers (the paper's 200)
    n_negatives: int = 20             # negatives drawn per line by the samplers (the paper's 20)
    uniformity_t: float = 2.0
    n_random: int = 10                # random documents per query in the query-document geometry
    max_geometry_docs: int = 100_000  # documents used for PCA / isotropy / uniformity (seeded sample beyond)
    umap_points: int = 1000           # points per subject in the UMAP picture (half queries, half documents)
    umap_neighbors: int = 15
    umap_links: int = 8               # queries whose positive pairs are drawn as links
    examples: int = 3                 # example queries with their top documents
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True
    encoder_overrides: dict = field(default_factory=dict)
    export_projections: bool = False  # keep every point's PCA / UMAP coordinates for the projection files


@dataclass
class Selection:
    """The queries and documents analysed, shared by every subject (so their numbers are comparable)."""

    split: str
    query_ids: np.ndarray
    doc_ids: np.ndarray
    pairs: np.ndarray                 # int64 [m, 2] (row in query_ids, row in doc_ids), grade >= min_relevance
    split_queries: int                # evaluable queries of the split before sampling
    corpus_size: int
    sampled: bool

    def describe(self) -> dict:
        """JSON-able summary."""
        return {"split": self.split, "queries": int(len(self.query_ids)), "documents": int(len(self.doc_ids)),
                "positive_pairs": int(len(self.pairs)), "split_queries": int(self.split_queries),
                "corpus_size": int(self.corpus_size), "sampled": bool(self.sampled),
                "sub_corpus": bool(len(self.doc_ids) < self.corpus_size)}


def _finite(value: Any) -> Any:
    """``value`` made JSON-able: numpy scalars to Python, NaN / inf to None, arrays to lists."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_finite(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


jsonable = _finite


# ----------------------------------------------------------------------------------------------- selection
def select_items(collection, settings: AnalysisSettings) -> Selection:
    """Choose the analysed queries and documents (see the module docstring)."""
    split = settings.split or ("test" if "test" in collection.splits else "all")
    evaluable = collection.evaluable(collection.split_queries(split))
    if not evaluable:
        raise DanceError(f"split {split!r} of {collection.name} has no query with a relevant document "
                         f"(grade >= {collection.min_relevance}); choose another --split")
    rng = np.random.default_rng(settings.seed)
    corpus_ids = np.asarray(collection.corpus.ids).astype(str)
    sample = settings.sample
    if sample is not None and sample < 1:
        raise DanceError(f"--sample must be a positive number of queries, got {sample}")
    query_ids = list(evaluable)
    if sample is not None and len(query_ids) > sample:
        keep = np.sort(rng.choice(len(query_ids), size=sample, replace=False))
        query_ids = [query_ids[i] for i in keep]
    if sample is not None and sample < len(corpus_ids):
        judged = {d for q in query_ids for d in collection.qrels.get(q, {})}
        forced = np.isin(corpus_ids, np.asarray(sorted(judged), dtype=str)) if judged else \
            np.zeros(len(corpus_ids), dtype=bool)
        others = np.flatnonzero(~forced)
        chosen = forced.copy()
        if len(others):
            chosen[rng.choice(others, size=min(sample, len(others)), replace=False)] = True
        doc_ids = corpus_ids[chosen]
    else:
        doc_ids = corpus_ids
    doc_row = {d: i for i, d in enumerate(doc_ids.tolist())}
    pairs = [(qi, doc_row[d]) for qi, q in enumerate(query_ids) for d in sorted(collection.relevant(q))
             if d in doc_row]
    pairs_arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return Selection(split=split, query_ids=np.asarray(query_ids, dtype=str), doc_ids=doc_ids, pairs=pairs_arr,
                     split_queries=len(evaluable), corpus_size=len(corpus_ids),
                     sampled=sample is not None and (len(query_ids) < len(evaluable) or
                                                     len(doc_ids) < len(corpus_ids)))


# ----------------------------------------------------------------------------------------------- helpers
def _hist(values: np.ndarray, bins: int = ENTROPY_BINS, lo: float = 0.0, hi: float = 1.0) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _softmax_summary(stats: dict) -> dict:
    keep = ("entropy_mean", "entropy_norm_mean", "entropy_norm_median", "max_prob_mean", "max_prob_median",
            "positive_mass_mean", "temperature", "n")
    out = {key: stats[key] for key in keep if key in stats}
    out["k_mean"] = float(np.mean(stats["k"])) if len(stats["k"]) else float("nan")
    out["entropy_norm_hist"] = _hist(stats["entropy_norm"])
    out["max_prob_hist"] = _hist(stats["max_prob"])
    return out


def _count_summary(counts: np.ndarray, what: str, source: str) -> dict:
    stats = count_distribution_stats(counts)
    xs, ys = lorenz_curve(counts, n_points=LORENZ_POINTS)
    return {**stats, "items": what, "source": source, "lorenz": {"x": xs.tolist(), "y": ys.tolist()}}


def _positive_mask(rankings, relevant: dict[str, set[str]]) -> np.ndarray:
    """Bool [nq, k]: is the ranked item a positive of the row's anchor."""
    mask = np.zeros(rankings.indices.shape, dtype=bool)
    doc_ids = np.asarray(rankings.doc_ids)
    for row, anchor in enumerate(np.asarray(rankings.query_ids).tolist()):
        wanted = relevant.get(anchor)
        if not wanted:
            continue
        idx = rankings.indices[row]
        valid = idx >= 0
        mask[row, valid] = np.isin(doc_ids[idx[valid]], list(wanted))
    return mask


def _scores_with_padding(rankings) -> np.ndarray:
    scores = np.asarray(rankings.scores, dtype=np.float64).copy()
    scores[rankings.indices < 0] = -np.inf
    return scores


# ----------------------------------------------------------------------------------------------- one subject
@dataclass
class _Space:
    """What every section of one subject's analysis reads: its vectors, pairs, sampling settings and the
    negatives the trainer mined (when the subject has them)."""

    Q: np.ndarray                     # [nq, d] query vectors of the selection
    D: Any                            # [nd, d] document vectors (may be a memmap)
    pairs: np.ndarray                 # int64 [m, 2] positive (query row, document row)
    temperature: float
    temperature_source: str
    neg_set: Any                      # the subject's NegativeSet, or None
    negatives_meta: dict
    top_k: int
    n_neg: int
    relevant_docs: dict[str, set[str]]

    @property
    def nq(self) -> int:
        return int(self.Q.shape[0])

    @property
    def nd(self) -> int:
        return int(self.D.shape[0])


def _space(subject: Subject, corpus, queries, collection, selection: Selection,
           settings: AnalysisSettings) -> _Space:
    temperature, temperature_source = subject.temperature()
    negatives_meta: dict = {}
    if subject.negatives_dir is not None:
        neg_set = NegativeSet.load(subject.negatives_dir)
        negatives_meta = dict(neg_set.meta)
    else:
        neg_set = None
    return _Space(Q=np.asarray(queries.vectors), D=corpus.vectors, pairs=selection.pairs, temperature=temperature,
                  temperature_source=temperature_source, neg_set=neg_set, negatives_meta=negatives_meta,
                  top_k=int(negatives_meta.get("top_k") or settings.top_k),
                  n_neg=int(negatives_meta.get("n") or settings.n_negatives),
                  relevant_docs={q: set(collection.relevant(q)) for q in selection.query_ids.tolist()})


def _ranking(space: _Space, collection, selection: Selection, settings: AnalysisSettings):
    """q2d (search + evaluate) and d2q (documents retrieving their queries): ``(rankings, section)``."""
    depth = min(max(settings.k, space.top_k), space.nd)
    rankings = search(space.Q, space.D, depth, query_ids=selection.query_ids, doc_ids=selection.doc_ids,
                      device=settings.device)
    q2d = evaluate(rankings, collection.qrels, min_relevance=collection.min_relevance, measures=Q2D_MEASURES,
                   query_ids=selection.query_ids.tolist())
    d2q = A.d2q_metrics(space.Q, space.D, space.pairs, ks=D2Q_KS)
    return rankings, {"q2d": q2d, "d2q": d2q, "depth": int(depth)}


def _geometry_documents(space: _Space, settings: AnalysisSettings) -> np.ndarray:
    """The documents of the geometry statistics: all, or a seeded sample of ``max_geometry_docs``."""
    if space.nd > settings.max_geometry_docs:
        rng = np.random.default_rng(settings.seed)
        geo_rows = np.sort(rng.choice(space.nd, size=settings.max_geometry_docs, replace=False))
        return np.asarray(space.D[geo_rows])
    return np.asarray(space.D)


def _geometry(space: _Space, D_geo: np.ndarray, doc_negatives: np.ndarray, label: str,
              settings: AnalysisSettings) -> dict:
    """Per-side geometry (PCA, isotropy, norms, spectrum), the query-document geometry and the cosine
    histograms."""
    Q, D = space.Q, space.D
    sides = {}
    spectra = {}
    for side, X in (("queries", Q), ("documents", D_geo)):
        if X.shape[0] < 2:
            raise DanceError(f"{label}: only {X.shape[0]} {side} to analyse; expected at least 2 "
                             f"(a larger --sample or another --split)")
        spectrum = A.pca_spectrum(X)
        spectra[side] = spectrum["ratio"][:SPECTRUM_COMPONENTS]
        sides[side] = {"mean_cosine": A.mean_pairwise_cosine(X),
                       **A.variance_explained(spectrum, ks=PC_KS),
                       "mean_vector_norm_ratio": A.mean_vector_norm_ratio(X),
                       "norm": A.norm_stats(X),
                       **A.isotropy_stats(X),
                       "rows": int(X.shape[0])}
    both = np.concatenate([np.asarray(Q, dtype=np.float32), np.asarray(D_geo, dtype=np.float32)])
    sides["both"] = {"mean_cosine": A.mean_pairwise_cosine(both), "rows": int(both.shape[0])}
    del both
    neg_pairs = A.negatives_to_pairs(doc_negatives)
    qd_geo = A.query_document_geometry(Q, D, space.pairs, neg_pairs, n_random=settings.n_random,
                                       seed=settings.seed)
    qd = {"centroid_distance": A.centroid_distance(Q, D_geo),
          "centroid_distance_raw": A.centroid_distance(Q, D_geo, normalize=False),
          "cross_mean_cosine": A.cross_mean_cosine(Q, D_geo),
          "positive": qd_geo["positive"], "negative": qd_geo["negative"], "random": qd_geo["random"],
          "excluded_pairs": qd_geo["excluded_pairs"], "n_random": qd_geo["n_random"]}
    cos_hist = {"edges": np.asarray(qd_geo["histogram"]["edges"]).tolist(),
                **{g: np.asarray(qd_geo["histogram"][g]).tolist() for g in ("positive", "negative", "random")}}
    return {**sides, "qd": qd, "cosine_histogram": cos_hist,
            "spectrum": {side: np.asarray(v).tolist() for side, v in spectra.items()}}


def _alignment_uniformity(space: _Space, D_geo: np.ndarray, settings: AnalysisSettings) -> dict:
    """Alignment of the positive pairs and uniformity of each side (Wang & Isola, ICML 2020)."""
    align = A.alignment(space.Q, space.D, space.pairs) if len(space.pairs) else float("nan")
    uni = A.uniformity_sides(space.Q, D_geo, t=settings.uniformity_t, seed=settings.seed)
    return {"alignment": align, "alpha": 2.0, "t": settings.uniformity_t, "uniformity": uni}


def _sampling(space: _Space, rankings, doc_negatives: np.ndarray, subject: Subject, corpus, queries, collection,
              selection: Selection, settings: AnalysisSettings) -> dict:
    """Negative sampling: the softmax over the top-K candidates (q2d and d2q) and the draw counts of the
    samplers on the split and of the trainer's last refresh."""
    Q, D, pairs, top_k, n_neg = space.Q, space.D, space.pairs, space.top_k, space.n_neg
    k_soft = min(top_k, rankings.k)
    q2d_scores = _scores_with_padding(rankings)[:, :k_soft]
    q2d_mask = _positive_mask(rankings, space.relevant_docs)[:, :k_soft]
    q2d_soft = A.softmax_stats(q2d_scores, q2d_mask, temperature=space.temperature)
    pos_doc_rows = np.unique(pairs[:, 1]) if len(pairs) else np.zeros(0, dtype=np.int64)
    sampling: dict = {"temperature": space.temperature, "temperature_source": space.temperature_source,
                      "top_k": top_k, "n": n_neg, "q2d_softmax": _softmax_summary(q2d_soft)}
    if len(pos_doc_rows):
        pos_doc_ids = selection.doc_ids[pos_doc_rows]
        d2q_rank = search(np.asarray(D[pos_doc_rows]), Q, min(top_k, space.nq), query_ids=pos_doc_ids,
                          doc_ids=selection.query_ids, device=settings.device)
        queries_of: dict[str, set[str]] = {}
        for qi, di in pairs.tolist():
            queries_of.setdefault(str(selection.doc_ids[di]), set()).add(str(selection.query_ids[qi]))
        d2q_soft = A.softmax_stats(_scores_with_padding(d2q_rank), _positive_mask(d2q_rank, queries_of),
                                   temperature=space.temperature)
        sampling["d2q_softmax"] = _softmax_summary(d2q_soft)
        string_pairs = np.stack([selection.query_ids[pairs[:, 0]], selection.doc_ids[pairs[:, 1]]], axis=1)
        _, split_query_counts = mine_query_negatives(d2q_rank, string_pairs, space.relevant_docs, n_neg,
                                                     settings.seed, top_k=top_k, min_grade=1)
    else:
        sampling["d2q_softmax"] = None
        split_query_counts = np.zeros(space.nq, dtype=np.int64)
    split_doc_counts = np.bincount(doc_negatives[doc_negatives >= 0], minlength=space.nd)
    split_source = (f"samplers applied to the analysed split ({selection.split}): top {top_k}, {n_neg} drawn, "
                    f"seed {settings.seed}")
    sampling["split_counts"] = {
        "documents": _count_summary(split_doc_counts, "documents", split_source),
        "queries": _count_summary(split_query_counts, "queries", split_source)}
    sampling["trainer_counts"] = _trainer_counts(subject, space.neg_set, queries, corpus, collection, settings)
    return sampling


def analyse_subject(subject: Subject, corpus, queries, collection, selection: Selection,
                    settings: AnalysisSettings, timer: Timer | None = None) -> tuple[dict, dict]:
    """Every statistic of one embedding space, one section at a time (ranking, geometry, alignment /
    uniformity, negative sampling). Returns ``(results, arrays)``: a JSON-able dict and the larger arrays the
    figures need (cosine histograms are in the results; nothing in ``arrays`` is written to JSON)."""
    timer = timer or Timer()
    space = _space(subject, corpus, queries, collection, selection, settings)

    with timer.stage("ranking"):
        rankings, ranking = _ranking(space, collection, selection, settings)

    with timer.stage("geometry"):
        D_geo = _geometry_documents(space, settings)
        doc_negatives, _ = mine_document_negatives(rankings, space.relevant_docs, space.n_neg, settings.seed,
                                                   top_k=space.top_k, min_grade=1)
        geometry = _geometry(space, D_geo, doc_negatives, subject.label, settings)

    with timer.stage("alignment_uniformity"):
        alignment_uniformity = _alignment_uniformity(space, D_geo, settings)

    with timer.stage("sampling"):
        sampling = _sampling(space, rankings, doc_negatives, subject, corpus, queries, collection, selection,
                             settings)

    result = {
        "label": subject.label, "kind": subject.kind, "path": subject.path, "step": subject.step,
        "objective": subject.meta.get("objective"), "dim": int(space.Q.shape[1]),
        "sizes": {"queries": space.nq, "documents": space.nd, "geometry_documents": int(D_geo.shape[0]),
                  "positive_pairs": int(len(space.pairs))},
        "dev_metrics": subject.dev_metrics,
        "ranking": ranking,
        "geometry": geometry,
        "alignment_uniformity": alignment_uniformity,
        "sampling": sampling,
        "negatives_meta": space.negatives_meta or None,
    }
    arrays = {"rankings": rankings}
    return jsonable(result), arrays


def _trainer_counts(subject: Subject, neg_set, queries, corpus, collection, settings) -> dict | None:
    """Draw counts of the trainer's last refresh (negatives/ folder), when the checkpoint has them.

    For an ANCE checkpoint (no query negatives) the query counts are recomputed with the DANCE sampler on the
    same training queries and positive pairs (same top_k, n and seed) when its saved embeddings cover them.
    """
    if neg_set is None:
        return None
    meta = neg_set.meta
    step = meta.get("step")
    source = f"trainer's refresh at step {step} (negatives/)"
    out = {"documents": _count_summary(neg_set.doc_counts, "documents", source), "queries": None,
           "train_queries": int(len(neg_set.train_query_ids)), "documents_total": int(len(neg_set.corpus_ids))}
    if neg_set.has_query_negatives:
        out["queries"] = _count_summary(neg_set.query_counts, "queries", source)
        return out
    if subject.embeddings_dir is None or len(neg_set.pairs) == 0:
        out["queries_note"] = "no query negatives (ANCE) and no saved embeddings to recompute them"
        return out
    try:
        saved_q = Embeddings.load(subject.embeddings_dir / "queries")
        saved_d = Embeddings.load(subject.embeddings_dir / "corpus")
        train_q = np.asarray(saved_q.subset(neg_set.train_query_ids).vectors, dtype=np.float32)
        anchor_idx = np.unique(neg_set.pairs[:, 1])
        anchor_ids = neg_set.corpus_ids[anchor_idx]
        anchors = np.asarray(saved_d.subset(anchor_ids).vectors, dtype=np.float32)
    except DanceError as exc:
        out["queries_note"] = f"could not recompute the query counts: {exc}"
        return out
    if not (np.isfinite(train_q).all() and np.isfinite(anchors).all()):
        out["queries_note"] = "could not recompute the query counts: non-finite saved vectors"
        return out
    top_k = int(meta.get("top_k") or settings.top_k)
    rank = search(anchors, train_q, min(top_k, len(train_q)), query_ids=anchor_ids,
                  doc_ids=neg_set.train_query_ids, device=settings.device)
    positives = {q: set(collection.relevant(q)) for q in neg_set.train_query_ids.tolist()}
    _, counts = mine_query_negatives(rank, neg_set.pairs, positives, int(meta.get("n") or settings.n_negatives),
                                     int(meta.get("seed", settings.seed)), top_k=top_k,
                                     corpus_ids=neg_set.corpus_ids, min_grade=1)
    out["queries"] = _count_summary(
        counts, "queries", f"DANCE sampler recomputed on the training queries of the refresh at step {step} "
                           f"(ANCE mines no query negatives)")
    return out


def umap_selection(selection: Selection, settings: AnalysisSettings) -> tuple[np.ndarray, np.ndarray, list]:
    """Rows (in the selection) of the queries and documents shown in the UMAP picture, and linked pairs.

    Up to ``umap_points / 2`` queries (seeded); documents: the positives of up to ``umap_links`` of them first,
    then documents drawn with the seed, up to ``umap_points / 2``. Links: (query index, document index) within
    those sampled arrays.
    """
    rng = np.random.default_rng(settings.seed + 1)
    half = max(2, settings.umap_points // 2)
    nq, nd = len(selection.query_ids), len(selection.doc_ids)
    q_rows = np.sort(rng.choice(nq, size=min(half, nq), replace=False))
    pairs = selection.pairs
    q_in = set(q_rows.tolist())
    with_pos = sorted({int(q) for q in pairs[:, 0].tolist() if int(q) in q_in}) if len(pairs) else []
    linked = [with_pos[i] for i in np.sort(rng.choice(len(with_pos), size=min(settings.umap_links,
                                                                             len(with_pos)), replace=False))] \
        if with_pos else []
    forced = sorted({int(d) for q, d in pairs.tolist() if int(q) in set(linked)})[:half]
    rest = np.setdiff1d(np.arange(nd), np.asarray(forced, dtype=np.int64))
    extra = rng.choice(rest, size=min(max(0, half - len(forced)), len(rest)), replace=False) if len(rest) else []
    d_rows = np.sort(np.concatenate([np.asarray(forced, dtype=np.int64), np.asarray(extra, dtype=np.int64)]))
    q_pos = {int(r): i for i, r in enumerate(q_rows.tolist())}
    d_pos = {int(r): i for i, r in enumerate(d_rows.tolist())}
    links = [(q_pos[int(q)], d_pos[int(d)]) for q, d in pairs.tolist() if int(q) in set(linked) and int(d) in d_pos]
    return q_rows, d_rows, links


def umap_coordinates(matrices: list[np.ndarray], settings: AnalysisSettings, n_queries: int) -> list[np.ndarray]:
    """One UMAP per subject, each picture moved onto the first one's over the documents (rows after the first
    ``n_queries``), so the panels share axes and differ where the models differ (see ``umap_project``)."""
    enable_numba_cache()
    return umap_project(matrices, fit="aligned", n_neighbors=settings.umap_neighbors, seed=settings.seed,
                        align_rows=slice(n_queries, None))


# ----------------------------------------------------------------------------------------------- examples
def examples(collection, selection: Selection, rankings_by_run: dict[str, Any], settings: AnalysisSettings,
             n_docs: int = 3, snippet: int = 300) -> list[dict]:
    """A few analysed queries with the top documents each run retrieves (texts as they are; escaped on render)."""
    rng = np.random.default_rng(settings.seed + 2)
    nq = len(selection.query_ids)
    rows = np.sort(rng.choice(nq, size=min(settings.examples, nq), replace=False)) if nq else []
    out = []
    for row in rows:
        qid = str(selection.query_ids[row])
        relevant = collection.qrels.get(qid, {})
        entry = {"query_id": qid, "query": collection.queries.get(qid, ""), "runs": []}
        for run_name, rankings in rankings_by_run.items():
            hits = rankings.top(int(row), n_docs)
            texts = collection.corpus.texts([d for d, _ in hits]) if hits else []
            docs = []
            for (doc_id, score), text in zip(hits, texts):
                shown = text if len(text) <= snippet else text[:snippet].rstrip() + " ..."
                grade = relevant.get(doc_id)
                docs.append({"doc_id": doc_id, "score": float(score), "grade": grade,
                             "relevant": grade is not None and grade >= collection.min_relevance,
                             "text": shown})
            entry["runs"].append({"run": run_name, "docs": docs})
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------------- everything
def compute_all(runs: Sequence[RunInput], collection, settings: AnalysisSettings,
                log: Callable[[str], None] = lambda message: None,
                step: Callable[[str], None] = lambda description: None) -> tuple[dict, dict]:
    """Analyse every subject of every run, the claims, UMAP and examples; ``step`` is told each step as it starts
    (each subject, "UMAP", "statistics"), ``log`` gets a line per subject and per statistic.

    Returns ``(results, arrays)``: a JSON-able dict (see :mod:`dance_analysis.report.render` for its use) and the
    arrays needed only by the figures (UMAP coordinates).
    """
    timer = Timer()
    selection = select_items(collection, settings)
    results_by_label: dict[str, dict] = {}
    rankings_by_run: dict[str, Any] = {}
    umap_q, umap_d, links = umap_selection(selection, settings)
    umap_inputs: dict[str, np.ndarray] = {}
    umap_wanted = _umap_subjects(runs)
    sources: dict[str, str] = {}
    representatives: dict[str, tuple] = {}
    pca_points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    total = sum(len(run.subjects) for run in runs)
    done = 0
    for run in runs:
        for subject in run.subjects:
            done += 1
            step(subject.label)
            log(f"[{done}/{total}] {subject.label}")
            started = timer.start()
            corpus, queries, source = subject_embeddings(
                subject, collection, selection.doc_ids, selection.query_ids, batch_size=settings.batch_size,
                device=settings.device, progress=settings.progress, overrides=settings.encoder_overrides)
            timer.add("embeddings (" + source + ")", started)
            sources[subject.label] = source
            with single_threaded_blas():
                result, arrays = analyse_subject(subject, corpus, queries, collection, selection, settings, timer)
            result["embeddings_source"] = source
            result["run"] = run.name
            results_by_label[subject.label] = result
            if subject is run.representative:
                rankings_by_run[run.name] = arrays["rankings"]
                representatives[run.name] = (corpus, queries)
            if settings.export_projections:
                with single_threaded_blas():
                    pca_points[subject.label] = aligned_pca([corpus.vectors], [queries.vectors])[0]
            if subject.label in umap_wanted:
                umap_inputs[subject.label] = np.concatenate(
                    [np.asarray(queries.vectors[umap_q], dtype=np.float32),
                     np.asarray(corpus.vectors[umap_d], dtype=np.float32)])
            del corpus, queries, arrays
    release_models()

    step("UMAP")
    started = timer.start()
    labels = [label for label in umap_wanted if label in umap_inputs]
    umap_info: dict = {"subjects": labels, "queries": int(len(umap_q)), "documents": int(len(umap_d)),
                       "links": len(links), "n_neighbors": settings.umap_neighbors, "seed": settings.seed,
                       "fit": "one reducer per subject, moved onto the first subject's picture by orthogonal "
                              "Procrustes over the documents (shared axes)"}
    coords: dict[str, np.ndarray] = {}
    if labels and len(umap_q) + len(umap_d) >= 4:
        with single_threaded_blas():
            projected = umap_coordinates([umap_inputs[label] for label in labels], settings, len(umap_q))
        coords = dict(zip(labels, projected))
    else:
        umap_info["skipped"] = "too few points for a projection"
    timer.add("umap", started)

    step("statistics")
    with timer.stage("comparison statistics"), single_threaded_blas():
        comparison, comparison_arrays = compare_inputs(runs, representatives, collection, selection,
                                                       seed=settings.seed, log=log)
    comparison["labels"] = {run.name: run.name for run in runs}
    runs_out = []
    for run in runs:
        runs_out.append({"name": run.name, "path": run.path, "kind": run.kind, "objective": run.objective,
                         "representative": run.representative.label, "selection": run.selection,
                         "skipped": run.skipped, "config": jsonable(run.config),
                         "training_log": run.training_log, "refresh_log": run.refresh_log,
                         "subjects": [results_by_label[s.label] for s in run.subjects],
                         "inputs": [jsonable(s.describe()) for s in run.subjects]})
    results = {
        "collection": {"name": collection.name, "source": jsonable(collection.source),
                       "min_relevance": collection.min_relevance, "stats": jsonable(collection.stats())},
        "selection": selection.describe(),
        "settings": jsonable({k: v for k, v in asdict(settings).items() if k not in ("progress",)}),
        "runs": runs_out,
        "comparison": comparison,
        "umap": umap_info,
        "examples": examples(collection, selection, rankings_by_run, settings),
        "timings": timer.seconds,
    }
    arrays = {"umap": coords, "umap_links": links, "umap_nq": int(len(umap_q)), "comparison": comparison_arrays}
    if settings.export_projections:
        arrays["points"] = projection_points(runs, selection, pca_points, coords, umap_q, umap_d)
    return jsonable(results), arrays


def projection_points(runs: Sequence[RunInput], selection: Selection, pca_points: dict, umap_coords: dict,
                      umap_q: np.ndarray, umap_d: np.ndarray) -> dict:
    """Every analysed query and document of every subject with its 2-D coordinates, for the projection files
    (:mod:`dance_analysis.report.projections`): the subject's own PCA of its unit vectors, moved onto the first
    subject's axes by orthogonal Procrustes over the documents (:func:`~dance_analysis.analysis.procrustes_align`),
    and the UMAP coordinates of the points the UMAP picture holds (NaN for the others)."""
    labels = [s.label for run in runs for s in run.subjects if s.label in pca_points]
    n_d = len(selection.doc_ids)
    stacked = [np.concatenate([pca_points[label][0], pca_points[label][1]]) for label in labels]
    aligned = procrustes_align(stacked, rows=slice(0, n_d)) if stacked else []
    subjects = []
    for label, xy in zip(labels, aligned):
        run, subject = next((r, s) for r in runs for s in r.subjects if s.label == label)
        umap = np.full((len(selection.query_ids) + n_d, 2), np.nan)
        if label in umap_coords:
            both = np.asarray(umap_coords[label], dtype=np.float64)
            umap[np.asarray(umap_q, dtype=np.int64)] = both[:len(umap_q)]
            umap[len(selection.query_ids) + np.asarray(umap_d, dtype=np.int64)] = both[len(umap_q):]
        subjects.append({"label": label, "run": run.name, "step": subject.step,
                         "pca_queries": xy[n_d:], "pca_documents": xy[:n_d],
                         "umap_queries": umap[:len(selection.query_ids)],
                         "umap_documents": umap[len(selection.query_ids):]})
    return {"query_ids": selection.query_ids, "doc_ids": selection.doc_ids, "subjects": subjects}


def _umap_subjects(runs: Sequence[RunInput], max_per_run: int = 4) -> list[str]:
    """Subjects shown in the UMAP picture: each run's representative; for a single run, up to
    ``max_per_run`` checkpoints of its trajectory (first, representative, last, evenly between)."""
    if len(runs) > 1:
        return [run.representative.label for run in runs]
    run = runs[0]
    n = len(run.subjects)
    if n <= max_per_run:
        return [s.label for s in run.subjects]
    picks = set(np.linspace(0, n - 1, max_per_run - 1).round().astype(int).tolist())
    picks.add(run.representative_index % n)
    return [run.subjects[i].label for i in sorted(picks)]
