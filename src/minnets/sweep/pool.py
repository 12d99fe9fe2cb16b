"""Running jobs: worker slots, each job under its lock, each stage a ``minnets`` subprocess.

A job has stages, each one subprocess so that a crash, an out-of-memory kill or a SIGKILL of
one run never takes the sweep down, and so that ``CUDA_VISIBLE_DEVICES`` pins a worker's GPU:
``python -m minnets train --config ROOT/<job>/job.json --out ROOT/<job>`` (the job's
:class:`~minnets.config.RunConfig`, written by the sweep; skipped when the run is done; on a
partial run it resumes from checkpoint.pt), then one ``python -m minnets robustness RUN_DIR
--suite NAME`` per evaluation suite (``Settings.suites``; each skipped when
:func:`minnets.robustness.suite_complete` says its ``<suite>.csv`` is complete). Their output
is appended to ``ROOT/<job>/<stage>.log``, each start marked by a line
``==== minnets sweep: <stage> <job> on <host> pid <pid> at <time>: <command>``; training is
not run with ``--quiet``, so train.log gets one line per epoch.

One process runs the loop (no threads): it starts stages in free slots, polls them, refreshes
the locks' heartbeats and waits for jobs that another sweep is running. Children start in
their own session (a Ctrl-C in the terminal reaches the sweep only, which then stops them in
order) and, on Linux, with ``PR_SET_PDEATHSIG`` = SIGKILL: if the sweep itself is killed with
SIGKILL, its runs die with it, and the locks left behind are stale (dead pid) for the next
sweep. On other systems such orphans keep running until they finish, and a new sweep may
start the same run beside them: stop sweeps there with Ctrl-C or SIGTERM, not SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from minnets import rundir
from minnets.errors import MinnetsError
from minnets.sweep.grid import Job
from minnets.sweep.locks import HEARTBEAT_SECONDS, STALE_SECONDS, JobLock
from minnets.text import plural
from minnets.training.trainer import format_duration

__all__ = ["Slot", "Settings", "Result", "Progress", "Pool", "local_slots", "stages_needed", "lock_path",
           "LOG_MARK", "DEFAULT_SUITES"]

LOG_MARK = "==== minnets sweep:"
DEFAULT_SUITES = ("jpeg",)  # the paper's evaluation
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Slot:
    """Where a worker runs its jobs: extra environment (GPU pinning, threads) and default device."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # --device for train and jpeg unless the job's overrides name one


@dataclass(frozen=True)
class Settings:
    """What a job includes and how often the loop looks around; tests shorten the waits."""

    suites: tuple[str, ...] = DEFAULT_SUITES  # `minnets robustness --suite NAME` on every finished run
    stale_seconds: float = STALE_SECONDS
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    poll_seconds: float = 0.5
    recheck_seconds: float = 5.0  # how often a job running elsewhere is looked at again
    echo_epochs: bool = False  # also show each run's epoch lines (with their ETA) on the console


@dataclass(frozen=True)
class Result:
    job: Job
    status: str  # "done" or "failed"
    detail: str


