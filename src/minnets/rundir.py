"""The run directory: every file a run leaves, for every stage (train, robustness, analysis, report, sweep).

Training writes ``config.json`` (the whole :class:`~minnets.config.RunConfig`), ``metrics.csv``
(a row per epoch), ``checkpoint.pt`` (the latest full state), ``model.safetensors`` (final
weights) and ``summary.json`` (written last). Evaluation suites write ``<suite>.csv``
(:func:`write_results`) and keep resumable partial work in ``cache/<suite>/``; analyses write
under ``analysis/``. Every file is written to a temporary name in the same folder and then
renamed (:mod:`minnets.files`), so a killed process never leaves a half-written file behind.
While ``minnets train`` works on a directory it holds ``train.lock`` (one trainer at a time).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minnets.config import RunConfig
from minnets.data import ImageDataset
from minnets.errors import MinnetsError
from minnets.files import atomic_write, read_json, remove_temp_files, write_error, write_json

__all__ = [
    "CONFIG", "METRICS", "CHECKPOINT", "WEIGHTS", "SUMMARY", "LOCK", "JOB", "METRIC_COLUMNS", "TRAINING_FILES",
    "write_metrics", "read_metrics", "save_checkpoint", "load_checkpoint", "save_weights", "load_state",
    "read_config", "write_config", "read_summary", "write_summary", "load_run_model", "run_status", "test_split",
    "result_csv", "write_results", "read_results", "suite_cache_dir", "analysis_dir", "check_writable",
    "check_out_dir", "run_lock",
]

CONFIG, METRICS, CHECKPOINT, WEIGHTS, SUMMARY = (
    "config.json", "metrics.csv", "checkpoint.pt", "model.safetensors", "summary.json"
)
LOCK = "train.lock"
JOB = "job.json"  # the run config a sweep asked its worker to train (before the trainer resolved it)
TRAINING_FILES = (CONFIG, METRICS, CHECKPOINT, WEIGHTS, SUMMARY)
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_err", "test_loss", "test_err", "seconds")


# --- training files ------------------------------------------------------------------------------


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """``metrics.csv`` from the epoch rows; floats in their shortest exact form (lr 0.01)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row[key] for key in METRIC_COLUMNS} for row in history)
    atomic_write(Path(run_dir) / METRICS, lambda tmp: tmp.write_text(buffer.getvalue()))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch rows as numbers (``epoch`` as int); empty if no epoch has finished."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        with open(path, newline="") as handle:
            return [
                {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)
            ]
    except (TypeError, ValueError) as error:
        raise MinnetsError(f"{path} is damaged ({error}); delete it: resuming the run rewrites it from "
                           f"{CHECKPOINT}") from None


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The latest training state, loaded without executing code (``weights_only=True``)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise MinnetsError(
            f"cannot read checkpoint {path} ({type(error).__name__}); delete it to restart the run from scratch"
        ) from None


def save_weights(path: Path, model: nn.Module) -> None:
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_state(module: nn.Module | torch.optim.Optimizer, state: dict[str, Any], source: Path, model: str) -> None:
    """``module.load_state_dict(state)``, or one line saying that ``source`` is not from ``model``."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise MinnetsError(f"{source} does not fit {model} as configured in {CONFIG} ({first}); it comes from "
                           "another model or run: delete it, or train into a new --out") from None


def write_config(run_dir: Path, config: RunConfig) -> None:
    config.to_json(Path(run_dir) / CONFIG)


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """The run's :class:`RunConfig`; one line if the directory is no run or the file is damaged."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MinnetsError(f"{run_dir} is not a run directory (no {CONFIG}); train one with "
                           "`minnets train --model NAME --out DIR`")
    return RunConfig.from_json(run_dir / CONFIG)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    return read_json(path) if path.is_file() else None


def run_status(run_dir: str | os.PathLike[str]) -> str:
    """``done`` (summary and final weights written), ``partial`` (started) or ``pending``.

    A finished run whose weights were lost is ``partial``: ``minnets train`` rebuilds them
    from the checkpoint.
    """
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).exists() and (run_dir / WEIGHTS).exists():
        return "done"
    if any((run_dir / name).exists() for name in (CHECKPOINT, CONFIG, SUMMARY)):
        return "partial"
    return "pending"


