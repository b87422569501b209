"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from ..errors import DanceError
from ..logs import messages_shown


def user_errors_exit_2(main: Callable[..., int | None]) -> Callable[..., int]:
    """Run ``main`` with the library's messages shown on stderr (:func:`dance_analysis.logs.messages_shown`); a
    :class:`DanceError` prints ``error: <message>`` on stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with messages_shown():
                return main(*args, **kwargs) or 0
        except DanceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_status
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
