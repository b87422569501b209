"""Where the commands write by default, and the names of what they write.

Everything a user's command makes goes under ``runs/`` (ignored by git), apart from the committed results in
``reports/``: ``dance-train`` writes ``runs/<recipe name>/``, ``dance-eval`` ``runs/eval/<model>-<split>/``,
``dance-analyze`` ``runs/reports/<name>/``; ``make demo`` writes ``runs/demo-ance``, ``runs/demo-dance`` and
``runs/reports/demo``. Output names come from the inputs' paths, so that two different inputs do not share a name:
``runs/demo-dance/checkpoint-40`` -> ``demo-dance-checkpoint-40``, ``runs/exported/minilm`` -> ``exported-minilm``,
the alias ``minilm`` -> ``minilm``.

No command destroys a user's files: :func:`check_output_file` and :func:`check_output_folder` run before any work
and refuse (exit status 2, one line naming the path) an output path that holds something the command did not write
itself (a file where a folder goes, a non-empty folder, a file of another kind) unless ``--overwrite`` is given.
Outputs are then published atomically (:mod:`dance_analysis.atomic`): nothing is moved aside and left behind.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import DanceError

#: The folder every command writes under by default (ignored by git).
OUTPUT_ROOT = Path("runs")


def input_slug(text: str) -> str:
    """A folder-safe name for an input: an alias (no such path) as it is; a path below the working folder by its
    parts (without a leading ``runs/``), a path elsewhere by its last two parts, joined by ``-``."""
    folder = Path(str(text)).expanduser()
    if not folder.exists():
        parts = [str(text)]
    else:
        resolved = folder.resolve()
        try:
            parts = list(resolved.relative_to(Path.cwd().resolve()).parts)
            if len(parts) > 1 and parts[0] == OUTPUT_ROOT.name:
                parts = parts[1:]
        except ValueError:
            parts = list(resolved.parts[-2:])
        parts = parts or [resolved.name]
    return safe_name("-".join(parts))


def safe_name(name: str, limit: int = 120) -> str:
    """``name`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` made one ``-``,
    cut to its last ``limit`` characters ("report" when nothing is left)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned[-limit:].lstrip("-.") or "report"


def _describe(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"a folder with {len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"
    return "a file"


def check_output_file(path: str | os.PathLike, *, ours: Callable[[Path], bool], what: str,
                      overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse, before any work, to write the file ``path`` over something the command did not write itself.

    Nothing there, an empty file, or a file ``ours(path)`` recognises (an earlier output of the same kind) may
    be replaced; a folder at ``path`` is never replaced (a file cannot take its place without deleting it);
    anything else needs ``overwrite``. Raises :class:`DanceError` (exit status 2) with one line naming the path.
    """
    path = Path(path)
    if path.is_dir():
        raise DanceError(f"{path}: is a folder ({_describe(path)}); expected {what}: nothing was written "
                         f"(name a file)")
    if not path.exists() and not path.is_symlink():
        _check_parent(path)
        return
    if overwrite or (path.is_file() and (path.stat().st_size == 0 or _safely(ours, path))):
        _check_parent(path)
        return
    raise DanceError(f"{path}: already holds {_describe(path)} that is not {what}; nothing was written (pass "
                     f"{flag} to replace it, or name another path)")


def check_output_folder(path: str | os.PathLike, *, ours: Callable[[Path], bool] | None, what: str,
                        overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse, before any work, to write the folder ``path`` over something the command did not write itself.

    Nothing there, an empty folder, or a folder ``ours(path)`` recognises (an earlier output of the same kind;
    ``None``: never) may be replaced; a file or a non-empty folder of another kind needs ``overwrite``. Raises
    :class:`DanceError` (exit status 2) with one line naming the path.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        _check_parent(path)
        return
    if path.is_dir() and (not any(path.iterdir()) or (ours is not None and _safely(ours, path))):
        return
    if overwrite:
        return
    raise DanceError(f"{path}: already holds {_describe(path)}, not {what}; nothing was written (pass {flag} to "
                     f"replace it, or name another folder)")


def _check_parent(path: Path) -> None:
    """A file on the way to ``path`` (where a folder must go) is refused too."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DanceError(f"{parent}: is a file, where a folder of {path} must go; nothing was written")
            return


def _safely(test: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(test(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def first_json_line(path: Path) -> dict | None:
    """The JSON object on the first line of a JSONL file (None when it is not one)."""
    with open(path, "rb") as handle:
        line = handle.readline(1 << 20)
    record = json.loads(line.decode("utf-8"))
    return record if isinstance(record, dict) else None


__all__ = ["OUTPUT_ROOT", "input_slug", "safe_name", "check_output_file", "check_output_folder",
           "first_json_line"]
