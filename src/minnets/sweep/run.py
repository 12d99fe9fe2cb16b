"""A sweep: a grid of runs under one ROOT, run by local workers or a Slurm array, then the report.

Stopping and restarting are free: a run's state lives in its run directory (finished runs
are skipped, partial ones resume) and a job is taken only under its lock, so any number of
sweeps (on this host, other hosts, Slurm tasks) may work on one ROOT and no job runs twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from minnets import rundir
from minnets.errors import MinnetsError
from minnets.sweep.grid import Job, load_grid
from minnets.sweep.locks import JobLock
from minnets.sweep.pool import DEFAULT_SUITES, Pool, Progress, Result, Settings, local_slots, lock_path, stages_needed
from minnets.sweep.slurm import SlurmOptions, require_submitit, run_slurm
from minnets.text import plural

__all__ = ["BACKENDS", "REPRODUCE_GRIDS", "SweepResult", "describe", "detect_gpus", "parse_gpus", "run_sweep"]

BACKENDS = ("local", "slurm")
REPRODUCE_GRIDS = {"resnet": "paper-resnet", "densenet": "paper-densenet", "all": "paper"}
REPORT_DIR = "report"


@dataclass(frozen=True)
class SweepResult:
    results: list[Result]
    report: Path | None  # report.md, unless the report was not asked for

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status != "done"]


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1"`` -> ["0", "1"]; ``"none"``/``"cpu"``/``""`` -> [] (CPU only); None -> None (detect)."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none", "cpu"):
        return []
    gpus = [part.strip() for part in text.split(",")]
    if not all(gpus):
        raise MinnetsError(f"invalid --gpus {text!r}: give comma-separated GPU indices such as 0,1, or none")
    return gpus


def detect_gpus() -> list[str]:
    """The GPUs a sweep uses by default: CUDA_VISIBLE_DEVICES's entries if set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def describe(jobs: Sequence[Job], root: Path) -> list[str]:
    """One line per job (run directory, model, seed, status); a live lock's holder is appended."""
    rows = []
    for job in jobs:
        holder = JobLock(lock_path(root, job.name)).holder()
        note = f"  (running on {holder.describe()})" if holder else ""
        rows.append((str(root / job.name), job.model, str(job.seed), rundir.run_status(root / job.name), note))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    return [f"{path:<{widths[0]}}  {model:<{widths[1]}}  {seed:>{widths[2]}}  {status}{note}"
            for path, model, seed, status, note in rows]


def _prepare_data(jobs: Sequence[Job], download: bool) -> None:
    """Find (or download once, if asked) every CIFAR copy the jobs read, before any job starts."""
    from minnets.data.cifar import CIFAR_SPECS, locate, resolve_root

    needed = {(job.overrides.get("dataset", "cifar10"), job.overrides.get("data"), download) for job in jobs}
    for dataset, data, fetch in sorted(needed, key=str):
        if dataset in CIFAR_SPECS:
            locate(CIFAR_SPECS[dataset], resolve_root(data, fetch, dataset), fetch, None, None)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the sweep like Ctrl-C: runs terminated, locks released, "run again to resume"."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build_report(root: Path, data: str | None, progress: Progress, settings: Settings) -> Path:
    """``minnets report ROOT --out ROOT/report``, one sweep at a time (the last one to finish wins)."""
    from minnets.reports import build_report

    lock = JobLock(lock_path(root, REPORT_DIR), settings.stale_seconds)
    while not lock.try_acquire():
        time.sleep(settings.recheck_seconds)
    try:
        progress.say(f"building the report in {root / REPORT_DIR}")
        return build_report(root, root / REPORT_DIR, data_root=Path(data) if data else None)
    finally:
        lock.release()


def run_sweep(
    grid: str | Path | Sequence[Job], root: str | Path, *, workers: int | None = None,
    gpus: Sequence[str] | None = None, backend: str = "local", evaluate: bool = True,
    suites: Sequence[str] = DEFAULT_SUITES, data: str | None = None, download: bool = False,
    slurm: SlurmOptions = SlurmOptions(), settings: Settings | None = None, echo: Callable[[str], Any] = print,
) -> SweepResult:
    """Run every job of ``grid`` under ``root`` until done or failed; if ``evaluate``, run the
    evaluation ``suites`` on every run and build the report.

    ``workers`` defaults to one per GPU (``gpus`` defaults to :func:`detect_gpus`), or one on
    the CPU. ``data`` is passed to every job (``--data``) and to the report. Failed jobs do
    not stop the others; they are listed in the result (run again to retry them).
    """
    if backend not in BACKENDS:
        raise MinnetsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "slurm":
        if gpus:
            raise MinnetsError("--gpus is for the local backend; on Slurm use --slurm-gpus-per-task")
        require_submitit(slurm)
    jobs = load_grid(grid) if isinstance(grid, (str, Path)) else list(grid)
    if data is not None:
        data = str(Path(data).expanduser().resolve())
        jobs = [replace(job, overrides={**job.overrides, "data": data}) for job in jobs]
    root = Path(root).expanduser().resolve()
    rundir.check_out_dir(root)
    settings = replace(settings or Settings(), suites=check_suites(suites) if evaluate else ())
    _prepare_data(jobs, download)
    rundir.check_writable(root)
    progress = Progress(len(jobs), echo)
    counts = {status: 0 for status in ("done", "partial", "pending")}
    for job in jobs:
        counts[rundir.run_status(root / job.name)] += 1
    left = sum(bool(stages_needed(root / job.name, settings.suites)) for job in jobs)
    header = (f"sweep of {plural(len(jobs), 'run')} in {root}: {counts['done']} trained, {counts['partial']} partial, "
              f"{counts['pending']} pending; {left} with work left")
    with _sigterm_as_interrupt():
        if backend == "local":
            gpus = detect_gpus() if gpus is None else list(gpus)
            slots = local_slots(workers or max(1, len(gpus)), gpus)
            progress.say(f"{header}; {plural(len(slots), 'worker')} on {', '.join(sorted({s.label for s in slots}))}; "
                         f"logs in {root}/<run>/*.log")
            results = Pool(root, slots, settings, progress).run(jobs)
        else:
            progress.say(header)
            results = run_slurm(jobs, root, settings, slurm, workers, progress)
        report_data = data or next((job.overrides["data"] for job in jobs if job.overrides.get("data")), None)
        done = sum(r.status == "done" for r in results)
        report = _build_report(root, report_data, progress, settings) if evaluate and done else None
    if results and not done:
        progress.say(f"sweep finished: {'the run' if len(results) == 1 else f'all {len(results)} runs'} failed; their logs in {root}/<run>/ say why")
    else:
        progress.say(f"sweep finished: {done}/{len(results)} runs done" + (f", report: {report}" if report else ""))
    return SweepResult(results, report)


def check_suites(suites: Sequence[str]) -> tuple[str, ...]:
    """The evaluation suites a sweep runs, each known to ``minnets robustness``."""
    from minnets.robustness import SUITES

    for name in suites:
        if name not in SUITES:
            raise MinnetsError(f"unknown suite {name!r} in --suites; choose from {', '.join(SUITES)}")
    return tuple(dict.fromkeys(suites))
