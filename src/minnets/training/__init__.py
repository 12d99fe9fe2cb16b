"""Training on CIFAR with the paper's recipes: resumable run directories, one or many processes."""

from minnets.training.recipes import RECIPES, Recipe, get_recipe
from minnets.training.rundir import load_run_model, read_metrics, run_status
from minnets.training.trainer import TrainOptions, evaluate, train

__all__ = [
    "RECIPES", "Recipe", "TrainOptions", "evaluate", "get_recipe", "load_run_model", "read_metrics",
    "run_status", "train",
]
