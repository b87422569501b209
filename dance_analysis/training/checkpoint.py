"""Checkpoint folders, written: atomic publishing, pruning (last K + best), and exact-resume state.

Reading a run folder (names, listing, completeness, the best checkpoint) is :mod:`dance_analysis.checkpoints`,
the one module every reader shares; this module writes what it reads. Layout (the contract with the analyzer,
see DESIGN.md)::

    <run_dir>/checkpoint-<step>/
        encoder/             DualEncoder.save
        checkpoint.json      {"step", "objective", "collection", "splits", "seed", "temperature", "complete": true}
        trainer_state.json   step, data position, loss-scale and bookkeeping (JSON)
        optimizer.pt         optimizer.state_dict()       (torch.load(weights_only=True))
        scheduler.pt         scheduler.state_dict()       (torch.load(weights_only=True))
        rng.pt               torch CPU / CUDA generator states per rank (torch.load(weights_only=True))
        rng.json             python and numpy global generator states per rank
        dev_metrics.json     dev metrics of the refresh that mined this checkpoint's negatives
        embeddings/          corpus.npy, corpus.ids.npy, queries.npy, queries.ids.npy
        negatives/           see dance_analysis.mining.NegativeSet

A checkpoint is written into ``.tmp-checkpoint-<step>-<pid>/`` and renamed into place when complete, so a folder
named ``checkpoint-<step>`` is never half-written (a SIGKILL leaves at most a temporary folder, removed on resume).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import TRASH_PREFIX, atomic_file, remove_dir, replace_dir, write_json
from ..checkpoints import (
    CHECKPOINT_FILE,
    TMP_PREFIX,
    best_checkpoint,
    checkpoint_name,
    checkpoint_step,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
)
from ..errors import DanceError

__all__ = [
    "WRITE_ERRNOS", "begin_checkpoint", "capture_rng_state", "clean_temporaries", "commit_checkpoint",
    "prune_checkpoints", "restore_rng_state", "torch_load_safe", "torch_save_atomic", "write_error_message",
    "write_failure",
]


class _RecordingWriter:
    """A binary file whose ``write`` remembers the ``OSError`` it raised (torch.save turns it into an opaque
    ``RuntimeError``)."""

    def __init__(self, handle):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` published atomically (:func:`dance_analysis.atomic.atomic_file`); the object must be
    weights_only-loadable.

    A failed write (disk full, file size limit) raises the ``OSError`` of the write, not torch's ``RuntimeError``.
    """
    with atomic_file(path, "wb") as fh:
        writer = _RecordingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


# errno values that mean "this output cannot be written" (as opposed to a missing input)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EIO, errno.EISDIR}


def write_failure(exc: BaseException) -> str | None:
    """The cause of a failed write as text (``"File too large"``), or ``None`` when ``exc`` is no such failure.

    Recognises an ``OSError`` with one of :data:`WRITE_ERRNOS` (or none: numpy's short writes) and the errors of
    the safetensors writer (``"... I/O error: ... (os error 27)"``).
    """
    if isinstance(exc, OSError):
        if exc.errno is None:
            return str(exc) or type(exc).__name__
        return (exc.strerror or str(exc)) if exc.errno in WRITE_ERRNOS else None
    match = re.search(r"\(os error (\d+)\)", str(exc))
    if match and int(match.group(1)) in WRITE_ERRNOS:
        return os.strerror(int(match.group(1)))
    return None


def write_error_message(target: str | os.PathLike, cause: str, run_dir: str | os.PathLike) -> str:
    """The one-line message of a failed write of ``target``, naming the last complete checkpoint to resume from."""
    latest = latest_checkpoint(run_dir)
    where = (f"the last complete checkpoint {latest} is intact: continue from it with --resume once the output "
             f"can be written" if latest else "no checkpoint was written yet")
    return f"cannot write {target}: {cause} (is the disk full or the folder not writable?); {where}"


def torch_load_safe(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DanceError(f"{path}: file missing from the checkpoint") from None
    except Exception as exc:  # a corrupt or foreign file
        raise DanceError(f"{path}: not a loadable checkpoint file ({type(exc).__name__}: {exc})") from None


def clean_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary / trash folders left by an interrupted write; returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    if not run_dir.is_dir():
        return removed
    for child in run_dir.iterdir():
        if child.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            removed.append(child)
        elif checkpoint_step(child) is not None and child.is_dir() and not is_complete(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def begin_checkpoint(run_dir: str | os.PathLike, step: int) -> Path:
    """Create and return the temporary folder a checkpoint for ``step`` is written into."""
    tmp = Path(run_dir) / f"{TMP_PREFIX}{step}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: str | os.PathLike, run_dir: str | os.PathLike, step: int, meta: dict) -> Path:
    """Write ``checkpoint.json`` (``complete: true``) into ``tmp`` and publish it as ``checkpoint-<step>``
    (an existing one is swapped out without a gap, :func:`dance_analysis.atomic.replace_dir`)."""
    tmp = Path(tmp)
    final = Path(run_dir) / checkpoint_name(step)
    write_json(tmp / CHECKPOINT_FILE, {**meta, "step": int(step), "complete": True})
    return replace_dir(tmp, final)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int | None, *, keep_best: bool = True,
                      metric: str | None = None, protect: tuple[int, ...] = ()) -> list[int]:
    """Delete checkpoints beyond the last ``keep_last`` (``None``: keep all), keeping the best by ``metric``
    (:func:`dance_analysis.checkpoints.best_checkpoint`; default the primary metric).

    Steps in ``protect`` are never deleted. Returns the deleted steps.
    """
    if keep_last is None:
        return []
    found = list_checkpoints(run_dir)
    keep = {step for step, _ in found[-keep_last:]} | set(protect)
    if keep_best:
        best = best_checkpoint(run_dir, metric)
        if best is not None:
            keep.add(best[0])
    deleted = []
    for step, path in found:
        if step not in keep:
            remove_dir(path)
            deleted.append(step)
    return deleted


# ----------------------------------------------------------------------------------------------------- RNG state

def capture_rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """The global generator states of this process: ``(tensors for rng.pt, JSON-able for rng.json)``."""
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np.asarray(np_state[1]).tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
    }
    return tensors, plain


def restore_rng_state(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    if "cuda" in tensors and torch.cuda.is_available():
        states = tensors["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
