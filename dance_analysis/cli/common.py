"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

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


def add_prompt_arguments(parser: Any) -> None:
    """``--query-prompt`` / ``--document-prompt``: the text put before every query / document (overrides the
    model's own ``query_prompt`` / ``document_prompt``)."""
    parser.add_argument("--query-prompt", default=None, metavar="TEXT",
                        help="text put before every query before tokenisation, e.g. 'query: ' (default: the model's "
                             "own prompt, usually none; '' for none)")
    parser.add_argument("--document-prompt", default=None, metavar="TEXT",
                        help="text put before every document, e.g. 'passage: ' (default: the model's own prompt)")


def encoder_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The encoder options given on the command line (max lengths, prompts) as ``DualEncoder.load`` overrides."""
    names = (("query_max_length", "query_max_length"), ("doc_max_length", "doc_max_length"),
             ("query_prompt", "query_prompt"), ("document_prompt", "document_prompt"))
    return {key: getattr(args, attr) for key, attr in names if getattr(args, attr, None) is not None}
