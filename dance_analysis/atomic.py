"""Publishing a finished folder in one step, so that a reader never sees a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``target`` (same filesystem), replacing any existing ``target``.

    An existing ``target`` is first renamed aside and removed only after ``tmp`` is in place, so at every instant
    either the old or the new complete folder is there (apart from the instant between the two renames).
    """
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
