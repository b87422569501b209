"""Where the project keeps downloaded and derived files (the built-in sample, token caches, file indexes).

The root is ``$DANCE_CACHE`` when set, else the user's cache directory for ``dance-analysis`` (as given by
:func:`platformdirs.user_cache_dir`, e.g. ``~/.cache/dance-analysis`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

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
