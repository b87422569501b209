"""Training recipes: typed dataclasses read from YAML, with ``--set section.key=value`` overrides.

A recipe has eight sections (every key optional, defaults below)::

    name: demo-dance
    model:      {backbone, select, pooling, head, normalize, doc_layernorm, temperature, shared,
                 query_max_length, doc_max_length, lowercase, query_prompt, document_prompt, tokenizer,
                 gradient_checkpointing, head_init}
    data:       {collection, min_relevance, train_split, dev_split, max_train_queries, max_dev_queries, doc_text,
                 cache_dir, folds, fold, fold_seed}
    loss:       {objective, w_q2d, w_d2q, in_batch, w_align, w_uniform, uniform_t}
    optim:      {optimizer, lr, weight_decay, beta1, beta2, eps, warmup_steps, decay_steps, max_steps, batch_size,
                 grad_accum, grad_clip, precision, seed, device, deterministic}
    mining:     {refresh_every, mode, top_k, query_top_k, n, fraction, final_refresh, encode_batch_size,
                 encode_precision, device, embeddings_dtype, save_embeddings, dev_k, poll_seconds, index,
                 index_params, range_min, range_max, rank_window, absolute_margin, relative_margin, max_score,
                 sampling, exclude_grade}
    checkpoint: {keep_last, keep_best, best_metric}
    log:        {every, report_to, tensorboard, progress}
    distributed: {timeout_minutes, poll_seconds}

An unknown key or a value of the wrong type stops loading with a :class:`~dance_analysis.errors.DanceError` that
names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..ann import check_index_spec
from ..errors import DanceError
from ..metrics import PRIMARY_METRIC
from ..mining import CandidateRules


def _choices(*values: str) -> dict:
    return {"choices": values}


#: What ``log.report_to`` may name.
TRACKERS = ("tensorboard", "wandb", "none")


@dataclass
class ModelConfig:
    """The encoder to start from, and overrides of its :class:`~dance_analysis.model.EncoderConfig`.

    ``backbone`` is anything ``DualEncoder.load`` accepts (``minilm``, a model folder, a hub name, a released ANCE
    checkpoint), a ``checkpoint-<step>`` folder, or a run directory of an earlier training (then ``select`` picks
    its ``best`` or ``last`` checkpoint). A ``None`` override keeps the backbone's own setting. ``head_init``
    initialises a head that the backbone does not have yet: ``normal`` (ANCE/BERT's N(0, 0.02^2)) or ``identity``
    (the Linear starts as the identity, so training starts at the backbone's own vectors).
    """

    backbone: str = field(default="minilm", metadata={"help": "the starting encoder: an alias (minilm), a model "
                                                              "folder, a hub name, a released ANCE checkpoint, a "
                                                              "checkpoint-<step> folder or a run directory"})
    select: str = field(default="best", metadata={"help": "which checkpoint of a run directory given as backbone: "
                                                          "best by checkpoint.best_metric, last, or step-<N> (the "
                                                          "checkpoint of step N: a branch point fixed in advance)"})
    pooling: str | None = field(default=None, metadata={"help": "pooling of the token vectors: cls (first token) or "
                                                                "mean; null keeps the backbone's",
                                                        **_choices("cls", "mean")})
    head: str | None = field(default=None, metadata={"help": "head on the pooled vector: none, linear, or "
                                                             "linear+layernorm (ANCE); null keeps the backbone's",
                                                     **_choices("none", "linear", "linear+layernorm")})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise the output vectors (DANCE's "
                                                                   "representation normalisation); null keeps the "
                                                                   "backbone's"})
    doc_layernorm: bool | None = field(default=None, metadata={"help": "false: the document side skips the head's "
                                                                       "LayerNorm (the DANCE reference code with "
                                                                       "normalize); null keeps the backbone's"})
    temperature: float | None = field(default=None, metadata={"help": "scores are (q . d) / temperature in the "
                                                                      "losses (DANCE: 0.01 with normalize); null "
                                                                      "keeps the backbone's"})
    shared: bool | None = field(default=None, metadata={"help": "one tower for queries and documents (true) or two "
                                                                "towers (false); null keeps the backbone's"})
    query_max_length: int | None = field(default=None, metadata={"help": "tokens per query (the paper: 64); null "
                                                                         "keeps the backbone's"})
    doc_max_length: int | None = field(default=None, metadata={"help": "tokens per document, FirstP (the paper: "
                                                                       "512); null keeps the backbone's"})
    lowercase: bool | None = field(default=None, metadata={"help": "lower-case texts before the tokenizer (the "
                                                                   "released ANCE checkpoints were trained on "
                                                                   "lower-cased text); null keeps the backbone's"})
    query_prompt: str | None = field(default=None, metadata={"help": "text put before every query before "
                                                                      "tokenisation (e.g. 'query: '), in training, "
                                                                      "encoding and the export; null keeps the "
                                                                      "backbone's (none for most)"})
    document_prompt: str | None = field(default=None, metadata={"help": "text put before every document (e.g. "
                                                                         "'passage: '); null keeps the backbone's"})
    tokenizer: str | None = field(default=None, metadata={"help": "the tokenizer's folder or hub name when it is not "
                                                                  "in the backbone's folder; null: the backbone's"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward "
                                                                          "pass (less GPU memory, ~30% slower "
                                                                          "steps)"})
    head_init: str = field(default="normal", metadata={"help": "how a new head's Linear starts: normal (ANCE/BERT's "
                                                               "N(0, 0.02^2)) or identity (training starts at the "
                                                               "backbone's own vectors)",
                                                       **_choices("normal", "identity")})

    def overrides(self) -> dict[str, Any]:
        """The ``EncoderConfig`` fields this recipe sets (those that are not ``None``)."""
        names = ("pooling", "head", "normalize", "doc_layernorm", "temperature", "shared", "query_max_length",
                 "doc_max_length", "lowercase", "query_prompt", "document_prompt")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class DataConfig:
    """The collection and its query splits.

    ``collection`` is a spec for ``load_collection`` (``rag24-sample``, ``irds:<id>``, a BEIR folder, a YAML
    manifest path, or the manifest itself as a mapping). ``max_train_queries`` / ``max_dev_queries`` keep a seeded
    random subset of the split (``None``: all of it).

    ``folds`` (``None``: off) replaces the collection's splits by ``folds``-fold cross-validation over all of its
    queries (:func:`~dance_analysis.data.splits.cross_validation_splits`, shuffled with ``fold_seed``): fold
    ``fold`` is ``test``, the next one ``dev``, the others ``train``; ``train_split`` / ``dev_split`` then name
    those parts.
    """

    collection: str | dict = field(default="rag24-sample", metadata={"help": "the collection: rag24-sample, "
                                                                             "irds:<id>, a BEIR folder, a YAML "
                                                                             "manifest path, or a manifest mapping"})
    min_relevance: int | None = field(default=None, metadata={"help": "the grade that counts as relevant; null: the "
                                                                      "collection's (2 for rag24-sample, else 1)"})
    train_split: str = field(default="train", metadata={"help": "query split to train on"})
    dev_split: str | None = field(default="dev", metadata={"help": "query split evaluated at every refresh "
                                                                   "(checkpoint selection); null: none"})
    max_train_queries: int | None = field(default=None, metadata={"help": "keep a seeded random subset of this many "
                                                                          "training queries; null: all"})
    max_dev_queries: int | None = field(default=None, metadata={"help": "keep a seeded random subset of this many "
                                                                        "dev queries; null: all"})
    doc_text: str | None = field(default=None, metadata={"help": "document text of an msmarco-doc manifest: "
                                                                 "title-body (FirstP) or url-title-body (the "
                                                                 "reference code: url <sep> title <sep> body with "
                                                                 "the tokenizer's separator); null: the manifest's",
                                                         **_choices("title-body", "url-title-body")})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the token caches; null: <cache "
                                                                  "root>/tokens ($DANCE_CACHE or the user cache)"})
    folds: int | None = field(default=None, metadata={"help": "k-fold cross-validation over all queries (fold = test, "
                                                              "next fold = dev, the rest = train); null: the "
                                                              "collection's own splits"})
    fold: int = field(default=0, metadata={"help": "which fold is the test part (0 .. folds - 1)"})
    fold_seed: int = field(default=13, metadata={"help": "seed of the query shuffle that makes the folds"})


@dataclass
class LossConfig:
    """The objective: ``ance`` = w_q2d * L_q2d; ``dance`` = w_q2d * L_q2d + w_d2q * L_d2q (Li et al., DANCE,
    ICTIR 2021, section 3); built into :class:`~dance_analysis.losses.DanceObjective`."""

    objective: str = field(default="ance", metadata={"help": "ance: the document-retrieval loss only; dance: adds "
                                                             "the dual query-retrieval loss",
                                                     **_choices("ance", "dance")})
    w_q2d: float = field(default=1.0, metadata={"help": "weight of the document-retrieval loss L_q2d (q -> d)"})
    w_d2q: float = field(default=0.1, metadata={"help": "weight of the dual query-retrieval loss L_d2q (d -> q; "
                                                        "objective dance only; the paper: 0.1)"})
    in_batch: bool = field(default=False, metadata={"help": "also use the other instances of the batch as negatives "
                                                            "(in a multi-process run: of the global batch, gathered "
                                                            "from every rank)"})
    w_align: float = field(default=0.0, metadata={"help": "weight of the alignment regulariser on (q, d+) pairs "
                                                          "(Wang & Isola; 0: off)"})
    w_uniform: float = field(default=0.0, metadata={"help": "weight of the uniformity regulariser on queries and "
                                                            "documents (Wang & Isola; 0: off)"})
    uniform_t: float = field(default=2.0, metadata={"help": "t of the uniformity regulariser, log mean exp(-t ||x_i "
                                                            "- x_j||^2) (the DANCE code: 5)"})


@dataclass
class OptimConfig:
    """Optimisation: AdamW or LAMB (:mod:`dance_analysis.training.optim`) with a linear warm-up, then a linear
    decay to 0 at ``decay_steps`` (``None``: ``max_steps``).

    ``batch_size`` counts training instances (q, d+, d-, q-) per optimizer step over all processes and
    accumulation steps; each process runs ``batch_size / (world_size * grad_accum)`` per micro-batch.
    ``precision`` ``auto`` is the GPU's autocast on CUDA (bf16 where supported: Ampere and newer such as A100 and
    H100; else fp16 with a gradient scaler); on a CPU with native bf16, bf16 autocast when a timing of the first
    step shows a gain, else fp32 (:mod:`dance_analysis.training.precision`). ``fp32`` is honoured by the refreshes
    too: a recipe with ``precision: fp32`` that does not set ``mining.encode_precision`` gets ``fp32`` there when
    it is read (:func:`recipe_from_dict`; so ``config.yaml``, ``--print-config`` and the async miner see it).
    ``grad_clip`` 0 turns clipping off.
    """

    optimizer: str = field(default="adamw", metadata={"help": "the optimiser: adamw, or lamb (the reference runs' "
                                                              "LAMB: trust ratio with the weight norm clamped at "
                                                              "10); biases and 1-d parameters without weight decay",
                                                      **_choices("adamw", "lamb")})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (AdamW: decoupled; LAMB: added to the "
                                                               "step before the trust ratio)"})
    beta1: float = field(default=0.9, metadata={"help": "beta1 of AdamW / LAMB"})
    beta2: float = field(default=0.999, metadata={"help": "beta2 of AdamW / LAMB"})
    eps: float = field(default=1e-8, metadata={"help": "epsilon of AdamW / LAMB"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0 at "
                                                           "decay_steps"})
    decay_steps: int | None = field(default=None, metadata={"help": "the step at which the linear decay reaches 0; "
                                                                    "far beyond max_steps keeps the rate almost "
                                                                    "constant after the warm-up (the reference "
                                                                    "runs: 1,000,000); null: max_steps"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train"})
    batch_size: int = field(default=32, metadata={"help": "training instances (q, d+, d-, q-) per optimizer step "
                                                          "over all processes and accumulation steps"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (batch_size must be a "
                                                         "multiple)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this value; 0: no clipping"})
    precision: str = field(default="auto", metadata={"help": "autocast precision of the training step: fp32, bf16, "
                                                             "fp16 (CUDA only, with a gradient scaler), or auto: on "
                                                             "CUDA bf16 where the GPU supports it (Ampere and newer, "
                                                             "e.g. A100, H100), else fp16 with a gradient scaler; on "
                                                             "a CPU with native bf16, bf16 when a timing of the "
                                                             "first step shows a gain, else fp32. fp32 also makes "
                                                             "the refreshes encode in fp32 unless the recipe sets "
                                                             "mining.encode_precision. What it resolves to: "
                                                             "--print-config and the run log; kept on resume",
                                                     **_choices("auto", "fp32", "fp16", "bf16")})
    seed: int = field(default=42, metadata={"help": "seed of the initial head, the instance order, mining and "
                                                    "dropout"})
    device: str = field(default="auto", metadata={"help": "training device: auto (CUDA when present), cpu or "
                                                          "cuda[:N]"})
    deterministic: bool = field(default=True, metadata={"help": "deterministic CUDA kernels (slower, reproducible)"})


@dataclass
class MiningConfig:
    """Negatives from the ANN index, refreshed every ``refresh_every`` optimizer steps (Xiong et al., ANCE, ICLR
    2021, asynchronous index refresh; query negatives: Li et al., DANCE, ICTIR 2021, section 3).

    ``mode`` ``sync`` pauses training for the refresh; ``async`` runs it in a separate miner process that watches
    for new checkpoints (on ``device``; ``auto`` = the first GPU that no training process uses, see
    :func:`dance_analysis.training.async_refresh.place_miner`) while training goes on with the previous negatives.
    ``fraction`` < 1 mines for a rotating share of the training
    queries per refresh (the reference code's chunk factor). ``final_refresh`` also refreshes at the last step
    when it is not a multiple of ``refresh_every``, so the final checkpoint carries embeddings and dev metrics.
    ``max_staleness`` (async only; ``None``: never wait, as ANCE) makes the trainer wait for the miner when the
    negatives in use were mined that many steps ago or more and a newer checkpoint has been handed to the miner.
    ``dev_k`` documents are retrieved per dev query for the dev metrics; ``poll_seconds`` is how often the async
    miner looks for new checkpoints. ``cache_initial_embeddings`` keeps the embeddings of the initial refresh in
    the cache folder, keyed on the starting weights and token caches, so that runs starting from the same model
    (e.g. the ANCE and DANCE demos) encode the collection once.
    ``index`` is the search that mines the document negatives: ``Flat`` (the default, what the paper uses) is
    exact inner-product search; any other faiss ``index_factory`` description (``IVF1024,Flat``, ``HNSW32``,
    ``IVF1024,PQ48``, ...) mines from an approximate index built at every refresh, faster on large corpora at
    some loss of recall (see :mod:`dance_analysis.ann`). ``index_params`` are its search-time parameters
    (``nprobe=32``, ``efSearch=128``; empty keeps faiss' defaults, nprobe=1 / efSearch=16, which give low recall).
    Only the document-side mining search uses it: the DANCE query-side search over the training queries and the
    dev evaluation stay exact. ``query_top_k`` (``None``: ``top_k``) is the number of candidate queries each
    positive document retrieves for the DANCE query negatives; keep it well below the number of training queries,
    or every query is a candidate of every document (the paper: 200 of about 367,000).

    Which candidates may be drawn (:class:`~dance_analysis.mining.CandidateRules`, where each rule is defined):
    ``range_min`` / ``range_max`` (a rank window; ``rank_window`` says whether it counts retrieved positions, as
    FlagEmbedding, or the candidates left after the positives and the score rules, as sentence-transformers),
    ``absolute_margin`` / ``relative_margin`` (skip a candidate scoring above pos - margin, or
    pos - |pos| * margin), ``max_score``, and ``sampling`` (``random``: the paper; ``top``: the first ``n``).
    The defaults are the paper's: the top ``top_k`` minus the judged positives, ``n`` drawn at random.
    One set of keys serves both sides. The query side (DANCE) scores a candidate query q- by s(q-, d+) against
    the pair's own s(q, d+): the same inner product and the same meaning of "too close to the positive" (a query
    to which d+ may be relevant), so a recipe states its false-negative policy once, as the paper uses the same
    top-200 / 20 on both sides. Only the depth differs, because the query side searches a far smaller pool (the
    training queries): ``query_top_k``, and ``range_max`` is cut to it there. ``exclude_grade`` (``None``: 1)
    is the lowest judged grade never drawn as a negative: the default keeps every positively judged document
    out; set it to the relevance threshold (2 on rag24-sample) to keep only the relevant ones out, and the
    refresh diagnostics show how often partly relevant documents are then drawn (``negatives.partly_relevant``).
    """

    refresh_every: int = field(default=1000, metadata={"help": "refresh the negatives (and write a checkpoint) "
                                                               "every this many optimizer steps"})
    mode: str = field(default="sync", metadata={"help": "sync: training pauses for each refresh; async: a separate "
                                                        "miner process refreshes while training goes on",
                                                **_choices("sync", "async")})
    top_k: int = field(default=200, metadata={"help": "candidates retrieved per query (and per positive document "
                                                      "for query negatives) to draw negatives from"})
    query_top_k: int | None = field(default=None, metadata={"help": "candidate queries each positive document "
                                                                    "retrieves for the DANCE query negatives; keep "
                                                                    "it well below the training queries; null: "
                                                                    "top_k"})
    n: int = field(default=20, metadata={"help": "negatives drawn at random from the candidates per training line"})
    fraction: float = field(default=1.0, metadata={"help": "share of the training queries mined per refresh, "
                                                           "rotating (the reference code's chunk factor)"})
    final_refresh: bool = field(default=True, metadata={"help": "also refresh at the last step when it is not a "
                                                                "multiple of refresh_every"})
    encode_batch_size: int = field(default=64, metadata={"help": "batch size of the corpus and query encoding at a "
                                                                 "refresh"})
    encode_precision: str = field(default="auto", metadata={"help": "precision of the refresh encoding: fp32; bf16 "
                                                                    "(autocast); bf16-weights (a bf16 copy of the "
                                                                    "model); auto: where the hardware has native "
                                                                    "bf16, the fastest of the two that a timing at "
                                                                    "the first refresh finds faster and whose "
                                                                    "top-20 neighbours of a probe agree with fp32 "
                                                                    "(>= 0.99), else fp32 (CUDA: its autocast, "
                                                                    "bf16 where supported, else fp16); left out of "
                                                                    "a recipe whose optim.precision is fp32: fp32; "
                                                                    "vectors are float32; kept on resume",
                                                            **_choices("auto", "fp32", "bf16", "bf16-weights")})
    device: str = field(default="auto", metadata={"help": "the async miner's device: auto is the first GPU that no "
                                                          "training process uses (an error when all of several "
                                                          "train), cpu, or cuda:N"})
    embeddings_dtype: str = field(default="float32", metadata={"help": "dtype of the embeddings saved in "
                                                                       "checkpoints",
                                                               **_choices("float32", "float16")})
    save_embeddings: bool = field(default=True, metadata={"help": "keep each refresh's corpus and query embeddings "
                                                                  "in its checkpoint (for analysis)"})
    dev_k: int = field(default=100, metadata={"help": "documents retrieved per dev query for the dev metrics (at "
                                                      "least 10)"})
    poll_seconds: float = field(default=1.0, metadata={"help": "how often the async miner looks for new checkpoints"})
    max_staleness: int | None = field(default=None, metadata={"help": "async: wait for the miner when the negatives "
                                                                      "in use are this many steps old; null: never "
                                                                      "wait (ANCE)"})
    cache_initial_embeddings: bool = field(default=False, metadata={"help": "keep the initial refresh's embeddings "
                                                                            "in the cache, so runs from the same "
                                                                            "model encode the collection once"})
    index: str = field(default="Flat", metadata={"help": "faiss index_factory description of the document-mining "
                                                         "search; Flat: exact (the paper)"})
    index_params: str = field(default="", metadata={"help": "search-time parameters of index, e.g. nprobe=32 or "
                                                            "efSearch=128; empty: faiss' defaults"})
    range_min: int = field(default=0, metadata={"help": "first rank (0-based) of the window negatives are drawn "
                                                    "from; FlagEmbedding's --range_for_sampling 2-200 is range_min 2, "
                                                    "range_max 200"})
    range_max: int | None = field(default=None, metadata={"help": "end (exclusive) of the rank window, at most "
                                                                  "top_k; null: top_k (query side: query_top_k)"})
    rank_window: str = field(default="retrieved", metadata={"help": "what range_min / range_max count: retrieved "
                                                                    "positions (positives and skipped included, "
                                                                    "as FlagEmbedding), or candidates left after "
                                                                    "the positives and the score rules (as "
                                                                    "sentence-transformers)",
                                                            **_choices("retrieved", "candidates")})
    absolute_margin: float | None = field(default=None, metadata={"help": "skip a candidate scoring above pos - "
                                                                          "absolute_margin (pos: the positive's "
                                                                          "score); null: off"})
    relative_margin: float | None = field(default=None, metadata={"help": "skip a candidate scoring above pos - "
                                                                          "|pos| * relative_margin (pos * (1 - m) "
                                                                          "for pos >= 0); null: off"})
    max_score: float | None = field(default=None, metadata={"help": "skip a candidate scoring above this; null: "
                                                                    "off"})
    sampling: str = field(default="random", metadata={"help": "random: n drawn uniformly from the candidates left "
                                                              "(the paper); top: the first n in rank order",
                                                      **_choices("random", "top")})
    exclude_grade: int | None = field(default=None, metadata={"help": "judged documents with at least this grade "
                                                                      "are never negatives; null: 1 (every "
                                                                      "positive judgement); the relevance "
                                                                      "threshold keeps only relevant ones out"})

    def rules(self, side: str = "doc") -> Any:
        """The :class:`~dance_analysis.mining.CandidateRules` of ``side`` (``doc`` or ``query``: its
        ``range_max`` is cut to ``query_top_k``)."""

        range_max = self.range_max
        if side == "query":
            depth = self.top_k if self.query_top_k is None else self.query_top_k
            if self.range_min >= depth:
                raise DanceError(f"recipe: mining.range_min ({self.range_min}) leaves no query candidate: "
                                 f"mining.query_top_k is {depth}")
            range_max = None if range_max is None else min(range_max, depth)
        return CandidateRules(range_min=self.range_min, range_max=range_max, rank_window=self.rank_window,
                              absolute_margin=self.absolute_margin, relative_margin=self.relative_margin,
                              max_score=self.max_score, sampling=self.sampling)


@dataclass
class CheckpointConfig:
    """Which checkpoints to keep: the last ``keep_last`` (``None``: all) plus the best by ``best_metric``."""

    keep_last: int | None = field(default=None, metadata={"help": "keep the last this many checkpoints (plus the "
                                                                  "best); null: keep all"})
    keep_best: bool = field(default=True, metadata={"help": "never delete the checkpoint with the best dev "
                                                            "best_metric"})
    best_metric: str = field(default=PRIMARY_METRIC.name, metadata={"help": "dev metric that picks the best "
                                                                            "checkpoint"})


@dataclass
class LogConfig:
    """Feedback: a JSONL line every ``every`` steps, the trackers of ``report_to`` (TensorBoard events, a Weights &
    Biases run), a progress bar (``None``: when a TTY). Every tracker gets the run's name and the resolved recipe as
    its config (:mod:`dance_analysis.training.trackers`)."""

    every: int = field(default=1, metadata={"help": "write a metrics.jsonl line every this many steps"})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"],
                                 metadata={"help": "trackers that get the metrics, the run name and the resolved "
                                                   "recipe: tensorboard (<run>/tensorboard), wandb (the optional "
                                                   "extra dance-analysis[wandb]; WANDB_MODE=offline keeps it on "
                                                   "disk, WANDB_PROJECT names the project), or none",
                                           **_choices(*TRACKERS)})
    tensorboard: bool = field(default=True, metadata={"help": "false leaves TensorBoard out whatever report_to "
                                                              "says (older recipes)"})
    progress: bool | None = field(default=None, metadata={"help": "show a progress bar; null: when stderr is a "
                                                                  "terminal"})


@dataclass
class DistributedConfig:
    """The process group of a multi-process run (``torchrun``).

    ``timeout_minutes`` is the process-group timeout: a collective that waits longer than this fails. No rank
    waits in a collective for work that can take longer (the async miner, the search and mining of a refresh on
    rank 0, a checkpoint write): meanwhile every rank meets in a small collective at least every ``poll_seconds``
    (:meth:`dance_analysis.training.distributed.DistContext.poll_until`), so the timeout only has to exceed
    ``poll_seconds`` and one balanced step (a training step, or encoding one rank's share at a refresh).
    """

    timeout_minutes: float = field(default=60.0, metadata={"help": "process-group timeout in minutes: a "
                                                                   "collective that waits longer fails"})
    poll_seconds: float = field(default=2.0, metadata={"help": "while rank 0 works or waits alone, every rank "
                                                               "meets in a small collective at least this often"})


@dataclass
class Recipe:
    """A whole training recipe."""

    name: str = field(default="run", metadata={"help": "the run's name (default output directory runs/<name>)"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the encoder to start from"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the collection and its query splits"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "the training objective"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimisation: AdamW, schedule, "
                                                                               "batch, precision, seed"})
    mining: MiningConfig = field(default_factory=MiningConfig, metadata={"help": "negatives from the refreshed "
                                                                                 "ANN index"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "which checkpoints "
                                                                                             "to keep"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"help": "metrics log, TensorBoard, progress bar"})
    distributed: DistributedConfig = field(default_factory=DistributedConfig,
                                           metadata={"help": "the process group of a multi-process (torchrun) run"})

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-able dict of every field."""
        return dataclasses.asdict(self)

    def validate(self) -> Recipe:
        """Check values that the types alone do not (ranges, divisibility); raise :class:`DanceError`."""
        checks = [
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.max_steps >= 1, "optim.max_steps must be >= 1"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.optim.decay_steps is None or self.optim.decay_steps > self.optim.warmup_steps,
             "optim.decay_steps must be larger than optim.warmup_steps, or null (= optim.max_steps)"),
            (self.optim.batch_size >= 1, "optim.batch_size must be >= 1"),
            (self.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
            (self.optim.batch_size % self.optim.grad_accum == 0,
             f"optim.batch_size ({self.optim.batch_size}) must be a multiple of optim.grad_accum "
             f"({self.optim.grad_accum})"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)"),
            (self.mining.refresh_every >= 1, "mining.refresh_every must be >= 1"),
            (self.mining.n >= 1, "mining.n must be >= 1"),
            (self.mining.top_k >= 1, "mining.top_k must be >= 1"),
            (self.mining.query_top_k is None or self.mining.query_top_k >= 1,
             "mining.query_top_k must be >= 1, or null (= mining.top_k)"),
            (self.mining.range_min >= 0, "mining.range_min must be >= 0"),
            (self.mining.range_max is None or self.mining.range_min < self.mining.range_max <= self.mining.top_k,
             f"mining.range_max must lie in (mining.range_min, mining.top_k] = ({self.mining.range_min}, "
             f"{self.mining.top_k}], or be null (= mining.top_k): only top_k candidates are retrieved"),
            (self.mining.range_min < self.mining.top_k, "mining.range_min must be < mining.top_k"),
            (self.mining.exclude_grade is None or self.mining.exclude_grade >= 1,
             "mining.exclude_grade must be >= 1, or null (= 1)"),
            (self.data.folds is None or self.data.folds >= 2,
             "data.folds must be >= 2 (2 only for a collection with topics, e.g. rag24-statements), or null "
             "(the collection's own splits)"),
            (self.data.folds is None or 0 <= self.data.fold < self.data.folds,
             f"data.fold must be in 0 .. data.folds - 1, got {self.data.fold}"),
            (0.0 < self.mining.fraction <= 1.0, "mining.fraction must be in (0, 1]"),
            (self.mining.dev_k >= 10, "mining.dev_k must be >= 10"),
            (self.mining.encode_batch_size >= 1, "mining.encode_batch_size must be >= 1"),
            (self.mining.max_staleness is None or self.mining.max_staleness >= 1,
             "mining.max_staleness must be >= 1, or null (never wait for the miner)"),
            (self.mining.poll_seconds > 0, "mining.poll_seconds must be > 0"),
            (self.checkpoint.keep_last is None or self.checkpoint.keep_last >= 1,
             "checkpoint.keep_last must be >= 1, or null to keep every checkpoint"),
            (self.log.every >= 1, "log.every must be >= 1"),
            ("none" not in self.log.report_to or self.log.report_to == ["none"],
             f"log.report_to: none cannot be named with other trackers, got {self.log.report_to}"),
            (self.distributed.timeout_minutes > 0, "distributed.timeout_minutes must be > 0"),
            (0 < self.distributed.poll_seconds < 60 * self.distributed.timeout_minutes,
             "distributed.poll_seconds must be > 0 and shorter than distributed.timeout_minutes"),
            (self.loss.w_q2d >= 0 and self.loss.w_d2q >= 0, "loss weights must be >= 0"),
            (self.model.select in ("best", "last") or (self.model.select.startswith("step-")
                                                       and self.model.select[5:].isdigit()),
             f"model.select must be best, last or step-<N>, got {self.model.select!r}"),
            (self.model.temperature is None or self.model.temperature > 0, "model.temperature must be > 0"),
            (self.data.max_train_queries is None or self.data.max_train_queries >= 1,
             "data.max_train_queries must be >= 1"),
            (self.data.max_dev_queries is None or self.data.max_dev_queries >= 1,
             "data.max_dev_queries must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise DanceError(f"recipe: {message}")
        self.mining.rules("doc")
        if self.loss.objective == "dance":
            self.mining.rules("query")

        try:  # the embedding dimension is not known yet: the description must build for a common one
            check_index_spec(self.mining.index, self.mining.index_params)
        except DanceError as exc:
            raise DanceError(f"recipe: mining.index / mining.index_params: {exc}") from None
        return self


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig,
    "mining": MiningConfig, "checkpoint": CheckpointConfig, "log": LogConfig, "distributed": DistributedConfig,
}

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               dict: "a mapping", list: "a list of strings", type(None): "null"}


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin is Union or (hasattr(__import__("types"), "UnionType")
                           and isinstance(annotation, __import__("types").UnionType)):
        out: list[type] = []
        for arg in typing.get_args(annotation):
            out.extend(_allowed_types(arg))
        return tuple(out)
    if origin is not None:
        return (origin,)
    return (annotation,)


def _coerce(value: Any, annotation: Any, key: str, meta: dict, where: str) -> Any:
    allowed = _allowed_types(annotation)
    expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
    result: Any = dataclasses.MISSING
    if value is None and type(None) in allowed:
        result = None
    elif isinstance(value, bool):
        if bool in allowed:
            result = value
    elif isinstance(value, int):
        if int in allowed:
            result = value
        elif float in allowed:
            result = float(value)
    elif isinstance(value, float):
        if float in allowed:
            result = value
        elif int in allowed and value.is_integer():
            result = int(value)
    elif isinstance(value, str):
        if str in allowed:
            result = value
        elif float in allowed:  # YAML 1.1 reads "5e-6" as a string
            try:
                result = float(value)
            except ValueError:
                pass
        elif int in allowed:
            try:
                result = int(value)
            except ValueError:
                pass
    elif isinstance(value, dict):
        if dict in allowed:
            result = value
    elif isinstance(value, list):
        if list in allowed and all(isinstance(item, str) for item in value):
            result = list(value)
    if isinstance(value, str) and result is dataclasses.MISSING and list in allowed:
        result = [value]         # one name for a list of names (--set log.report_to=wandb)
    if result is dataclasses.MISSING:
        raise DanceError(f"{where}: '{key}' must be {expected}, got {value!r}")
    choices = meta.get("choices")
    for item in (result if isinstance(result, list) else [result]):
        if choices and item is not None and item not in choices:
            raise DanceError(f"{where}: '{key}' must be one of {', '.join(choices)}, got {item!r}")
    return result


def _unknown(key: str, valid: list[str], where: str, scope: str) -> DanceError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return DanceError(f"{where}: unknown key '{key}'{hint}; valid keys in {scope}: {', '.join(valid)}")


def _build_section(cls: type, values: Any, section: str, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise DanceError(f"{where}: section '{section}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(f"{section}.{key}", list(fields), where, f"'{section}'")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", dict(fields[key].metadata), where)
    return cls(**kwargs)


def recipe_from_dict(raw: Any, where: str = "recipe") -> Recipe:
    """Build a :class:`Recipe` from a parsed YAML mapping; ``where`` names the source in error messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DanceError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)}, got {raw!r}")
    valid = ["name", *SECTIONS]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            kwargs["name"] = _coerce(value, str, "name", {}, where)
        elif key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value, key, where)
        else:
            raise _unknown(str(key), valid, where, "the recipe")
    recipe = Recipe(**kwargs)
    mining = raw.get("mining") if isinstance(raw.get("mining"), dict) else {}
    if recipe.optim.precision == "fp32" and "encode_precision" not in mining:
        # fp32 training is honoured by the refreshes too; a value the recipe gives (auto included) is taken as is.
        recipe.mining.encode_precision = "fp32"
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise DanceError(f"--set expects section.key=value, got {text!r}")
    key, raw_value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise DanceError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw recipe mapping (a copy is returned)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            if path[0] != "name":
                valid = ", ".join(f"{s}.<key>" for s in SECTIONS)
                raise DanceError(f"--set {text}: expected section.key=value with section one of {valid}, or name=")
            out["name"] = value
            continue
        if len(path) != 2:
            raise DanceError(f"--set {text}: expected exactly one dot (section.key=value)")
        section, key = path
        if section not in SECTIONS:
            raise _unknown(section, list(SECTIONS), f"--set {text}", "the recipe")
        valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if key not in valid:
            raise _unknown(f"{section}.{key}", valid, f"--set {text}", f"'{section}'")
        current = out.get(section) or {}
        if not isinstance(current, dict):
            current = {}
        current = dict(current)
        current[key] = value
        out[section] = current
    return out


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, check it; raise :class:`DanceError` on any problem.

    Relative paths in the recipe (collection manifests, model folders) are taken relative to the working directory.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DanceError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise DanceError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DanceError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is not None and not isinstance(raw, dict):
        raise DanceError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    raw = apply_overrides(raw or {}, list(overrides or []))
    recipe = recipe_from_dict(raw, where=str(path))
    return recipe.validate()


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML text (every field, resolved)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=False)


def recipe_differences(a: Recipe, b: Recipe, ignore: tuple[str, ...] = ("log", "distributed")) -> list[str]:
    """``section.key`` names whose values differ between two recipes (sections in ``ignore`` skipped)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for section in ["name", *SECTIONS]:
        if section in ignore:
            continue
        va, vb = da.get(section), db.get(section)
        if isinstance(va, dict) and isinstance(vb, dict):
            for key in va:
                if va.get(key) != vb.get(key):
                    out.append(f"{section}.{key}")
        elif va != vb:
            out.append(section)
    return out
