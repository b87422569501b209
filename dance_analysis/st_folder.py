"""A sentence-transformers folder read as what it is: the backbone, pooling, head, normalisation, max lengths and
lower-casing its modules stand for, from its JSON files alone (sentence-transformers is not imported, no code in
the folder runs). :meth:`dance_analysis.model.DualEncoder.load` builds the encoder from what this module returns.

A folder saved by ``SentenceTransformer.save`` (or written by ``dance-export``) lists its modules in
``modules.json``. The project reproduces this pipeline on each side (queries, documents)::

    Transformer   the Hugging Face backbone and tokenizer          -> backbone (+ lowercase: do_lower_case)
    Pooling       one pooling_mode: cls, mean, max,                 -> pooling
                  mean_sqrt_len_tokens, weightedmean, lasttoken
    Dense         optional: identity activation, no residual        -> head "linear"
    LayerNorm     optional, right after the Dense                   -> head "linear+layernorm"
    Normalize     optional, last                                    -> normalize

or a ``Router`` with a ``query`` and a ``document`` route of such modules (``Router.for_query_document``, what
``dance-export`` writes for separate towers or for a document side without the LayerNorm), followed by an optional
``Normalize``. Anything else (another module, a module from outside sentence-transformers, a Dense with a Tanh
activation, several pooling modes, a distance as the similarity) raises a :class:`DanceError` in one line that
names the folder and the module: the project would otherwise encode something else.

Prompts (``prompts`` in ``config_sentence_transformers.json``) become the encoder's ``query_prompt`` /
``document_prompt``: what ``encode_query`` / ``encode_document`` put before every text.

Max lengths are those sentence-transformers uses: ``encode_query`` truncates at the Transformer's
``query_length``, ``encode_document`` at its ``document_length``, each falling back to ``max_seq_length``
(``sentence_bert_config.json``), else to the tokenizer's ``model_max_length`` capped at the backbone's
``max_position_embeddings``.

Scores: the project ranks by dot product. A folder whose ``similarity_fn_name`` is ``cosine`` and which has no
``Normalize`` module is read with ``normalize`` on, so that its rankings are the cosine rankings
sentence-transformers computes (its vectors are then those of ``encode(..., normalize_embeddings=True)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .atomic import read_json
from .errors import DanceError, InputError

MODULES_FILE = "modules.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
MODEL_CONFIG = "config_sentence_transformers.json"
ROUTER_CONFIG = "router_config.json"
#: Pooling modes the project's encoder computes as sentence-transformers does (one mode; no concatenation).
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")
_PIPELINE = "Transformer -> Pooling -> [Dense] -> [LayerNorm] -> [Normalize], or a query / document Router of them"
#: Keys of the Transformer's model / tokenizer arguments that do not change the vectors (weights' dtype on
#: loading, attention kernel, loading speed).
_HARMLESS_MODEL_ARGS = {"torch_dtype", "dtype", "attn_implementation", "low_cpu_mem_usage"}
_TOKENIZER_LENGTH_ARGS = {"model_max_length"}
#: Transformer settings that are informational or only change speed.
_INERT_TRANSFORMER_KEYS = {"unpad_inputs", "backend"}


@dataclass(frozen=True)
class SideModules:
    """One side's pipeline (query or document): where its backbone and head weights are, and its settings.

    ``max_length`` is None when nothing in the folder gives one (the caller then needs an explicit length)."""

    transformer: Path
    pooling: str
    dense: Path | None
    layernorm: Path | None
    normalize: bool
    max_length: int | None
    lowercase: bool

    @property
    def head(self) -> str:
        """The project's head kind for this side's Dense / LayerNorm modules."""
        if self.dense is None:
            return "none"
        return "linear+layernorm" if self.layernorm is not None else "linear"


@dataclass(frozen=True)
class SentenceTransformersFolder:
    """What a sentence-transformers folder encodes with: its ``query`` and ``doc`` sides; ``router`` tells whether
    they come from a query / document Router; ``cosine_normalized`` whether ``normalize`` was turned on because the
    folder scores by cosine without a Normalize module; ``query_prompt`` / ``document_prompt`` what
    ``encode_query`` / ``encode_document`` put before every text."""

    folder: Path
    query: SideModules
    doc: SideModules
    router: bool
    cosine_normalized: bool
    query_prompt: str = ""
    document_prompt: str = ""


def is_sentence_transformers_folder(folder: Path) -> bool:
    """A folder with ``modules.json`` (sentence-transformers' list of modules)."""
    return (folder / MODULES_FILE).is_file()


def _read_object(path: Path, expected: str, *, missing_ok: bool = False) -> dict:
    if missing_ok and not path.is_file():
        return {}
    return read_json(path, expected, kind=dict)


def _inside(root: Path, relative: Any, where: Path) -> Path:
    """``root / relative`` for a relative path that stays inside ``root``."""
    if not isinstance(relative, str) or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise InputError(where, "module paths relative to the model folder (no '..', not absolute)",
                         got=repr(relative))
    return root / relative if relative else root


@dataclass(frozen=True)
class _Module:
    name: str
    kind: str            # class name: Transformer, Pooling, ...
    type: str            # the full type written in the folder
    path: Path


def _module(folder: Path, name: str, type_name: Any, path: Path) -> _Module:
    shown = path.relative_to(folder).as_posix() if path != folder else "the folder itself"
    if not isinstance(type_name, str) or not type_name.startswith("sentence_transformers."):
        raise DanceError(f"{folder}: module {name} ({type_name!r} in {shown}) is not one of sentence-transformers' "
                         f"own modules, and this project runs no code from a model folder; expected {_PIPELINE}")
    kind = type_name.rsplit(".", 1)[-1]
    if kind not in ("Transformer", "Pooling", "Dense", "LayerNorm", "Normalize", "Router"):
        raise DanceError(f"{folder}: module {name} ({type_name} in {shown}) cannot be reproduced by this project's "
                         f"encoder; expected {_PIPELINE}")
    return _Module(name, kind, type_name, path)


def _refuse(folder: Path, module: _Module, why: str) -> DanceError:
    shown = module.path.relative_to(folder).as_posix() if module.path != folder else "the folder itself"
    return DanceError(f"{folder}: module {module.name} ({module.kind} in {shown}) cannot be reproduced by this "
                      f"project's encoder: {why}")


def _modules(folder: Path) -> list[_Module]:
    file = folder / MODULES_FILE
    listed = read_json(file, "the list of sentence-transformers modules")
    if not isinstance(listed, list) or not listed or not all(isinstance(m, dict) for m in listed):
        raise InputError(file, "a non-empty list of {idx, name, path, type} objects", got=type(listed).__name__)
    ordered = sorted(listed, key=lambda m: m.get("idx", 0) if isinstance(m.get("idx", 0), int) else 0)
    return [_module(folder, str(m.get("name", m.get("idx", "?"))), m.get("type"),
                    _inside(folder, m.get("path", ""), file)) for m in ordered]


# ------------------------------------------------------------------------------------------------ the modules
def _transformer(folder: Path, module: _Module, task: str) -> tuple[int | None, bool]:
    """The max length for ``task`` ("query" / "document") and ``do_lower_case`` of a Transformer module."""
    config_file = module.path / TRANSFORMER_CONFIG
    config = _read_object(config_file, "the Transformer's settings (a JSON object)", missing_ok=True)
    task_name = config.get("transformer_task", "feature-extraction")
    if task_name != "feature-extraction":
        raise _refuse(folder, module, f"transformer_task {task_name!r} (expected feature-extraction)")
    modality = config.get("modality_config")
    if modality is not None and modality != {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}:
        raise _refuse(folder, module, f"modality_config {json.dumps(modality)} (expected the text model's "
                                      f"last_hidden_state)")
    if config.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise _refuse(folder, module, f"module_output_name {config['module_output_name']!r}")
    if config.get("query_expansion") or config.get("processing_kwargs"):
        key = "query_expansion" if config.get("query_expansion") else "processing_kwargs"
        raise _refuse(folder, module, f"{key} {json.dumps(config[key])} changes the input")
    length = config.get("max_seq_length")
    for key in ("model_args", "model_kwargs", "config_args", "config_kwargs", "tokenizer_args", "processor_kwargs"):
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise _refuse(folder, module, f"{key} {value!r} is not a JSON object")
        allowed = _HARMLESS_MODEL_ARGS if key.startswith("model") else \
            _TOKENIZER_LENGTH_ARGS if key.startswith(("tokenizer", "processor")) else set()
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise _refuse(folder, module, f"{key} sets {', '.join(unknown)}")
        if length is None and "model_max_length" in value:
            length = value["model_max_length"]
    known = {"max_seq_length", "do_lower_case", "query_length", "document_length", "transformer_task",
             "modality_config", "module_output_name", "query_expansion", "processing_kwargs", "model_args",
             "model_kwargs", "config_args", "config_kwargs", "tokenizer_args", "processor_kwargs",
             *_INERT_TRANSFORMER_KEYS}
    unknown = sorted(set(config) - known)
    if unknown:
        raise _refuse(folder, module, f"unknown setting(s) {', '.join(unknown)} in {config_file.name}")
    specific = config.get("query_length" if task == "query" else "document_length")
    if specific is not None:
        length = specific
    if length is None:
        length = _default_length(module.path)
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
        raise InputError(config_file, "max lengths as integers >= 2", got=repr(length))
    lowercase = config.get("do_lower_case", False)
    if not isinstance(lowercase, bool):
        raise InputError(config_file, "do_lower_case true or false", got=repr(lowercase))
    return length, lowercase


def _default_length(path: Path) -> int | None:
    """sentence-transformers' length without a setting: the tokenizer's model_max_length capped at the model's
    max_position_embeddings (None when neither is known)."""
    tokenizer = _read_object(path / "tokenizer_config.json", "the tokenizer's settings", missing_ok=True)
    model = _read_object(path / "config.json", "the Hugging Face model config", missing_ok=True)
    limits = [v for v in (tokenizer.get("model_max_length"), model.get("max_position_embeddings"))
              if isinstance(v, int) and not isinstance(v, bool) and 2 <= v < 1_000_000]
    return min(limits) if limits else None


def _pooling(folder: Path, module: _Module) -> str:
    config = _read_object(module.path / "config.json", "the Pooling settings (a JSON object)")
    mode = config.get("pooling_mode")
    if mode is None:
        active = [name for key, name in _LEGACY_POOLING.items() if config.get(key)]
        mode = active if active else "mean"
    if isinstance(mode, list):
        if len(mode) != 1:
            raise _refuse(folder, module, f"pooling modes {', '.join(map(str, mode))} are concatenated (the project "
                                          f"pools with one mode)")
        mode = mode[0]
    if mode not in POOLING_MODES:
        raise _refuse(folder, module, f"pooling mode {mode!r} (expected one of {', '.join(POOLING_MODES)})")
    return str(mode)


def _dense(folder: Path, module: _Module) -> None:
    config = _read_object(module.path / "config.json", "the Dense settings (a JSON object)")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")   # its default is Tanh
    if activation not in _IDENTITY:
        raise _refuse(folder, module, f"its activation is {activation} (the project's head is Linear, optionally "
                                      f"followed by LayerNorm: an identity activation)")
    if config.get("use_residual"):
        raise _refuse(folder, module, "it adds a residual connection")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise _refuse(folder, module, f"{key} {config[key]!r}")


def _side(folder: Path, modules: list[_Module], task: str) -> SideModules:
    """One side's pipeline from its modules in order (see the module docstring)."""
    if not modules or modules[0].kind != "Transformer":
        first = modules[0] if modules else None
        if first is None:
            raise DanceError(f"{folder}: the {task} pipeline is empty; expected {_PIPELINE}")
        raise _refuse(folder, first, f"expected a Transformer first ({_PIPELINE})")
    if len(modules) < 2 or modules[1].kind != "Pooling":
        if len(modules) < 2:
            raise DanceError(f"{folder}: no Pooling module after the Transformer; expected {_PIPELINE}")
        raise _refuse(folder, modules[1], f"expected a Pooling module after the Transformer ({_PIPELINE})")
    length, lowercase = _transformer(folder, modules[0], task)
    pooling = _pooling(folder, modules[1])
    dense = layernorm = None
    normalize = False
    for module in modules[2:]:
        if normalize:
            raise _refuse(folder, module, f"it comes after Normalize ({_PIPELINE})")
        if module.kind == "Dense" and dense is None and layernorm is None:
            _dense(folder, module)
            dense = module.path
        elif module.kind == "LayerNorm" and dense is not None and layernorm is None:
            layernorm = module.path
        elif module.kind == "Normalize":
            normalize = True
        else:
            raise _refuse(folder, module, f"not at a place the project's encoder has ({_PIPELINE})")
    return SideModules(transformer=modules[0].path, pooling=pooling, dense=dense, layernorm=layernorm,
                       normalize=normalize, max_length=length, lowercase=lowercase)


def _routes(folder: Path, router: _Module) -> dict[str, list[_Module]]:
    file = router.path / ROUTER_CONFIG
    config = _read_object(file, "the Router's types, structure and parameters")
    types, structure = config.get("types"), config.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict):
        raise InputError(file, '"types" and "structure" objects')
    if set(structure) != {"query", "document"}:
        raise _refuse(folder, router, f"its routes are {', '.join(map(str, structure)) or 'none'} (the project "
                                      f"reads a query and a document route)")
    mappings = (config.get("parameters") or {}).get("route_mappings")
    if mappings:
        raise _refuse(folder, router, "it maps tasks to routes of its own (route_mappings)")
    routes = {}
    for route, names in structure.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n in types for n in names):
            raise InputError(file, f"the {route} route as a list of module names from \"types\"", got=repr(names))
        routes[route] = [_module(folder, name, types[name], _inside(router.path, name, file)) for name in names]
    return routes


