"""Training as the paper did it: SGD with a step schedule, a test evaluation after every epoch.

``train(config, run_dir)`` runs in one process or as one rank of ``torchrun``; only rank 0
writes, under the run directory's lock. After every epoch the full state is checkpointed, so
the same command resumes a killed run and ends with the same metrics as an uninterrupted
one (the batches of an epoch depend only on the seed and the epoch number, and a resumed run
uses the thread count it was started with, which float results depend on on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minnets import rundir
from minnets.config import RunConfig
from minnets.data import BatchLoader, ImageDataset, load_dataset
from minnets.errors import MinnetsError
from minnets.models import count_parameters, create_model, model_info
from minnets.training import distributed
from minnets.training.recipes import lr_at_epoch

__all__ = ["train", "evaluate", "check_same_run", "EVAL_BATCH_SIZE"]

EVAL_BATCH_SIZE = 500


def environment(device: torch.device) -> dict[str, str]:
    """Versions and hardware recorded with every run, to know later what produced it."""
    import cv2

    import minnets

    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(minnets.__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = "unknown"
    return {
        "minnets": minnets.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "git_revision": revision,
    }


def check_same_run(run_dir: Path, stored: RunConfig, config: RunConfig) -> None:
    """Refuse to resume ``run_dir`` with a config whose :meth:`RunConfig.identity` differs."""
    theirs, ours = stored.identity(), config.identity()
    differences = [f"{key}: {theirs[key]!r} there, {ours[key]!r} here" for key in ours if theirs[key] != ours[key]]
    if differences:
        raise MinnetsError(
            f"{run_dir} holds a run with another configuration ({'; '.join(differences)}); "
            "repeat that run's command to resume it, or choose another --out"
        )


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits are lifted to float32 for the loss; float64 (``--float64``) stays float64, or the
    loss and its gradient would round every step to float32 (what made two DDP ranks differ from
    one process by 1e-4 in test loss after one epoch)."""
    return logits if logits.dtype == torch.float64 else logits.float()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, num_classes: int, context: distributed.Context, amp: str = "none",
) -> dict[str, Any]:
    """Test loss, error (%) and per-class error (%) of ``model`` in eval mode, over all ranks."""
    model.eval()
    device = context.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, wrong
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # seen, wrong
    for x, y, _ in loader.epoch(0):
        with autocast(amp, device):
            logits = model(x)
        wrong = logits.argmax(1) != y
        totals += torch.stack([F.cross_entropy(_loss_precision(logits), y, reduction="sum"), wrong.sum()]).double()
        per_class[0] += torch.bincount(y, minlength=num_classes)
        per_class[1] += torch.bincount(y[wrong], minlength=num_classes)
    distributed.all_reduce_sum(totals, context)
    distributed.all_reduce_sum(per_class, context)
    seen = per_class[0].sum().item()
    return {
        "test_loss": totals[0].item() / seen,
        "test_err": 100.0 * totals[1].item() / seen,
        "per_class_err": (100.0 * per_class[1] / per_class[0].clamp(min=1)).tolist(),
        "n_images": int(seen),
    }


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: BatchLoader, epoch: int,
    amp: str, context: distributed.Context, progress: bool,
) -> tuple[float, float]:
    """One pass over the training set; returns mean loss and error (%) over all ranks."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)  # loss sum, wrong, seen
    steps = tqdm(loader.epoch(epoch), total=len(loader), desc=f"epoch {epoch + 1}", leave=False,
                 disable=not progress, unit="step")
    for x, y, n_global in steps:
        with autocast(amp, context.device):
            logits = model(x)
        loss_sum = F.cross_entropy(_loss_precision(logits), y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: scaling by world/n_global makes that average the
        # gradient of the global batch's mean loss, whatever the ranks' shares.
        (loss_sum * (context.world_size / n_global)).backward()
        optimizer.step()
        totals[0] += loss_sum.detach()
        totals[1] += (logits.argmax(1) != y).sum()
        totals[2] += len(y)
    distributed.all_reduce_sum(totals, context)
    return totals[0].item() / totals[2].item(), 100.0 * totals[1].item() / totals[2].item()


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def summarize(config: RunConfig, history: list[dict[str, float]], num_params: int, wall: float) -> dict[str, Any]:
    info = model_info(config.model)
    errors = [row["test_err"] for row in history]
    best = int(np.argmin(errors))
    return {
        "model": config.model, "dataset": config.dataset, "family": info["family"],
        "depth": info["depth"], "min_net": info["min_net"], "num_params": num_params,
        "seed": config.seed, "final_test_err": errors[-1], "min_test_err": errors[best],
        "argmin_epoch": history[best]["epoch"], "epochs": config.epochs, "wall_seconds": wall,
    }


def train(config: RunConfig, run_dir: str | Path, *, download: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume, or just report) the run in ``run_dir``; returns its summary.

    ``download`` fetches a missing CIFAR archive; ``quiet`` drops the per-epoch lines.
    """
    config = config.validate()
    run_dir = Path(run_dir)
    rundir.check_out_dir(run_dir)
    context = distributed.setup(config.device)
    threads = torch.get_num_threads()
    try:
        return _Trainer(config, run_dir, context, quiet).run(download)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown(context)