class Progress:
    """The sweep's console lines: elapsed time, what happened, and the done/total count."""

    def __init__(self, total: int, echo: Callable[[str], Any] = print) -> None:
        self.total = total
        self.echo = echo
        self.results: dict[str, Result] = {}
        self._t0 = time.monotonic()

    def say(self, message: str) -> None:
        self.echo(f"[{format_duration(time.monotonic() - self._t0)}] {message}")

    def finish(self, result: Result, quiet: bool = False) -> None:
        """Record a job's end; ``quiet`` for jobs found finished, which the sweep's header counted."""
        self.results[result.job.name] = result
        if quiet:
            return
        done = sum(r.status == "done" for r in self.results.values())
        failed = len(self.results) - done
        counts = f"[{done}/{self.total} done" + (f", {failed} failed]" if failed else "]")
        word = "done   " if result.status == "done" else "FAILED "
        self.say(f"{word} {result.job.name}: {result.detail}  {counts}")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """OMP/MKL thread counts for a worker, unless the user set OMP_NUM_THREADS already."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def local_slots(workers: int, gpus: Sequence[str]) -> list[Slot]:
    """``workers`` slots: round-robin over ``gpus`` (CUDA_VISIBLE_DEVICES values), or all on the CPU.

    Each worker gets ``cores // workers`` CPU threads (at least one), so K CPU runs do not
    oversubscribe the machine; GPU runs barely use the CPU (the data lives on the GPU).
    """
    if workers < 1:
        raise MinnetsError(f"--workers must be at least 1, got {workers}")
    threads = thread_env(max(1, cpu_count() // workers))
    if not gpus:
        return [Slot("cpu", {**threads, "CUDA_VISIBLE_DEVICES": ""}, "cpu") for _ in range(workers)]
    return [Slot(f"gpu {gpus[i % len(gpus)]}", {**threads, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]})
            for i in range(workers)]


def lock_path(root: Path, name: str) -> Path:
    return root / ".locks" / f"{name}.lock"


def stages_needed(run_dir: Path, suites: Sequence[str]) -> list[str]:
    """What is left of a job: ``train`` unless done, then each suite whose results are incomplete."""
    from minnets.robustness import suite_complete

    trained = rundir.run_status(run_dir) == "done"
    stages = [] if trained else ["train"]
    return stages + [suite for suite in suites if not trained or not suite_complete(run_dir, suite)]


def _child_setup() -> Callable[[], None]:
    """A preexec function for stage processes.

    On Linux the child gets SIGKILL when the sweep dies. Everywhere it ignores SIGUSR2, which
    Slurm sends to every process of a task shortly before its time limit: the task process
    handles it (requeue, see :mod:`minnets.sweep.slurm`) and stops its child itself.
    """
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    parent = os.getpid()

    def preexec() -> None:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the sweep died before prctl took effect
                os._exit(1)

    return preexec


@dataclass
class _Active:
    job: Job
    lock: JobLock
    stages: list[str]  # the current stage first
    slot: Slot
    started: float
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    echoed: int = 0  # bytes of the stage's log already scanned for epoch lines


class Pool:
    """Run jobs in ``slots`` until every one is done or failed; jobs locked elsewhere are waited for."""

    def __init__(self, root: Path, slots: Sequence[Slot], settings: Settings, progress: Progress) -> None:
        self.root = Path(root)
        self.slots = list(slots)
        self.settings = settings
        self.progress = progress
        self.say = progress.say
        self._preexec = _child_setup()
        self._last_beat = time.monotonic()

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        queue = deque(jobs)
        waiting: dict[str, tuple[Job, float]] = {}  # job name -> (job, when to look again)
        active: dict[int, _Active] = {}
        said_waiting = False
        try:
            while queue or waiting or active:
                self._poll(active)
                self._heartbeat(active)
                free = [i for i in range(len(self.slots)) if i not in active]
                while free and (job := self._next(queue, waiting)) is not None:
                    claimed = self._claim(job, self.slots[free[0]])
                    if isinstance(claimed, _Active):
                        active[free.pop(0)] = claimed
                        waiting.pop(job.name, None)
                    elif isinstance(claimed, Result):
                        elsewhere = waiting.pop(job.name, None) is not None
                        self.progress.finish(replace(claimed, detail="finished elsewhere") if elsewhere else claimed,
                                             quiet=not elsewhere)
                    else:
                        if job.name not in waiting:
                            self.say(f"busy    {job.name}: running elsewhere ({claimed})")
                        waiting[job.name] = (job, time.monotonic() + self.settings.recheck_seconds)
                if waiting and not active and not queue and not said_waiting:
                    self.say(f"waiting for {plural(len(waiting), 'job')} running elsewhere: {', '.join(sorted(waiting))}")
                    said_waiting = True
                if queue or waiting or active:
                    time.sleep(self.settings.poll_seconds)
        finally:
            if active:
                self._stop(list(active.values()))
        return [self.progress.results[job.name] for job in jobs]

    @staticmethod
    def _next(queue: deque[Job], waiting: dict[str, tuple[Job, float]]) -> Job | None:
        if queue:
            return queue.popleft()
        now = time.monotonic()
        for job, when in waiting.values():
            if when <= now:
                return job
        return None

    def _claim(self, job: Job, slot: Slot) -> _Active | Result | str:
        """Start the job in ``slot``; a Result if nothing is left to do; who runs it if it runs elsewhere."""
        run_dir = self.root / job.name
        if not stages_needed(run_dir, self.settings.suites):
            return Result(job, "done", "finished already")
        lock = JobLock(lock_path(self.root, job.name), self.settings.stale_seconds)
        if not lock.try_acquire():
            return lock.blocked_by.describe() if lock.blocked_by else "lock contended"
        try:
            stages = stages_needed(run_dir, self.settings.suites)  # again: it may have finished meanwhile
            if not stages:
                lock.release()
                return Result(job, "done", "finished already")
            what = {"pending": "train", "partial": "resume training"}.get(rundir.run_status(run_dir), "")
            self.say(f"start   {job.name}: {' + '.join(filter(None, [what, *(s for s in stages if s != 'train')]))} "
                     f"on {slot.label}")
            active = _Active(job, lock, stages, slot, time.monotonic())
            self._start_stage(active)
        except BaseException:  # Ctrl-C or SIGTERM included: never leave our lock behind
            lock.release()
            raise
        return active

    def _command(self, stage: str, job: Job, slot: Slot) -> list[str]:
        """The stage's ``minnets`` command; for training, the job's config is handed over as a file."""
        run_dir = self.root / job.name
        command = [sys.executable, "-m", "minnets"]
        if stage == "train":
            job_file = run_dir / rundir.JOB
            job.config().to_json(job_file)
            command += ["train", "--config", str(job_file), "--out", str(run_dir)]
        else:
            command += ["robustness", str(run_dir), "--suite", stage]
        device = job.overrides.get("device") or slot.device
        return command + (["--device", device] if device else [])

    def _start_stage(self, active: _Active) -> None:
        stage, job, slot = active.stages[0], active.job, active.slot
        run_dir = self.root / job.name
        run_dir.mkdir(parents=True, exist_ok=True)
        command = self._command(stage, job, slot)
        active.log = open(run_dir / f"{stage}.log", "ab")
        active.log.write(f"{LOG_MARK} {stage} {job.name} on {socket.gethostname()} pid {os.getpid()} at "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n".encode())
        active.log.flush()
        active.echoed = active.log.tell()
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
        active.process = subprocess.Popen(command, stdout=active.log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                          preexec_fn=self._preexec)

    def _poll(self, active: dict[int, _Active]) -> None:
        for index, job_state in list(active.items()):
            assert job_state.process is not None and job_state.log is not None
            code = job_state.process.poll()
            if self.settings.echo_epochs and job_state.stages[0] == "train":
                self._echo_epochs(job_state)
            if code is None:
                continue
            job_state.log.close()
            stage = job_state.stages.pop(0)
            if code == 0 and job_state.stages:
                self._start_stage(job_state)
                continue
            del active[index]
            job_state.lock.release()
            run_dir = self.root / job_state.job.name
            if code == 0:
                self.progress.finish(Result(job_state.job, "done", self._describe_done(run_dir, job_state.started)))
            else:
                log = run_dir / f"{stage}.log"
                self.progress.finish(Result(job_state.job, "failed",
                                            f"{stage} exited with {code}: {_last_line(log)} (log: {log})"))

    def _echo_epochs(self, job_state: _Active) -> None:
        """Say the epoch lines that the train stage appended to its log since the last look."""
        assert job_state.log is not None
        try:
            with open(job_state.log.name, "rb") as handle:
                handle.seek(job_state.echoed)
                text = handle.read()
        except OSError:
            return
        complete = text[:text.rfind(b"\n") + 1]
        job_state.echoed += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("epoch "):
                self.say(f"        {job_state.job.name}: {line.strip()}")

    @staticmethod
    def _describe_done(run_dir: Path, started: float) -> str:
        summary = rundir.read_summary(run_dir)
        assert summary is not None  # the train stage ended with status 0
        return (f"final test error {summary['final_test_err']:.2f}% (min {summary['min_test_err']:.2f}%) "
                f"in {format_duration(time.monotonic() - started)}")

    def _heartbeat(self, active: dict[int, _Active]) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.settings.heartbeat_seconds:
            return
        self._last_beat = now
        for job_state in active.values():
            if not job_state.lock.refresh():
                self.say(f"warning: the lock of {job_state.job.name} was taken over as stale by another "
                         "sweep; raise the stale timeout if this host's clock or filesystem is slow")

    def _stop(self, jobs: list[_Active]) -> None:
        """Terminate running stages (SIGTERM, then SIGKILL after a grace period) and free their locks."""
        for job_state in jobs:
            _signal_group(job_state.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for job_state in jobs:
            process = job_state.process
            if process is not None:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait()
            if job_state.log is not None:
                job_state.log.close()
            job_state.lock.release()
            self.say(f"stopped {job_state.job.name} (a new sweep resumes it)")


def _signal_group(process: subprocess.Popen[bytes] | None, signum: int) -> None:
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(no output)"
