"""Training recipes as data (SPEC section 7), chosen from the model family by default.

Learning-rate milestones are stored as fractions of the run's epochs. The paper's drops sit
at 1/2 and 3/4 of training for both families (100 and 150 of 200 epochs; 150 and 225 of 300),
so the full recipes reproduce them exactly, and a shortened run (``--epochs 20``) keeps the
same shape (drops after epochs 10 and 15) instead of never decaying.
"""

from __future__ import annotations

from dataclasses import dataclass

from minnets.errors import MinnetsError

__all__ = ["Recipe", "RECIPES", "get_recipe", "default_recipe_name", "lr_at_epoch"]


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
        """Epoch indices (0-based) from which the next factor ``gamma`` applies (never the first)."""
        return [max(1, round(fraction * epochs)) for fraction in self.milestone_fractions]


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("paper-resnet", epochs=200, batch_size=128, lr=0.1, seeds=(9, 16, 507, 723, 744),
               description="ResNet and its Min-Net: SGD 0.9, lr 0.1 /10 after epochs 100 and 150"),
        Recipe("paper-densenet", epochs=300, batch_size=64, lr=0.1, nesterov=True, seeds=(9, 507, 723),
               description="DenseNet-BC and its Min-Net: SGD 0.9 Nesterov, lr 0.1 /10 after 150 and 225"),
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


def lr_at_epoch(base_lr: float, milestones: list[int], gamma: float, epoch: int) -> float:
    """Step schedule: ``base_lr * gamma**k`` with k the milestones reached by 0-based ``epoch``."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)
