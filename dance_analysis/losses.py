"""Training losses of ANCE and DANCE, one small function per loss.

Scores are dot products divided by a temperature, ``s(a, b) = (a . b) / t``; with L2-normalised embeddings this
is cosine / t (DANCE's "representation normalisation", t = 0.01 in the paper). Every function returns a
0-dimensional tensor (the mean over the batch) that can be back-propagated.

References
- ANCE: L. Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval",
  ICLR 2021.
- DANCE: Y. Li, Z. Liu, C. Xiong, Z. Liu, "More Robust Dense Retrieval with Contrastive Dual Learning",
  ICTIR 2021.
- T. Wang, P. Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
  Hypersphere", ICML 2020.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dance_analysis.errors import DanceError

__all__ = [
    "q2d_loss",
    "d2q_loss",
    "contrastive_loss",
    "alignment_loss",
    "uniformity_loss",
    "dance_loss",
    "DanceObjective",
]


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise DanceError(f"temperature must be a positive number, got {temperature!r}")
    return temperature


#: ``gather(tensor) -> (every rank's tensor concatenated along dim 0, row offset of this rank's rows)``, keeping the
#: autograd graph (:meth:`dance_analysis.training.distributed.DistContext.gather_with_grad`).
Gather = Callable[[Tensor], "tuple[Tensor, int]"]


def contrastive_loss(anchor: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 1.0,
                     in_batch: bool = False, gather: Gather | None = None) -> Tensor:
    """Softmax cross-entropy of one positive against mined negatives (the form shared by q2d and d2q).

    Inputs
        anchor     [B, h]
        positive   [B, h]        the positive of each anchor
        negatives  [B, h] (one mined negative per instance, the paper's pairwise form) or [B, n, h]
    Formula, with s(a, b) = (a . b) / t:
        L = mean_b -log( e^{s(a_b, p_b)} / (e^{s(a_b, p_b)} + sum_k e^{s(a_b, n_bk)}) )
    With ``in_batch=True`` the denominator of anchor b also holds the positives p_j and all negatives n_jk of
    every other instance j != b of the batch (B * (n + 1) terms in all). Nothing is deduplicated or masked: if
    the same vector occurs in several instances (e.g. two quadruplets of one training line share the same
    positive, or another instance's negative is a labelled positive of anchor b), it is counted once per
    occurrence, including as a "negative". Shuffle instances so that one line rarely fills a batch.
    ``gather`` (with ``in_batch``, in a multi-process run) makes the batch the global one: the positives and
    negatives of every rank's instances are gathered (gradients flow back to their rank) and anchor b of this rank
    is labelled with its own positive among them, so the loss and its gradient are those of one process that sees
    the whole global batch. Computed with a numerically stable log-sum-exp (``F.cross_entropy``).
    References: ANCE (Xiong et al., ICLR 2021), DANCE (Li et al., ICTIR 2021).
    """
    temperature = _check_temperature(temperature)
    if anchor.dim() != 2 or positive.shape != anchor.shape:
        raise DanceError(f"expected anchor and positive of the same shape [B, h], got {tuple(anchor.shape)} "
                         f"and {tuple(positive.shape)}")
    if negatives.dim() == 2:
        negatives = negatives.unsqueeze(1)
    if negatives.dim() != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise DanceError(f"expected negatives of shape [B, h] or [B, n, h] with B={anchor.shape[0]}, "
                         f"h={anchor.shape[1]}, got {tuple(negatives.shape)}")
    batch = anchor.shape[0]
    if in_batch:
        # Columns: the B positives, then every instance's negatives in order; the label of row b is column b
        # (with ``gather``: every rank's positives, then every rank's negatives, in rank order).
        flat_negatives = negatives.reshape(-1, negatives.shape[-1])
        offset = 0
        if gather is not None:
            positive, offset = gather(positive)
            flat_negatives, _ = gather(flat_negatives)
        candidates = torch.cat([positive, flat_negatives], dim=0)
        logits = anchor @ candidates.T
        labels = torch.arange(offset, offset + batch, device=anchor.device)
    else:
        pos = (anchor * positive).sum(-1, keepdim=True)                 # [B, 1]
        neg = torch.einsum("bh,bnh->bn", anchor, negatives)             # [B, n]
        logits = torch.cat([pos, neg], dim=1)
        labels = torch.zeros(batch, dtype=torch.long, device=anchor.device)
    return F.cross_entropy(logits / temperature, labels)


def q2d_loss(q: Tensor, d_pos: Tensor, d_neg: Tensor, temperature: float = 1.0, in_batch: bool = False,
             gather: Gather | None = None) -> Tensor:
    """Document-retrieval loss (q -> d) of ANCE, the first term of DANCE.

    Inputs: q [B, h] query embeddings, d_pos [B, h] their positive documents, d_neg [B, h] one mined negative
    document per instance (the paper's pairwise form) or [B, n, h].
    Formula, with s(q, d) = (q . d) / t:
        L_q2d = mean_b -log( e^{s(q_b, d+_b)} / (e^{s(q_b, d+_b)} + sum_k e^{s(q_b, d-_bk)}) )
    ``in_batch=True`` adds the other instances' positives and negatives to each denominator, without any
    deduplication (see :func:`contrastive_loss`).
    Reference: ANCE (Xiong et al., ICLR 2021), eq. for the negative log-likelihood over (q, d+, d-).
    """
    return contrastive_loss(q, d_pos, d_neg, temperature, in_batch, gather)


def d2q_loss(d_pos: Tensor, q: Tensor, q_neg: Tensor, temperature: float = 1.0, in_batch: bool = False,
             gather: Gather | None = None) -> Tensor:
    """Query-retrieval loss (d -> q), DANCE's dual task "inspired by query likelihood".

    Inputs: d_pos [B, h] positive documents (the anchors), q [B, h] their queries (the positives), q_neg [B, h]
    one mined negative query per instance or [B, n, h].
    Formula, with s(d, q) = (d . q) / t:
        L_d2q = mean_b -log( e^{s(d+_b, q_b)} / (e^{s(d+_b, q_b)} + sum_k e^{s(d+_b, q-_bk)}) )
    ``in_batch=True`` adds the other instances' queries and negative queries to each denominator, without any
    deduplication (see :func:`contrastive_loss`).
    Reference: DANCE (Li et al., ICTIR 2021), section 3, the dual training objective.
    """
    return contrastive_loss(d_pos, q, q_neg, temperature, in_batch, gather)


def alignment_loss(x: Tensor, y: Tensor, alpha: float = 2, normalize: bool = True) -> Tensor:
    """Alignment of positive pairs (Wang & Isola, ICML 2020).

    Inputs: x [B, h], y [B, h], row b of x and y form a positive pair (e.g. a query and its positive document).
    Formula, on L2-normalised vectors (``normalize=True`` normalises here; normalising is idempotent):
        L_align = mean_b || x_b - y_b ||_2^alpha        (alpha = 2: mean squared distance, in [0, 4])
    Reference: Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020, definition of L_align.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise DanceError(f"expected x and y of the same shape [B, h], got {tuple(x.shape)} and {tuple(y.shape)}")
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    squared = (x - y).pow(2).sum(-1)
    if alpha == 2:
        return squared.mean()
    # ||.||^alpha = (||.||^2)^(alpha/2); clamp keeps the gradient finite at a zero distance.
    return squared.clamp_min(1e-12).pow(alpha / 2).mean()


def uniformity_loss(x: Tensor, t: float = 2.0, normalize: bool = True) -> Tensor:
    """Uniformity of a set of embeddings (Wang & Isola, ICML 2020).

    Inputs: x [B, h] (B >= 2; a batch of one has no pair and gives 0).
    Formula, on L2-normalised vectors (``normalize=True`` normalises here), over the B(B-1)/2 distinct pairs:
        L_uniform = log( mean_{i<j} e^{-t ||x_i - x_j||_2^2} )         (<= 0; lower = more uniform)
    Computed as logsumexp(-t d_ij^2) - log(#pairs) with squared distances from the Gram matrix, so the
    gradient stays finite when two rows coincide. Rows are not deduplicated.
    Reference: Wang & Isola, ICML 2020, definition of L_uniform (t = 2 there; the DANCE code uses t = 5).
    """
    if x.dim() != 2:
        raise DanceError(f"expected x of shape [B, h], got {tuple(x.shape)}")
    batch = x.shape[0]
    if batch < 2:
        return x.sum() * 0.0
    if normalize:
        x = F.normalize(x, dim=-1)
    sq_norms = x.pow(2).sum(-1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    i, j = torch.triu_indices(batch, batch, offset=1, device=x.device)
    values = -float(t) * sq_dist[i, j]
    return torch.logsumexp(values, dim=0) - math.log(values.numel())


def dance_loss(q: Tensor, d_pos: Tensor, d_neg: Tensor, q_neg: Tensor | None = None, *, w_q2d: float = 1.0,
               w_d2q: float = 0.1, temperature: float = 1.0, in_batch: bool = False, w_align: float = 0.0,
               w_uniform: float = 0.0, uniform_t: float = 2.0, gather: Gather | None = None,
               tensor_parts: bool = False) -> tuple[Tensor, dict[str, float]]:
    """The full training objective of ANCE / DANCE on a batch of quadruplets (q, d+, d-, q-).

    Inputs: q, d_pos [B, h]; d_neg [B, h] or [B, n, h]; q_neg like d_neg, or None when w_d2q == 0.
    Formula:
        L = w_q2d * L_q2d(q, d+, d-) + w_d2q * L_d2q(d+, q, q-)
            + w_align * L_align(q, d+) + w_uniform * (L_uniform(q) + L_uniform(d+)) / 2
    Objective "ance" is w_d2q = 0 (q_neg may be None); "dance" is w_d2q = 0.1 (the paper's runs). The
    regularisers are off by default (weights 0) and are then not computed. ``gather`` extends the in-batch
    negatives to every rank's instances (see :func:`contrastive_loss`).
    Returns (total loss tensor, parts) where parts holds plain floats: "q2d", "d2q" (when computed), "align",
    "uniform" (when their weight is non-zero) and "total"; with ``tensor_parts`` detached 0-d tensors of the same
    values instead, so that the host need not wait for the device (the trainer reads them once per log interval).
    References: ANCE (Xiong et al., ICLR 2021); DANCE (Li et al., ICTIR 2021); Wang & Isola (ICML 2020).
    """
    parts: dict[str, float] = {}
    value = (lambda t: t.detach()) if tensor_parts else (lambda t: float(t.detach()))
    l_q2d = q2d_loss(q, d_pos, d_neg, temperature, in_batch, gather)
    parts["q2d"] = value(l_q2d)
    total = w_q2d * l_q2d
    if w_d2q != 0:
        if q_neg is None:
            raise DanceError("the dual (d2q) loss has weight w_d2q="
                             f"{w_d2q} but no negative queries were given (q_neg is None)")
        l_d2q = d2q_loss(d_pos, q, q_neg, temperature, in_batch, gather)
        parts["d2q"] = value(l_d2q)
        total = total + w_d2q * l_d2q
    if w_align != 0:
        l_align = alignment_loss(q, d_pos)
        parts["align"] = value(l_align)
        total = total + w_align * l_align
    if w_uniform != 0:
        l_uniform = 0.5 * (uniformity_loss(q, uniform_t) + uniformity_loss(d_pos, uniform_t))
        parts["uniform"] = value(l_uniform)
        total = total + w_uniform * l_uniform
    parts["total"] = value(total)
    return total, parts


@dataclass
class DanceObjective:
    """The training loss of a recipe, as one object the trainer (and the benchmark) calls: :func:`dance_loss`
    with these weights.

    Build it from the recipe with :meth:`from_config` (``DanceObjective.from_config(recipe.loss, temperature)``)
    so that no caller spells out the loss parameters; its fields are exactly the keyword parameters of
    :func:`dance_loss` (a test keeps them in step with it and with the recipe's ``loss`` section).

    Args:
        w_q2d: weight of the document-retrieval loss L_q2d (ANCE).
        w_d2q: weight of the dual query-retrieval loss L_d2q (DANCE); 0 for ANCE.
        temperature: t in the score s(a, b) = (a . b) / t (the model's, e.g. 0.01 with L2-normalised vectors).
        in_batch: also use the other instances of the batch as negatives.
        w_align, w_uniform, uniform_t: the optional alignment / uniformity regularisers (off at weight 0).

    Inputs:
        +-------------------------+-----------------------------------------------+
        | q, d_pos                | [B, h] queries and their positive documents   |
        +-------------------------+-----------------------------------------------+
        | d_neg                   | [B, h] or [B, n, h] mined negative documents  |
        +-------------------------+-----------------------------------------------+
        | q_neg                   | like d_neg, mined negative queries; ``None``  |
        |                         | when w_d2q == 0 (:attr:`uses_query_negatives`)|
        +-------------------------+-----------------------------------------------+

    Returns ``(loss, parts)``: the 0-d loss tensor and a dict of plain floats (see :func:`dance_loss`).
    Formula: L = w_q2d L_q2d + w_d2q L_d2q + w_align L_align + w_uniform L_uniform (see :func:`dance_loss`).

    References:
        ANCE (Xiong et al., ICLR 2021); DANCE (Li et al., ICTIR 2021, section 3, the dual training objective);
        Wang & Isola (ICML 2020) for the regularisers.

    Relations: ``for_objective("ance")`` is :func:`q2d_loss` alone (w_d2q = 0); ``"dance"`` adds :func:`d2q_loss`.

    Example::

        objective = DanceObjective.from_config(recipe.loss, temperature=model.config.temperature)
        loss, parts = objective(q, d_pos, d_neg, q_neg if objective.uses_query_negatives else None)
        loss.backward()
    """

    w_q2d: float = 1.0
    w_d2q: float = 0.1
    temperature: float = 1.0
    in_batch: bool = False
    w_align: float = 0.0
    w_uniform: float = 0.0
    uniform_t: float = 2.0

    @classmethod
    def for_objective(cls, objective: str, **kwargs) -> DanceObjective:
        """Build the weights of objective "ance" (no dual loss) or "dance"."""
        if objective == "ance":
            kwargs["w_d2q"] = 0.0
        elif objective != "dance":
            raise DanceError(f"objective must be 'ance' or 'dance', got {objective!r}")
        return cls(**kwargs)

    @classmethod
    def from_config(cls, config: Any, temperature: float) -> DanceObjective:
        """The objective of a recipe's ``loss`` section (``objective`` plus any of this class's fields, read by
        name) at the model's ``temperature``."""
        weights = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                   if f.name != "temperature" and hasattr(config, f.name)}
        return cls.for_objective(config.objective, temperature=temperature, **weights)

    @property
    def uses_query_negatives(self) -> bool:
        """True when the dual loss is on and batches need mined negative queries."""
        return self.w_d2q != 0

    def __call__(self, q: Tensor, d_pos: Tensor, d_neg: Tensor, q_neg: Tensor | None = None, *,
                 gather: Gather | None = None, tensor_parts: bool = False) -> tuple[Tensor, dict[str, float]]:
        """Compute :func:`dance_loss` with these weights; ``gather`` (multi-process runs with ``in_batch``) takes
        the in-batch negatives from every rank; ``tensor_parts``: the parts as detached tensors, not floats."""
        return dance_loss(q, d_pos, d_neg, q_neg, **dataclasses.asdict(self), gather=gather,
                          tensor_parts=tensor_parts)
