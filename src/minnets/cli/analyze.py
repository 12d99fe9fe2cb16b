"""``minnets analyze``: hyperselectivity of a trained run's units (paper Section 2.3), as tables and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.cli.options import add_run_dir


def run(args: argparse.Namespace) -> int:
    from minnets.analysis import analyze_run

    path = analyze_run(Path(args.run_dir), Path(args.out) if args.out else None, units=args.units,
                       images=args.images, radius=args.radius, grid=args.grid, base_image=args.base_image,
                       seed=args.seed, ascent_steps=args.ascent_steps, data_root=Path(args.data) if args.data else None)
    print(f"wrote {path.parent} (analysis.json, CSV tables, PNG figures)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="hyperselectivity of a finished run's units: filter angles, iso-response, end-stopping",
        description="Measure, for the first block of every stack (the Min-blocks of a Min-Net, the blocks they "
        "replace in a baseline): the angle between each Min-unit's two filters, the iso-response geometry of "
        "K units near a test image (curvature > 0: hyperselective), the end-stopping of the first block's "
        "units, and the fraction of silent units on N test images. Writes analysis.json, CSV tables and PNG "
        "figures to RUN_DIR/analysis (or --out); a killed analysis resumes at its last step. `minnets report` "
        "shows analysed runs.",
    )
    add_run_dir(parser)
    parser.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/analysis)")
    parser.add_argument("--units", type=int, default=8, metavar="K",
                        help="units per block for the iso-response geometry (default: %(default)s)")
    parser.add_argument("--images", type=int, default=200, metavar="N",
                        help="test images for the silent-unit count (default: %(default)s)")
    parser.add_argument("--radius", type=float, default=5.0,
                        help="distance from the base image, in normalised input units, at which the optimal "
                        "direction is sought; the response grid spans +-radius (default: %(default)s)")
    parser.add_argument("--grid", type=int, default=41, help="grid points per axis, odd (default: %(default)s)")
    parser.add_argument("--base-image", type=int, default=0, metavar="INDEX",
                        help="test image the iso-response planes pass through (default: %(default)s)")
    parser.add_argument("--ascent-steps", type=int, default=40, metavar="S",
                        help="gradient-ascent steps per radius stage when seeking a unit's optimal direction; "
                        "fewer is faster and less exact (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="unit choice and random directions (default: %(default)s)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run recorded)")
    parser.set_defaults(handler=run)
