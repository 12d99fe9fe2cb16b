"""Training as the paper did it: SGD with a step schedule, a test evaluation after every epoch.

``train(options, run_dir)`` runs in one process or as one rank of ``torchrun``; only rank 0
writes. After every epoch the full state is checkpointed, so the same command resumes a
killed run and ends with the same metrics as an uninterrupted one (the batches of an epoch
depend only on the seed and the epoch number).
"""

from __future__ import annotations

import contextlib
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minnets.data import BatchLoader, ImageDataset, load_dataset
from minnets.errors import MinnetsError
from minnets.files import read_json, write_json
from minnets.models import INIT_SCHEMES, count_parameters, create_model, model_info
from minnets.training import distributed, rundir
from minnets.training.recipes import default_recipe_name, get_recipe, lr_at_epoch

__all__ = ["TrainOptions", "train", "evaluate", "resolve_config", "IDENTITY_KEYS"]

EVAL_BATCH_SIZE = 500

IDENTITY_KEYS = (
    "model", "dataset", "num_classes", "seed", "recipe", "epochs", "batch_size", "lr", "momentum",
    "nesterov", "weight_decay", "milestones", "gamma", "subset", "test_subset", "init", "amp", "channels_last", "float64",
)
"""Config keys that change the results: a run directory is only resumed if they all agree."""


@dataclass
class TrainOptions:
    """What ``minnets train`` accepts; ``None`` means "the recipe's value"."""

    model: str
    dataset: str = "cifar10"
    data: str | None = None
    download: bool = False
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    init: str = "published"
    memory_efficient: bool = False
    amp: str = "none"
    channels_last: bool = False
    float64: bool = False
    compile: bool = False
    device: str = "auto"
    quiet: bool = False


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


def resolve_config(options: TrainOptions, dataset: ImageDataset, context: distributed.Context) -> dict[str, Any]:
    """The full, explicit configuration of a run: recipe values with the options' overrides."""
    info = model_info(options.model)
    recipe = get_recipe(options.recipe or default_recipe_name(info["family"]))
    epochs = options.epochs if options.epochs is not None else recipe.epochs
    if epochs < 1:
        raise MinnetsError(f"--epochs must be at least 1, got {epochs}")
    if options.subset is not None and not 1 <= options.subset <= len(dataset.train_labels):
        raise MinnetsError(f"--subset must be between 1 and {len(dataset.train_labels)}, got {options.subset}")
    if options.test_subset is not None and not 1 <= options.test_subset <= len(dataset.test_labels):
        raise MinnetsError(f"--test-subset must be between 1 and {len(dataset.test_labels)}, got {options.test_subset}")
    if options.init not in INIT_SCHEMES:
        raise MinnetsError(f"--init must be one of {', '.join(INIT_SCHEMES)}, got {options.init!r}")
    if options.amp not in ("none", "bf16"):
        raise MinnetsError(f"--amp must be bf16 (or none), got {options.amp!r}")
    if options.amp != "none" and options.float64:
        raise MinnetsError("--amp and --float64 exclude each other; choose one")
    batch_size = options.batch_size or recipe.batch_size
    if batch_size < context.world_size:
        raise MinnetsError(f"--batch-size {batch_size} is smaller than the {context.world_size} processes")
    model_kwargs: dict[str, Any] = {"init": options.init}
    if info["family"] == "densenet":
        model_kwargs["memory_efficient"] = options.memory_efficient
    return {
        "model": options.model, "dataset": dataset.name, "num_classes": dataset.num_classes,
        "seed": options.seed, "recipe": recipe.name, "epochs": epochs, "batch_size": batch_size,
        "lr": options.lr if options.lr is not None else recipe.lr, "momentum": recipe.momentum,
        "nesterov": recipe.nesterov, "weight_decay": recipe.weight_decay,
        "milestones": recipe.milestones(epochs), "gamma": recipe.gamma, "subset": options.subset,
        "test_subset": options.test_subset,
        "init": options.init, "amp": options.amp, "channels_last": options.channels_last,
        "float64": options.float64, "compile": options.compile, "model_kwargs": model_kwargs, "data": options.data,
        "device": str(context.device), "world_size": context.world_size,
        "versions": environment(context.device), "command": sys.argv,
    }


