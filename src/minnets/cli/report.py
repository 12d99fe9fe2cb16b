"""``minnets report RUNS_ROOT --out DIR``: the paper's tables and figures from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build report.md (paper Tables 1-5, Figures 2-5, training curves) from run directories",
        description="Read every run directory (a folder with config.json) below RUNS_ROOT and "
        "write report.md with PNG figures and CSV tables, beside the paper's published numbers. "
        "Unfinished runs and missing seeds or JPEG results are marked, not fatal.",
    )
    parser.add_argument("runs_root", metavar="RUNS_ROOT", type=Path,
                        help="folder searched recursively for run directories")
    parser.add_argument("--out", metavar="REPORT_DIR", type=Path, required=True,
                        help="folder for report.md, figures and CSVs (created if needed)")
    parser.add_argument("--data", metavar="DIR", type=Path, default=None,
                        help="dataset root, for the example image of Figure 5 (default: the folder the runs "
                        "recorded, else $MINNETS_DATA)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from minnets.reports import build_report  # matplotlib: imported only when a report is built

    report = build_report(args.runs_root, args.out, data_root=args.data)
    print(report)
    return 0
