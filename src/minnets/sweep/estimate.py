"""What a sweep will cost: runs, epochs and images left, and a wall time from a quick measurement.

The wall time is measured, not guessed from a table: for each distinct network of the grid
(model, AND operator, precision and memory format) a few SGD steps on random images run on
the device the jobs will use, timed after one warm-up step. Evaluating an image (forward
only) is counted as a third of training on it, and the runs are spread evenly over the
workers. So the estimate is of this machine, for its current load; a GPU grid estimated on
a CPU-only machine says so in its line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minnets import rundir
from minnets.config import RunConfig
from minnets.data.shapes10 import N_TEST, N_TRAIN
from minnets.models import create_model
from minnets.sweep.grid import Job
from minnets.text import plural
from minnets.training.distributed import pick_device
from minnets.training.recipes import model_recipe
from minnets.training.trainer import format_duration

__all__ = ["Plan", "plan", "measure_images_per_second", "describe_plan"]

EVAL_COST = 1 / 3  # one test image's forward pass, in training steps per image
MEASURE_BATCH = 32  # at most: enough for a stable rate, quick for DenseNet L=100 on a CPU
# (train, test) images: both CIFARs have 50,000 and 10,000 (Krizhevsky 2009)
_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "shapes10": (N_TRAIN, N_TEST)}


@dataclass(frozen=True)
class Plan:
    """What is left of one job: epochs still to train and the images each epoch touches."""

    job: Job
    config: RunConfig
    status: str
    epochs_left: int
    train_images: int
    test_images: int


def _sizes(config: RunConfig) -> tuple[int, int]:
    n_train, n_test = _SIZES[config.dataset]
    return min(config.subset or n_train, n_train), min(config.test_subset or n_test, n_test)


def plan(jobs: Sequence[Job], root: Path) -> list[Plan]:
    """Every job's remaining work, from its config and the epochs its run directory has finished."""
    plans = []
    for job in jobs:
        config = job.config()
        epochs = config.epochs or model_recipe(config.model, config.recipe).epochs
        status = rundir.run_status(root / job.name)
        done = epochs if status == "done" else len(rundir.read_metrics(root / job.name))
        plans.append(Plan(job, config, status, max(0, epochs - done), *_sizes(config)))
    return plans


def measure_images_per_second(config: RunConfig, device: torch.device, steps: int = 2) -> float:
    """Training images per second of ``config``'s network on ``device``, over ``steps`` timed SGD steps."""
    batch = min(MEASURE_BATCH, config.batch_size or MEASURE_BATCH)
    dtype = torch.float64 if config.float64 else torch.float32
    model = create_model(config.model, **config.model_kwargs()).to(
        device, dtype, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel selection, native builds
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def describe_plan(plans: Sequence[Plan], workers: int, measure: bool = True) -> list[str]:
    """The dry run's total lines: runs by status, epochs and images left, and (if ``measure``) a wall time."""
    counts = {status: sum(p.status == status for p in plans) for status in ("done", "partial", "pending")}
    epochs = sum(p.epochs_left for p in plans)
    images = sum(p.epochs_left * p.train_images for p in plans)
    lines = [f"total: {plural(len(plans), 'run')} ({counts['pending']} pending, {counts['partial']} partial, {counts['done']} "
             f"trained), {epochs:,} epochs left ({images:,} training images)"]
    todo = [p for p in plans if p.epochs_left]
    if not measure or not todo:
        return lines
    rates: dict[tuple[str, ...], float] = {}
    seconds = 0.0
    devices = set()
    for p in todo:
        device = pick_device(p.config.device)
        devices.add(str(device))
        key = (p.config.model, p.config.unit, p.config.amp, str(p.config.channels_last), str(p.config.float64),
               str(device))
        if key not in rates:
            rates[key] = measure_images_per_second(p.config, device)
        seconds += p.epochs_left * (p.train_images + EVAL_COST * p.test_images) / rates[key]
    workers = max(1, min(workers, len(todo)))
    lines.append(f"estimated wall time: {format_duration(seconds / workers)} with {plural(workers, 'worker')}, from "
                 f"{plural(len(rates), 'network')} timed just now on {', '.join(sorted(devices))} "
                 f"(SGD steps of batch {MEASURE_BATCH} or less; evaluation counted as {EVAL_COST:.2g} of "
                 "training per image)")
    return lines
