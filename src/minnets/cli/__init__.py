"""The ``minnets`` command line.

Each sub-command lives in its own module under ``minnets.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to the function that
runs it. Errors the user can fix (:class:`minnets.errors.MinnetsError`) are printed as one
line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from minnets import __version__
from minnets.errors import MinnetsError

COMMAND_MODULES = (
    "minnets.cli.models",
    "minnets.cli.train",
    "minnets.cli.benchmark",
    "minnets.cli.report",
    "minnets.cli.jpeg",
    "minnets.cli.robustness",
    "minnets.cli.analyze",
    "minnets.cli.sweep",
    "minnets.cli.demo",
    "minnets.cli.cache",
    "minnets.cli.corruptions",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minnets",
        description="Min-Nets: models, CIFAR training, JPEG robustness and the paper's reports.",
    )
    parser.add_argument("--version", action="version", version=f"minnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except MinnetsError as error:
        print(f"minnets: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minnets: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(result or 0)