class _Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, context: distributed.Context, quiet: bool) -> None:
        self.config, self.run_dir, self.context, self.quiet = config, run_dir, context, quiet

    def log(self, message: str) -> None:
        if self.context.is_main and not self.quiet:
            print(message, flush=True)

    def _load_data(self, download: bool) -> ImageDataset:
        # Rank 0 downloads (if asked to) while the others wait, then every rank reads the files.
        config, context = self.config, self.context
        if context.is_main:
            dataset = load_dataset(config.dataset, root=config.data, download=download)
        if context.distributed:
            dist.barrier()
        if not context.is_main:
            dataset = load_dataset(config.dataset, root=config.data)
        return dataset

    def _resolve(self, dataset: ImageDataset) -> tuple[RunConfig, RunConfig | None]:
        """The full config of this run and the one stored in the directory (None if new)."""
        config, context, run_dir = self.config, self.context, self.run_dir
        stored = rundir.read_config(run_dir) if (run_dir / rundir.CONFIG).exists() else None
        current = torch.get_num_threads()
        if stored is not None and config.threads is None and stored.threads != current:
            # Float results depend on the thread count: finish the run with the one it began with.
            if context.is_main:  # a warning, so also under --quiet
                print(f"minnets: warning: resuming with the run's {stored.threads} CPU thread(s), not this "
                      f"process's {current}", file=sys.stderr, flush=True)
            config = replace(config, threads=stored.threads)
        resolved = config.resolved(dataset.num_classes, len(dataset.train_labels), len(dataset.test_labels), current)
        if resolved.batch_size < context.world_size:
            raise MinnetsError(f"--batch-size {resolved.batch_size} is smaller than the {context.world_size} processes")
        resolved = replace(resolved, device=str(context.device), world_size=context.world_size,
                           versions=environment(context.device), command=list(sys.argv))
        if stored is not None:
            check_same_run(run_dir, stored, resolved)
        return resolved, stored

    def run(self, download: bool) -> dict[str, Any]:
        dataset = self._load_data(download)
        config, stored = self._resolve(dataset)
        created = not self.run_dir.exists()
        if self.context.is_main:
            rundir.check_writable(self.run_dir)
            lock = rundir.run_lock(self.run_dir)
        else:
            lock = contextlib.nullcontext()
        try:
            with lock:
                return self._train(dataset, config, stored)
        except BaseException:
            if created and self.context.is_main and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # refused before any file was written: leave nothing behind
            raise

    def _finished(self, stored: RunConfig | None) -> dict[str, Any] | None:
        """The summary of a complete run directory, or None if anything is left to do or repair."""
        if stored is None or rundir.run_status(self.run_dir) != "done":
            return None
        if len(rundir.read_metrics(self.run_dir)) != stored.epochs:
            return None  # metrics.csv lost rows to a kill: rewritten from the checkpoint below
        return rundir.read_summary(self.run_dir)

    def _train(self, dataset: ImageDataset, config: RunConfig, stored: RunConfig | None) -> dict[str, Any]:
        context, run_dir = self.context, self.run_dir
        summary = self._finished(stored)
        if summary is not None:
            self.log(f"{run_dir} is finished already: final test error {summary['final_test_err']:.2f}%")
            return summary
        torch.set_num_threads(config.threads)
        device = context.device
        torch.manual_seed(config.seed)
        net = create_model(config.model, num_classes=config.num_classes, **config.model_kwargs())
        num_params = count_parameters(net)
        dtype = torch.float64 if config.float64 else torch.float32
        net.to(device, dtype, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
        optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay)
        history: list[dict[str, float]] = []
        wall = 0.0
        checkpoint = rundir.load_checkpoint(run_dir, map_location=device)
        if checkpoint is not None:
            path = run_dir / rundir.CHECKPOINT
            rundir.load_state(net, checkpoint["model"], path, config.model)
            rundir.load_state(optimizer, checkpoint["optimizer"], path, config.model)
            history, wall = checkpoint["history"], checkpoint["wall_seconds"]
            if context.is_main and rundir.read_metrics(run_dir) != history:
                rundir.write_metrics(run_dir, history)  # a kill between checkpoint and metrics.csv
            self.log(f"resuming {run_dir} after epoch {len(history)} of {config.epochs}")
        if context.is_main and stored is None:
            rundir.write_config(run_dir, config)

        model: nn.Module = net
        if context.distributed:
            model = nn.parallel.DistributedDataParallel(
                distributed.sync_batchnorm(net, device), device_ids=[device.index] if device.type == "cuda" else None
            )
        elif config.float64 and device.type == "cpu":
            # torch's CPU BatchNorm is up to 4e-13 off in float64, the two-pass one (what several
            # processes run) 1e-14 at most: one process then reproduces several (see distributed).
            distributed.two_pass_batchnorm(net)
        if config.compile:
            model = torch.compile(model)

        images, labels = dataset.train_images[: config.subset], dataset.train_labels[: config.subset]
        common = dict(mean=dataset.mean, std=dataset.std, device=device, rank=context.rank,
                      world_size=context.world_size, channels_last=config.channels_last, dtype=dtype)
        train_loader = BatchLoader(images, labels, config.batch_size, train=True, seed=config.seed, **common)
        test_images, test_labels = rundir.test_split(dataset, config)
        test_loader = BatchLoader(test_images, test_labels, EVAL_BATCH_SIZE, train=False, seed=config.seed, **common)
        if not history:
            schedule = ", ".join(f"{lr_at_epoch(config.lr, config.milestones, config.gamma, m):g} from epoch {m + 1}"
                                 for m in config.milestones)
            self.log(f"training {config.model} ({num_params:,} parameters) on {config.dataset} "
                     f"({len(labels):,} images) with {config.recipe} for {config.epochs} epochs "
                     f"(lr {config.lr:g}{', ' + schedule if schedule else ''}) on "
                     f"{context.world_size} x {device}, {config.threads} thread(s) -> {run_dir}")
        progress = context.is_main and not self.quiet and sys.stderr.isatty()

        for epoch in range(len(history), config.epochs):
            lr = lr_at_epoch(config.lr, config.milestones, config.gamma, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            train_loss, train_err = train_epoch(model, optimizer, train_loader, epoch, config.amp, context, progress)
            train_seconds = time.perf_counter() - start
            # The bare network evaluates: no DDP hooks, no second compiled graph for eval mode.
            result = evaluate(net, test_loader, config.num_classes, context, config.amp)
            seconds = time.perf_counter() - start
            if not (math.isfinite(train_loss) and math.isfinite(result["test_loss"])):
                kept = f"the checkpoint of epoch {len(history)}" if history else "no checkpoint (no epoch finished)"
                raise MinnetsError(
                    f"training diverged in epoch {epoch + 1} (train loss {train_loss:.4g}, test loss "
                    f"{result['test_loss']:.4g}); {run_dir} keeps {kept}. Lower --lr (now {config.lr:g}) "
                    "and train into a new --out"
                )
            wall += seconds
            history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_err": train_err,
                            "test_loss": result["test_loss"], "test_err": result["test_err"], "seconds": seconds})
            if context.is_main:
                rundir.save_checkpoint(run_dir, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                                 "history": history, "wall_seconds": wall})
                rundir.write_metrics(run_dir, history)
            remaining = (config.epochs - epoch - 1) * wall / len(history)
            self.log(
                f"epoch {epoch + 1:>3}/{config.epochs}  lr {lr:g}  train loss {train_loss:.4f} err {train_err:5.2f}%  "
                f"test loss {result['test_loss']:.4f} err {result['test_err']:5.2f}%  "
                f"{len(labels) / train_seconds:,.0f} img/s  {format_duration(seconds)} /epoch  "
                f"ETA {format_duration(remaining)}")

        summary = summarize(config, history, num_params, wall)
        if context.is_main:
            rundir.save_weights(run_dir / rundir.WEIGHTS, net)
            rundir.write_summary(run_dir, summary)
        self.log(f"done: final test error {summary['final_test_err']:.2f}%, "
                 f"min {summary['min_test_err']:.2f}% (epoch {summary['argmin_epoch']}); {run_dir}")
        return summary
