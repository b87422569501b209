"""The recipe with its help: every key's ``metadata["help"]`` (the fields of :mod:`.config`) as YAML comments.

``dance-train --print-config`` prints :func:`dump_recipe_with_help`; the text is valid YAML that loads back to the
same recipe (the comments are only comments)::

    # the encoder to start from
    model:
      # the starting encoder: an alias (minilm), a model folder, ...
      backbone: minilm
"""

from __future__ import annotations

import dataclasses
import textwrap

import yaml

from .config import SECTIONS, Recipe

WIDTH = 116


def _comment(text: str | None, indent: str, choices=None) -> list[str]:
    if choices:
        text = f"{text} (one of: {', '.join(map(str, choices))})" if text else f"one of: {', '.join(choices)}"
    if not text:
        return []
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2, break_on_hyphens=False,
                                                         break_long_words=False)]


def _dump(key: str, value, indent: str) -> list[str]:
    text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False).rstrip("\n")
    return [indent + line for line in text.split("\n")]


def field_help(cls: type = Recipe) -> dict[str, str]:
    """``{key: help}`` of the fields of a recipe section class (or of :class:`Recipe`)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def dump_recipe_with_help(recipe: Recipe) -> str:
    """The resolved recipe as YAML, each section and key preceded by its help as a comment."""
    values = recipe.to_dict()
    lines: list[str] = []
    for top in dataclasses.fields(Recipe):
        if top.name in SECTIONS:
            lines += _comment(top.metadata.get("help"), "")
            lines.append(f"{top.name}:")
            for item in dataclasses.fields(SECTIONS[top.name]):
                lines += _comment(item.metadata.get("help"), "  ", item.metadata.get("choices"))
                lines += _dump(item.name, values[top.name][item.name], "  ")
        else:
            lines += _comment(top.metadata.get("help"), "")
            lines += _dump(top.name, values[top.name], "")
    return "\n".join(lines) + "\n"
