"""One refresh of the ANCE loop: encode, search, mine, evaluate, write.

With the current weights: encode the corpus and every query of the collection from the token cache (split over
the ranks of a distributed job and gathered on rank 0), search the training queries' top-K documents, mine
document negatives (and, for DANCE, query negatives from an index over the training queries), evaluate the dev
queries, and write embeddings / negatives / dev metrics into a checkpoint folder (the ANCE loop: Xiong et al.,
ANCE, ICLR 2021, asynchronous index refresh; query negatives: Li et al., DANCE, ICTIR 2021, section 3).

Search runs on the GPU the refresh encodes on (see :func:`dance_analysis.index.search`; no other GPU is touched),
on the CPU otherwise. The run's inputs are :mod:`.data`'s, the shared vectors of an initial refresh
:mod:`.embeddings_cache`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import ann, encode, metrics
from ..analysis.snapshot import refresh_geometry
from ..ann import is_exact
from ..atomic import write_json
from ..checkpoints import (  # noqa: F401  (read_refresh_record: its old home, the miner imports it here)
    DEV_METRICS_FILE,
    EMBEDDINGS_DIR,
    NEGATIVES_DIR,
    REFRESH_FILE,
    read_refresh_record,
)
from ..device import amp_dtype
from ..embeddings import Embeddings, ids_path, new_npy_memmap, vectors_path, write_npy_atomic
from ..encode import PrecisionDecision, bf16_hardware, encode_tokens
from ..errors import DanceError
from ..index import Rankings, search
from ..metrics import PRIMARY_METRIC, RANKING_MEASURES, evaluate
from ..mining import (
    MiningStats,
    NegativeSet,
    document_positive_scores,
    mine_document_negatives,
    mine_query_negatives,
    negative_grades,
    pair_scores,
    rotation_slice,
)
from ..mining import summary as negatives_summary
from .config import Recipe
from .data import (
    TrainingData,
    prepare_data,  # noqa: F401  (its old home: the miner and callers import it here)
)
from .distributed import DistContext
from .embeddings_cache import embeddings_cache_key, vectors_of_start
from .embeddings_cache import load_cached as _load_cached
from .embeddings_cache import store_cached as _store_cached
from .faults import fault_point


@dataclass
class RefreshResult:
    """What one refresh produced (negatives on every rank; the rest on rank 0)."""

    step: int
    negatives: NegativeSet
    dev_metrics: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    embeddings_from_cache: bool = False
    geometry: dict[str, float] = field(default_factory=dict)
    precision: Any = None   # the encode PrecisionDecision of the refresh
    parallel: dict[str, Any] = field(default_factory=dict)   # several processes: threads, each rank's searches

    def record(self) -> dict[str, Any]:
        """The JSON-able record of this refresh (the ``refresh.json`` file and the metrics.jsonl line)."""
        record = {"step": self.step, "dev": self.dev_metrics, "negatives": self.stats, "timings": self.timings}
        if self.parallel:
            record["parallel"] = self.parallel
        if self.precision is not None:
            record["encode_precision"] = self.precision.to_dict()
        if self.geometry:
            record["geometry"] = self.geometry
        if self.embeddings_from_cache:
            record["embeddings_from_cache"] = True
        return record

    def line(self, metric: str = PRIMARY_METRIC.name) -> str:
        """The one-line summary printed after each refresh."""
        return summary_line(self.record(), metric)


def summary_line(record: dict[str, Any], metric: str = PRIMARY_METRIC.name, extra: str = "") -> str:
    """``refresh@20: dev MRR@10 0.4123 (R@100 0.81) | 3000 doc negs (812 docs) | encode 12.1s ...``: each timed
    part of the refresh (``share`` only in a multi-process one)."""
    parts = [f"refresh@{record['step']}:"]
    dev = record.get("dev") or {}
    if dev:
        shown = [f"dev {metric} {dev[metric]:.4f}"] if metric in dev else []
        others = [f"{k} {v:.4f}" for k, v in dev.items() if k != metric and k in RANKING_MEASURES]
        parts.append(" ".join(shown) + (f" ({', '.join(others)})" if others else ""))
    else:
        parts.append("no dev split")
    neg = record.get("negatives") or {}
    text = (f"| {neg.get('doc_negatives_drawn', 0)} doc negatives drawn ({neg.get('distinct_docs', 0)} distinct "
            f"docs) for {neg.get('mined_queries', 0)}/{neg.get('queries', 0)} queries")
    if "query_negatives_drawn" in neg:
        text += f", {neg['query_negatives_drawn']} query negatives ({neg['distinct_queries']} distinct queries)"
    parts.append(text)
    t = record.get("timings") or {}
    cached = " (cached)" if record.get("embeddings_from_cache") else ""
    if (record.get("encode_precision") or {}).get("precision", "fp32") != "fp32":
        cached += f" in {record['encode_precision']['precision']}"
    share = f", share {t['share']:.1f}s" if "share" in t else ""    # a multi-process refresh sends the embeddings
    parts.append(f"| encode {t.get('encode', 0):.1f}s{cached}{share}, search {t.get('search', 0):.1f}s, "
                 f"mine {t.get('mine', 0):.1f}s, eval {t.get('eval', 0):.1f}s, geometry {t.get('geometry', 0):.1f}s")
    geometry = record.get("geometry") or {}
    if "negatives.above_positive" in geometry:
        parts.append(f"| {geometry['negatives.above_positive']:.1%} of negatives score >= their positive")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def _measures_within(k: int) -> list[str] | None:
    """The default measures whose cut-off does not exceed ``k`` (R@1000 needs 1000 results)."""
    default = list(getattr(metrics, "DEFAULT_MEASURES", []))
    if not default:
        return None
    keep = []
    for name in default:
        name_str = str(name)
        if "@" in name_str:
            try:
                if int(name_str.split("@", 1)[1]) > k:
                    continue
            except ValueError:
                pass
        keep.append(name)
    return keep


def _encode_all(model, tokens, side: str, recipe: Recipe, dist: DistContext, device, out_prefix: Path | None,
                progress: bool, precision=None) -> np.ndarray | None:
    """Encode every row of ``tokens`` in ``precision`` (a PrecisionDecision); the result (on rank 0) is written to
    ``out_prefix`` when given."""

    dtype = np.float16 if recipe.mining.embeddings_dtype == "float16" else np.float32
    n = len(tokens.ids)
    ids = np.asarray(tokens.ids).astype(str)
    if not dist.enabled:
        emb = encode_tokens(model, tokens, side, batch_size=recipe.mining.encode_batch_size, dtype=dtype,
                            out=str(out_prefix) if out_prefix is not None else None, device=device,
                            progress=progress, precision=precision)
        if not np.array_equal(np.asarray(emb.ids).astype(str), ids):
            raise DanceError(f"encoded {side} rows do not follow the token cache order")
        return emb.vectors
    start, end = dist.shard(n)
    block = encode_tokens(model, tokens, side, batch_size=recipe.mining.encode_batch_size, dtype=dtype,
                          device=device, progress=progress and dist.is_main,
                          indices=np.arange(start, end, dtype=np.int64), precision=precision).vectors
    fault_point("encode-shard", dist.rank)   # this rank has encoded its rows (the number is the rank)
    width = dist.broadcast_object(int(block.shape[1]) if dist.is_main else None)
    if block.shape[0] == 0:
        block = np.zeros((0, width), dtype=dtype)
    block = np.asarray(block, dtype=dtype)
    if not (dist.is_main and out_prefix is not None):
        return dist.gather_rows(block, n, out=np.empty((n, width), dtype=dtype) if dist.is_main else None)
    # Rank 0 gathers straight into the memory-mapped embeddings file, not into RAM (4.9 GB of float16 for MS MARCO
    # documents at 768-d).
    with new_npy_memmap(vectors_path(out_prefix), (n, width), dtype) as out:
        dist.gather_rows(block, n, out=out)
        write_npy_atomic(ids_path(out_prefix), ids)
    return Embeddings.load(out_prefix).vectors


def decide_encode_precision(model, data: TrainingData, recipe: Recipe, device=None,
                            dist: DistContext | None = None):
    """The encode precision of a run's refreshes (:func:`dance_analysis.encode.choose_precision` with
    ``mining.encode_precision``): for ``auto``, timed on the corpus' own batches and guarded by the agreement of
    the top-k documents (k = min(``mining.top_k``, 20)) of up to 256 training queries among up to 256 documents,
    bf16 against float32. Decided on rank 0 and shared with every rank."""

    dist = dist or DistContext()
    mining = recipe.mining

    def decide():
        target = torch.device(device) if device is not None else model.device
        return encode.choose_precision(model, data.doc_tokens, mining.encode_precision, device=target,
                                queries=data.query_tokens, query_rows=data.train_query_rows,
                                batch_size=mining.encode_batch_size, k=mining.top_k)

    decision = dist.on_main(decide, recipe.distributed.poll_seconds)
    return dist.broadcast_object(decision)


def kept_precision(record: dict | None, where: str, device=None):
    """The encode precision a resumed run keeps: the :class:`~dance_analysis.encode.PrecisionDecision` of
    ``record`` (what its checkpoint ``where`` recorded); without a record (a run from before the option), what
    it encoded in then: float32 on the CPU, the GPU's autocast on CUDA."""

    if record:
        return PrecisionDecision.from_dict(record, reason=f"kept from {where}")
    device = torch.device(device or "cpu")
    hardware = bf16_hardware(device)[1] if device.type in ("cpu", "cuda") else ""
    if device.type == "cuda":

        precision = "bf16" if amp_dtype(device) == torch.bfloat16 else "fp16"
        return PrecisionDecision(precision, "auto", f"kept from {where} (CUDA autocast)", "cuda", hardware)
    return PrecisionDecision("fp32", "fp32", f"kept from {where} (recorded before the option)", device.type,
                             hardware)


