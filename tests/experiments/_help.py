"""Checks of a command's ``--help``: every option states its default, and the text is what the user reads."""

from __future__ import annotations

import argparse


def option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's rendered help (``--name ...`` and its text), whitespace collapsed, keyed by its ``dest``."""
    text = parser.format_help()
    lines = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    blocks: dict[str, list[str]] = {}
    current = None
    flags = {s: a.dest for a in parser._actions for s in a.option_strings}
    for line in lines:
        first = line.split()[0].rstrip(",") if line.strip() else ""
        if line.startswith("  -") and first in flags:
            current = flags[first]
            blocks[current] = []
        if current is not None:
            blocks[current].append(line)
    return {dest: " ".join(" ".join(block).split()) for dest, block in blocks.items()}


def assert_every_default_shown(parser: argparse.ArgumentParser) -> None:
    """Every optional option's help says ``(default: ...)`` and, where the default is a value, shows that value."""
    rendered = option_help(parser)  # argparse has no public list of a parser's actions: `_actions` it is
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        block = rendered[action.dest]
        if action.required:
            assert "(required)" in block, block
            continue
        assert "(default: " in block, f"{action.dest}: {block}"
        default = action.default
        if action.nargs == 0 and default is False:  # a store_true flag
            assert "(default: off" in block, block
        elif isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
            assert f"(default: {shown})" in block, block
        elif default is not None:
            assert f"(default: {default})" in block, block
