"""How a trained model's predictions change under JPEG compression (SPEC section 8).

For each quality Q the test images are compressed (on uint8 pixels, before normalisation) and
classified by the final model in eval mode. Two numbers per Q: the test error and the POCP
(paper Eq. 5), the percentage of predictions that differ from those on the original images.
Q = 100 stands for the original images, not JPEG at quality 100. Results go to ``jpeg.csv`` in
the run directory, one row per (quality, mode), so one run can hold several codec modes.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minnets.data import BatchLoader, load_dataset
from minnets.errors import MinnetsError
from minnets.jpeg import MODES, JpegCache, check_images, check_mode, check_quality, codec_version, compress
from minnets.training import load_run_model
from minnets.training.distributed import pick_device
from minnets.files import atomic_write

QUALITIES = (90, 80, 70, 60, 50, 40, 30, 20, 10)
JPEG_CSV = "jpeg.csv"
COLUMNS = ("quality", "mode", "test_err", "pocp", "n_images", "codec")


def predict(model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
            device: str | torch.device = "cpu", batch_size: int = 500) -> np.ndarray:
    """Argmax class of every uint8 image, normalised by the very loader training evaluates with.

    Sharing :class:`BatchLoader`'s arithmetic makes the uncompressed row of ``jpeg.csv`` equal
    the run's final test error, prediction for prediction.
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


def jpeg_metrics(labels: np.ndarray, preds_original: np.ndarray, preds_q: np.ndarray) -> tuple[float, float]:
    """(test error, POCP) in percent for the predictions on one compressed test set."""
    labels, preds_original, preds_q = (np.asarray(a) for a in (labels, preds_original, preds_q))
    if not labels.ndim == 1 or not labels.shape == preds_original.shape == preds_q.shape or len(labels) == 0:
        raise MinnetsError(f"labels and predictions must be 1-D and equally long (non-empty), got shapes "
                           f"{labels.shape}, {preds_original.shape}, {preds_q.shape}")
    n = len(labels)
    # Integer counts divided once keep values like 8.32 exact in their shortest decimal form.
    test_err = 100 * int(np.count_nonzero(preds_q != labels)) / n
    pocp = 100 * int(np.count_nonzero(preds_q != preds_original)) / n
    return test_err, pocp


def _normalise_qualities(qualities: Sequence[int]) -> list[int]:
    """Distinct qualities, highest first, without 100 (the original images, always evaluated)."""
    result = set()
    for q in qualities:
        check_quality(q)
        result.add(int(q))
    return sorted(result - {100}, reverse=True)


def evaluate_jpeg(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, mean: Sequence[float],
                  std: Sequence[float], qualities: Sequence[int] = QUALITIES, mode: str = "paper",
                  dataset_name: str, cache: JpegCache | None = None, device: str | torch.device = "cpu",
                  batch_size: int = 500, progress: Callable[[dict[str, Any]], None] | None = None,
                  ) -> list[dict[str, Any]]:
    """One row per quality: the original images (quality 100, POCP 0) first, then each Q.

    ``model`` must already be on ``device``. With a ``cache`` the compressed test sets are read
    from (or stored in) it. ``progress`` is called with each row as soon as it is ready.
    """
    check_images(images)
    check_mode(mode)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise MinnetsError(f"need one label per image: {len(images)} images but labels of shape {labels.shape}")
    qualities = _normalise_qualities(qualities)
    codec = codec_version(mode)
    original = predict(model, images, mean, std, device, batch_size)
    rows = []
    for quality in [100, *qualities]:
        if quality == 100:
            preds = original
        else:
            compressed = (cache.get_or_compress(dataset_name, images, quality, mode) if cache is not None
                          else compress(images, quality, mode))
            preds = predict(model, compressed, mean, std, device, batch_size)
        test_err, pocp = jpeg_metrics(labels, original, preds)
        rows.append({"quality": quality, "mode": mode, "test_err": test_err, "pocp": pocp,
                     "n_images": len(images), "codec": codec})
        if progress is not None:
            progress(rows[-1])
    return rows


def read_jpeg_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``jpeg.csv`` (or of the one inside a run directory) with typed values."""
    path = Path(path)
    if path.is_dir():
        path = path / JPEG_CSV
    if not path.is_file():
        raise MinnetsError(f"{path} does not exist; evaluate the run first: minnets jpeg {path.parent}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS[:5]) - set(reader.fieldnames or ())
        if missing:
            raise MinnetsError(f"{path} lacks the columns {', '.join(sorted(missing))}; "
                               f"delete it and run `minnets jpeg {path.parent}` again")
        try:
            return [{"quality": int(row["quality"]), "mode": row["mode"], "test_err": float(row["test_err"]),
                     "pocp": float(row["pocp"]), "n_images": int(row["n_images"]), "codec": row.get("codec") or ""}
                    for row in reader]
        except (TypeError, ValueError) as error:
            raise MinnetsError(f"{path} is damaged ({error}); delete it and run `minnets jpeg {path.parent}` "
                               "again") from None


def write_jpeg_csv(run_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``RUN_DIR/jpeg.csv`` atomically, keeping existing rows of other (quality, mode) pairs."""
    path = Path(run_dir) / JPEG_CSV
    merged = {(row["quality"], row["mode"]): row for row in (read_jpeg_csv(path) if path.exists() else [])}
    merged.update({(row["quality"], row["mode"]): row for row in rows})
    mode_order = {mode: i for i, mode in enumerate(MODES)}
    ordered = sorted(merged.values(), key=lambda row: (mode_order.get(row["mode"], len(MODES)), row["mode"],
                                                       -row["quality"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ordered)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))
    return path


def run_jpeg(run_dir: str | os.PathLike[str], qualities: Sequence[int] = QUALITIES, mode: str = "paper",
             data_root: str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
             cache_root: str | os.PathLike[str] | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate a finished run's final model under JPEG and record the rows in its ``jpeg.csv``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MinnetsError(f"run directory {run_dir} does not exist; train it first: "
                           f"minnets train --model NAME --out {run_dir}")
    check_mode(mode)
    qualities = _normalise_qualities(qualities)
    device = pick_device(device) if isinstance(device, str) else device
    model, config = load_run_model(run_dir, device)
    # Same call as training, so shapes10 is regenerated with the seed it was trained on.
    dataset = load_dataset(config["dataset"], root=data_root or config.get("data"))
    rows = evaluate_jpeg(model, dataset.test_images, dataset.test_labels, mean=dataset.mean, std=dataset.std,
                         qualities=qualities, mode=mode, dataset_name=dataset.name, cache=JpegCache(cache_root),
                         device=device, progress=progress)
    write_jpeg_csv(run_dir, rows)
    return rows


def format_jpeg_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of JPEG rows (Q = 100 marked as the original images), codecs below it."""
    lines = [f"{'mode':<8} {'Q':>9} {'test err %':>10} {'POCP %':>7} {'images':>7}"]
    codecs: dict[str, str] = {}
    for row in rows:
        quality = "100 orig" if row["quality"] == 100 else str(row["quality"])
        lines.append(f"{row['mode']:<8} {quality:>9} {row['test_err']:>10.2f} {row['pocp']:>7.2f} "
                     f"{row['n_images']:>7}")
        codecs.setdefault(row["mode"], row["codec"])
    lines += [f"codec ({mode}): {codec or 'not recorded'}" for mode, codec in codecs.items()]
    return "\n".join(lines)
