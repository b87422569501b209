"""What `dance-analyze` analyses: turn each command-line PATH into runs of subjects, and subjects into embeddings.

A PATH is one of

- a checkpoint folder written by the trainer (has ``checkpoint.json``; see the checkpoint contract in DESIGN.md);
- a run folder (holds ``checkpoint-<step>/`` folders): every checkpoint, in numeric step order, is one point of
  the run's trajectory; the checkpoint with the best dev metric (``dev_metrics.json``; the last one when the
  checkpoints have none) stands for the run in comparisons;
- the output folder of a transformers / sentence-transformers ``Trainer`` (``checkpoint-<step>/`` model folders
  with ``trainer_state.json``): a run of model subjects, dev metrics from the trainer's logged evaluations
  (:func:`_trainer_run`);
- a model folder: one written by ``DualEncoder.save`` (``encoder.json``), a Hugging Face model folder
  (``config.json``), a sentence-transformers folder (``modules.json``; read with its own modules by
  :meth:`DualEncoder.load <dance_analysis.model.DualEncoder.load>`), or the alias ``minilm``;
- a folder of saved embeddings: ``corpus.npy`` + ``corpus.ids.npy`` + ``queries.npy`` + ``queries.ids.npy`` and
  optionally ``meta.json`` ``{"collection": <spec>}``.

Saved embeddings (a checkpoint's ``embeddings/`` folder, or an embeddings folder) are reused; every other subject
is encoded with its model. Nothing here computes statistics: see :mod:`dance_analysis.report.compute`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DanceError, InputError

MINILM_ALIAS = "minilm"
CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
#: Dev metrics tried, in this order, to pick the checkpoint that stands for a run (higher is better).
SELECTION_METRICS = ("MRR@10", "MRR@100", "nDCG@10")
EMBEDDING_FILES = ("corpus.npy", "corpus.ids.npy", "queries.npy", "queries.ids.npy")

EXPECTED_PATH = ("a checkpoint folder (checkpoint.json), a run folder (checkpoint-<step>/ folders), a model "
                 "folder (encoder.json, config.json or modules.json), a folder of saved embeddings (corpus.npy, "
                 "corpus.ids.npy, queries.npy, queries.ids.npy) or the alias 'minilm'")


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, expected, got=str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, expected, line=exc.lineno, got=exc.msg) from None


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "a YAML recipe", got=str(exc)) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(path, "a YAML recipe", line=None if line is None else line + 1,
                         got=str(getattr(exc, "problem", exc))) from None


def _has_embeddings(folder: Path) -> bool:
    return all((folder / name).is_file() for name in EMBEDDING_FILES)


@dataclass
class Subject:
    """One embedding space: a checkpoint, a model, or a folder of saved embeddings.

    ``model_source`` / ``model_overrides`` are what :meth:`DualEncoder.load` receives when the subject has to be
    encoded; ``embeddings_dir`` holds saved embeddings (reused when present); ``negatives_dir`` the trainer's
    mined negatives with their sampling counts.
    """

    label: str
    kind: str                                   # "checkpoint" | "model" | "embeddings"
    path: str
    step: int | None = None
    meta: dict = field(default_factory=dict)    # checkpoint.json, or the embeddings folder's meta.json
    dev_metrics: dict | None = None
    model_source: str | None = None
    model_overrides: dict = field(default_factory=dict)
    embeddings_dir: Path | None = None
    negatives_dir: Path | None = None
    encoder_config: dict | None = None          # encoder.json of the subject's model, when there is one

    @property
    def collection_spec(self) -> Any:
        """The collection recorded with the subject (checkpoint.json / meta.json), or None."""
        return self.meta.get("collection") if isinstance(self.meta, dict) else None

    def temperature(self) -> tuple[float, str]:
        """The training temperature and where it comes from: checkpoint.json, encoder.json, else 1.0."""
        value = self.meta.get("temperature") if isinstance(self.meta, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value), "checkpoint.json"
        if self.encoder_config:
            value = self.encoder_config.get("temperature")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value), "encoder.json"
        return 1.0, "default (no temperature recorded)"

    def describe(self) -> dict:
        """A JSON-able description for the provenance section."""
        out = {"label": self.label, "kind": self.kind, "path": self.path, "step": self.step,
               "embeddings": str(self.embeddings_dir) if self.embeddings_dir else None,
               "negatives": str(self.negatives_dir) if self.negatives_dir else None,
               "model": self.model_source, "model_overrides": dict(self.model_overrides)}
        for key in ("objective", "seed", "temperature", "splits", "collection"):
            if isinstance(self.meta, dict) and key in self.meta:
                out[key] = self.meta[key]
        if self.encoder_config:
            out["encoder"] = self.encoder_config
        if self.dev_metrics:
            out["dev_metrics"] = self.dev_metrics
        return out


@dataclass
class RunInput:
    """One command-line PATH: its subjects in step order (one for anything but a run folder)."""

    name: str
    path: str
    kind: str                                   # "run" | "checkpoint" | "model" | "embeddings"
    subjects: list[Subject]
    representative_index: int = -1
    selection: str = "the only subject"
    config: Any = None                          # the run's config.yaml (resolved recipe), when present
    skipped: list[str] = field(default_factory=list)
    training_log: list[dict] = field(default_factory=list)   # {"step", "loss"} lines of metrics.jsonl
    refresh_log: list[dict] = field(default_factory=list)    # space statistics logged at each refresh

    @property
    def representative(self) -> Subject:
        """The subject that stands for this input in comparisons (best dev checkpoint, else the last)."""
        return self.subjects[self.representative_index]

    @property
    def objective(self) -> str | None:
        """"ance" / "dance" when the checkpoints record it."""
        value = self.representative.meta.get("objective")
        return str(value) if value is not None else None


# ----------------------------------------------------------------------------------------------- resolving
def _encoder_json(folder: Path) -> dict | None:
    file = folder / "encoder.json"
    if not file.is_file():
        return None
    record = _read_json(file, "a JSON object with the encoder options")
    if not isinstance(record, dict):
        raise InputError(file, "a JSON object with the encoder options", got=type(record).__name__)
    return record


def _checkpoint_subject(folder: Path, label: str) -> Subject:
    meta_file = folder / "checkpoint.json"
    meta = _read_json(meta_file, "the checkpoint's JSON record {step, objective, collection, ...}")
    if not isinstance(meta, dict):
        raise InputError(meta_file, "a JSON object", got=type(meta).__name__)
    if meta.get("complete") is not True:
        raise InputError(meta_file, '"complete": true (a checkpoint written to the end)',
                         got=repr(meta.get("complete")))
    step = meta.get("step")
    match = CHECKPOINT_DIR_RE.match(folder.name)
    if not isinstance(step, int) or isinstance(step, bool):
        step = int(match.group(1)) if match else None
    dev = None
    dev_file = folder / "dev_metrics.json"
    if dev_file.is_file():
        dev = _read_json(dev_file, "a JSON object of dev metrics")
        if not isinstance(dev, dict):
            raise InputError(dev_file, "a JSON object of dev metrics", got=type(dev).__name__)
    encoder_dir = folder / "encoder"
    emb_dir = folder / "embeddings"
    neg_dir = folder / "negatives"
    has_emb = emb_dir.is_dir() and _has_embeddings(emb_dir)
    if not has_emb and not encoder_dir.is_dir():
        raise DanceError(f"{folder}: the checkpoint has neither saved embeddings (embeddings/corpus.npy, ...) "
                         f"nor an encoder/ folder; expected at least one of them")
    return Subject(label=label, kind="checkpoint", path=str(folder), step=step, meta=meta, dev_metrics=dev,
                   model_source=str(encoder_dir) if encoder_dir.is_dir() else None,
                   embeddings_dir=emb_dir if has_emb else None,
                   negatives_dir=neg_dir if neg_dir.is_dir() else None,
                   encoder_config=_encoder_json(encoder_dir) if encoder_dir.is_dir() else None)


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name} ({n})"
        n += 1
    taken.add(candidate)
    return candidate


def _select_representative(subjects: list[Subject]) -> tuple[int, str]:
    for metric in SELECTION_METRICS:
        values = [s.dev_metrics.get(metric) if s.dev_metrics else None for s in subjects]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
            best = max(range(len(values)), key=lambda i: (values[i], -i))  # earliest step on ties
            return best, f"best dev {metric} ({values[best]:.4f})"
    return len(subjects) - 1, "last checkpoint (not every checkpoint has dev metrics)"


def _metrics_records(path: Path) -> list[dict]:
    """The JSON objects of a run's ``metrics.jsonl`` (a last line still being written is skipped); empty when the
    file is absent or unreadable."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            out.append(record)
    return out


