"""``minnets robustness``: test error and POCP of a finished run under one perturbation suite."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from minnets.cli.options import add_run_dir, positive_int
from minnets.errors import MinnetsError
from minnets.robustness.evaluate import progress_printer, run_suite, suite_csv
from minnets.robustness.suite import SUITES, Row, Suite, suite_class


def format_rows(suite: Suite, rows: Sequence[Row]) -> str:
    """A plain-text table of a suite's rows; the version, the same on every row, once below it."""
    columns = [c for c in suite.columns if c != suite.version_column]
    cells = [[f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    versions = dict.fromkeys(row[suite.version_column] for row in rows)
    lines += [f"{suite.version_column}: {version or 'not recorded'}" for version in versions]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    suite = suite_class(args.suite).from_args(args)
    rows = run_suite(Path(args.run_dir), suite, data_root=args.data, device=args.device, n_images=args.n,
                     batch_size=args.batch_size, progress=progress_printer(suite))
    print(format_rows(suite, rows))
    print(f"wrote {suite_csv(args.run_dir, suite)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "robustness", help="test error and POCP of a finished run under a perturbation suite",
        description="Classify the run's test set under every level of one suite (jpeg: JPEG qualities; "
        "corruptions: CIFAR-10-C; adversarial: attacks at each eps) and compare with the predictions on "
        "the clean images (POCP, paper Eq. 5). Rows go to RUN_DIR/<suite>.csv as each level finishes; "
        "running the same command again resumes.",
    )
    add_run_dir(parser)
    parser.add_argument("--suite", required=True, choices=tuple(SUITES), help="which perturbation suite")
    parser.add_argument("--data", metavar="DIR", help="data folder (CIFAR-10, and CIFAR-10-C for corruptions); "
                        "default: the run's own setting, else $MINNETS_DATA")
    parser.add_argument("--n", type=positive_int, metavar="N", help="only the first N test images (quick checks)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per batch (default: %(default)s)")
    for name in SUITES:
        try:
            cls = suite_class(name)
        except MinnetsError:
            continue  # not installed here: `--suite NAME` then says why
        cls.add_arguments(parser)
    parser.set_defaults(handler=run)
