"""``minnets jpeg``: test error and POCP of a finished run on JPEG-compressed test sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from minnets.cli.options import add_run_dir
from minnets.jpeg import MODES, default_cache_root
from minnets.robustness import JPEG_CSV, QUALITIES, format_jpeg_table, run_jpeg
from minnets.robustness.jpeg import parse_qualities


def _report_progress(row: dict[str, Any]) -> None:
    """A line per quality while it runs; the numbers come once, in the table at the end."""
    print(f"JPEG quality {row['quality']} evaluated", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    rows = run_jpeg(Path(args.run_dir), parse_qualities(args.qualities), mode=args.mode, data_root=args.data,
                    device=args.device, cache_root=args.cache_dir, progress=_report_progress)
    print(format_jpeg_table(rows))
    print(f"wrote {Path(args.run_dir) / JPEG_CSV}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jpeg", help="test error and POCP of a finished run on JPEG-compressed test sets",
        description="Classify the run's test set compressed at each JPEG quality and compare with the "
        "predictions on the original images (POCP, paper Eq. 5). Quality 100 is always included and means "
        f"the uncompressed images. Rows are added to RUN_DIR/{JPEG_CSV} (one per quality and mode).",
    )
    add_run_dir(parser)
    parser.add_argument("--qualities", default=",".join(map(str, QUALITIES)), metavar="Q,Q,...",
                        help="comma-separated JPEG qualities, 1 to 100 (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="paper",
                        help="paper: RGB array given to OpenCV as is (how the published runs did it); "
                        "correct: true colours through OpenCV; pillow: Pillow's codec (default: %(default)s)")
    parser.add_argument("--data", metavar="DIR", help="folder holding cifar-10-batches-py/ (or the .tar.gz); "
                        "default: the run's own setting, else $MINNETS_DATA")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help=f"where compressed test sets are kept (default: {default_cache_root()}, "
                        "i.e. $MINNETS_CACHE/jpeg or ~/.cache/minnets/jpeg)")
    parser.set_defaults(handler=run)
