"""Training on CIFAR with the paper's recipes: resumable run directories, one or many processes."""

from minnets.config import RunConfig
from minnets.rundir import load_run_model, read_metrics, run_status
from minnets.training.recipes import RECIPES, Recipe, get_recipe
from minnets.training.trainer import evaluate, train

__all__ = [
    "RECIPES", "Recipe", "RunConfig", "evaluate", "get_recipe", "load_run_model", "read_metrics", "run_status",
    "train",
]
