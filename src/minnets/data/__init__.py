"""Datasets as uint8 arrays and a device-resident batch loader.

``load_dataset`` returns an :class:`ImageDataset` for CIFAR-10, CIFAR-100 (read from the
official "python version" files, optionally downloaded) or shapes10 (generated, no files);
:class:`BatchLoader` turns one split into augmented, normalised, DDP-sharded batches.
"""

from __future__ import annotations

import os

from minnets.data.cifar import CIFAR_SPECS, ENV_VAR, default_data_root, load_cifar
from minnets.data.dataset import ImageDataset
from minnets.data.loader import PAD, BatchLoader, EpochPlan, epoch_generator, flip_crop
from minnets.data.shapes10 import make_shapes10
from minnets.errors import MinnetsError

DATASETS = ("cifar10", "cifar100", "shapes10")

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "PAD",
    "BatchLoader",
    "EpochPlan",
    "ImageDataset",
    "default_data_root",
    "epoch_generator",
    "flip_crop",
    "load_dataset",
    "make_shapes10",
]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    url: str | None = None,
    *,
    md5: str | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load dataset ``name`` (one of DATASETS).

    CIFAR is read from ``root``, else $MINNETS_DATA (see :func:`minnets.data.cifar.locate`
    for the accepted layouts); ``download`` fetches the official archive when it is missing,
    into the user cache if no directory is given; ``url``/``md5`` replace the official source.
    ``seed`` only affects shapes10, which ignores the file arguments.
    """
    if name == "shapes10":
        return make_shapes10(seed=seed)
    if name in CIFAR_SPECS:
        return load_cifar(CIFAR_SPECS[name], root, download=download, url=url, md5=md5)
    raise MinnetsError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