def check_same_run(run_dir: Path, stored: dict[str, Any], config: dict[str, Any]) -> None:
    differences = [
        f"{key}: {stored.get(key)!r} there, {config[key]!r} here"
        for key in IDENTITY_KEYS if stored.get(key) != config[key]
    ]
    if differences:
        raise MinnetsError(
            f"{run_dir} holds a run with another configuration ({'; '.join(differences)}); "
            "repeat that run's command to resume it, or choose another --out"
        )


def autocast(config: dict[str, Any], device: torch.device) -> contextlib.AbstractContextManager:
    if config["amp"] == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, num_classes: int, context: distributed.Context,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test loss, error (%) and per-class error (%) of ``model`` in eval mode, over all ranks."""
    model.eval()
    device = context.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, wrong
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # seen, wrong
    for x, y, _ in loader.epoch(0):
        with autocast(config or {"amp": "none"}, device):
            logits = model(x)
        wrong = logits.argmax(1) != y
        totals += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"), wrong.sum()]).double()
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
    config: dict[str, Any], context: distributed.Context, progress: bool,
) -> tuple[float, float]:
    """One pass over the training set; returns mean loss and error (%) over all ranks."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)  # loss sum, wrong, seen
    steps = tqdm(loader.epoch(epoch), total=len(loader), desc=f"epoch {epoch + 1}", leave=False,
                 disable=not progress, unit="step")
    for x, y, n_global in steps:
        with autocast(config, context.device):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
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


def summarize(config: dict[str, Any], history: list[dict[str, float]], num_params: int, wall: float) -> dict[str, Any]:
    info = model_info(config["model"])
    errors = [row["test_err"] for row in history]
    best = int(np.argmin(errors))
    return {
        "model": config["model"], "dataset": config["dataset"], "family": info["family"],
        "depth": info["depth"], "min_net": info["min_net"], "num_params": num_params,
        "seed": config["seed"], "final_test_err": errors[-1], "min_test_err": errors[best],
        "argmin_epoch": history[best]["epoch"], "epochs": config["epochs"], "wall_seconds": wall,
    }


def log(context: distributed.Context, options: TrainOptions, message: str) -> None:
    if context.is_main and not options.quiet:
        print(message, flush=True)


