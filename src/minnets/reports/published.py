"""The paper's published numbers (Tables 1-5, SPEC sections 4 and 9), shipped as package data.

Reports put these beside a project's own results, so they live in one JSON file
(``published.json``, whose "source" field says which table each number comes from) instead
of being scattered through plotting code.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

_PATH = Path(__file__).with_name("published.json")


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(_PATH.read_text(encoding="utf-8"))


def load_published() -> dict[str, Any]:
    """Everything in ``published.json`` (a private copy, so callers may modify it)."""
    return copy.deepcopy(_load())


def paper_models() -> list[str]:
    """Registry names of the paper's 14 models, ResNets first, baseline before Min-Net."""
    return list(_load()["models"])


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
    """The paper's experiment grid for a family (depths, epochs, seeds), or None if unknown."""
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
