"""Logging: library modules log and never print; the command entry points show the messages on stderr, a program
that calls the library sees nothing but warnings unless it asks (and can quiet the library with logging)."""

from __future__ import annotations

import logging

from dance_analysis.cli.common import user_errors_exit_2
from dance_analysis.logs import NOTICE, messages_shown, show_messages


def _library_says(text: str) -> None:
    logging.getLogger("dance_analysis.training.run_log").log(NOTICE, text)


def test_commands_print_the_library_messages_as_bare_lines(capsys):
    @user_errors_exit_2
    def main() -> int:
        _library_says("refresh@0: dev MRR@10 0.5")
        logging.getLogger("dance_analysis.data.collection").info("details for the log only")
        logging.getLogger("dance_analysis.model").warning("a warning")
        return 0

    root = logging.getLogger("dance_analysis")
    before = (list(root.handlers), root.level)
    assert main() == 0
    assert capsys.readouterr().err == "refresh@0: dev MRR@10 0.5\na warning\n"
    assert (list(root.handlers), root.level) == before       # a main() called from Python leaves logging as it was
    _library_says("not shown outside a command")
    assert capsys.readouterr().err == ""


def test_nested_commands_keep_one_handler(capsys):
    with messages_shown():
        with messages_shown():
            _library_says("once")
        _library_says("still shown")
    assert capsys.readouterr().err == "once\nstill shown\n"


def test_a_notebook_can_show_or_quiet_the_library(capsys):
    root = logging.getLogger("dance_analysis")
    handler = show_messages()
    try:
        _library_says("shown")
        root.setLevel(logging.ERROR)
        _library_says("quiet")
        logging.getLogger("dance_analysis.model").warning("quiet too")
        assert capsys.readouterr().err == "shown\n"
    finally:
        root.removeHandler(handler)
        root.setLevel(logging.NOTSET)