def load_run_model(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """The final model of a finished run (eval mode) and its config; loads no pickles."""
    from minnets.models import create_model

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise MinnetsError(
            f"{run_dir} has no final weights ({WEIGHTS}): the run is unfinished or its weights were lost; "
            f"run `minnets train --config {run_dir / CONFIG} --out {run_dir}` to finish or rebuild it"
        )
    model = create_model(config.model, num_classes=config.num_classes, **config.model_kwargs())
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as error:  # safetensors raises its own types for damaged files
        raise MinnetsError(f"cannot read {weights} ({type(error).__name__}); the file is damaged: delete it and "
                           f"rebuild it with `minnets train --config {run_dir / CONFIG} --out {run_dir}`") from None
    load_state(model, state, weights, config.model)
    dtype = torch.float64 if config.float64 else torch.float32
    return model.to(device, dtype).eval(), config


def test_split(dataset: ImageDataset, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels a run is evaluated on: all, or its ``--test-subset`` first ones.

    Every evaluation of a run (training's, ``evaluate``, robustness suites) goes through this,
    so a run trained with ``--test-subset 200`` is never compared on other images.
    """
    n = config.test_subset
    return dataset.test_images[:n], dataset.test_labels[:n]


# --- per-suite results -------------------------------------------------------------------------


def result_csv(run_dir: str | os.PathLike[str], suite: str) -> Path:
    """``RUN_DIR/<suite>.csv``: one evaluation suite's rows (``jpeg``, ``corruptions``, ...)."""
    return Path(run_dir) / f"{suite}.csv"


def write_results(run_dir: str | os.PathLike[str], suite: str, rows: Sequence[dict[str, Any]],
                  columns: Sequence[str]) -> Path:
    """Write ``<suite>.csv`` atomically with ``columns`` in order (other keys of a row are left out)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = result_csv(run_dir, suite)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))
    return path


def read_results(run_dir: str | os.PathLike[str], suite: str) -> list[dict[str, str]]:
    """The rows of ``<suite>.csv`` as strings ([] if the suite has not written any)."""
    path = result_csv(run_dir, suite)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def suite_cache_dir(run_dir: str | os.PathLike[str], suite: str) -> Path:
    """Where a suite keeps resumable partial work of one run (``cache/<suite>/``)."""
    return Path(run_dir) / "cache" / suite


def analysis_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where analyses of one run write their files (``analysis/``)."""
    return Path(run_dir) / "analysis"


# --- checks and the lock -----------------------------------------------------------------------


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a folder whose results could not be stored (one line)."""
    folder = Path(folder)
    probe = folder / ".minnets-write-check"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        friendly = write_error(folder, error)
        raise (friendly or MinnetsError(f"cannot write into {folder} ({error.strerror or error})")) from None


def check_out_dir(run_dir: Path) -> None:
    """``--out`` must be a folder (or not exist yet) and writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MinnetsError(f"--out {run_dir} is a file, not a folder; choose another --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MinnetsError(f"--out {run_dir}: {parent} is a file, not a folder")
            break


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``train.lock`` while training ``run_dir``: a second trainer refuses, naming the first.

    A lock whose holder died is taken over (see :mod:`minnets.sweep.locks`); while held, a
    thread refreshes its heartbeat, so trainers on other hosts of a shared filesystem see it live.
    """
    from minnets.sweep.locks import HEARTBEAT_SECONDS, JobLock

    lock = JobLock(Path(run_dir) / LOCK)
    if not lock.try_acquire():
        who = lock.blocked_by.describe() if lock.blocked_by else "another process"
        raise MinnetsError(f"{run_dir} is being trained by {who} (lock {Path(run_dir) / LOCK}); wait for it, "
                           "or stop it and run the command again to resume")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            lock.refresh()

    heartbeat = threading.Thread(target=beat, name="minnets-train-lock", daemon=True)
    heartbeat.start()
    try:
        remove_temp_files(run_dir, TRAINING_FILES)  # left by a killed trainer: nobody else writes them
        yield
    finally:
        stop.set()
        heartbeat.join()
        lock.release()
