"""Every ``--option`` a command's help text mentions is one that command accepts."""

from __future__ import annotations

import argparse
import re

import pytest

from minnets.cli import build_parser

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_mentions_only_options_the_command_accepts(name: str) -> None:
    parser = COMMANDS[name]
    accepted = {flag for action in parser._actions for flag in action.option_strings}
    text = " ".join(filter(None, [parser.description, *(a.help for a in parser._actions)]))
    own = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))
    # Options of other commands quoted as such ("`minnets train --config`", "`torchrun
    # --nproc_per_node`") are not this command's.
    quoted = {flag for snippet in re.findall(r"`(?:minnets|torchrun) [^`]*`", text)
              for flag in re.findall(r"--[a-z][a-z0-9_-]*", snippet)}
    assert own - quoted <= accepted, sorted(own - quoted - accepted)


def test_version_flag_is_listed_in_the_main_help() -> None:
    assert "--version" in PARSER.format_help()


def test_the_command_line_starts_without_the_compiler_stack() -> None:
    """``torch._dynamo`` (and Triton through it) cost over a second at every start: importing
    the package and its command line must not pull them in."""
    import subprocess
    import sys

    code = "import sys, minnets, minnets.cli; print(sorted({'torch._dynamo', 'triton'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
