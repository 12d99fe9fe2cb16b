"""``minnets sweep`` (a grid of runs) and ``minnets reproduce`` (the paper in one command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.errors import MinnetsError
from minnets.sweep import REPRODUCE_GRIDS, Settings, SlurmOptions, describe, detect_gpus, load_grid, parse_gpus, run_sweep
from minnets.sweep.locks import HEARTBEAT_SECONDS
from minnets.sweep.pool import DEFAULT_SUITES
from minnets.text import plural

_GRID_HELP = (
    "paper-resnet (40 runs), paper-densenet (18), paper (58), ablation (72: min_resnet_n3 and "
    "min_densenet_l22 with every AND operator, and their baselines), or a JSON file "
    '{"models": [...], "seeds": [...], "overrides": {...}}: models are names or patterns '
    "(min_resnet_*), seeds default to each recipe's seeds, overrides are `minnets train` options "
    'by their Python names, e.g. {"dataset": "shapes10", "epochs": 1, "subset": 256}'
)
_DESCRIPTION = (
    "Every run gets its own directory ROOT/<model>-s<seed>. Finished runs are skipped, interrupted "
    "ones resume, so stop (Ctrl-C, SIGTERM) and re-run the same command freely; several sweeps (other "
    "GPUs, hosts, Slurm) may share one ROOT: a lock in ROOT/.locks keeps each run to one of them. "
    "Each run trains in its own `minnets train --config ROOT/<run>/job.json` process, logging to "
    "ROOT/<run>/train.log; then `minnets robustness ROOT/<run> --suite NAME` evaluates it for each of "
    "--suites, and the sweep ends with `minnets report ROOT --out ROOT/report`. Runs come in rounds of "
    "seeds (every model's first seed first)."
)


def _suites(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_common(parser: argparse.ArgumentParser, report_flag: bool) -> None:
    parser.add_argument("--out", required=True, metavar="ROOT", help="folder holding one directory per run")
    parser.add_argument("--workers", type=int, metavar="K",
                        help="runs at a time: local worker processes, or Slurm tasks at once "
                        "(default: one per GPU, or 1 on the CPU)")
    parser.add_argument("--gpus", metavar="LIST",
                        help="local GPUs as CUDA_VISIBLE_DEVICES values, e.g. 0,1; workers take them "
                        "round-robin (--workers 4 --gpus 0,1: two runs per GPU); none: CPU only "
                        "(default: every visible GPU). CPU workers get cores/K threads each (OMP_NUM_THREADS, "
                        "unless set)")
    parser.add_argument("--backend", choices=("local", "slurm"), default="local",
                        help="local worker processes, or one Slurm job array through submitit "
                        "(pip install 'minnets[slurm]')")
    parser.add_argument("--dry-run", action="store_true",
                        help="print one line per run (directory, model, seed, done/partial/pending), the total "
                        "runs and epochs left and an estimated wall time, and stop")
    parser.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=True,
                        help="with --dry-run: time a few training steps of each network on this machine for "
                        "the wall-time estimate (default: on)")
    parser.add_argument("--suites", type=_suites, default=DEFAULT_SUITES, metavar="LIST",
                        help="evaluation suites run on every trained run, comma-separated from jpeg, "
                        "corruptions, adversarial (default: %(default)s, the paper's)")
    parser.add_argument("--data", metavar="DIR", help="dataset folder, given to every run and to the report "
                        "(default: $MINNETS_DATA)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the dataset once, before any run starts, if it is missing")
    if report_flag:
        parser.add_argument("--no-report", action="store_true",
                            help="train only: no evaluation suites and no report")
    parser.add_argument("--stale-minutes", type=float, default=10.0, metavar="M",
                        help="a lock whose holder on another host has not refreshed it for M minutes is taken "
                        "over (holders on this host: as soon as their process is gone; default %(default)s)")
    slurm = parser.add_argument_group("Slurm (--backend slurm)")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="partition for the array tasks")
    slurm.add_argument("--slurm-time-min", type=int, default=24 * 60, metavar="MIN",
                       help="time limit per task; a task that reaches it is requeued and resumes "
                       "(default %(default)s)")
    slurm.add_argument("--slurm-gpus-per-task", type=int, default=1, metavar="N", help="default %(default)s")
    slurm.add_argument("--slurm-cpus-per-task", type=int, default=4, metavar="N", help="default %(default)s")
    slurm.add_argument("--slurm-mem-gb", type=int, metavar="GB", help="memory per task (default: the cluster's)")
    slurm.add_argument("--slurm-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any further sbatch option, e.g. account=abc or qos=high (repeatable)")


def _sweep(args: argparse.Namespace, grid: str, evaluate: bool) -> int:
    if args.dry_run:
        from minnets.sweep.estimate import describe_plan, plan

        jobs, root = load_grid(grid), Path(args.out).expanduser().resolve()
        for line in describe(jobs, root):
            print(line)
        gpus = parse_gpus(args.gpus)
        workers = args.workers or max(1, len(detect_gpus() if gpus is None else gpus))
        for line in describe_plan(plan(jobs, root), workers, measure=args.estimate):
            print(line)
        return 0
    if args.workers is not None and args.workers < 1:
        raise MinnetsError(f"--workers must be at least 1, got {args.workers}")
    if args.stale_minutes < 1:
        raise MinnetsError(f"--stale-minutes must be at least 1 (holders refresh every "
                           f"{HEARTBEAT_SECONDS:.0f} s), got {args.stale_minutes}")
    slurm = SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time_min,
                         gpus_per_task=args.slurm_gpus_per_task, cpus_per_task=args.slurm_cpus_per_task,
                         mem_gb=args.slurm_mem_gb, extra=dict(args.slurm_option))
    result = run_sweep(grid, args.out, workers=args.workers, gpus=parse_gpus(args.gpus), backend=args.backend,
                       evaluate=evaluate, suites=args.suites, data=args.data, download=args.download, slurm=slurm,
                       settings=Settings(stale_seconds=60.0 * args.stale_minutes))
    if result.failed:
        names = ", ".join(r.job.name for r in result.failed)
        raise MinnetsError(f"{len(result.failed)} of {plural(len(result.results), 'run')} failed ({names}); their logs in "
                           f"{Path(args.out)}/<run>/ say why; run the same command again to retry them")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="train a grid of runs on local GPUs/CPUs or Slurm, then report",
                                   description=_DESCRIPTION)
    parser.add_argument("grid", metavar="GRID", help=_GRID_HELP)
    _add_common(parser, report_flag=True)
    parser.set_defaults(handler=lambda args: _sweep(args, args.grid, evaluate=not args.no_report))

    parser = subparsers.add_parser(
        "reproduce", help="the paper in one command: its grid of runs, JPEG evaluation and report",
        description="Train the paper's runs with its recipes and seeds, evaluate them under JPEG and "
        "write the report: `minnets sweep paper-resnet|paper-densenet|paper --out DIR` with evaluation. "
        "Needs CIFAR-10 (--data DIR, $MINNETS_DATA, or --download). " + _DESCRIPTION,
    )
    parser.add_argument("which", choices=("resnet", "densenet", "all"),
                        help="resnet: 40 runs, densenet: 18 runs, all: 58 runs")
    _add_common(parser, report_flag=False)
    parser.set_defaults(handler=lambda args: _sweep(args, REPRODUCE_GRIDS[args.which], evaluate=True))
