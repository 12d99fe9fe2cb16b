"""The in-memory dataset every consumer (training, JPEG evaluation, reports) works from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and test split as uint8 RGB HWC arrays, kept in uint8 so JPEG can act on pixels.

    ``mean`` and ``std`` are per-channel statistics of pixels scaled to [0, 1]; the batch
    loader normalises with them after augmentation.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"{split}_images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
            if labels.dtype != np.int64 or labels.shape != (len(images),):
                raise ValueError(f"{split}_labels must be int64 ({len(images)},), got {labels.dtype} {labels.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)