def read_training_log(path: Path) -> list[dict]:
    """The ``{"step", "loss"}`` lines of a run's ``metrics.jsonl`` (refresh records are skipped)."""
    return [{"step": r["step"], "loss": float(r["loss"])} for r in _metrics_records(path)
            if isinstance(r.get("loss"), (int, float)) and np.isfinite(r["loss"])]


def read_refresh_log(path: Path) -> list[dict]:
    """The refresh records of a run's ``metrics.jsonl`` that carry the space statistics the trainer logs at
    every refresh (:func:`dance_analysis.analysis.snapshot.refresh_geometry`): ``{"step", <statistic>: value}``,
    with the dev MRR@10 when there is one. They let the report draw how the space moved without saved
    embeddings."""
    out = []
    for r in _metrics_records(path):
        geometry = r.get("geometry")
        if isinstance(geometry, dict) and geometry:
            row = {"step": r["step"], **{k: v for k, v in geometry.items() if isinstance(v, (int, float))}}
            dev = r.get("dev") or {}
            if isinstance(dev.get("MRR@10"), (int, float)):
                row["dev MRR@10"] = float(dev["MRR@10"])
            out.append(row)
    return out


def _is_trainer_checkpoint(folder: Path) -> bool:
    """A checkpoint saved by a transformers / sentence-transformers ``Trainer``: a model folder (``modules.json``
    or ``config.json``) beside the trainer's ``trainer_state.json``."""
    return (folder / "trainer_state.json").is_file() and \
        ((folder / "modules.json").is_file() or (folder / "config.json").is_file())


