"""The one evaluator of every perturbation suite: test error and POCP per level, ``<suite>.csv``.

Per level (see :mod:`minnets.robustness.suite`) the final model in eval mode classifies the
perturbed test images; the test error is ``100 * mean(pred != label)`` and the POCP (paper
Eq. 5) ``100 * mean(pred != pred_clean)``. Each finished level's row is written to
``RUN_DIR/<suite>.csv`` at once (atomically, merged with the rows already there), so a killed
evaluation resumes at the next level; rows of another suite version or image count are
evaluated again. The run directory is checked for writability before any work.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minnets.data import BatchLoader, load_dataset
from minnets import rundir
from minnets.errors import MinnetsError
from minnets.jpeg import check_images
from minnets.robustness.suite import Clean, Perturbed, Row, Suite, get_suite
from minnets.training.distributed import pick_device

Progress = Callable[[Row], None]


class ImageModel(nn.Module):
    """A trained model as attacks see it (RobustBench's convention): [0, 1] NCHW images in,
    normalised with the training mean and std inside, eval mode, float32 logits out."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model.eval()
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> ImageModel:
        """Stays in eval mode: attacks must see the deterministic model that is evaluated."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.to(self.mean.dtype) - self.mean) / self.std).float()


def predict(model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
            device: str | torch.device = "cpu", batch_size: int = 500) -> np.ndarray:
    """Argmax class of every uint8 image, normalised by the very loader training evaluates with.

    Sharing :class:`BatchLoader`'s arithmetic makes the clean row of every suite equal the run's
    final test error, prediction for prediction.
    """
    check_images(images)
    if batch_size < 1:
        raise MinnetsError(f"batch_size must be at least 1, got {batch_size}")
    loader = BatchLoader(images, np.zeros(len(images), dtype=np.int64), batch_size, train=False, seed=0,
                         mean=mean, std=std, device=device, dtype=next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            preds = [model(x).argmax(dim=1).cpu() for x, _, _ in loader.epoch(0)]
    finally:
        model.train(was_training)
    return torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)


def predict01(model01: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Argmax class of float NCHW images in [0, 1] through an :class:`ImageModel`."""
    if not images.dtype.is_floating_point or images.ndim != 4:
        raise MinnetsError(f"attack images must be a float N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise MinnetsError("attack images must lie in [0, 1]")
    device = next(model01.parameters()).device
    with torch.inference_mode():
        preds = [model01(images[s:s + batch_size].to(device)).argmax(1).cpu()
                 for s in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)


def error_and_pocp(labels: np.ndarray, preds_clean: np.ndarray, preds: np.ndarray) -> tuple[float, float]:
    """(test error, POCP) in percent for the predictions on one perturbed test set (paper Eq. 5)."""
    labels, preds_clean, preds = (np.asarray(a) for a in (labels, preds_clean, preds))
    if not labels.ndim == 1 or not labels.shape == preds_clean.shape == preds.shape or len(labels) == 0:
        raise MinnetsError(f"labels and predictions must be 1-D and equally long (non-empty), got shapes "
                           f"{labels.shape}, {preds_clean.shape}, {preds.shape}")
    n = len(labels)
    # Integer counts divided once keep values like 8.32 exact in their shortest decimal form.
    test_err = 100 * int(np.count_nonzero(preds != labels)) / n
    pocp = 100 * int(np.count_nonzero(preds != preds_clean)) / n
    return test_err, pocp


def level_key(suite: Suite, row: Row) -> tuple[Any, ...]:
    return tuple(row[k] for k in suite.key)


def evaluate_suite(suite: Suite, clean: Clean, done: Sequence[Row] = (), progress: Progress | None = None,
                   ) -> list[Row]:
    """Every level's row, in ``suite.levels()`` order, then :meth:`Suite.finish`.

    Rows in ``done`` with this suite's version and image count are reused, not recomputed.
    ``progress`` is called with each newly computed row as soon as it is ready (the caller
    checkpoints there). ``clean.model`` must already be on ``clean.device``.
    """
    check_images(clean.images)
    labels = np.asarray(clean.labels)
    if labels.shape != (len(clean.images),):
        raise MinnetsError(f"need one label per image: {len(clean.images)} images but labels of shape {labels.shape}")
    version, n = suite.version(), len(clean.images)
    reusable = {level_key(suite, row): row for row in done
                if row.get(suite.version_column) == version and row.get("n_images") == n}
    levels = suite.levels()
    if clean.preds is None:
        clean.preds = predict(clean.model, clean.images, clean.mean, clean.std, clean.device, clean.batch_size)
    rows = []
    for level in levels:
        key = level_key(suite, level)
        if key in reusable:
            rows.append(reusable[key])
            continue
        perturbed = suite.perturb(level, clean)
        if not isinstance(perturbed, Perturbed):
            perturbed = Perturbed(perturbed)
        images = perturbed.images
        if images is clean.images:
            preds = clean.preds
        elif isinstance(images, torch.Tensor):
            preds = predict01(clean.model01(), images, clean.batch_size)
        else:
            if images.shape != clean.images.shape:
                raise MinnetsError(f"suite {suite.name} level {key} gave images of shape {images.shape}, "
                                   f"expected {clean.images.shape}")
            preds = predict(clean.model, images, clean.mean, clean.std, clean.device, clean.batch_size)
        test_err, pocp = error_and_pocp(labels, clean.preds, preds)
        row = {**level, **perturbed.fields, "test_err": test_err, "pocp": pocp, "n_images": n,
               suite.version_column: version}
        rows.append(row)
        if progress is not None:
            progress(row)
    return suite.finish(rows, clean)


# --- <suite>.csv -------------------------------------------------------------------------------


def suite_csv(run_dir: str | os.PathLike[str], suite: Suite) -> Path:
    return rundir.result_csv(run_dir, suite.name)


def read_suite_csv(path: str | os.PathLike[str], suite: Suite) -> list[Row]:
    """Typed rows of ``<suite>.csv`` (``path`` is the file or the run directory holding it)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    path = suite_csv(run_dir, suite)
    if not path.is_file():
        raise MinnetsError(f"{path} does not exist; evaluate the run first: {suite.command(run_dir)}")
    with open(path, newline="") as handle:  # one read: the header's check and the rows
        reader = csv.DictReader(handle)
        raw = list(reader)
        header = reader.fieldnames or ()
    missing = set(suite.columns) - {suite.version_column} - set(header)
    if missing:
        raise MinnetsError(f"{path} lacks the columns {', '.join(sorted(missing))}; "
                           f"delete it and run `{suite.command(run_dir)}` again")
    try:
        return [suite.parse_row({**row, suite.version_column: row.get(suite.version_column) or ""}) for row in raw]
    except (KeyError, TypeError, ValueError) as error:
        raise MinnetsError(f"{path} is damaged ({error}); delete it and run `{suite.command(run_dir)}` "
                           "again") from None


def write_suite_csv(run_dir: str | os.PathLike[str], suite: Suite, rows: Sequence[Row]) -> Path:
    """Write ``RUN_DIR/<suite>.csv`` atomically, keeping existing rows of other levels."""
    path = suite_csv(run_dir, suite)
    merged = {level_key(suite, row): row for row in (read_suite_csv(path, suite) if path.exists() else [])}
    merged.update({level_key(suite, row): row for row in rows})
    return rundir.write_results(run_dir, suite.name, sorted(merged.values(), key=suite.sort_key), suite.columns)


# --- runs --------------------------------------------------------------------------------------


def run_suite(run_dir: str | os.PathLike[str], suite: Suite, data_root: str | os.PathLike[str] | None = None,
              device: str | torch.device = "auto", n_images: int | None = None, batch_size: int = 500,
              progress: Progress | None = None) -> list[Row]:
    """Evaluate a finished run's final model on ``suite`` and record the rows in ``<suite>.csv``.

    ``n_images``: only the first N test images (quick checks); default all. Resumes: levels
    already in the CSV (same version and image count) are not evaluated again.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MinnetsError(f"run directory {run_dir} does not exist; train it first: "
                           f"minnets train --model NAME --out {run_dir}")
    if n_images is not None and n_images < 1:
        raise MinnetsError(f"--n must be at least 1, got {n_images}")
    suite.levels()  # option errors before the model loads
    device = pick_device(device) if isinstance(device, str) else device
    model, config = rundir.load_run_model(run_dir, device)
    rundir.check_writable(run_dir)
    # Same call as training, so shapes10 is regenerated with the seed it was trained on.
    dataset = load_dataset(config.dataset, root=data_root or config.data)
    images, labels = rundir.test_split(dataset, config)  # the run's own test images (its --test-subset)
    if n_images is not None:
        if n_images > len(labels):
            raise MinnetsError(f"--n {n_images} exceeds the {len(labels)} test images of this run ({dataset.name})")
        images, labels = images[:n_images], labels[:n_images]
    path = suite_csv(run_dir, suite)
    done = read_suite_csv(path, suite) if path.exists() else []
    clean = Clean(model, images, labels, dataset.mean, dataset.std, dataset.name, device=device,
                  batch_size=batch_size, cache_dir=rundir.suite_cache_dir(run_dir, suite.name))

    def checkpoint(row: Row) -> None:
        write_suite_csv(run_dir, suite, [row])
        if progress is not None:
            progress(row)

    rows = evaluate_suite(suite, clean, done, checkpoint)
    write_suite_csv(run_dir, suite, rows)
    return rows


def suite_complete(run_dir: str | os.PathLike[str], name: str) -> bool:
    """Whether ``RUN_DIR/<name>.csv`` holds every level of the suite's default options."""
    suite = get_suite(name)
    path = suite_csv(run_dir, suite)
    if not path.is_file():
        return False
    try:
        rows = read_suite_csv(path, suite)
    except MinnetsError:
        return False  # damaged: evaluating again says why
    return suite.complete(rows)


def progress_printer(suite: Suite) -> Progress:
    """One line per finished level on stderr, naming the level by its key columns."""

    def print_progress(row: Row) -> None:
        level = ", ".join(f"{k} {row[k]}" for k in suite.key)
        print(f"{level}: test error {row['test_err']:.2f}%, POCP {row['pocp']:.2f}%", file=sys.stderr, flush=True)

    return print_progress
