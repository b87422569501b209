"""Run every benchmark of bench/ in turn with its default settings; each prints its own figures.

    python bench/run_all.py            # all of them (about 1.5 hours on a 2-core machine; scale alone ~25 min)
    python bench/run_all.py search     # only the ones whose file name contains "search"
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["encode", "search", "ann", "mine", "metrics", "train_step", "analysis", "report", "token_cache_memory",
         "token_cache_workers", "scale"]


def main(argv: list[str]) -> int:
    chosen = [name for name in ORDER if not argv or any(word in name for word in argv)]
    failed = []
    for name in chosen:
        print(f"\n===== bench/{name}.py", flush=True)
        if subprocess.call([sys.executable, str(HERE / f"{name}.py")]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
