"""Logging: the library logs, the commands show.

Every module logs through ``logger = logging.getLogger(__name__)`` and never prints. Messages that a command shows
its user as it works (the trainer's refresh and resume lines, the one-off download of the sample) are logged at
:data:`NOTICE` (25, between INFO and WARNING). The command entry points (``dance-train``, ``dance-eval``,
``dance-analyze``, ``make demo``, ``make reproduce``, the async miner) call :func:`show_messages`, which prints
NOTICE and above from the ``dance_analysis`` loggers as bare lines on stderr, through tqdm so that a progress bar
is not torn: the commands print exactly what they printed before the library used logging.

In a notebook or another program nothing is attached: Python shows warnings only. To see the commands' messages,
or to quiet the library::

    from dance_analysis.logs import show_messages
    show_messages()                                                   # as the commands do
    logging.getLogger("dance_analysis").setLevel(logging.ERROR)      # errors only
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["NOTICE", "messages_shown", "show_messages"]

#: The level of messages the commands show their user (progress lines, downloads).
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

ROOT = "dance_analysis"


class _CommandHandler(logging.Handler):
    """Writes each record's message to ``sys.<stream>`` (looked up at every record, so that a replaced
    ``sys.stderr`` is honoured) through ``tqdm.write``, which keeps progress bars whole."""

    def __init__(self, stream: str, level: int):
        super().__init__(level)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = getattr(sys, self.stream)
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # logging must never raise
            self.handleError(record)


def show_messages(*, stream: str = "stderr", fmt: str = "%(message)s", datefmt: str | None = None,
                  level: int = NOTICE) -> logging.Handler:
    """Print the library's messages of ``level`` and above on ``sys.<stream>`` (what the commands do).

    Idempotent: a handler attached by an earlier call is replaced. The ``dance_analysis`` logger's level is set to
    ``level`` unless it was set already.
    """
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if isinstance(handler, _CommandHandler):
            logger.removeHandler(handler)
    handler = _CommandHandler(stream, level)
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    return handler


@contextlib.contextmanager
def messages_shown(**kwargs) -> Iterator[None]:
    """:func:`show_messages` for the duration of a ``with`` block (how the commands' ``main`` functions run, so
    that calling one from Python leaves logging as it was). Inside an outer block nothing changes."""
    logger = logging.getLogger(ROOT)
    if any(isinstance(handler, _CommandHandler) for handler in logger.handlers):
        yield
        return
    level = logger.level
    handler = show_messages(**kwargs)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
