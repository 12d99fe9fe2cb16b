"""``minnets models``: every registered model with its parameter count against the paper's."""

from __future__ import annotations

import argparse

from minnets.errors import MinnetsError
from minnets.models import count_parameters, create_model, list_models, model_info


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise MinnetsError(f"no model matches {args.pattern!r}; `minnets models` lists all "
                           f"{len(list_models())} (patterns are shell-style, e.g. 'min_*')")
    rows = []
    for name in names:
        params = count_parameters(create_model(name))
        paper = model_info(name)["paper_params"]
        rows.append((name, f"{params:,}", f"{paper:,}", "yes" if params == paper else "NO"))
    header = ("model", "parameters", "paper", "match")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return 0 if all(row[3] == "yes" for row in rows) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the models with their parameter counts")
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'min_*'")
    parser.set_defaults(handler=run)
