"""`make demo`: train ANCE and DANCE on the built-in sample from the same MiniLM start, then compare them.

Runs `dance-train train/demo-ance.yaml`, `dance-train train/demo-dance.yaml` (each resumed when already
started, so an interrupted demo continues and a finished one is not repeated; a folder there that holds something
else is refused, never written into) and
`dance-analyze runs/demo-ance runs/demo-dance --out runs/reports/demo --overwrite`, and prints the report's path.
Everything it writes lies under runs/ (ignored by git): the committed reports/demo/ is only ever rewritten on
purpose (reports/README.md names the command).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import analyze, train
from .logs import messages_shown

RUNS = (("train/demo-ance.yaml", "runs/demo-ance"), ("train/demo-dance.yaml", "runs/demo-dance"))
REPORT = "runs/reports/demo"


def _started_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run the demo started (its resolved recipe or a checkpoint): only such a folder
    is resumed; anything else there makes dance-train refuse (exit status 2) instead of writing into it."""
    return folder.is_dir() and ((folder / "config.yaml").is_file()
                                or any(p.name.startswith("checkpoint-") for p in folder.iterdir()))


def main() -> int:
    with messages_shown():
        return _run()


def _run() -> int:
    for recipe, out in RUNS:
        args = [recipe, "--output-dir", out]
        if _started_run(Path(out)):
            args.append("--resume")
        print(f"== dance-train {' '.join(args)}", flush=True)
        status = train.main(args)
        if status:
            return status
    print(f"== dance-analyze {' '.join(out for _, out in RUNS)} --out {REPORT} --overwrite", flush=True)
    return analyze.main([out for _, out in RUNS] + ["--out", REPORT, "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
