"""What `dance-analyze` analyses: turn each command-line PATH into runs of subjects, and subjects into embeddings.

A PATH is one of

- a checkpoint folder written by the trainer (has ``checkpoint.json``; see the checkpoint contract in DESIGN.md);
- a run folder (holds ``checkpoint-<step>/`` folders): every checkpoint, in numeric step order, is one point of
  the run's trajectory; the checkpoint the trainer would call best stands for the run in comparisons
  (:func:`dance_analysis.checkpoints.run_best`: the one ``best.json`` names, else the best by the recipe's
  ``checkpoint.best_metric`` with its direction; the last one when no checkpoint has dev metrics);
- the output folder of a transformers / sentence-transformers ``Trainer`` (``checkpoint-<step>/`` model folders
  with ``trainer_state.json``): a run of model subjects, dev metrics from the trainer's logged evaluations
  (:func:`_trainer_run`);
- a model folder: one written by ``DualEncoder.save`` (``encoder.json``), a Hugging Face model folder
  (``config.json``), a sentence-transformers folder (``modules.json``; read with its own modules by
  :meth:`DualEncoder.load <dance_analysis.model.DualEncoder.load>`), or the alias ``minilm``;
- a folder of saved embeddings: ``corpus.npy`` + ``corpus.ids.npy`` + ``queries.npy`` + ``queries.ids.npy`` and
  optionally ``meta.json`` ``{"collection": <spec>}``.

This module only reads: the folders (through :mod:`dance_analysis.checkpoints`, the run-folder contract shared
with the trainer), the records beside them and saved vectors (:func:`saved_subset`). Loading models and encoding
subjects without saved vectors is :mod:`dance_analysis.report.encode_subjects`; statistics are
:mod:`dance_analysis.report.compute`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoints
from ..atomic import read_json, read_yaml
from ..embeddings import Embeddings
from ..errors import DanceError, InputError
from ..metrics import PRIMARY_METRIC

MINILM_ALIAS = "minilm"

EXPECTED_PATH = ("a checkpoint folder (checkpoint.json), a run folder (checkpoint-<step>/ folders), a model "
                 "folder (encoder.json, config.json or modules.json), a folder of saved embeddings (corpus.npy, "
                 "corpus.ids.npy, queries.npy, queries.ids.npy) or the alias 'minilm'")


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
def read_encoder_json(folder: Path) -> dict | None:
    file = folder / "encoder.json"
    if not file.is_file():
        return None
    return read_json(file, "a JSON object with the encoder options", kind=dict)


def _checkpoint_subject(folder: Path, label: str) -> Subject:
    meta_file = folder / checkpoints.CHECKPOINT_FILE
    meta = read_json(meta_file, "the checkpoint's JSON record {step, objective, collection, ...}", kind=dict)
    if meta.get("complete") is not True:
        raise InputError(meta_file, '"complete": true (a checkpoint written to the end)',
                         got=repr(meta.get("complete")))
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        step = checkpoints.checkpoint_step(folder)
    dev = read_json(folder / checkpoints.DEV_METRICS_FILE, "a JSON object of dev metrics", kind=dict, missing=None)
    encoder_dir = folder / checkpoints.ENCODER_DIR
    emb_dir = folder / checkpoints.EMBEDDINGS_DIR
    neg_dir = folder / checkpoints.NEGATIVES_DIR
    has_emb = emb_dir.is_dir() and checkpoints.has_embeddings(emb_dir)
    if not has_emb and not encoder_dir.is_dir():
        raise DanceError(f"{folder}: the checkpoint has neither saved embeddings (embeddings/corpus.npy, ...) "
                         f"nor an encoder/ folder; expected at least one of them")
    return Subject(label=label, kind="checkpoint", path=str(folder), step=step, meta=meta, dev_metrics=dev,
                   model_source=str(encoder_dir) if encoder_dir.is_dir() else None,
                   embeddings_dir=emb_dir if has_emb else None,
                   negatives_dir=neg_dir if neg_dir.is_dir() else None,
                   encoder_config=read_encoder_json(encoder_dir) if encoder_dir.is_dir() else None)


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name} ({n})"
        n += 1
    taken.add(candidate)
    return candidate


def _select_representative(folder: Path, subjects: list[Subject]) -> tuple[int, str]:
    """The subject standing for a run of dance-train: its best checkpoint (:func:`dance_analysis.checkpoints.
    run_best`, the rule the trainer writes ``best.json`` by), else the last one."""
    best = checkpoints.run_best(folder)
    if best is not None:
        for i, subject in enumerate(subjects):
            if subject.step == best.step:
                return i, best.describe()
    return len(subjects) - 1, "last checkpoint (no checkpoint has dev metrics of the run's best_metric)"


def _metrics_records(path: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` with a numeric ``step`` (:func:`dance_analysis.checkpoints.
    read_metrics_log`: a last line still being written is skipped, any other bad line names file and line)."""
    return [r for r in checkpoints.read_metrics_log(path) if isinstance(r.get("step"), (int, float))]