def _trainer_run(folder: Path, text: str, base: str, steps: list[tuple[int, Path]], name: str | None) -> RunInput:
    """The output folder of a transformers / sentence-transformers ``Trainer`` as a run: each
    ``checkpoint-<step>/`` model folder is a subject (read with its own modules), its dev metrics are the
    evaluation the trainer logged at that step (``eval_`` dropped from the keys, so an evaluator's
    ``eval_<name>_MRR@10`` reads ``<name>_MRR@10``), and the checkpoint standing for the run is the trainer's
    ``best_model_checkpoint`` when it recorded one (``metric_for_best_model``), else the one with the best logged
    ``*MRR@10`` / ``*nDCG@10``, else the last; the training loss comes from ``log_history``."""
    subjects, skipped = [], []
    for step, child in steps:
        if not _is_trainer_checkpoint(child):
            skipped.append(f"{child.name}: no trainer_state.json beside a model")
            continue
        subjects.append(Subject(label=f"{base}/{child.name}", kind="model", path=str(child), step=step,
                                model_source=str(child), encoder_config=_encoder_json(child)))
    last_state = _read_json(Path(subjects[-1].path) / "trainer_state.json",
                            "the trainer's JSON state {log_history, best_model_checkpoint, ...}")
    if not isinstance(last_state, dict):
        raise InputError(Path(subjects[-1].path) / "trainer_state.json", "a JSON object",
                         got=type(last_state).__name__)
    history = [r for r in last_state.get("log_history") or [] if isinstance(r, dict)]
    evals: dict[int, dict] = {}
    for record in history:
        if isinstance(record.get("step"), int) and any(str(k).startswith("eval_") for k in record):
            evals.setdefault(record["step"], {}).update(
                {k[len("eval_"):]: float(v) for k, v in record.items()
                 if str(k).startswith("eval_") and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for subject in subjects:
        subject.dev_metrics = evals.get(subject.step) or None
    index, selection = len(subjects) - 1, "last checkpoint (the trainer logged no ranking metric at every one)"
    best = last_state.get("best_model_checkpoint")
    chosen = [i for i, s in enumerate(subjects) if best and Path(s.path).name == Path(str(best)).name]
    if chosen:
        index = chosen[0]
        selection = f"the trainer's best_model_checkpoint ({last_state.get('best_metric')})"
    else:
        for metric in SELECTION_METRICS:
            keys = {k for s in subjects for k in (s.dev_metrics or {}) if k == metric or k.endswith("_" + metric)}
            if len(keys) == 1:
                key = keys.pop()
                values = [(s.dev_metrics or {}).get(key) for s in subjects]
                if all(isinstance(v, float) and np.isfinite(v) for v in values):
                    index = max(range(len(values)), key=lambda i: (values[i], -i))
                    selection = f"best dev {key} ({values[index]:.4f}, from trainer_state.json)"
                    break
    training_log = [{"step": r["step"], "loss": float(r["loss"])} for r in history
                    if isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float))
                    and np.isfinite(r["loss"])]
    return RunInput(name=name or base, path=text, kind="run", subjects=subjects, representative_index=index,
                    selection=selection, skipped=skipped, training_log=training_log)


