"""The run folder and its checkpoints, read: the contract between ``dance-train`` and everything that reads a run.

The trainer writes through :mod:`dance_analysis.training.checkpoint` (atomic publishing, pruning, exact-resume
state); every reader (the trainer when it resumes, ``dance-analyze``, ``dance-mine``, the experiment, exports)
reads through this module, so that they agree on the names, on which checkpoints exist and on which one stands
for a run. It imports nothing above the ground floor (no torch, no training code)::

    <run_dir>/
        config.yaml          the resolved recipe (CONFIG_FILE)
        metrics.jsonl        one JSON object per line: training steps and refreshes (METRICS_FILE)
        summary.json         the finished run's summary (SUMMARY_FILE)
        best.json            {"step", "path", "metric", "value"}: the best checkpoint at the end (BEST_FILE)
        prepared.json        written last by ``dance-train --prepare`` (PREPARED_FILE)
        tensorboard/         TensorBoard events (TENSORBOARD_DIR)
        refresh/, miner.log  the asynchronous miner's sets (step-<N>/), held.json (the checkpoint it is refreshing
                             from, never pruned), held.lock (taken while the miner marks a checkpoint and while the
                             trainer prunes), STOP, and its log (REFRESH_DIR, HELD_FILE, HELD_LOCK, STOP_FILE,
                             MINER_LOG)
        checkpoint-<step>/
            checkpoint.json      {"step", "objective", "collection", "splits", "seed", "temperature",
                                 "complete": true} (CHECKPOINT_FILE)
            encoder/             DualEncoder.save (ENCODER_DIR)
            trainer_state.json, optimizer.pt, scheduler.pt, rng.pt, rng.json   exact-resume state
            dev_metrics.json     dev metrics of the refresh that mined this checkpoint's negatives
            refresh.json         that refresh's record
            embeddings/          corpus.npy, corpus.ids.npy, queries.npy, queries.ids.npy (EMBEDDING_FILES)
            negatives/           :class:`dance_analysis.mining.NegativeSet`

A folder named ``checkpoint-<step>`` is complete when its ``checkpoint.json`` says ``"complete": true`` (the
trainer publishes it by a rename, so a complete one is never half-written).

**The best checkpoint of a run** is chosen by one rule (:func:`run_best`): the checkpoint ``best.json`` names when
the run has one (the trainer wrote it at the end); otherwise the checkpoint with the best value of the run's
primary metric (the recipe's ``checkpoint.best_metric`` in ``config.yaml``, else
:data:`dance_analysis.metrics.PRIMARY_METRIC`), with that metric's direction, the earliest on ties
(:func:`best_checkpoint`, which the trainer also uses to write ``best.json`` and to keep the best when pruning).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import read_json, read_yaml
from .errors import DanceError, InputError
from .metrics import PrimaryMetric, primary_metric

# ------------------------------------------------------------------------------------------------------ names
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BEST_FILE = "best.json"
PREPARED_FILE = "prepared.json"
TENSORBOARD_DIR = "tensorboard"
REFRESH_DIR = "refresh"
MINER_LOG = "miner.log"
#: In ``refresh/``: the step the miner is refreshing from (kept by pruning) and the trainer's request to stop.
HELD_FILE = "held.json"
#: In ``refresh/``: the lock that makes the miner's choice of a checkpoint and the trainer's pruning one at a time.
HELD_LOCK = "held.lock"
STOP_FILE = "STOP"

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Prefix of the temporary folder a checkpoint is written into before it is renamed into place.
TMP_PREFIX = ".tmp-checkpoint-"
CHECKPOINT_FILE = "checkpoint.json"
ENCODER_DIR = "encoder"
TRAINER_STATE_FILE = "trainer_state.json"
DEV_METRICS_FILE = "dev_metrics.json"
REFRESH_FILE = "refresh.json"
EMBEDDINGS_DIR = "embeddings"
NEGATIVES_DIR = "negatives"
#: The files of a folder of saved embeddings (a checkpoint's ``embeddings/``, or one written by dance-mine).
EMBEDDING_FILES = ("corpus.npy", "corpus.ids.npy", "queries.npy", "queries.ids.npy")

#: Mining keys that do not change what the step-0 refresh writes (compared against a prepared folder: the rest).
RUNTIME_MINING_KEYS = frozenset({"mode", "device", "poll_seconds", "max_staleness", "refresh_every",
                                 "final_refresh"})


def checkpoint_name(step: int) -> str:
    """``checkpoint-<step>``."""
    return f"{CHECKPOINT_PREFIX}{int(step)}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, or ``None``."""
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------------- listing
def read_checkpoint_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``checkpoint.json`` of a checkpoint folder; ``None`` when it is missing or unreadable."""
    return read_json(Path(path) / CHECKPOINT_FILE, kind=dict, invalid=None)


def is_complete(path: str | os.PathLike) -> bool:
    """True when the folder has a ``checkpoint.json`` with ``"complete": true``."""
    record = read_checkpoint_record(path)
    return bool(record.get("complete")) if record is not None else False


def list_checkpoints(run_dir: str | os.PathLike, *, complete_only: bool = True) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``run_dir`` (only the complete ones unless
    ``complete_only`` is false), ordered by step (numerically)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for child in run_dir.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir() and (not complete_only or is_complete(child)):
            out.append((step, child))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def looks_like_run(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a ``config.yaml``, a ``metrics.jsonl`` or a ``checkpoint-<step>`` entry."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and ((run_dir / CONFIG_FILE).exists() or (run_dir / METRICS_FILE).exists()
                                 or any(checkpoint_step(p) is not None for p in run_dir.iterdir()))


def read_refresh_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``refresh.json`` record of a checkpoint folder (or an asynchronous miner's set), or ``None`` when it has
    none (or an unreadable one)."""
    return read_json(Path(path) / REFRESH_FILE, kind=dict, invalid=None)


