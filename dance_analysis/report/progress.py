"""What dance-analyze shows while it works: one progress bar over the report's steps (each subject, UMAP, the
statistics, the figures, the page) with the current step's name and, during the statistics, the statistic being
computed beside it, after one line per input saying what it is. ``verbose`` also prints every statistic's key as
a line; the bar is drawn on a terminal only, and nothing is shown with ``--quiet``."""

from __future__ import annotations

import sys
from typing import TextIO

#: Steps of a report besides its subjects: UMAP, statistics, figures, page.
FIXED_STEPS = 4


class ReportProgress:
    """A progress bar for :func:`dance_analysis.report.build.build_report` (its ``progress`` argument)."""

    def __init__(self, *, enabled: bool = True, verbose: bool = False, stream: TextIO | None = None):
        self.enabled = enabled
        self.verbose = verbose and enabled
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self._begun = False

    def start(self, subjects: int) -> None:
        """Open the bar for a report of ``subjects`` subjects."""
        from tqdm.auto import tqdm

        # disable=None: a bar on a terminal only (as the encoding bars), so logs of a piped run stay short
        self.bar = tqdm(total=subjects + FIXED_STEPS, desc="report", unit="step",
                        disable=None if self.enabled else True,
                        file=self.stream, dynamic_ncols=True, leave=False,
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}{postfix}")

    def step(self, name: str) -> None:
        """A new step begins (the previous one is done)."""
        if self.bar is None:
            return
        if self._begun:
            self.bar.update(1)
        self._begun = True
        self.bar.set_description_str(name if len(name) <= 40 else "..." + name[-37:], refresh=False)
        self.bar.set_postfix_str("", refresh=True)

    def log(self, message: str) -> None:
        """A detail: a line with ``verbose``, else (a statistic) shown beside the bar."""
        if self.verbose or (self.enabled and message.startswith("input ")):
            line = message.removeprefix("input ")
            if self.bar is not None:
                self.bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)
        elif self.bar is not None and message.startswith(("levels: ", "contrast ")):
            self.bar.set_postfix_str(message.rsplit(": ", 1)[-1], refresh=True)

    def close(self) -> None:
        """Finish and remove the bar."""
        if self.bar is not None:
            if self._begun:
                self.bar.update(1)
            self.bar.close()
            self.bar = None


__all__ = ["ReportProgress"]
