"""The ``slurm`` backend: one Slurm job array through submitit (the optional extra ``slurm``).

Every array task runs one job exactly as a local worker would (same lock, same run
directory, same train and JPEG subprocesses, see :mod:`minnets.sweep.pool`), so local and
Slurm sweeps may share a ROOT. The sweep process submits the array, prints each task's end
and, once all are over, builds the report; stopping it (Ctrl-C, SIGTERM) cancels the tasks
still queued or running, and the same command resumes. submitit's files (task logs
included) go to ``ROOT/.submitit``.

A task that reaches its time limit (or is preempted) gets SIGUSR2 from Slurm; submitit then
calls :meth:`SlurmTask.checkpoint` and requeues the task, which resumes the run from its
last epoch's checkpoint. So ``--slurm-time-min`` may be shorter than a run; up to
``max_requeues`` requeues per task are allowed. A cancelled task is killed by Slurm (submitit
ignores SIGTERM), so its lock is freed only by the stale timeout (the holder is on another
host): a sweep restarted within that time waits for those jobs, then takes them over.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minnets.errors import MinnetsError
from minnets.sweep.grid import Job
from minnets.sweep.pool import Pool, Progress, Result, Settings, Slot, cpu_count, stages_needed, thread_env
from minnets.text import plural

__all__ = ["SlurmOptions", "SlurmTask", "require_submitit", "run_slurm"]


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each array task; ``cluster='local'`` runs the array as local processes (tests)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    mem_gb: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. {"account": "abc"}
    max_requeues: int = 20
    cluster: str = "slurm"


class SlurmTask:
    """What one array task runs: one job, through a one-slot :class:`Pool` (picklable)."""

    def __init__(self, root: str, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    def __call__(self, job: Job) -> Result:
        # Slurm sets CUDA_VISIBLE_DEVICES for the task; the device stays "auto" unless overridden.
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or cpu_count())
        slot = Slot(os.uname().nodename, thread_env(threads))
        return Pool(Path(self.root), [slot], self.settings, Progress(1)).run([job])[0]

    def checkpoint(self, job: Job) -> Any:
        """Requeue the same job after a timeout or preemption; training resumes from checkpoint.pt."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


def require_submitit(options: SlurmOptions) -> Any:
    """The submitit module, or a one-line error saying what to install (and sbatch, for Slurm)."""
    try:
        import submitit
    except ImportError:
        raise MinnetsError(
            "--backend slurm needs submitit, an optional extra: pip install 'minnets[slurm]' "
            "(or pip install submitit), or use --backend local"
        ) from None
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise MinnetsError("--backend slurm needs Slurm's sbatch on the PATH: run the sweep on a login node "
                           "of the cluster, or use --backend local")
    return submitit


def run_slurm(jobs: Sequence[Job], root: Path, settings: Settings, options: SlurmOptions, workers: int | None,
              progress: Progress) -> list[Result]:
    """Submit the unfinished ``jobs`` as one array and wait for it; at most ``workers`` tasks at a time."""
    submitit = require_submitit(options)
    todo = []
    for job in jobs:
        if stages_needed(root / job.name, settings.suites):
            todo.append(job)
        else:
            progress.finish(Result(job, "done", "finished already"), quiet=True)
    if todo:
        _wait(_submit(submitit, todo, root, settings, options, workers, progress), progress, settings)
    return [progress.results[job.name] for job in jobs]


def _submit(submitit: Any, todo: list[Job], root: Path, settings: Settings, options: SlurmOptions,
            workers: int | None, progress: Progress) -> dict[Any, Job]:
    folder = root / ".submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster,
                                     slurm_max_num_timeout=options.max_requeues)
    parameters: dict[str, Any] = {
        "name": "minnets-sweep", "timeout_min": options.time_min, "nodes": 1, "tasks_per_node": 1,
        "gpus_per_node": options.gpus_per_task, "cpus_per_task": options.cpus_per_task,
    }
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    if options.cluster == "slurm":
        parameters["slurm_array_parallelism"] = workers or len(todo)
        if options.partition:
            parameters["slurm_partition"] = options.partition
        if options.extra:
            parameters["slurm_additional_parameters"] = dict(options.extra)
    try:
        executor.update_parameters(**parameters)
        handles = executor.map_array(SlurmTask(str(root), settings), todo)
    except Exception as error:  # submitit and sbatch fail in many ways; the message says which
        detail = str(error).strip().splitlines()
        raise MinnetsError(f"submitting the array failed: {detail[-1] if detail else type(error).__name__}; "
                           "check the --slurm-* options") from None
    array = str(handles[0].job_id).split("_")[0]
    progress.say(f"submitted {plural(len(todo), 'task')} as job array {array}; task logs in {folder}")
    return dict(zip(handles, todo))


def _wait(pending: dict[Any, Job], progress: Progress, settings: Settings) -> None:
    try:
        while pending:
            for handle, job in list(pending.items()):
                if handle.done():
                    del pending[handle]
                    progress.finish(_outcome(handle, job))
            if pending:
                time.sleep(settings.recheck_seconds)
    except BaseException:
        for handle in pending:
            handle.cancel(check=False)
        progress.say(f"cancelled {plural(len(pending), 'task')} of the array")
        raise


def _outcome(handle: Any, job: Job) -> Result:
    try:
        result = handle.result()
    except Exception as error:  # the task crashed or was killed: submitit re-raises its traceback
        lines = [line for line in str(error).splitlines() if line.strip()]
        return Result(job, "failed", f"task {handle.job_id}: {lines[-1] if lines else type(error).__name__} "
                                     f"(log: {handle.paths.stderr})")
    return result if isinstance(result, Result) else Result(job, "failed", f"task {handle.job_id} returned {result!r}")
