"""What a perturbation suite is, and the registry of suites.

The paper measures one perturbation (JPEG, Section 3.2); CIFAR-10-C (Hendrycks & Dietterich,
ICLR 2019) and adversarial attacks (Croce & Hein, ICML 2020) ask the same two questions of a
model: how often is it wrong on the perturbed images, and how often does its prediction change
against the clean ones (POCP, paper Eq. 5)? A suite only says how to perturb; one evaluator
(:mod:`minnets.robustness.evaluate`) answers both questions for every suite alike.

A suite (subclass :class:`Suite`) declares

* ``name``: the suite's name, also its results file ``RUN_DIR/<name>.csv``;
* ``columns``: that file's columns, in order; ``key``: the columns that identify a level (one
  CSV row per level); ``version_column``: where :meth:`Suite.version` goes in each row
  (``codec`` for JPEG, ``version`` elsewhere);
* :meth:`Suite.levels`: its levels in CSV order, each a dict of the ``key`` columns
  (JPEG: quality and mode; corruptions: corruption and severity; attacks: attack, norm, eps);
* :meth:`Suite.perturb`: the perturbed test images of one level, as uint8 ``N x H x W x C``
  (what the dataset holds) or, for attacks, a float ``N x C x H x W`` tensor in [0, 1] made
  with the model; with the extra per-row fields of that level (e.g. ``source``);
* optionally :meth:`Suite.finish` (fields that need every level, like the attack sanity
  checks), :meth:`Suite.parse_row` (typed values when reading the CSV), and the command-line
  hooks :meth:`Suite.add_arguments` / :meth:`Suite.from_args`.

A new suite is one class and one line in :data:`SUITES`. Entries name the class by import path,
so a suite's dependencies load only when it is used.
"""

from __future__ import annotations

import argparse
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from minnets.errors import MinnetsError

Row = dict[str, Any]

#: name -> "module:Class" of every suite ``minnets robustness --suite`` knows.
SUITES: dict[str, str] = {
    "jpeg": "minnets.robustness.jpeg:JpegSuite",
    "corruptions": "minnets.robustness.corruptions:CorruptionSuite",
    "adversarial": "minnets.robustness.adversarial:AdversarialSuite",
}


@dataclass
class Clean:
    """The clean test set and the model a suite perturbs it for.

    ``model`` takes normalised images (as trained); :meth:`model01` wraps it for [0, 1] images.
    ``preds`` are the model's predictions on the clean images, filled in by the evaluator
    before any level is perturbed. ``cache_dir`` is where a suite may keep expensive results
    (``None``: keep nothing).
    """

    model: nn.Module
    images: np.ndarray
    labels: np.ndarray
    mean: Sequence[float]
    std: Sequence[float]
    dataset: str
    device: torch.device = torch.device("cpu")
    batch_size: int = 500
    cache_dir: Path | None = None
    preds: np.ndarray | None = None

    def model01(self) -> nn.Module:
        """The model as attacks want it: [0, 1] NCHW input, normalises itself, eval mode, fp32, logits."""
        from minnets.robustness.evaluate import ImageModel

        return ImageModel(self.model, self.mean, self.std)

    def images01(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Clean images ``start:stop`` as a float32 NCHW tensor in [0, 1] on the device."""
        chunk = np.ascontiguousarray(self.images[start:stop].transpose(0, 3, 1, 2))
        return torch.from_numpy(chunk).to(self.device, torch.float32).div_(255)


@dataclass(frozen=True)
class Perturbed:
    """One level's perturbed test set and the row fields it contributes (e.g. ``source``)."""

    images: np.ndarray | torch.Tensor
    fields: Mapping[str, Any] = field(default_factory=dict)


class Suite(ABC):
    """A family of perturbations evaluated level by level (see the module docstring)."""

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]
    key: ClassVar[tuple[str, ...]]
    version_column: ClassVar[str] = "version"

    @abstractmethod
    def levels(self) -> list[Row]:
        """The levels to evaluate, in CSV order; each a dict of the ``key`` columns."""

    @abstractmethod
    def version(self) -> str:
        """Codec/generator/attack versions; a row of another version is evaluated again."""

    @abstractmethod
    def perturb(self, level: Row, clean: Clean) -> Perturbed:
        """The test images of ``level`` (uint8 NHWC, or a float NCHW tensor in [0, 1])."""

    def finish(self, rows: list[Row], clean: Clean) -> list[Row]:
        """Fields that need every level's row (default: none); must be resumable itself."""
        return rows

    def parse_row(self, raw: Mapping[str, str]) -> Row:
        """A CSV row with typed values: ``test_err``/``pocp`` float, ``n_images`` int, the rest as text."""
        row: Row = dict(raw)
        for column in ("test_err", "pocp"):
            row[column] = float(raw[column])
        row["n_images"] = int(raw["n_images"])
        return row

    def sort_key(self, row: Row) -> Any:
        """CSV order across runs of different options: by level order, unknown levels last."""
        order = {tuple(level[k] for k in self.key): i for i, level in enumerate(self.levels())}
        return order.get(tuple(row[k] for k in self.key), len(order)), tuple(str(row[k]) for k in self.key)

    def complete(self, rows: Sequence[Row]) -> bool:
        """Whether ``rows`` hold every level at this version (what the sweep's stage asks)."""
        version = self.version()
        have = {tuple(row[k] for k in self.key) for row in rows if row.get(self.version_column) == version}
        return all(tuple(level[k] for k in self.key) in have for level in self.levels())

    def command(self, run_dir: str | Path) -> str:
        """The command that evaluates this suite on ``run_dir`` (named in error messages)."""
        return f"minnets robustness {run_dir} --suite {self.name}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this suite's options to ``minnets robustness`` (default: none)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Suite:
        """The suite for parsed command-line options (default: no options)."""
        return cls()


def suite_class(name: str) -> type[Suite]:
    """The registered suite class called ``name``; an unknown name is a one-line error."""
    if name not in SUITES:
        raise MinnetsError(f"unknown robustness suite {name!r}; choose from {', '.join(SUITES)}")
    module, _, attribute = SUITES[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise MinnetsError(f"robustness suite {name!r} is not available in this installation ({error})") from None
    return cls


def get_suite(name: str, **options: Any) -> Suite:
    """An instance of the suite ``name`` with its constructor ``options`` (defaults otherwise)."""
    return suite_class(name)(**options)