def run_refresh(model, data: TrainingData, recipe: Recipe, step: int, *, out_dir: Path | None,
                dist: DistContext | None = None, device=None, progress: bool = False,
                search_device: str | None = None, reuse_cache: bool = False,
                start: Path | None = None, refresh_index: int | None = None,
                precision=None) -> RefreshResult:
    """Refresh at optimizer step ``step`` with ``model``'s current weights; every rank must call it.

    Writes (rank 0, into ``out_dir`` when given) ``embeddings/``, ``negatives/``, ``dev_metrics.json`` and
    ``refresh.json``. Returns the :class:`RefreshResult` with the negatives on every rank. Mining draws from
    ``numpy.random.default_rng([seed, step])``, so a refresh is reproducible from its checkpoint.
    ``search_device`` defaults to the GPU of ``device`` when it is CUDA (never the other GPUs), else the CPU.
    ``reuse_cache`` (single process only): take the embeddings from ``<cache>/embeddings/<key>`` when an earlier
    refresh stored them for the same weights, options and token caches (:func:`embeddings_cache_key`), and store
    them there otherwise; used for the initial refresh, which runs start from the same model share. With
    ``reuse_cache``, ``start`` (the ``encoder/`` folder of the checkpoint the model was loaded from) supplies the
    vectors when :func:`vectors_of_start` finds them exact.
    ``refresh_index`` counts the refreshes of the run (0 for the first): with ``mining.fraction`` < 1 it picks the
    chunk of training queries that is mined (:func:`dance_analysis.mining.rotation_slice`), so that a miner that
    skips checkpoints still walks through every chunk, as the reference code rotates by its count of generated
    negative sets (Xiong et al., ANCE, ICLR 2021). ``None``: ``step // mining.refresh_every``.
    ``precision``: the :class:`~dance_analysis.encode.PrecisionDecision` the run encodes in (kept from its first
    refresh, or from the checkpoint it resumed); ``None`` decides it now (:func:`decide_encode_precision`). The
    result carries it and ``refresh.json`` records it.
    """
    dist = dist or DistContext()
    mining = recipe.mining
    was_training = model.training
    model.eval()
    timings: dict[str, float] = {}
    emb_dir = None
    if out_dir is not None and dist.is_main and mining.save_embeddings:
        emb_dir = Path(out_dir) / EMBEDDINGS_DIR
        emb_dir.mkdir(parents=True, exist_ok=True)
    if precision is None:
        checked = time.perf_counter()
        precision = decide_encode_precision(model, data, recipe, device, dist)
        timings["precision_check"] = time.perf_counter() - checked
    started = time.perf_counter()
    dtype = np.float16 if mining.embeddings_dtype == "float16" else np.float32
    key = None
    if reuse_cache and not dist.enabled:
        setting = f"{torch.device(device or 'cpu').type}/{mining.encode_batch_size}"
        if precision.precision != "fp32" and torch.device(device or "cpu").type == "cpu":
            setting += f"/{precision.precision}"   # float32 keys stay those of runs from before the option
        key = embeddings_cache_key(model, data, dtype, setting)
    cached = _load_cached(key, data) if key else None
    if cached is None and key:
        cached = vectors_of_start(model, data, start, dtype, precision.precision)
    if cached is not None:

        corpus, queries = cached
        if emb_dir is not None:
            Embeddings(ids=data.corpus_ids, vectors=corpus).save(emb_dir / "corpus")
            Embeddings(ids=data.query_ids, vectors=queries).save(emb_dir / "queries")
    else:
        with torch.no_grad():
            corpus = _encode_all(model, data.doc_tokens, "doc", recipe, dist, device,
                                 emb_dir / "corpus" if emb_dir else None, progress, precision)
            queries = _encode_all(model, data.query_tokens, "query", recipe, dist, device,
                                  emb_dir / "queries" if emb_dir else None, progress, precision)
        if key:
            _store_cached(key, data, corpus, queries)
    timings["encode"] = time.perf_counter() - started
    if was_training:
        model.train()

    def finish(mined: RefreshResult) -> None:
        mined.embeddings_from_cache = cached is not None
        mined.precision = precision
        if out_dir is not None:
            write_refresh(mined, Path(out_dir))

    result = search_and_mine(corpus, queries, data, recipe, step, dist=dist, timings=timings,
                             search_device=search_device or _search_device(device), refresh_index=refresh_index,
                             before_mining=lambda: fault_point("refresh", step), finish=finish)
    negatives = dist.broadcast_object(result.negatives if result is not None else None)
    if result is None:
        result = RefreshResult(step=step, negatives=negatives, precision=precision)
    return result


