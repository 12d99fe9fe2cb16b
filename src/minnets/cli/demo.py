"""``minnets demo``: the whole story offline, as one small sweep.

A baseline and its Min-Net are trained briefly on the embedded ``shapes10`` (no download),
JPEG-evaluated and reported with every figure, through the same machinery as
``minnets sweep``; so the demo's output folder can be stopped, resumed and extended alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.errors import MinnetsError
from minnets.sweep import Settings, make_jobs, run_sweep
from minnets.text import plural

DEMO_MODELS = ("resnet_n3", "min_resnet_n3")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise MinnetsError(f"--seeds must be at least 1, got {args.seeds}")
    overrides = {"dataset": args.dataset, "recipe": "quick", "epochs": args.epochs}
    if args.subset:
        overrides["subset"] = args.subset
    jobs = make_jobs(list(args.models.split(",")), seeds=list(range(args.seeds)), overrides=overrides)
    images = f"the first {args.subset:,} training images" if args.subset else "all training images"
    print(f"minnets demo: {plural(len(jobs), 'run')} ({args.models}) on {args.dataset}, {args.epochs} epochs each "
          f"on {images}, {plural(args.seeds, 'seed')}; then JPEG robustness and the report, in {args.out}")
    result = run_sweep(jobs, args.out, data=args.data, download=args.download, workers=args.workers,
                       settings=Settings(echo_epochs=True))
    if result.failed:
        raise MinnetsError(f"{plural(len(result.failed), 'demo run')} failed; see the train.log files under "
                           f"{args.out}")
    print(f"\nreport: {result.report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a baseline and its Min-Net briefly, test JPEG robustness, write the report",
        description="The quick start's main job: on the embedded shapes10 (no download), train ResNet N=3 and "
        "its Min-Net with a short recipe, evaluate both under JPEG compression and write the report with "
        "figures. Re-running resumes; --dataset cifar10 --data DIR runs the same flow on CIFAR-10.",
    )
    parser.add_argument("--out", default="minnets-demo", type=Path, help="output folder (default: %(default)s)")
    parser.add_argument("--dataset", default="shapes10", choices=("shapes10", "cifar10", "cifar100"))
    parser.add_argument("--data", metavar="DIR", help="dataset folder for cifar10/cifar100 (default: $MINNETS_DATA)")
    parser.add_argument("--download", action="store_true", help="fetch CIFAR if it is missing")
    parser.add_argument("--models", default=",".join(DEMO_MODELS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="per run (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per model, 0..S-1 (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=5000, metavar="N",
                        help="train on the first N training images (default: %(default)s; 0: all)")
    parser.add_argument("--workers", type=int, help="runs at a time (default: one per GPU, or 1 on the CPU)")
    parser.set_defaults(handler=run)