def read_dev_metrics(path: str | os.PathLike) -> dict[str, float] | None:
    """The ``dev_metrics.json`` of a checkpoint folder, or ``None`` when it has none (or an unreadable one)."""
    return read_json(Path(path) / DEV_METRICS_FILE, kind=dict, invalid=None)


# ---------------------------------------------------------------------------------------------- embeddings
def has_embeddings(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds every file of :data:`EMBEDDING_FILES`."""
    return all((Path(folder) / name).is_file() for name in EMBEDDING_FILES)


def saved_embeddings(path: str | os.PathLike) -> Path | None:
    """The folder of saved embeddings ``path`` names: a checkpoint's ``embeddings/``, or ``path`` itself when it
    is such a folder; ``None`` when there is none."""
    path = Path(path)
    for candidate in (path / EMBEDDINGS_DIR, path):
        if has_embeddings(candidate):
            return candidate
    return None


# ---------------------------------------------------------------------------------------------- best
class Best(NamedTuple):
    """A checkpoint chosen by a metric: ``(step, path, value)``."""

    step: int
    path: Path
    value: float


def best_checkpoint(run_dir: str | os.PathLike, metric: str | PrimaryMetric | None = None) -> Best | None:
    """The complete checkpoint with the best dev ``metric`` (a name, or a :class:`~dance_analysis.metrics.
    PrimaryMetric` with its direction; default the primary metric), the earliest on ties; ``None`` when no
    checkpoint has a finite value of it."""
    metric = primary_metric(metric)
    found = list_checkpoints(run_dir)
    values = [metric.value(read_dev_metrics(path)) for _, path in found]
    index = metric.pick(values)
    if index is None:
        return None
    step, path = found[index]
    return Best(step, path, float(values[index]))


def run_metric(run_dir: str | os.PathLike) -> PrimaryMetric:
    """The metric that picks the best checkpoint of a run: its recipe's ``checkpoint.best_metric``
    (``config.yaml``), else the primary metric. A malformed ``config.yaml`` is an :class:`InputError`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return primary_metric()
    recipe = read_yaml(path, "the run's YAML recipe")
    section = recipe.get("checkpoint") if isinstance(recipe, dict) else None
    name = section.get("best_metric") if isinstance(section, dict) else None
    return primary_metric(name if isinstance(name, str) and name else None)


def read_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``best.json`` record of a run (``{"step", "path", "metric", "value"}``), or ``None`` without one; a
    malformed one is an :class:`InputError`."""
    path = Path(run_dir) / BEST_FILE
    record = read_json(path, 'a JSON object {"step", "path", "metric", "value"}', kind=dict, missing=None)
    if record is not None and (not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool)):
        raise InputError(path, 'an integer "step"', got=repr(record.get("step")))
    return record


@dataclass(frozen=True)
class RunBest:
    """The checkpoint that stands for a run: ``step``, ``path``, the ``metric`` that chose it and its ``value``
    (``None`` when ``best.json`` records none), and ``source``: ``"best.json"`` or ``"dev_metrics.json"``."""

    step: int
    path: Path
    metric: PrimaryMetric
    value: float | None
    source: str

    def describe(self) -> str:
        """``"best dev MRR@10 (0.4123)"``, with where the choice comes from when it is ``best.json``."""
        value = f" ({self.value:.4f})" if self.value is not None and math.isfinite(self.value) else ""
        where = ", the trainer's best.json" if self.source == BEST_FILE else ""
        return f"best dev {self.metric.name}{value}{where}"


def run_best(run_dir: str | os.PathLike) -> RunBest | None:
    """The checkpoint that stands for a run (the rule of the module docstring), or ``None`` when neither
    ``best.json`` names a complete checkpoint nor any checkpoint has a value of the run's metric.

    A ``best.json`` naming a checkpoint that is not there (pruned, or a folder copied in part) is ignored: the
    choice is then made from the checkpoints that are there.
    """
    run_dir = Path(run_dir)
    record = read_best(run_dir)
    if record is not None:
        path = run_dir / checkpoint_name(record["step"])
        if is_complete(path):
            metric = primary_metric(record.get("metric") if isinstance(record.get("metric"), str) else None)
            value = record.get("value")
            value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            return RunBest(record["step"], path, metric, value, BEST_FILE)
    metric = run_metric(run_dir)
    best = best_checkpoint(run_dir, metric)
    if best is None:
        return None
    return RunBest(best.step, best.path, metric, best.value, DEV_METRICS_FILE)


def run_checkpoint(run_dir: str | os.PathLike, select: str = "best") -> Path:
    """The checkpoint of a run that ``select`` names: ``"best"`` (:func:`run_best`, else the last), ``"last"``,
    or ``"step-<N>"``. Raises :class:`DanceError` when the run has no complete checkpoint or not that step."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise DanceError(f"{run_dir}: no complete checkpoint-<step>/ folder; expected a run of dance-train")
    if select.startswith("step-"):
        wanted = dict(found)
        step = int(select[5:]) if select[5:].isdigit() else -1
        if step not in wanted:
            raise DanceError(f"{run_dir}: {select!r} names no checkpoint of the run; it has steps {sorted(wanted)}")
        return wanted[step]
    if select == "best":
        best = run_best(run_dir)
        if best is not None:
            return best.path
    elif select != "last":
        raise DanceError(f"unknown checkpoint selection {select!r}: expected best, last or step-<N>")
    return found[-1][1]


# ------------------------------------------------------------------------------------------- metrics.jsonl
def metrics_log_lines(path: str | os.PathLike, *, repair: bool = False) -> list[tuple[int, str, dict[str, Any]]]:
    """``(line number, text, record)`` of every record of a ``metrics.jsonl`` (a run folder, or the file), in file
    order; empty when there is none.

    Every line is a JSON object. A last line without its newline that does not parse is skipped: the trainer is
    writing it, or was killed while writing it. Any other line that is not a JSON object is an
    :class:`InputError` naming the file and the line, unless ``repair`` (the trainer trimming its own log on
    resume), which skips it.
    """
    import json

    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "one JSON object per line", got=str(exc)) from None
    lines = text.split("\n")
    last = len(lines)   # the piece after the final newline ("" when the file ends with one)
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else type(record).__name__
        except json.JSONDecodeError as exc:
            problem = exc.msg
        if problem is None:
            out.append((lineno, line, record))
        elif lineno != last and not repair:
            raise InputError(path, "one JSON object per line", line=lineno, got=problem)
    return out


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a run folder, or the file): :func:`metrics_log_lines` without the
    line numbers and texts."""
    return [record for _, _, record in metrics_log_lines(path)]


def record_step(record: dict[str, Any]) -> int | None:
    """The step a ``metrics.jsonl`` record belongs to: the later of ``step`` and ``swapped_at`` (an asynchronous
    refresh logged when its negatives were adopted), ``None`` without a numeric ``step``."""
    step = record.get("step")
    if not isinstance(step, (int, float)) or isinstance(step, bool):
        return None
    swapped = record.get("swapped_at")
    swapped = swapped if isinstance(swapped, (int, float)) and not isinstance(swapped, bool) else 0
    return int(max(step, swapped))


# ------------------------------------------------------------------------------------------------ prepared
def step0_settings(recipe: Any) -> dict[str, Any]:
    """What the step-0 refresh of ``recipe`` (a :class:`~dance_analysis.training.config.Recipe`) depends on: the
    model and data sections, the mining keys but the runtime ones, the objective and the seed."""
    values = recipe.to_dict()
    return {"model": values["model"], "data": values["data"],
            "mining": {k: v for k, v in values["mining"].items() if k not in RUNTIME_MINING_KEYS},
            "objective": values["loss"]["objective"], "seed": values["optim"]["seed"]}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for section, value in now.items():
        before = saved.get(section)
        if isinstance(value, dict) and isinstance(before, dict):
            out += [f"{section}.{k}" for k in sorted(set(value) | set(before)) if value.get(k) != before.get(k)]
        elif value != before:
            out.append(section)
    return out


def read_prepared(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``prepared.json`` record of a run folder, or ``None`` when the folder was not prepared."""
    path = Path(run_dir) / PREPARED_FILE
    if not path.is_file():
        return None
    try:
        record = read_json(path, "the JSON record of a prepared run folder")
    except InputError as exc:
        raise DanceError(f"{exc}; run --prepare again") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise DanceError(f"{path}: expected a JSON object with 'settings'; run --prepare again")
    return record