# Queries per search call block (dance_analysis.index.search's batch_size): a sharded search gives each rank whole
# blocks, so that every rank makes exactly the calls one process makes for those queries.
SEARCH_QUERY_BLOCK = 4096


def refresh_threads(dist: DistContext) -> dict[str, int] | None:
    """Thread counts for the CPU parts of a refresh of a multi-process job (``None`` for one process, which keeps
    the environment's): ``search``, while every rank of this machine searches at once, the machine's cores (those
    this process may run on) shared among them (``LOCAL_WORLD_SIZE``); ``rank0``, for what rank 0 does alone while
    the others wait (mining, evaluation, geometry), all of them. torchrun sets ``OMP_NUM_THREADS=1``, which would
    otherwise leave those parts on one thread."""
    if not dist.enabled:
        return None
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)))
    return {"search": max(1, cores // local), "rank0": max(1, cores)}


def _threads(count: int | None):
    """Run a block with ``count`` BLAS / OpenMP threads (threadpoolctl: numpy's BLAS, faiss' and torch's OpenMP) and
    torch intra-op threads; ``None``: as they are."""
    import contextlib

    if count is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(limits=count))
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    stack.callback(torch.set_num_threads, previous)
    return stack


def search_and_mine(corpus: np.ndarray | None, queries: np.ndarray | None, data: TrainingData, recipe: Recipe,
                    step: int, *, dist: DistContext | None = None, timings: dict[str, float] | None = None,
                    search_device: str = "cpu", refresh_index: int | None = None,
                    query_block: int = SEARCH_QUERY_BLOCK, before_mining=None, finish=None) -> RefreshResult | None:
    """Search, mine and evaluate from a refresh's embeddings (``corpus``, ``queries``: rank 0's; ``None`` on the
    others); every rank must call it. Returns the :class:`RefreshResult` on rank 0, ``None`` on the others.

    One process: the searches, mining, evaluation and geometry run here, as they always did. Several processes:
    when the searches are exact (``mining.index`` Flat) every rank receives the embeddings
    (:meth:`DistContext.broadcast_rows`) and runs its share of each search (the mined training queries against the
    corpus, for DANCE the positive documents against the training queries, the dev queries against the corpus):
    whole blocks of ``query_block`` queries (:meth:`DistContext.block_bounds`) against the whole corpus, on its own
    device, with :func:`refresh_threads` threads; the rankings are gathered on rank 0, equal bit for bit to those
    of one process (each rank makes exactly the search calls one process makes for those queries). An approximate
    document search stays on rank 0. Then rank 0 mines, evaluates and measures the geometry alone while the others
    meet it in small collectives (:meth:`DistContext.on_main`). ``before_mining`` and ``finish(result)`` run on
    rank 0 before mining and after it (the caller's fault point and writing). The result's ``parallel`` records
    the thread counts and how many queries each rank searched in how long; ``timings`` the seconds of each part
    (``share``: sending the embeddings; ``search``: every search, the dev one included, when sharded).
    """

    dist = dist or DistContext()
    timings = {} if timings is None else timings
    rankings: dict[str, Any] = {}
    parallel: dict[str, Any] = {}
    threads = refresh_threads(dist)
    if dist.enabled and is_exact(recipe.mining.index):
        t0 = time.perf_counter()
        shapes = dist.broadcast_object((corpus.shape, queries.shape, corpus.dtype.str, queries.dtype.str)
                                       if dist.is_main else None)
        corpus = dist.broadcast_rows(corpus, shapes[0], np.dtype(shapes[2]))
        queries = dist.broadcast_rows(queries, shapes[1], np.dtype(shapes[3]))
        timings["share"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with _threads(threads["search"]):
            rankings, ranks = _sharded_searches(corpus, queries, data, recipe, step, refresh_index, search,
                                                search_device, dist, query_block)
        timings["search"] = time.perf_counter() - t0
        parallel = {"threads": threads, "search_ranks": ranks}
    elif threads is not None:
        parallel = {"threads": threads}

    def work() -> RefreshResult:
        with _threads(threads["rank0"] if threads is not None else None):
            if before_mining is not None:
                before_mining()
            # As encoded (float16 or float32, a memory map when written to out_dir): the searches upcast one block
            # at a time, so no float32 copy of the corpus is made (9.9 GB for MS MARCO documents at 768-d).
            mined = _mine_and_evaluate(corpus, queries, data, recipe, step, timings, search, search_device,
                                       refresh_index, rankings=rankings, query_block=query_block)
        mined.parallel = parallel
        if finish is not None:
            finish(mined)
        return mined

    # The other ranks meet rank 0 in small collectives while it works alone (no collective waits for it).
    return dist.on_main(work, recipe.distributed.poll_seconds)


def _search_device(device) -> str:
    """The search device of a refresh that encodes on ``device``: that very GPU (``cuda:<index>``), or the CPU.

    Never every GPU: at a sync refresh of a multi-process run the other ranks keep their training memory on their
    GPUs, and the async miner has a GPU of its own; a search touches only the GPU it is given."""
    if device is None:
        return "cpu"
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _doc_search(search, mining):
    """The search that mines document negatives: ``search`` (exact) when ``mining.index`` is ``Flat``, else
    :func:`dance_analysis.ann.ann_search` with that faiss index and ``mining.index_params`` (CPU)."""

    if is_exact(mining.index):
        return search

    def approximate(queries, corpus, k, *, query_ids, doc_ids, device):
        return ann.ann_search(queries, corpus, k, index=mining.index, params=mining.index_params,
                          query_ids=query_ids, doc_ids=doc_ids)

    return approximate


def _search_plan(corpus: np.ndarray, queries: np.ndarray, data: TrainingData, recipe: Recipe, step: int,
                 refresh_index: int | None) -> dict[str, tuple]:
    """The searches of a refresh, ``name -> (query vectors, corpus vectors, k, query ids, doc ids)``: ``doc`` (the
    chunk of training queries mined at this refresh against the corpus), ``query`` (DANCE: the positive documents
    of that chunk against the training queries) and ``dev`` (the dev queries against the corpus), each when it
    has queries."""
    mining = recipe.mining
    nq, ndocs = len(data.train_qids), data.num_docs
    if refresh_index is None:
        refresh_index = step // mining.refresh_every
    mined_rows = rotation_slice(nq, mining.fraction, refresh_index, recipe.optim.seed)
    train_vectors = queries[data.train_query_rows]
    plan = {"doc": (train_vectors[mined_rows], corpus, min(mining.top_k, ndocs), data.train_qids[mined_rows],
                    data.corpus_ids)}
    if recipe.loss.objective == "dance":
        slice_pairs = data.pairs[np.isin(data.pairs[:, 0], mined_rows)]
        if len(slice_pairs):
            query_top_k = mining.top_k if mining.query_top_k is None else mining.query_top_k
            anchors = np.unique(slice_pairs[:, 1])
            plan["query"] = (corpus[anchors], train_vectors, min(query_top_k, nq), data.corpus_ids[anchors],
                             data.train_qids)
    if len(data.dev_qids):
        plan["dev"] = (queries[data.dev_query_rows], corpus, min(mining.dev_k, ndocs), data.dev_qids,
                       data.corpus_ids)
    return plan


def _sharded_searches(corpus: np.ndarray, queries: np.ndarray, data: TrainingData, recipe: Recipe, step: int,
                      refresh_index: int | None, search, search_device: str, dist: DistContext,
                      query_block: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every exact search of :func:`_search_plan`, each rank its whole blocks of queries (every rank calls it);
    returns the rankings on rank 0 (``{}`` elsewhere) and, per rank, how many queries it searched in how long."""
    out: dict[str, Any] = {}
    searched, seconds = 0, 0.0
    for name, (vectors, against, k, query_ids, doc_ids) in _search_plan(corpus, queries, data, recipe, step,
                                                                        refresh_index).items():
        bounds = dist.block_bounds(len(vectors), query_block)
        start, end = int(bounds[dist.rank]), int(bounds[dist.rank + 1])
        t0 = time.perf_counter()
        if end > start:
            part = search(vectors[start:end], against, k, query_ids=query_ids[start:end], doc_ids=doc_ids,
                          device=search_device, batch_size=query_block)
            indices, scores = part.indices, part.scores
        else:
            indices, scores = np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        seconds += time.perf_counter() - t0
        searched += end - start
        indices = dist.gather_rows(np.ascontiguousarray(indices, dtype=np.int64), len(vectors), bounds=bounds)
        scores = dist.gather_rows(np.ascontiguousarray(scores, dtype=np.float32), len(vectors), bounds=bounds)
        if dist.is_main:
            out[name] = Rankings(query_ids, doc_ids, indices, scores)
    ranks = dist.all_gather_objects({"rank": dist.rank, "queries": searched, "seconds": round(seconds, 3)})
    return out, ranks


def _mine_and_evaluate(corpus: np.ndarray, queries: np.ndarray, data: TrainingData, recipe: Recipe, step: int,
                       timings: dict[str, float], search, search_device: str,
                       refresh_index: int | None = None, rankings: dict[str, Any] | None = None,
                       query_block: int = SEARCH_QUERY_BLOCK) -> RefreshResult:
    """Mine and evaluate on rank 0; the searches of :func:`_search_plan` not in ``rankings`` (already searched,
    sharded over the ranks) run here."""
    mining = recipe.mining
    objective = recipe.loss.objective
    seed = recipe.optim.seed
    nq, n = len(data.train_qids), mining.n
    if refresh_index is None:
        refresh_index = step // mining.refresh_every
    mined_rows = rotation_slice(nq, mining.fraction, refresh_index, seed)
    train_vectors = queries[data.train_query_rows]
    rng = np.random.default_rng([seed, step])
    rankings = rankings or {}
    plan: dict[str, tuple] = {}

    def ranked(name: str, how=search):
        if name in rankings:
            return rankings[name]
        if not plan:
            plan.update(_search_plan(corpus, queries, data, recipe, step, refresh_index))
        vectors, against, k, query_ids, doc_ids = plan[name]
        kwargs = {"batch_size": query_block} if how is search else {}
        t0 = time.perf_counter()
        found = how(vectors, against, k, query_ids=query_ids, doc_ids=doc_ids, device=search_device, **kwargs)
        timings["search"] = timings.get("search", 0.0) + time.perf_counter() - t0
        return found

    doc_rankings = ranked("doc", _doc_search(search, mining))
    t0 = time.perf_counter()
    doc_rules = mining.rules("doc")
    doc_stats = MiningStats()
    positive_scores = None
    if doc_rules.needs_positive_scores:
        chunk_pairs = data.pairs[np.isin(data.pairs[:, 0], mined_rows)]
        positive_scores = document_positive_scores(train_vectors, corpus, chunk_pairs, nq)[mined_rows]
    mined_negatives, doc_counts = mine_document_negatives(doc_rankings, data.exclude, n, rng, mining.top_k,
                                                          min_grade=data.exclude_grade, rules=doc_rules,
                                                          positive_scores=positive_scores, stats=doc_stats)
    doc_negatives = np.full((nq, n), -1, dtype=np.int64)
    doc_negatives[mined_rows] = mined_negatives
    timings["mine"] = time.perf_counter() - t0

    query_negatives = None
    query_counts = np.zeros(nq, dtype=np.int64)
    query_top_k = mining.top_k if mining.query_top_k is None else mining.query_top_k
    query_stats = MiningStats()
    if objective == "dance":
        query_negatives = np.full((len(data.pairs), n), -1, dtype=np.int64)
        in_slice = np.isin(data.pairs[:, 0], mined_rows)
        slice_pairs = data.pairs[in_slice]
        if len(slice_pairs):
            query_rankings = ranked("query")
            t0 = time.perf_counter()
            query_rules = mining.rules("query")
            pair_pos = (pair_scores(train_vectors, corpus, slice_pairs) if query_rules.needs_positive_scores
                        else None)
            mined_q, query_counts = mine_query_negatives(query_rankings, slice_pairs, data.exclude, n, rng,
                                                         query_top_k, corpus_ids=data.corpus_ids,
                                                         min_grade=data.exclude_grade, rules=query_rules,
                                                         positive_scores=pair_pos, stats=query_stats)
            query_negatives[in_slice] = mined_q
            timings["mine"] += time.perf_counter() - t0

    meta = {"step": int(step), "top_k": int(mining.top_k), "query_top_k": int(query_top_k), "n": int(n),
            "seed": int(seed), "objective": objective, "refresh_index": int(refresh_index),
            "fraction": float(mining.fraction)}
    if not doc_rules.is_default:
        meta["rules"] = doc_rules.to_dict()
    if data.exclude_grade != 1:
        meta["exclude_grade"] = int(data.exclude_grade)
    negatives = NegativeSet(
        meta=meta,
        corpus_ids=data.corpus_ids, train_query_ids=data.train_qids, doc_negatives=doc_negatives,
        pairs=data.pairs, query_negatives=query_negatives, doc_counts=doc_counts, query_counts=query_counts)

    dev_metrics = None
    t0 = time.perf_counter()
    if len(data.dev_qids):
        dev_rankings = ranked("dev")
        measures = _measures_within(mining.dev_k)
        kwargs = {"measures": measures} if measures is not None else {}
        dev_metrics = {k: float(v) for k, v in evaluate(dev_rankings, data.collection.qrels,
                                                        min_relevance=data.collection.min_relevance,
                                                        query_ids=list(data.dev_qids), **kwargs).items()}
    timings["eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The space as it moves (training and dev queries only: the test queries of a split never inform training).
    seen = np.concatenate([data.train_query_rows, data.dev_query_rows])
    grades = negative_grades(doc_negatives, data.train_qids, data.corpus_ids, data.exclude)
    geometry = refresh_geometry(queries[seen], corpus, train_rows=np.arange(len(data.train_query_rows)),
                                pairs=data.pairs, doc_negatives=doc_negatives, seed=seed,
                                negative_grades=grades, min_relevance=data.collection.min_relevance)
    timings["geometry"] = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in timings.items()}
    stats = negatives_summary(negatives)
    stats.update(_rule_counts(doc_stats, "candidates."))
    if objective == "dance":
        stats.update(_rule_counts(query_stats, "query_candidates."))
    return RefreshResult(step=step, negatives=negatives, dev_metrics=dev_metrics, timings=timings,
                         stats=stats, geometry=geometry)


def _rule_counts(stats: MiningStats, prefix: str) -> dict[str, int]:
    """The candidates of a refresh and what each rule in effect skipped (``<prefix>total``,
    ``<prefix>skipped.<rule>``, ``<prefix>short``)."""
    out = {f"{prefix}total": stats.candidates, f"{prefix}eligible": stats.eligible,
           f"{prefix}short": stats.rows_short}
    out.update({f"{prefix}skipped.{rule}": count for rule, count in stats.skipped.items() if count})
    return out


def next_refresh_index(negatives) -> int:
    """The count of the refresh after the one that mined ``negatives`` (a NegativeSet or its meta dict): its
    ``refresh_index`` + 1; 0 when there is none (``None``, or a meta without a count)."""
    if negatives is None:
        return 0
    meta = negatives if isinstance(negatives, dict) else negatives.meta
    value = meta.get("refresh_index")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value + 1
    return 0


def write_refresh(result: RefreshResult, out_dir: Path) -> None:
    """Write the negatives, dev metrics and the refresh record into ``out_dir`` (embeddings are already there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.negatives.save(out_dir / NEGATIVES_DIR)
    if result.dev_metrics is not None:
        write_json(out_dir / DEV_METRICS_FILE, result.dev_metrics)
    write_json(out_dir / REFRESH_FILE, result.record())


