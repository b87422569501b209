"""Where the project keeps downloaded and derived files (the built-in sample, token caches, file indexes).

The root is ``$DANCE_CACHE`` when set, else the user's cache directory for ``dance-analysis`` (as given by
:func:`platformdirs.user_cache_dir`, e.g. ``~/.cache/dance-analysis`` on Linux).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import replace_dir

CACHE_ENV = "DANCE_CACHE"


def cache_root() -> Path:
    """The cache root directory (created when missing)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        root = Path(configured).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("dance-analysis"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def temp_dir_beside(final: Path) -> Path:
    """A fresh temporary directory in the same parent as ``final`` (so that a rename into place is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def publish_dir(tmp: Path, final: Path, *, replace: bool) -> Path:
    """Move the finished directory ``tmp`` to ``final`` atomically.

    When ``final`` already exists: with ``replace`` the old one is swapped out and removed; without it (a cache
    entry another process finished first) ``tmp`` is discarded and the existing ``final`` kept.
    """
    try:
        os.rename(tmp, final)
        return final
    except OSError:
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    return replace_dir(tmp, final)