def check_prepared(run_dir: str | os.PathLike, recipe: Any) -> bool:
    """True when ``run_dir`` was prepared for ``recipe``; a folder prepared for other step-0 settings is a
    :class:`DanceError` naming the keys that differ."""
    record = read_prepared(run_dir)
    if record is None:
        return False
    diffs = _differences(record["settings"], step0_settings(recipe))
    if diffs:
        raise DanceError(f"{Path(run_dir) / PREPARED_FILE}: the folder was prepared with other settings "
                         f"({', '.join(diffs)}); prepare it again with this recipe (--prepare --overwrite)")
    return True


def prepared_checkpoint(run_dir: str | os.PathLike, recipe: Any) -> Path | None:
    """``checkpoint-0`` of a folder prepared for ``recipe`` when training has not written a later checkpoint yet
    (training then starts from it), else ``None``."""
    run_dir = Path(run_dir)
    if not check_prepared(run_dir, recipe):
        return None
    found = list_checkpoints(run_dir)
    if [step for step, _ in found] != [0]:
        return None
    return found[0][1]


def require_prepared(run_dir: str | os.PathLike, recipe: Any, command: str | None = None) -> None:
    """Raise a one-line :class:`DanceError` unless ``run_dir`` was prepared for ``recipe`` (a multi-process run
    starts only from a prepared folder). ``command`` is the preparation command to name in the message."""
    if check_prepared(run_dir, recipe):
        return
    command = command or f"dance-train RECIPE --output-dir {run_dir} --prepare"
    raise DanceError(f"{run_dir} is not prepared for a multi-process run: first run `{command}` (one process, "
                     f"before torchrun: the token caches; the launched processes mine the step-0 negatives)")