def train(options: TrainOptions, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume, or just report) the run in ``run_dir``; returns its summary."""
    context = distributed.setup(options.device)
    try:
        return _train(options, Path(run_dir), context)
    finally:
        distributed.teardown(context)


def _load_data(options: TrainOptions, context: distributed.Context) -> ImageDataset:
    # Rank 0 downloads (if asked to) while the others wait, then every rank reads the files.
    if context.is_main:
        dataset = load_dataset(options.dataset, root=options.data, download=options.download)
    if context.distributed:
        dist.barrier()
    if not context.is_main:
        dataset = load_dataset(options.dataset, root=options.data)
    return dataset


def _train(options: TrainOptions, run_dir: Path, context: distributed.Context) -> dict[str, Any]:
    model_info(options.model)  # fail on an unknown name before loading any data
    dataset = _load_data(options, context)
    config = resolve_config(options, dataset, context)
    if (run_dir / rundir.CONFIG).exists():
        check_same_run(run_dir, read_json(run_dir / rundir.CONFIG), config)
        if rundir.run_status(run_dir) == "done":
            summary = read_json(run_dir / rundir.SUMMARY)
            log(context, options, f"{run_dir} is finished already: final test error {summary['final_test_err']:.2f}%")
            return summary
    elif context.is_main:
        write_json(run_dir / rundir.CONFIG, config)

    device = context.device
    torch.manual_seed(config["seed"])
    net = create_model(config["model"], num_classes=config["num_classes"], **config["model_kwargs"])
    num_params = count_parameters(net)
    dtype = torch.float64 if config["float64"] else torch.float32
    net.to(device, dtype, memory_format=torch.channels_last if config["channels_last"] else torch.preserve_format)
    optimizer = torch.optim.SGD(net.parameters(), lr=config["lr"], momentum=config["momentum"],
                                nesterov=config["nesterov"], weight_decay=config["weight_decay"])
    history: list[dict[str, float]] = []
    wall = 0.0
    checkpoint = rundir.load_checkpoint(run_dir, map_location=device)
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        history, wall = checkpoint["history"], checkpoint["wall_seconds"]
        log(context, options, f"resuming {run_dir} after epoch {len(history)} of {config['epochs']}")

    model: nn.Module = net
    if context.distributed:
        model = nn.parallel.DistributedDataParallel(
            distributed.sync_batchnorm(net, device), device_ids=[device.index] if device.type == "cuda" else None
        )
    if config["compile"]:
        model = torch.compile(model)

    images, labels = dataset.train_images, dataset.train_labels
    if config["subset"] is not None:
        images, labels = images[: config["subset"]], labels[: config["subset"]]
    common = dict(mean=dataset.mean, std=dataset.std, device=device, rank=context.rank,
                  world_size=context.world_size, channels_last=config["channels_last"], dtype=dtype)
    train_loader = BatchLoader(images, labels, config["batch_size"], train=True, seed=config["seed"], **common)
    test = slice(config["test_subset"])
    test_loader = BatchLoader(dataset.test_images[test], dataset.test_labels[test], EVAL_BATCH_SIZE, train=False,
                              seed=config["seed"], **common)
    if not history:
        log(context, options, f"training {config['model']} ({num_params:,} parameters) on {config['dataset']} "
            f"({len(labels):,} images) with {config['recipe']} for {config['epochs']} epochs on "
            f"{context.world_size} x {device} -> {run_dir}")
    progress = context.is_main and not options.quiet and sys.stderr.isatty()

    for epoch in range(len(history), config["epochs"]):
        lr = lr_at_epoch(config["lr"], config["milestones"], config["gamma"], epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        train_loss, train_err = train_epoch(model, optimizer, train_loader, epoch, config, context, progress)
        train_seconds = time.perf_counter() - start
        # The bare network evaluates: no DDP hooks, no second compiled graph for eval mode.
        result = evaluate(net, test_loader, config["num_classes"], context, config)
        seconds = time.perf_counter() - start
        if not (math.isfinite(train_loss) and math.isfinite(result["test_loss"])):
            kept = f"the checkpoint of epoch {len(history)}" if history else "no checkpoint (no epoch finished)"
            raise MinnetsError(
                f"training diverged in epoch {epoch + 1} (train loss {train_loss:.4g}, test loss "
                f"{result['test_loss']:.4g}); {run_dir} keeps {kept}. Lower --lr (now {config['lr']:g}) "
                "and train into a new --out"
            )
        wall += seconds
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_err": train_err,
                        "test_loss": result["test_loss"], "test_err": result["test_err"], "seconds": seconds})
        if context.is_main:
            rundir.save_checkpoint(run_dir, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                             "history": history, "wall_seconds": wall})
            rundir.write_metrics(run_dir, history)
        remaining = (config["epochs"] - epoch - 1) * wall / len(history)
        log(context, options,
            f"epoch {epoch + 1:>3}/{config['epochs']}  lr {lr:.4g}  train loss {train_loss:.4f} err {train_err:5.2f}%  "
            f"test loss {result['test_loss']:.4f} err {result['test_err']:5.2f}%  "
            f"{len(labels) / train_seconds:,.0f} img/s  {format_duration(seconds)} /epoch  ETA {format_duration(remaining)}")

    summary = summarize(config, history, num_params, wall)
    if context.is_main:
        rundir.save_weights(run_dir / rundir.WEIGHTS, net)
        write_json(run_dir / rundir.SUMMARY, summary)
    log(context, options, f"done: final test error {summary['final_test_err']:.2f}%, "
        f"min {summary['min_test_err']:.2f}% (epoch {summary['argmin_epoch']}); {run_dir}")
    return summary

