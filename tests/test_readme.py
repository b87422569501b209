"""The README's commands are true as written: every command block carries a marker, the quick ones run here (in a
fresh folder with the project's .venv and train/, as after `make install` in a clone) and print what the README
quotes.

Markers (an HTML comment on the line before a fenced block; invisible on the rendered page):

    <!-- readme-test: quick -->                 run by this test (seconds)
    <!-- readme-test: slow: REASON -->          run only with DANCE_README_SLOW=1 (in order, in one folder, after
                                                the quick ones, which never need a slow one); "run as `CMD`" in
                                                REASON runs CMD instead (make targets)
    <!-- readme-test: skip: REASON -->          never run here (GPUs, MS MARCO files, extra packages)
    <!-- readme-test: output -->                what the block before prints (stdout): its lines in order, "..."
                                                standing for any number of lines; compared line by line

A block of shell lines runs with bash (`set -e`, so every line must succeed); a ```python block runs with the
venv's Python.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (quick|slow|skip|output)(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
RUN_AS = re.compile(r"run as `([^`]+)`")
#: Lines that make a fenced block a command (shell) block.
COMMAND_START = (".venv/bin/", "make ", "torchrun ", "python ")


@dataclass
class Block:
    line: int                   # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None            # quick | slow | skip | output | None
    note: str = ""

    @property
    def is_command(self) -> bool:
        if self.lang == "python":
            return True
        if self.lang not in ("", "sh", "bash", "shell"):
            return False
        return any(line.strip().startswith(COMMAND_START) for line in self.text.splitlines())


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the README with the marker on the line before each."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        marker = MARKER.match(lines[start - 1].strip()) if start else None
        blocks.append(Block(line=start + 1, lang=fence.group(1), text="\n".join(body) + "\n",
                            mark=marker.group(1) if marker else None, note=(marker.group(2) or "") if marker else ""))
        i += 1
    return blocks


def matches(expected: str, actual: str) -> str | None:
    """None when ``actual`` has the lines of ``expected`` (in order; "..." = any number of lines), else why not."""
    want = [line.rstrip() for line in expected.strip("\n").splitlines()]
    got = [line.rstrip() for line in actual.strip("\n").splitlines()]

    def walk(w: int, g: int) -> bool:
        if w == len(want):
            return g == len(got)
        if want[w] == "...":
            return any(walk(w + 1, k) for k in range(g, len(got) + 1))
        return g < len(got) and got[g] == want[w] and walk(w + 1, g + 1)

    if walk(0, 0):
        return None
    return "expected:\n" + "\n".join(want) + "\n--- got:\n" + "\n".join(got)


@pytest.fixture(scope="module")
def blocks():
    return readme_blocks(README.read_text(encoding="utf-8"))


def test_every_command_block_is_marked(blocks):
    unmarked = [f"README.md:{b.line}" for b in blocks if b.is_command and b.mark not in ("quick", "slow", "skip")]
    assert not unmarked, f"command blocks without a readme-test marker: {', '.join(unmarked)}"
    for i, block in enumerate(blocks):
        if block.mark == "output":
            assert i and blocks[i - 1].mark in ("quick", "slow", "skip"), \
                f"README.md:{block.line}: an output block must follow a marked command block"
        if block.mark in ("slow", "skip"):
            assert block.note, f"README.md:{block.line}: a {block.mark} block says why"
    assert [b for b in blocks if b.mark == "quick"], "no quick command: the README would not be checked at all"


def scratch(tmp_path: Path) -> Path:
    """A fresh working folder as after `make install` in a clone: .venv and train/ are the project's."""
    work = tmp_path / "clone"
    work.mkdir()
    venv = ROOT / ".venv" if (ROOT / ".venv" / "bin").is_dir() else Path(sys.prefix)
    (work / ".venv").symlink_to(venv, target_is_directory=True)
    (work / "train").symlink_to(ROOT / "train", target_is_directory=True)
    return work


def run_block(block: Block, work: Path) -> str:
    """Run one block in ``work``; returns its stdout (a failure names the README line and shows stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    run_as = RUN_AS.search(block.note)
    if run_as:
        command = ["bash", "-c", f"set -e\n{run_as.group(1)}"]
    elif block.lang == "python":
        command = [str(work / ".venv" / "bin" / "python"), "-c", block.text]
    else:
        command = ["bash", "-c", "set -e\n" + block.text]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, (f"README.md:{block.line} failed (status {done.returncode}):\n{block.text}\n"
                                  f"{done.stderr[-3000:]}")
    return done.stdout


def check_in_order(blocks: list[Block], work: Path, marks: tuple[str, ...]) -> int:
    ran = 0
    for i, block in enumerate(blocks):
        if block.mark not in marks:
            continue
        stdout = run_block(block, work)
        ran += 1
        if i + 1 < len(blocks) and blocks[i + 1].mark == "output":
            problem = matches(blocks[i + 1].text, stdout)
            assert problem is None, f"README.md:{blocks[i + 1].line} quotes another output than the command " \
                                    f"prints\n{problem}"
    return ran


def test_quick_commands_run_and_print_what_the_readme_quotes(blocks, tmp_path):
    assert check_in_order(blocks, scratch(tmp_path), ("quick",)) > 0


@pytest.mark.skipif(os.environ.get("DANCE_README_SLOW") != "1",
                    reason="the slow README commands train and encode for about half an hour on 2 CPU cores; "
                           "run them with DANCE_README_SLOW=1")
def test_slow_commands_run_and_print_what_the_readme_quotes(blocks, tmp_path):
    work = scratch(tmp_path)
    check_in_order(blocks, work, ("quick",))
    assert check_in_order(blocks, work, ("slow",)) > 0


def test_the_checker_sees_a_difference():
    assert matches("a\n...\nc\n", "a\nb\nb\nc\n") is None and matches("a\nc\n", "a\nc\n") is None
    assert matches("a\nc\n", "a\nb\nc\n") is not None and matches("a\n...\nd\n", "a\nb\nc\n") is not None
    text = "x\n<!-- readme-test: quick -->\n```\n.venv/bin/dance-eval --help\n```\n```\n.venv/bin/x\n```\n"
    found = readme_blocks(text)
    assert [(b.mark, b.is_command) for b in found] == [("quick", True), (None, True)]
