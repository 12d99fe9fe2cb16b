"""Training recipes as data, chosen from the model family by default.

The paper's two recipes are read from its facts table (:mod:`minnets.metadata`). Learning-rate
milestones are stored as fractions of the run's epochs: the paper's drops sit at 1/2 and 3/4
of training for both families (after 100 and 150 of 200 epochs; 150 and 225 of 300), so the
full recipes reproduce them exactly, and a shortened run (``--epochs 20``) keeps the same
shape (drops after epochs 10 and 15) instead of never decaying.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from minnets.errors import MinnetsError
from minnets.metadata import paper_grid

__all__ = ["Recipe", "RECIPES", "get_recipe", "default_recipe_name", "model_recipe", "lr_at_epoch"]


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    milestone_fractions: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # on every parameter, BN weights and biases included
    seeds: tuple[int, ...] = (0,)
    description: str = ""

    def milestones(self, epochs: int) -> list[int]:
        """0-based epochs from which the next factor ``gamma`` applies: distinct and increasing.

        Each drop goes to its fraction of ``epochs`` (halves rounded up); a drop that would
        coincide with a later one moves one epoch earlier. Drops that fit before the last
        epoch are kept, the latest first: ``--epochs 3`` runs 0.1, 0.01, 0.001, ``--epochs 2``
        0.1, 0.01, and ``--epochs 1`` has no drop.
        """
        ideal = [math.floor(fraction * epochs + 0.5) for fraction in self.milestone_fractions]
        placed: list[int] = []
        for target in reversed(ideal):
            latest = (placed[0] if placed else epochs) - 1
            placed.insert(0, min(target, latest))
        return [m for m in placed if m >= 1]


def _paper_recipe(family: str, name: str, description: str) -> Recipe:
    grid = paper_grid(family)
    assert grid is not None, family
    recipe, epochs = grid["recipe"], grid["epochs"]
    return Recipe(name, epochs=epochs, batch_size=recipe["batch_size"], lr=recipe["lr"],
                  milestone_fractions=tuple(drop / epochs for drop in recipe["lr_drops_after"]),
                  gamma=recipe["gamma"], momentum=recipe["momentum"], nesterov=recipe["nesterov"],
                  weight_decay=recipe["weight_decay"], seeds=tuple(grid["seeds"]), description=description)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        _paper_recipe("resnet", "paper-resnet",
                      "ResNet and its Min-Net: SGD 0.9, lr 0.1 /10 after epochs 100 and 150"),
        _paper_recipe("densenet", "paper-densenet",
                      "DenseNet-BC and its Min-Net: SGD 0.9 Nesterov, lr 0.1 /10 after 150 and 225"),
        Recipe("quick", epochs=10, batch_size=128, lr=0.1, seeds=(0, 1, 2),
               description="a short demo schedule: 10 epochs, lr 0.1 /10 after epochs 5 and 8"),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise MinnetsError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def default_recipe_name(family: str) -> str:
    return "paper-densenet" if family == "densenet" else "paper-resnet"


def model_recipe(model: str, name: str | None = None) -> Recipe:
    """The recipe ``name``, or (None) the paper's recipe of ``model``'s family."""
    from minnets.models import model_info

    return get_recipe(name or default_recipe_name(model_info(model)["family"]))


def lr_at_epoch(base_lr: float, milestones: list[int], gamma: float, epoch: int) -> float:
    """Step schedule ``base_lr * gamma**k`` (k: milestones reached by 0-based ``epoch``), computed
    in decimal so that 0.1 / 10 is 0.01, not 0.010000000000000002."""
    drops = sum(epoch >= m for m in milestones)
    return float(Decimal(repr(base_lr)) * Decimal(repr(gamma)) ** drops)