def _prompts(folder: Path) -> tuple[str, str]:
    """``(query prompt, document prompt)``: ``prompts["query"]`` and ``prompts["document"]``, what ``encode_query``
    / ``encode_document`` put before every text (empty when absent). A non-empty prompt that only some
    sentence-transformers versions would use there (a ``passage`` / ``corpus`` prompt without a ``document`` one,
    or the ``default_prompt_name``'s prompt for a side without its own: recent versions add empty ``query`` and
    ``document`` prompts on loading, which then win) is refused, naming the key to use instead."""
    file = folder / MODEL_CONFIG
    config = _read_object(file, "the model's sentence-transformers settings", missing_ok=True)
    kind = config.get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        raise DanceError(f"{file}: model_type {kind!r}; the project reads SentenceTransformer (dense) folders only")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise InputError(file, "prompts as a JSON object of strings", got=repr(prompts))
    default = config.get("default_prompt_name")
    for side, names in (("query", ("query",)), ("document", ("document", "passage", "corpus"))):
        if names[0] in prompts:
            continue
        unclear = [n for n in names[1:] if prompts.get(n)] + ([default] if default and prompts.get(default) else [])
        if unclear:
            raise DanceError(f"{file}: the prompt {prompts[unclear[0]]!r} ({unclear[0]!r}) is put before {side} "
                             f"texts by some sentence-transformers versions and not by others; name it "
                             f"{names[0]!r} in prompts (or add an empty {names[0]!r} prompt)")
    return prompts.get("query", ""), prompts.get("document", "")