def read_training_log(path: Path) -> list[dict]:
    """The ``{"step", "loss"}`` lines of a run's ``metrics.jsonl`` (refresh records are skipped)."""
    return [{"step": r["step"], "loss": float(r["loss"])} for r in _metrics_records(path)
            if isinstance(r.get("loss"), (int, float)) and np.isfinite(r["loss"])]


#: The key of the dev primary metric in the rows of :func:`read_refresh_log`.
REFRESH_DEV_KEY = f"dev {PRIMARY_METRIC.name}"


def read_refresh_log(path: Path) -> list[dict]:
    """The refresh records of a run's ``metrics.jsonl`` that carry the space statistics the trainer logs at
    every refresh (:func:`dance_analysis.analysis.snapshot.refresh_geometry`): ``{"step", <statistic>: value}``,
    with the dev primary metric (:data:`REFRESH_DEV_KEY`) when there is one. They let the report draw how the
    space moved without saved embeddings."""
    out = []
    for r in _metrics_records(path):
        geometry = r.get("geometry")
        if isinstance(geometry, dict) and geometry:
            row = {"step": r["step"], **{k: v for k, v in geometry.items() if isinstance(v, (int, float))}}
            value = PRIMARY_METRIC.value(r.get("dev"))
            if value is not None:
                row[REFRESH_DEV_KEY] = value
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
    primary metric (``*MRR@10``, :data:`dance_analysis.metrics.PRIMARY_METRIC`), else the last; the training loss
    comes from ``log_history``."""
    subjects, skipped = [], []
    for step, child in steps:
        if not _is_trainer_checkpoint(child):
            skipped.append(f"{child.name}: no trainer_state.json beside a model")
            continue
        subjects.append(Subject(label=f"{base}/{child.name}", kind="model", path=str(child), step=step,
                                model_source=str(child), encoder_config=read_encoder_json(child)))
    last_state = read_json(Path(subjects[-1].path) / "trainer_state.json",
                           "the trainer's JSON state {log_history, best_model_checkpoint, ...}", kind=dict)
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
        metric = PRIMARY_METRIC
        keys = {k for s in subjects for k in (s.dev_metrics or {})
                if k == metric.name or k.endswith("_" + metric.name)}
        if len(keys) == 1:
            logged = type(metric)(keys.pop(), metric.higher_is_better)
            values = [logged.value(s.dev_metrics) for s in subjects]
            if all(v is not None for v in values):
                index = logged.pick(values)
                selection = f"best dev {logged.name} ({values[index]:.4f}, from trainer_state.json)"
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

    if (folder / checkpoints.CHECKPOINT_FILE).is_file():
        parent = folder.resolve().parent.name
        label = f"{parent}/{base}" if parent else base
        subject = _checkpoint_subject(folder, label)
        return RunInput(name=name or label, path=text, kind="checkpoint", subjects=[subject])

    steps = checkpoints.list_checkpoints(folder, complete_only=False)
    if steps:
        if not any((child / checkpoints.CHECKPOINT_FILE).is_file() for _, child in steps) \
                and any(_is_trainer_checkpoint(child) for _, child in steps):
            return _trainer_run(folder, text, base, steps, name)
        subjects, skipped = [], []
        for _, child in steps:
            if not (child / checkpoints.CHECKPOINT_FILE).is_file():
                skipped.append(f"{child.name}: no {checkpoints.CHECKPOINT_FILE}")
                continue
            subjects.append(_checkpoint_subject(child, f"{base}/{child.name}"))
        if not subjects:
            raise DanceError(f"{text}: none of its checkpoint-<step>/ folders has a checkpoint.json; "
                             f"expected at least one complete checkpoint")
        config_file = folder / checkpoints.CONFIG_FILE
        config = read_yaml(config_file, "a YAML recipe") if config_file.is_file() else None
        index, selection = _select_representative(folder, subjects)
        metrics_log = folder / checkpoints.METRICS_FILE
        return RunInput(name=name or base, path=text, kind="run", subjects=subjects, representative_index=index,
                        selection=selection, config=config, skipped=skipped,
                        training_log=read_training_log(metrics_log), refresh_log=read_refresh_log(metrics_log))

    if checkpoints.has_embeddings(folder):
        meta = {}
        if (folder / "meta.json").is_file():
            meta = read_json(folder / "meta.json", 'a JSON object such as {"collection": "rag24-sample"}')
            if not isinstance(meta, dict):
                raise InputError(folder / "meta.json", "a JSON object", got=type(meta).__name__)
        subject = Subject(label=base, kind="embeddings", path=text, meta=meta, embeddings_dir=folder,
                          negatives_dir=folder / "negatives" if (folder / "negatives").is_dir() else None)
        return RunInput(name=name or base, path=text, kind="embeddings", subjects=[subject])

    if (folder / "encoder.json").is_file() or (folder / "config.json").is_file() \
            or (folder / "modules.json").is_file():
        subject = Subject(label=base, kind="model", path=text, model_source=str(folder),
                          encoder_config=read_encoder_json(folder))
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


# ------------------------------------------------------------------------------------------- saved vectors
def check_rows_finite(vectors: np.ndarray, ids: np.ndarray, file_rows: np.ndarray | None, file: str) -> None:
    """Raise :class:`DanceError` naming ``file`` and the first rows (and their ids) of ``vectors`` that hold NaN or
    inf; ``file_rows``: the row of each vector in the file, when they are a subset."""
    bad: list[int] = []
    for start in range(0, vectors.shape[0], 65536):
        block = np.asarray(vectors[start:start + 65536])
        bad.extend((np.flatnonzero(~np.isfinite(block).all(axis=1)) + start).tolist())
    if bad:
        rows = [int(file_rows[b]) if file_rows is not None else b for b in bad]
        shown = ", ".join(f"{row} ({ids[b]})" for row, b in zip(rows[:5], bad[:5]))
        raise DanceError(f"{file}: {len(bad)} vector(s) hold NaN or inf, rows {shown}"
                         f"{' ...' if len(bad) > 5 else ''}; expected finite values (a diverged model?)")


def saved_subset(prefix: Path, wanted: np.ndarray, what: str):
    """The saved vectors of ``wanted`` ids (the memmap itself when they are all rows in order), checked finite."""

    saved = Embeddings.load(prefix)
    if len(saved.ids) == len(wanted) and np.array_equal(saved.ids, wanted):
        check_rows_finite(saved.vectors, saved.ids, None, saved.path)
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
    check_rows_finite(vectors, wanted, rows, saved.path)
    return Embeddings(wanted, vectors, path=saved.path)


def saved_dim(folder: Path) -> int:
    """The embedding size of a folder of saved embeddings, after checking every vector is finite
    (:func:`check_rows_finite`) and that queries and corpus have one size."""

    corpus = Embeddings.load(folder / "corpus")
    queries = Embeddings.load(folder / "queries")
    for vectors in (corpus, queries):
        check_rows_finite(vectors.vectors, vectors.ids, None, vectors.path)
    if corpus.dim != queries.dim:
        raise DanceError(f"{folder}: corpus vectors have size {corpus.dim} but query vectors {queries.dim}; "
                         f"expected one embedding size")
    return corpus.dim
