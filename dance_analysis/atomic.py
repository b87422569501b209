"""Atomic publishing: the one way files and folders are written, so that a reader never sees half of one.

A **file** is written to a temporary file beside it (same folder, so the same filesystem), flushed and fsynced,
then renamed over the target with ``os.replace``: a reader sees the old complete file or the new complete one,
and a crash leaves at most a hidden ``.<name>.<random>.tmp`` file.

A **folder** is built in a temporary folder beside it and then swapped in. When the target exists, the two are
exchanged in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so at every instant one complete folder, old or
new, carries the name; the old one is then deleted. Where the system cannot exchange (another OS, a filesystem
without the flag) the old folder is renamed aside first, leaving one rename's gap.

Functions
    :func:`atomic_file`, :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`publishing_path`
        files; :func:`read_json` reads back what :func:`write_json` wrote (or a user's JSON file);
    :func:`building_dir`, :func:`temp_dir_beside`, :func:`publish_dir`, :func:`replace_dir` folders;
    :func:`remove_dir` makes a folder disappear in one rename, then deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

__all__ = [
    "atomic_file", "building_dir", "can_exchange", "publish_dir", "publishing_path", "read_json", "remove_dir",
    "replace_dir", "temp_dir_beside", "temp_path_beside", "write_bytes", "write_json", "write_text",
]

TRASH_PREFIX = ".trash-"


# ------------------------------------------------------------------------------------------------------ names

def temp_path_beside(path: str | os.PathLike) -> Path:
    """A fresh hidden name in the folder of ``path``: ``.<name>.<8 hex>.tmp`` (nothing is created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_path(path: str | os.PathLike) -> None:
    """``fsync`` a file or a folder by path (a folder: so that renames inside it are durable); errors ignored
    for folders, where some filesystems refuse it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------- files

@contextlib.contextmanager
def publishing_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to create a file at (e.g. ``np.lib.format.open_memmap``).

    When the ``with`` block ends without an error, the file is fsynced and renamed to ``path``; when it raises,
    the temporary file is removed. The folder of ``path`` must exist.
    """
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """An open handle (``mode`` ``"wb"`` or ``"w"``) on a temporary file beside ``path``, published by
    :func:`publishing_path` when the block ends: flushed, fsynced and renamed to ``path``, or removed on error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with publishing_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns ``path``."""
    with atomic_file(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON (``indent``, then a final newline) to ``path`` atomically; returns ``path``."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


_MISSING = object()


def read_json(path: str | os.PathLike, expected: str = "a JSON document", *, kind: type | None = None,
              missing: Any = _MISSING, invalid: Any = _MISSING) -> Any:
    """The JSON document in ``path``.

    A missing file returns ``missing`` when it is given (e.g. ``missing=None``: "read JSON or None"), else raises
    :class:`~dance_analysis.errors.InputError`; so does an unreadable or malformed file (naming the file, the
    line of a syntax error and ``expected``), or, with ``kind`` (``dict``, ``list``), a document of another type,
    unless ``invalid`` is given, which is then returned instead (a reader that treats a damaged file as absent).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is not _MISSING:
            return missing
        if invalid is not _MISSING:
            return invalid
        raise InputError(path, expected, got="no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        if invalid is not _MISSING:
            return invalid
        raise InputError(path, expected, got=str(exc)) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if invalid is not _MISSING:
            return invalid
        raise InputError(path, expected, line=exc.lineno, got=exc.msg) from None
    if kind is not None and not isinstance(value, kind):
        if invalid is not _MISSING:
            return invalid
        raise InputError(path, expected, got=type(value).__name__)
    return value


def read_yaml(path: str | os.PathLike, expected: str = "a YAML document") -> Any:
    """The YAML document in ``path`` (``yaml.safe_load``: plain data, never objects). An unreadable or malformed
    file raises :class:`~dance_analysis.errors.InputError` naming the file, the line of a syntax error and
    ``expected``."""
    import yaml  # PyYAML is a dependency, but most writers and readers here never need it

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, expected, got=str(exc)) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(path, expected, line=None if line is None else line + 1,
                         got=str(getattr(exc, "problem", exc))) from None


# ----------------------------------------------------------------------------------------------------- folders

def temp_dir_beside(final: str | os.PathLike) -> Path:
    """A new empty folder ``.<name>.<8 hex>.tmp`` beside ``final`` (its parent is created when missing), to
    build ``final`` in before :func:`publish_dir` swaps it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_path_beside(final)
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one step; ``False`` when this system or filesystem cannot.

    Raises ``FileNotFoundError`` when either is missing.
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
            _renameat2 = function
        except (AttributeError, OSError):  # a C library without renameat2 (glibc < 2.28, musl < 1.2.5)
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def can_exchange(folder: str | os.PathLike) -> bool:
    """True when folders inside ``folder`` can be swapped without a gap (see the module docstring)."""
    a, b = temp_dir_beside(Path(folder) / "exchange-a"), temp_dir_beside(Path(folder) / "exchange-b")
    try:
        return _exchange(a, b)
    finally:
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``target`` (same filesystem), replacing any existing ``target``.

    ``tmp`` is fsynced first. An existing ``target`` is exchanged with ``tmp`` in one step and deleted afterwards,
    so at every instant either the old or the new complete folder is there (where the system cannot exchange, the
    old one is renamed aside first: a gap of one rename). Returns ``target``.
    """
    tmp, target = Path(tmp), Path(target)
    fsync_path(tmp)
    if os.path.lexists(target):
        try:
            exchanged = _exchange(tmp, target)
        except FileNotFoundError:  # ``target`` went away meanwhile: a plain rename below
            exchanged = False
        if exchanged:
            _discard(tmp)  # ``tmp`` now holds the old folder (or the file that stood there)
            fsync_path(target.parent)
            return target
        if os.path.lexists(target):
            old = temp_path_beside(target)
            os.replace(target, old)
            os.replace(tmp, target)
            _discard(old)
            fsync_path(target.parent)
            return target
    os.replace(tmp, target)
    fsync_path(target.parent)
    return target


def _discard(path: Path) -> None:
    """Delete what was swapped out: a folder, or a file that stood where the folder goes (nothing is left
    behind)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike, *, replace: bool = True) -> Path:
    """Publish the finished folder ``tmp`` as ``final``; returns ``final``.

    With ``replace`` an existing ``final`` is swapped out (:func:`replace_dir`); without it (a cache entry that
    another process finished first) ``final`` is kept and ``tmp`` discarded.
    """
    tmp, final = Path(tmp), Path(final)
    if replace:
        return replace_dir(tmp, final)
    fsync_path(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    fsync_path(final.parent)
    return final


@contextlib.contextmanager
def building_dir(final: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside ``final`` to build it in; published as ``final`` (:func:`publish_dir`, with
    ``replace``) when the ``with`` block ends without an error, deleted when it raises."""
    tmp = temp_dir_beside(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        publish_dir(tmp, final, replace=replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_dir(path: str | os.PathLike, *, prefix: str = TRASH_PREFIX) -> None:
    """Make a folder disappear in one step (rename to a hidden ``<prefix><name>-<8 hex>``), then delete it."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f"{prefix}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
