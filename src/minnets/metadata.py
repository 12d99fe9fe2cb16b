"""The paper's facts in one table, ``paper.json``, read by the registry, recipes, sweeps and reports.

Parameter counts, the experiment grids (depths, epochs, seeds and SGD recipe per family),
JPEG qualities and every published number (Tables 1-5 and Figure 2 of Gruening and Barth,
"Bio-inspired Min-Nets Improve the Performance and Robustness of Deep Networks"); the
file's "source" field says where each kind of number comes from.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "load_published", "paper_dataset", "paper_grid", "paper_jpeg_mode", "paper_models",
    "paper_params", "published_model", "qualities",
]

_PATH = Path(__file__).with_name("paper.json")

@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(_PATH.read_text(encoding="utf-8"))


def load_published() -> dict[str, Any]:
    """Everything in ``paper.json`` (a private copy, so callers may modify it)."""
    return copy.deepcopy(_load())


def paper_models() -> list[str]:
    """Registry names of the paper's 14 models, ResNets first, baseline before Min-Net."""
    return list(_load()["models"])


def paper_params(name: str) -> int | None:
    """Trainable parameters of a paper model with 10 classes, or None for another model."""
    entry = _load()["models"].get(name)
    return None if entry is None else int(entry["parameters"])


def published_model(name: str) -> dict[str, Any] | None:
    """The paper's numbers for one registry model name, or None for a model the paper lacks.

    JPEG results are returned with integer quality keys (JSON only allows string keys).
    """
    entry = _load()["models"].get(name)
    if entry is None:
        return None
    entry = copy.deepcopy(entry)
    for metric in ("jpeg_test_err", "pocp"):
        entry[metric] = {int(q): value for q, value in entry[metric].items()}
    return entry


def paper_grid(family: str) -> dict[str, Any] | None:
    """A family's experiment grid (depths, epochs, seeds, recipe, wall hours), or None if unknown."""
    grid = _load()["grids"].get(family)
    return copy.deepcopy(grid) if grid is not None else None


def paper_dataset() -> str:
    """The dataset every published number refers to (CIFAR-10)."""
    return _load()["dataset"]


def paper_jpeg_mode() -> str:
    """The ``minnets.jpeg`` mode that reproduces how the published JPEG numbers were made."""
    return _load()["jpeg_mode"]


def qualities() -> list[int]:
    """JPEG qualities of the paper's tables, from 100 (the uncompressed test set) down to 10."""
    return list(_load()["qualities"])
