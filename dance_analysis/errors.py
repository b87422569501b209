"""User-facing errors.

Every problem caused by the user's input (a file, a recipe, a path on the command line) is raised as a
:class:`DanceError`. The command-line entry points catch it, print its one-line message and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import os


class DanceError(Exception):
    """An error the user can fix; its message says what was expected."""

    exit_status = 2


class InputError(DanceError):
    """A malformed input file: names the file, the line (when there is one) and what was expected."""

    def __init__(self, path: str | os.PathLike, expected: str, *, line: int | None = None,
                 got: str | None = None):
        self.path = str(path)
        self.line = line
        self.expected = expected
        self.got = got
        where = self.path if line is None else f"{self.path}:{line}"
        message = f"{where}: expected {expected}"
        if got is not None:
            shown = got if len(got) <= 80 else got[:77] + "..."
            message += f", got {shown!r}"
        super().__init__(message)
