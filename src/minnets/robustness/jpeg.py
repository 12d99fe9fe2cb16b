"""How a trained model's predictions change under JPEG compression (paper Section 3.2, Appendix A.3).

For each quality Q the test images are compressed (on uint8 pixels, before normalisation, by
:mod:`minnets.jpeg`) and classified by the final model in eval mode. Two numbers per Q: the
test error and the POCP (paper Eq. 5). Q = 100 stands for the original images, not JPEG at
quality 100. Results go to ``jpeg.csv`` in the run directory, one row per (quality, mode), so
one run can hold several codec modes. The evaluation itself is the shared one of
:mod:`minnets.robustness.evaluate`; this module is the JPEG suite and its historical API.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from minnets.errors import MinnetsError
from minnets.jpeg import MODES, JpegCache, check_mode, check_quality, codec_version, compress
from minnets.robustness.evaluate import evaluate_suite, read_suite_csv, run_suite, write_suite_csv
from minnets.robustness.suite import Clean, Perturbed, Row, Suite

QUALITIES = (90, 80, 70, 60, 50, 40, 30, 20, 10)
JPEG_CSV = "jpeg.csv"
COLUMNS = ("quality", "mode", "test_err", "pocp", "n_images", "codec")


def _normalise_qualities(qualities: Sequence[int]) -> list[int]:
    """Distinct qualities, highest first, without 100 (the original images, always evaluated)."""
    result = set()
    for q in qualities:
        check_quality(q)
        result.add(int(q))
    return sorted(result - {100}, reverse=True)


def parse_qualities(text: str) -> list[int]:
    """``"90,80,70"`` -> [90, 80, 70]; a bad list is a one-line error (the range is checked later)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise MinnetsError(f"invalid --qualities {text!r}: give comma-separated integers from 1 to 100, "
                           f"e.g. {','.join(map(str, QUALITIES))}") from None


class JpegSuite(Suite):
    """JPEG at each quality in one codec mode; quality 100 is the original images.

    ``cache``: where compressed test sets are kept (a :class:`JpegCache`; ``None``: the user
    cache, ``False``: none).
    """

    name: ClassVar[str] = "jpeg"
    columns: ClassVar[tuple[str, ...]] = COLUMNS
    key: ClassVar[tuple[str, ...]] = ("quality", "mode")
    version_column: ClassVar[str] = "codec"

    def __init__(self, qualities: Sequence[int] = QUALITIES, mode: str = "paper",
                 cache: JpegCache | None | bool = None) -> None:
        check_mode(mode)
        self.qualities = _normalise_qualities(qualities)
        self.mode = mode
        self.cache = JpegCache() if cache is None else (cache or None)

    def levels(self) -> list[Row]:
        return [{"quality": q, "mode": self.mode} for q in (100, *self.qualities)]

    def version(self) -> str:
        return codec_version(self.mode)

    def perturb(self, level: Row, clean: Clean) -> Perturbed:
        quality = level["quality"]
        if quality == 100:
            return Perturbed(clean.images)
        if self.cache is not None:
            return Perturbed(self.cache.get_or_compress(clean.dataset, clean.images, quality, self.mode))
        return Perturbed(compress(clean.images, quality, self.mode))

    def parse_row(self, raw: Mapping[str, str]) -> Row:
        return {"quality": int(raw["quality"]), "mode": raw["mode"], "test_err": float(raw["test_err"]),
                "pocp": float(raw["pocp"]), "n_images": int(raw["n_images"]), "codec": raw.get("codec") or ""}

    def sort_key(self, row: Row) -> Any:
        mode_order = {mode: i for i, mode in enumerate(MODES)}
        return mode_order.get(row["mode"], len(MODES)), row["mode"], -row["quality"]

    def command(self, run_dir: str | Path) -> str:
        return f"minnets jpeg {run_dir}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("jpeg suite")
        group.add_argument("--qualities", default=",".join(map(str, QUALITIES)), metavar="Q,Q,...",
                           help="comma-separated JPEG qualities, 1 to 100 (default: %(default)s)")
        group.add_argument("--mode", choices=MODES, default="paper",
                           help="paper: RGB array given to OpenCV as is (how the published runs did it); "
                           "correct: true colours through OpenCV; pillow: Pillow's codec (default: %(default)s)")
        group.add_argument("--cache-dir", metavar="DIR",
                           help="where compressed test sets are kept (default: $MINNETS_CACHE/jpeg or "
                           "~/.cache/minnets/jpeg)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JpegSuite:
        return cls(parse_qualities(args.qualities), args.mode, JpegCache(args.cache_dir))


def evaluate_jpeg(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, mean: Sequence[float],
                  std: Sequence[float], qualities: Sequence[int] = QUALITIES, mode: str = "paper",
                  dataset_name: str, cache: JpegCache | None = None, device: str | torch.device = "cpu",
                  batch_size: int = 500, progress: Callable[[dict[str, Any]], None] | None = None,
                  ) -> list[dict[str, Any]]:
    """One row per quality: the original images (quality 100, POCP 0) first, then each Q.

    ``model`` must already be on ``device``. With a ``cache`` the compressed test sets are read
    from (or stored in) it. ``progress`` is called with each row as soon as it is ready.
    """
    suite = JpegSuite(qualities, mode, cache if cache is not None else False)
    clean = Clean(model, images, labels, mean, std, dataset_name, device=torch.device(device), batch_size=batch_size)
    return evaluate_suite(suite, clean, progress=progress)


def read_jpeg_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``jpeg.csv`` (or of the one inside a run directory) with typed values."""
    return read_suite_csv(path, JpegSuite(cache=False))


def write_jpeg_csv(run_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``RUN_DIR/jpeg.csv`` atomically, keeping existing rows of other (quality, mode) pairs."""
    return write_suite_csv(run_dir, JpegSuite(cache=False), rows)


def run_jpeg(run_dir: str | os.PathLike[str], qualities: Sequence[int] = QUALITIES, mode: str = "paper",
             data_root: str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
             cache_root: str | os.PathLike[str] | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None, n_images: int | None = None,
             ) -> list[dict[str, Any]]:
    """Evaluate a finished run's final model under JPEG and record the rows in its ``jpeg.csv``."""
    return run_suite(run_dir, JpegSuite(qualities, mode, JpegCache(cache_root)), data_root=data_root,
                     device=device, n_images=n_images, progress=progress)


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
