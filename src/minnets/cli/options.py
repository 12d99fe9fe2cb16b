"""Argument types and arguments shared by several commands."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "add_run_dir"]


def positive_int(text: str) -> int:
    """An argparse type for counts (``--n``, ``--workers``, ``--batch-size``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    """The positional ``RUN_DIR`` of the commands that read a finished run."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (from `minnets train`)")
