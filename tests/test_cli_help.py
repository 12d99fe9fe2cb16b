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