def _similarity(folder: Path, normalized: bool) -> bool:
    """Whether ``normalize`` must be turned on to rank as the folder's similarity does."""
    file = folder / MODEL_CONFIG
    config = _read_object(file, "the model's sentence-transformers settings", missing_ok=True)
    name = config.get("similarity_fn_name")
    if name in (None, "dot", "dot_product"):
        return False
    if name == "cosine":
        return not normalized
    if name == "euclidean" and normalized:
        return False        # on unit vectors, the distance ranks as the dot product
    raise DanceError(f"{file}: similarity_fn_name {name!r}; the project ranks by dot product, which ranks as "
                     f"{name} only on unit vectors (expected cosine, dot, or euclidean with a Normalize module)")


def read_sentence_transformers(folder: str | Path) -> SentenceTransformersFolder:
    """Read ``folder`` (a sentence-transformers folder with ``modules.json``); raises :class:`DanceError` for a
    folder the project's encoder cannot reproduce (see the module docstring)."""
    folder = Path(folder)
    modules = _modules(folder)
    query_prompt, document_prompt = _prompts(folder)
    router = modules[0].kind == "Router"
    if router:
        if any(m.kind == "Router" for m in modules[1:]):
            raise _refuse(folder, next(m for m in modules[1:] if m.kind == "Router"), "a second Router")
        routes = _routes(folder, modules[0])
        query = _side(folder, routes["query"] + modules[1:], "query")
        doc = _side(folder, routes["document"] + modules[1:], "document")
        sides = {"query": routes["query"] + modules[1:], "document": routes["document"] + modules[1:]}
    else:
        router_modules = [m for m in modules if m.kind == "Router"]
        if router_modules:
            raise _refuse(folder, router_modules[0], f"a Router that is not the first module ({_PIPELINE})")
        query = _side(folder, modules, "query")
        doc = _side(folder, modules, "document")
        sides = {"query": modules, "document": modules}
    for side, prompt in (("query", query_prompt), ("document", document_prompt)):
        for module in sides[side]:
            if prompt and module.kind == "Pooling" and _read_object(
                    module.path / "config.json", "the Pooling settings (a JSON object)").get("include_prompt") is False:
                raise _refuse(folder, module, f"it leaves the {side} prompt's tokens out of the pooling "
                                              f"(include_prompt false; the project pools over every token)")
    if query.normalize != doc.normalize:
        raise DanceError(f"{folder}: one route normalises its vectors and the other does not; the project's "
                         f"encoder normalises both sides or neither")
    cosine = _similarity(folder, query.normalize)
    if cosine:
        query = replace(query, normalize=True)
        doc = replace(doc, normalize=True)
    return SentenceTransformersFolder(folder=folder, query=query, doc=doc, router=router, cosine_normalized=cosine,
                                      query_prompt=query_prompt, document_prompt=document_prompt)


__all__ = ["POOLING_MODES", "SentenceTransformersFolder", "SideModules", "is_sentence_transformers_folder",
           "read_sentence_transformers"]
