"""Sweeps: many training runs under one ROOT, spread over local GPUs/CPUs or a Slurm array.

``minnets sweep GRID --out ROOT`` and ``minnets reproduce {resnet,densenet,all}``; see
:mod:`minnets.sweep.grid` (what runs, run directory names, order), :mod:`minnets.sweep.locks`
(one job, one holder, across hosts), :mod:`minnets.sweep.pool` (local workers, subprocesses,
logs), :mod:`minnets.sweep.slurm` (job arrays through submitit) and
:mod:`minnets.sweep.estimate` (what a dry run says is left, and how long it will take).
"""

from minnets.sweep.grid import NAMED_GRIDS, OVERRIDE_KEYS, Job, load_grid, make_jobs
from minnets.sweep.locks import JobLock
from minnets.sweep.pool import Result, Settings
from minnets.sweep.run import BACKENDS, REPRODUCE_GRIDS, SweepResult, describe, detect_gpus, parse_gpus, run_sweep
from minnets.sweep.slurm import SlurmOptions

__all__ = [
    "BACKENDS", "NAMED_GRIDS", "OVERRIDE_KEYS", "REPRODUCE_GRIDS", "Job", "JobLock", "Result", "Settings",
    "SlurmOptions", "SweepResult", "describe", "detect_gpus", "load_grid", "make_jobs", "parse_gpus", "run_sweep",
]