def resolve_path(path: str, name: str | None = None) -> RunInput:
    """Turn one command-line PATH into a :class:`RunInput`; raises :class:`DanceError` when it is none of the
    accepted kinds (see the module docstring)."""
    text = os.fspath(path)
    folder = Path(text).expanduser()
    if text == MINILM_ALIAS and not folder.exists():
        subject = Subject(label=MINILM_ALIAS, kind="model", path=MINILM_ALIAS, model_source=MINILM_ALIAS)
        return RunInput(name=name or MINILM_ALIAS, path=MINILM_ALIAS, kind="model", subjects=[subject])
    if not folder.exists():
        raise DanceError(f"{text}: no such file or folder; expected {EXPECTED_PATH}")
    if not folder.is_dir():
        raise DanceError(f"{text}: is a file; expected {EXPECTED_PATH}")
    base = folder.resolve().name or text

    if (folder / "checkpoint.json").is_file():
        parent = folder.resolve().parent.name
        label = f"{parent}/{base}" if parent else base
        subject = _checkpoint_subject(folder, label)
        return RunInput(name=name or label, path=text, kind="checkpoint", subjects=[subject])

    steps = []
    for child in folder.iterdir():
        match = CHECKPOINT_DIR_RE.match(child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    if steps:
        steps.sort()
        if not any((child / "checkpoint.json").is_file() for _, child in steps) \
                and any(_is_trainer_checkpoint(child) for _, child in steps):
            return _trainer_run(folder, text, base, steps, name)
        subjects, skipped = [], []
        for _, child in steps:
            if not (child / "checkpoint.json").is_file():
                skipped.append(f"{child.name}: no checkpoint.json")
                continue
            subjects.append(_checkpoint_subject(child, f"{base}/{child.name}"))
        if not subjects:
            raise DanceError(f"{text}: none of its checkpoint-<step>/ folders has a checkpoint.json; "
                             f"expected at least one complete checkpoint")
        index, selection = _select_representative(subjects)
        config = _read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
        return RunInput(name=name or base, path=text, kind="run", subjects=subjects, representative_index=index,
                        selection=selection, config=config, skipped=skipped,
                        training_log=read_training_log(folder / "metrics.jsonl"),
                        refresh_log=read_refresh_log(folder / "metrics.jsonl"))

    if _has_embeddings(folder):
        meta = {}
        if (folder / "meta.json").is_file():
            meta = _read_json(folder / "meta.json", 'a JSON object such as {"collection": "rag24-sample"}')
            if not isinstance(meta, dict):
                raise InputError(folder / "meta.json", "a JSON object", got=type(meta).__name__)
        subject = Subject(label=base, kind="embeddings", path=text, meta=meta, embeddings_dir=folder,
                          negatives_dir=folder / "negatives" if (folder / "negatives").is_dir() else None)
        return RunInput(name=name or base, path=text, kind="embeddings", subjects=[subject])

    if (folder / "encoder.json").is_file() or (folder / "config.json").is_file() \
            or (folder / "modules.json").is_file():
        subject = Subject(label=base, kind="model", path=text, model_source=str(folder),
                          encoder_config=_encoder_json(folder))
        return RunInput(name=name or base, path=text, kind="model", subjects=[subject])

    raise DanceError(f"{text}: no checkpoint, model or embeddings found in this folder; expected {EXPECTED_PATH}")


def resolve_inputs(paths: Sequence[str]) -> list[RunInput]:
    """Resolve every PATH (see :func:`resolve_path`); names are made unique."""
    if not paths:
        raise DanceError(f"no PATH given; expected {EXPECTED_PATH}")
    taken: set[str] = set()
    runs = []
    for path in paths:
        run = resolve_path(path)
        run.name = _unique_name(run.name, taken)
        runs.append(run)
    return runs


def collection_spec(runs: Sequence[RunInput], requested: Any = None) -> Any:
    """The collection to analyse: ``requested`` (the command line) when given, else the one every subject records.

    Raises :class:`DanceError` when nothing names a collection or the subjects record different ones.
    """
    if requested:
        return requested
    found: dict[str, tuple[Any, str]] = {}
    for run in runs:
        for subject in run.subjects:
            spec = subject.collection_spec
            if spec is not None:
                found.setdefault(json.dumps(spec, sort_keys=True, default=str), (spec, subject.label))
    if not found:
        raise DanceError("no collection is recorded with the inputs; name one with --collection "
                         "(e.g. --collection rag24-sample)")
    if len(found) > 1:
        listed = "; ".join(f"{label}: {key}" for key, (_, label) in found.items())
        raise DanceError(f"the inputs record different collections ({listed}); name the one to analyse with "
                         f"--collection")
    return next(iter(found.values()))[0]


# ----------------------------------------------------------------------------------------------- embeddings
#: The model loaded last (key, model): checking the inputs loads every model once, and the one checked last
#: (the only one, for a single model) is reused for encoding instead of being loaded again.
_LAST_MODEL: list = []


def load_model(subject: Subject, overrides: dict | None = None):
    """Load the subject's encoder (a :class:`DanceError` names the folder when the weights are unreadable)."""
    from ..model import DualEncoder

    if subject.model_source is None:
        raise DanceError(f"{subject.path}: no encoder to load (expected an encoder/ folder)")
    options = {**subject.model_overrides, **(overrides or {})}
    key = (subject.model_source, json.dumps(options, sort_keys=True, default=str))
    if _LAST_MODEL and _LAST_MODEL[0][0] == key:
        return _LAST_MODEL[0][1]
    _LAST_MODEL.clear()
    try:
        model = DualEncoder.load(subject.model_source, **options)
    except DanceError:
        raise
    except Exception as exc:  # a corrupt or foreign model folder
        raise DanceError(f"{subject.model_source}: cannot load the model ({type(exc).__name__}: {exc}); expected "
                         f"a model folder with readable weights") from exc
    _LAST_MODEL.append((key, model))
    return model


def release_models() -> None:
    """Forget the cached model (frees its memory)."""
    _LAST_MODEL.clear()


def probe_dim(subject: Subject, overrides: dict | None = None) -> int:
    """The embedding size of a subject, from its saved vectors (checked for NaN / inf, which raises
    :class:`DanceError` naming the file and rows) or by loading its model (which checks the weights)."""
    if subject.embeddings_dir is not None:
        from ..embeddings import Embeddings

        corpus = Embeddings.load(subject.embeddings_dir / "corpus")
        queries = Embeddings.load(subject.embeddings_dir / "queries")
        for saved in (corpus, queries):
            _check_rows_finite(saved.vectors, saved.ids, None, saved.path)
        if corpus.dim != queries.dim:
            raise DanceError(f"{subject.embeddings_dir}: corpus vectors have size {corpus.dim} but query vectors "
                             f"{queries.dim}; expected one embedding size")
        return corpus.dim
    model = load_model(subject, overrides)
    return int(model.dim)


def check_dims(runs: Sequence[RunInput], overrides: dict | None = None) -> int:
    """Check every subject before any work: saved vectors finite, weights loadable, and one embedding size for
    all (needed for comparisons and shared projections); returns that size."""
    dims: dict[str, int] = {}
    for run in runs:
        for subject in run.subjects:
            dims[subject.label] = probe_dim(subject, overrides)
    distinct = sorted(set(dims.values()))
    if len(distinct) > 1:
        listed = ", ".join(f"{label}: {dim}" for label, dim in dims.items())
        raise DanceError(f"the inputs have different embedding sizes ({listed}); expected one size so that they "
                         f"can be compared in one report (analyse them separately)")
    return distinct[0]


def _check_rows_finite(vectors: np.ndarray, ids: np.ndarray, file_rows: np.ndarray | None, file: str) -> None:
    bad: list[int] = []
    for start in range(0, vectors.shape[0], 65536):
        block = np.asarray(vectors[start:start + 65536])
        bad.extend((np.flatnonzero(~np.isfinite(block).all(axis=1)) + start).tolist())
    if bad:
        rows = [int(file_rows[b]) if file_rows is not None else b for b in bad]
        shown = ", ".join(f"{row} ({ids[b]})" for row, b in zip(rows[:5], bad[:5]))
        raise DanceError(f"{file}: {len(bad)} vector(s) hold NaN or inf, rows {shown}"
                         f"{' ...' if len(bad) > 5 else ''}; expected finite values (a diverged model?)")


def _saved_subset(prefix: Path, wanted: np.ndarray, what: str):
    """The saved vectors of ``wanted`` ids (the memmap itself when they are all rows in order), checked finite."""
    from ..embeddings import Embeddings

    saved = Embeddings.load(prefix)
    if len(saved.ids) == len(wanted) and np.array_equal(saved.ids, wanted):
        _check_rows_finite(saved.vectors, saved.ids, None, saved.path)
        return saved
    position = {key: i for i, key in enumerate(saved.ids.tolist())}
    missing = [key for key in wanted.tolist() if key not in position]
    if missing:
        raise DanceError(f"{saved.path}: the saved {what} lack {len(missing)} id(s) of the collection, e.g. "
                         f"{', '.join(map(repr, missing[:5]))}; expected embeddings of the collection being "
                         f"analysed (pass the right --collection)")
    rows = np.fromiter((position[key] for key in wanted.tolist()), dtype=np.int64, count=len(wanted))
    order = np.argsort(rows, kind="stable")
    vectors = np.empty((len(rows), saved.dim), dtype=saved.vectors.dtype)
    vectors[order] = np.asarray(saved.vectors[rows[order]])   # read the memmap in file order
    _check_rows_finite(vectors, wanted, rows, saved.path)
    return Embeddings(wanted, vectors, path=saved.path)


def _encode(model, collection, side: str, wanted: np.ndarray, *, batch_size: int, device, progress: bool,
            label: str):
    """Encode the ``wanted`` ids of one side. Queries, and documents when only part of the corpus is wanted, are
    tokenised directly; a whole (or most of a) corpus goes through the collection's token cache."""
    from ..encode import encode_texts, encode_tokens

    if side == "query":
        missing = [key for key in wanted.tolist() if key not in collection.queries]
        if missing:
            raise DanceError(f"{len(missing)} query id(s) are not in {collection.name}, e.g. "
                             f"{', '.join(map(repr, missing[:5]))}")
        embeddings = encode_texts(model, wanted, [collection.queries[q] for q in wanted.tolist()], side,
                                  batch_size=batch_size, device=device, progress=progress)
    elif 2 * len(wanted) <= len(collection.corpus):
        embeddings = encode_texts(model, wanted, collection.corpus.texts(wanted.tolist()), side,
                                  batch_size=batch_size, device=device, progress=progress)
    else:
        from ..data.tokens import cached_tokens

        tokens = cached_tokens(collection, side, model.tokenizer, model.config.doc_max_length,
                               prompt=model.config.document_prompt)
        row = {key: i for i, key in enumerate(np.asarray(tokens.ids).tolist())}
        missing = [key for key in wanted.tolist() if key not in row]
        if missing:
            raise DanceError(f"{len(missing)} document id(s) are not in the token cache of {collection.name}, "
                             f"e.g. {', '.join(map(repr, missing[:5]))}")
        indices = np.fromiter((row[key] for key in wanted.tolist()), dtype=np.int64, count=len(wanted))
        embeddings = encode_tokens(model, tokens, side, batch_size=batch_size, device=device, progress=progress,
                                   indices=indices)
    if not np.array_equal(np.asarray(embeddings.ids), wanted):
        embeddings = embeddings.subset(wanted)
    _check_rows_finite(embeddings.vectors, embeddings.ids, None, f"{label} ({side} vectors just encoded)")
    return embeddings


def _changes_prompts(subject: Subject, overrides: dict | None) -> bool:
    """Whether ``overrides`` give a prompt other than the one the subject's saved vectors were encoded with."""
    asked = {k: v for k, v in (overrides or {}).items() if k in ("query_prompt", "document_prompt")}
    if not asked:
        return False
    saved = _encoder_json(Path(subject.model_source)) if subject.model_source is not None else None
    return any((saved or {}).get(k, "") != v for k, v in asked.items())


def subject_embeddings(subject: Subject, collection, doc_ids: np.ndarray, query_ids: np.ndarray, *,
                       batch_size: int = 64, device: str = "auto", progress: bool = True,
                       overrides: dict | None = None):
    """``(corpus, queries, source)``: the subject's vectors for ``doc_ids`` and ``query_ids`` (in that order).

    Saved embeddings are reused (``source`` = "saved") unless ``overrides`` change the model's prompts; otherwise
    the subject's model encodes the texts (``source`` = "encoded"). NaN / infinite vectors raise
    :class:`DanceError` naming the file and rows.
    """
    doc_ids = np.asarray(doc_ids).astype(str)
    query_ids = np.asarray(query_ids).astype(str)
    if subject.embeddings_dir is not None and not _changes_prompts(subject, overrides):
        corpus = _saved_subset(subject.embeddings_dir / "corpus", doc_ids, "corpus vectors")
        queries = _saved_subset(subject.embeddings_dir / "queries", query_ids, "query vectors")
        return corpus, queries, "saved"
    model = load_model(subject, overrides)
    model.eval()
    corpus = _encode(model, collection, "doc", doc_ids, batch_size=batch_size, device=device,
                     progress=progress, label=subject.label)
    queries = _encode(model, collection, "query", query_ids, batch_size=batch_size, device=device,
                      progress=progress, label=subject.label)
    return corpus, queries, "encoded"
