"""Where the commands write by default, and the names of what they write.

Everything a user's command makes goes under ``runs/`` (ignored by git), apart from the committed results in
``reports/``: ``dance-train`` writes ``runs/<recipe name>/``, ``dance-eval`` ``runs/eval/<model>-<split>/``,
``dance-analyze`` ``runs/reports/<name>/``; ``make demo`` writes ``runs/demo-ance``, ``runs/demo-dance`` and
``runs/reports/demo``. Output names come from the inputs' paths, so that two different inputs do not share a name:
``runs/demo-dance/checkpoint-40`` -> ``demo-dance-checkpoint-40``, ``runs/exported/minilm`` -> ``exported-minilm``,
the alias ``minilm`` -> ``minilm``.
"""

from __future__ import annotations

import re
from pathlib import Path

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


__all__ = ["OUTPUT_ROOT", "input_slug", "safe_name"]
