"""A trained encoder as a sentence-transformers folder that ``SentenceTransformer(OUT)`` loads with nothing but
sentence-transformers' own modules (no custom code, no ``trust_remote_code``).

The project's encoder (:mod:`dance_analysis.model`) maps onto sentence-transformers modules one to one::

    backbone            -> Transformer (the saved Hugging Face model and tokenizer)
    pooling             -> Pooling(pooling_mode=<the same mode>)  (cls, mean over the attention mask, max, ...)
    head linear         -> Dense(h, d, activation_function=Identity) with the head's weight and bias
    head + LayerNorm    -> LayerNorm(d) with the head's LayerNorm weights (both use eps 1e-5)
    normalize           -> Normalize
    score               -> similarity_fn_name "dot" (the temperature only scales scores: rankings are the same)

Max lengths: the folder's Transformer truncates at ``doc_max_length`` (what ``encode`` and ``encode_document``
use), and, when ``query_max_length`` differs, at ``query_max_length`` for ``encode_query`` (the Transformer's
per-task ``query_length`` / ``document_length``). Encode queries with ``encode_query`` and documents with
``encode_document`` (or ``encode``) to get the project's vectors. ``DualEncoder.load(OUT)`` reads the folder back
with these modules (:mod:`dance_analysis.st_folder`), so ``dance-eval`` and ``dance-analyze`` of OUT give the
model's numbers.

When the two sides differ in more than the length (separate query and document towers, ``shared: false``; or
``doc_layernorm: false``, where documents skip the head's LayerNorm), the folder holds a ``Router`` with a
``query`` and a ``document`` route (``Router.for_query_document``); modules the routes share are saved once.
Then ``encode_query`` / ``encode_document`` pick the route and plain ``encode`` is the document route.

Prompts: the encoder's ``query_prompt`` / ``document_prompt`` become the folder's ``prompts`` (``query`` /
``document`` in ``config_sentence_transformers.json``), which ``encode_query`` / ``encode_document`` put before
every text; plain ``encode`` adds none (pass ``prompt_name="document"`` to it).

Before the folder is published, it is loaded back with ``SentenceTransformer`` and its vectors of a few probe
texts (long ones included, so truncation is compared too) are checked against the project's: a folder that
would encode differently is never written. sentence-transformers strips leading and trailing whitespace of a text
before tokenising; the project's tokenizer does the same for BERT-style vocabularies (WordPiece), so the vectors
agree; a model whose tokenizer keeps whitespace would differ on texts with outer spaces.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import building_dir
from ..errors import DanceError
from ..model import _quiet_transformers
from ..pipeline import load_model

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "export_sentence_transformers", "PROBE_TEXTS"]

#: Texts encoded by the project and by the exported folder before it is published (the last ones are long, so
#: that truncation at the max lengths is compared too).
PROBE_TEXTS = (
    "what is dense retrieval",
    "ANCE refreshes its negatives from an asynchronously rebuilt index",
    "a",
    "Contrastive dual learning trains the query-to-document and the document-to-query task together. " * 12,
    " ".join(f"token{i}" for i in range(600)),
)
TOLERANCE = 1e-5


@dataclass
class ExportReport:
    """What an export wrote: the folder, whether it holds a query / document ``Router``, the max lengths and the
    largest absolute difference between the project's and the folder's vectors on :data:`PROBE_TEXTS` (each after
    its side's prompt, on both sides), and the prompts."""

    path: Path
    router: bool
    query_max_length: int
    doc_max_length: int
    max_abs_diff: float
    dim: int
    query_prompt: str = ""
    document_prompt: str = ""


def _st_modules():
    """sentence-transformers' module classes (their home moved in 6.x) and its version."""
    try:
        import sentence_transformers
    except ImportError as exc:
        raise DanceError("exporting to sentence-transformers needs the package sentence-transformers "
                         "(pip install sentence-transformers)") from exc
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return sentence_transformers, modules


def _head_modules(modules, tower, pooled_dim: int, layernorm: bool) -> list:
    """The Dense (+ LayerNorm) modules of a tower's head, with its weights."""
    import torch
    from torch import nn

    head = tower.head
    out = []
    if head.linear is not None:
        dense = modules.Dense(pooled_dim, head.out_dim, bias=True, activation_function=nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(head.linear.weight.detach().float())
            dense.linear.bias.copy_(head.linear.bias.detach().float())
        out.append(dense)
    if head.norm is not None and layernorm:
        norm = modules.LayerNorm(head.out_dim)
        if norm.norm.eps != head.norm.eps:
            raise DanceError(f"sentence-transformers' LayerNorm uses eps {norm.norm.eps}, the head {head.norm.eps}")
        with torch.no_grad():
            norm.norm.weight.copy_(head.norm.weight.detach().float())
            norm.norm.bias.copy_(head.norm.bias.detach().float())
        out.append(norm)
    return out


def _transformer(modules, folder: Path, max_length: int, query_length: int | None):
    """A Transformer module on a saved backbone folder, truncating at ``max_length`` (and at ``query_length`` for
    ``encode_query`` when given)."""
    kwargs = {"max_seq_length": max_length}
    if query_length is not None:
        params = inspect.signature(modules.Transformer.__init__).parameters
        if "query_length" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            import sentence_transformers

            raise DanceError(f"the query and document max lengths differ ({query_length} / {max_length}), and "
                             f"sentence-transformers {sentence_transformers.__version__} has no per-task lengths "
                             f"(Transformer(query_length=...)); upgrade it, or export with equal lengths "
                             f"(--query-max-length / --doc-max-length)")
        kwargs.update(query_length=query_length, document_length=max_length)
    return modules.Transformer(str(folder), **kwargs)


def _width(transformer) -> int:
    """The token vector width of a Transformer module (the method was renamed in sentence-transformers 6)."""
    method = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    return int(method())


def _build(model, saved: Path):
    """The SentenceTransformer for ``model`` whose backbones were saved (``DualEncoder.save``) in ``saved``."""
    st, modules = _st_modules()
    config = model.config
    q_len, d_len = config.query_max_length, config.doc_max_length
    router = (not config.shared) or (config.head == "linear+layernorm" and not config.doc_layernorm)
    if config.shared:
        transformer = _transformer(modules, saved, d_len, q_len if q_len != d_len else None)
        hidden = _width(transformer)
        pooling = modules.Pooling(hidden, pooling_mode=config.pooling)
        tower = model.towers["shared"]
        query_side = [transformer, pooling, *_head_modules(modules, tower, hidden, True)]
        if router:
            doc_side = [transformer, pooling, *_head_modules(modules, tower, hidden, config.doc_layernorm)]
    else:
        sides = {}
        for side, sub in (("query", "query"), ("doc", "doc")):
            model.tokenizer.save_pretrained(str(saved / sub))     # DualEncoder.save keeps one at the top
            transformer = _transformer(modules, saved / sub, config.max_length(side), None)
            hidden = _width(transformer)
            layernorm = side == "query" or config.doc_layernorm
            sides[side] = [transformer, modules.Pooling(hidden, pooling_mode=config.pooling),
                           *_head_modules(modules, model.towers[side], hidden, layernorm)]
        query_side, doc_side = sides["query"], sides["doc"]
    if router:
        if not hasattr(modules, "Router"):
            raise DanceError(f"this encoder encodes queries and documents differently (separate towers or "
                             f"doc_layernorm=false), which a sentence-transformers folder can only hold as a "
                             f"query / document Router; sentence-transformers {st.__version__} has none: "
                             f"upgrade it (Router arrived in 5.0)")
        pipeline = [modules.Router.for_query_document(query_modules=query_side, document_modules=doc_side)]
    else:
        pipeline = list(query_side)
    if config.normalize:
        pipeline.append(modules.Normalize())
    prompts = {name: text for name, text in (("query", config.query_prompt), ("document", config.document_prompt))
               if text}
    return st.SentenceTransformer(modules=pipeline, similarity_fn_name="dot", device="cpu",
                                  prompts=prompts or None), router


def _project_vectors(model, side: str) -> np.ndarray:
    import torch

    batch = model.tokenize(list(PROBE_TEXTS), side)
    with torch.no_grad():
        return model.encode(batch["input_ids"], batch["attention_mask"], side).numpy()


def export_sentence_transformers(source: str | os.PathLike, out: str | os.PathLike, *,
                                 overrides: dict | None = None, card=None) -> ExportReport:
    """Write the encoder of ``source`` (a checkpoint, a model folder, a hub name or ``minilm``; ``overrides``
    replace encoder options such as the max lengths) as a sentence-transformers folder ``out``, checked against
    the project's vectors first (see the module docstring). ``out`` is replaced as a whole, atomically.
    ``card(report) -> str``, when given, makes the folder's ``README.md`` (a model card) from the checked export's
    :class:`ExportReport`; it is written before the folder is published."""
    import torch

    st, _ = _st_modules()
    model = load_model(str(source), **dict(overrides or {})).eval().to("cpu")
    config = model.config
    with tempfile.TemporaryDirectory(prefix="dance-export-") as scratch, building_dir(out) as tmp, \
            _quiet_transformers():
        saved = Path(scratch) / "encoder"
        model.save(str(saved))
        st_model, router = _build(model, saved)
        st_model.save(str(tmp), create_model_card=False)
        reloaded = st.SentenceTransformer(str(tmp), device="cpu", trust_remote_code=False)
        worst = 0.0
        for side, encode in (("query", reloaded.encode_query), ("doc", reloaded.encode_document)):
            ours = _project_vectors(model, side)
            with torch.no_grad():
                theirs = np.asarray(encode(list(PROBE_TEXTS), convert_to_numpy=True, batch_size=8))
            if theirs.shape != ours.shape:
                raise DanceError(f"the exported folder encodes {side} texts to shape {theirs.shape}, the model to "
                                 f"{ours.shape}; nothing was written")
            diff = float(np.abs(theirs - ours).max())
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                raise DanceError(f"the exported folder's {side} vectors differ from the model's by {diff:.2e} "
                                 f"(allowed {TOLERANCE:g}); nothing was written")
        logger.info("sentence-transformers folder checked: max |difference| %.2e on %d probe texts", worst,
                    len(PROBE_TEXTS))
        report = ExportReport(path=Path(out), router=router, query_max_length=config.query_max_length,
                              doc_max_length=config.doc_max_length, max_abs_diff=worst, dim=int(model.dim),
                              query_prompt=config.query_prompt, document_prompt=config.document_prompt)
        if card is not None:
            (tmp / "README.md").write_text(card(report), encoding="utf-8")
    return report
