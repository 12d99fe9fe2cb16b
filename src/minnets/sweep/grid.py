"""What a sweep runs: jobs (model, seed, train options), from a named grid or a JSON file.

A job's run directory is ``ROOT/<model>-s<seed>`` (e.g. ``min_resnet_n3-s9``). The name does
not encode the overrides: one ROOT holds one grid configuration, and ``minnets train`` refuses
to resume a run directory whose config.json disagrees (the job then fails with that message).

Named grids (SPEC section 7): ``paper-resnet`` (8 ResNet models x seeds 9, 16, 507, 723, 744:
40 jobs), ``paper-densenet`` (6 DenseNet models x seeds 9, 507, 723: 18 jobs) and ``paper``
(both, 58 jobs), all with the paper's recipes.

A JSON grid file holds ``models`` (names, or shell patterns such as ``"min_resnet_*"``),
optional ``seeds`` (default: the seeds of each model's recipe, which are the paper's for the
paper recipes) and optional ``overrides``: ``minnets train`` options under their
:class:`~minnets.training.TrainOptions` field names, e.g.
``{"dataset": "shapes10", "epochs": 1, "subset": 256, "device": "cpu"}``.

Order: jobs come in rounds, one per seed position: round 1 trains every model with its
family's first seed, round 2 with the second, and so on; inside a round the models keep the
grid's order, which for the named grids is roughly by cost (ResNets before DenseNets,
shallow before deep, baseline before its Min-Net). So a first result for every model exists
after the first round (a preliminary report covers all models early), and the long DenseNet
runs, which have only three seeds, are not left for the end, where they would keep one
worker busy long after the others ran dry.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from minnets.errors import MinnetsError
from minnets.models import list_models, model_info
from minnets.training.recipes import default_recipe_name, get_recipe
from minnets.training.trainer import TrainOptions

__all__ = ["Job", "NAMED_GRIDS", "GRID_KEYS", "OVERRIDE_KEYS", "load_grid", "make_jobs", "paper_models"]

GRID_KEYS = ("models", "seeds", "overrides")
# The sweep sets model and seed per job; output detail is its own business.
_SWEEP_OWNED = ("model", "seed", "quiet")
OVERRIDE_KEYS = tuple(f.name for f in fields(TrainOptions) if f.name not in _SWEEP_OWNED)


@dataclass(frozen=True)
class Job:
    """One training run of a sweep, in its own directory ``ROOT/<name>``."""

    model: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return f"{self.model}-s{self.seed}"

    def train_args(self) -> list[str]:
        """``minnets train`` options for this job, without ``--out``, ``--device`` or ``--download``.

        The sweep passes the device per worker (unless the overrides name one) and fetches
        missing data once before any job starts, so workers never download.
        """
        args = ["--model", self.model, "--seed", str(self.seed)]
        for key, value in self.overrides.items():
            if key in ("device", "download") or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        return args


def paper_models(family: str) -> list[str]:
    """The family's baselines and Min-Nets, roughly cheapest first (by depth, baseline first)."""
    infos = [model_info(name) for name in list_models()]
    chosen = [info for info in infos if info["family"] == family]
    return [info["name"] for info in sorted(chosen, key=lambda info: (info["depth"], info["min_net"]))]


def make_jobs(models: list[str], seeds: list[int] | None = None, overrides: dict[str, Any] | None = None) -> list[Job]:
    """Jobs in rounds of seeds (see the module docstring); ``seeds=None``: each recipe's seeds."""
    overrides = dict(overrides or {})
    per_model = []
    for model in models:
        if seeds is not None:
            model_seeds = list(seeds)
        else:
            recipe = overrides.get("recipe") or default_recipe_name(model_info(model)["family"])
            model_seeds = list(get_recipe(recipe).seeds)
        per_model.append((model, model_seeds))
    jobs: list[Job] = []
    seen: set[str] = set()
    for position in range(max((len(s) for _, s in per_model), default=0)):
        for model, model_seeds in per_model:
            if position < len(model_seeds):
                job = Job(model, model_seeds[position], overrides)
                if job.name not in seen:
                    seen.add(job.name)
                    jobs.append(job)
    return jobs


NAMED_GRIDS = {"paper-resnet": ("resnet",), "paper-densenet": ("densenet",), "paper": ("resnet", "densenet")}
"""Grid name -> the model families it trains, each with its paper recipe and seeds."""


def load_grid(spec: str | Path) -> list[Job]:
    """The jobs of a named grid (:data:`NAMED_GRIDS`) or of a JSON grid file."""
    if str(spec) in NAMED_GRIDS:
        return make_jobs([model for family in NAMED_GRIDS[str(spec)] for model in paper_models(family)])
    path = Path(spec)
    if not path.is_file():
        raise MinnetsError(
            f"unknown grid {str(spec)!r}: give one of {', '.join(NAMED_GRIDS)} or the path of a JSON file "
            f"with keys {', '.join(GRID_KEYS)}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MinnetsError(f"grid file {path} is not valid JSON ({error}); fix it") from None
    return _parse_grid(data, path)


def _parse_grid(data: Any, path: Path) -> list[Job]:
    if not isinstance(data, dict):
        raise MinnetsError(f"grid file {path} must hold a JSON object with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise MinnetsError(f"grid file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(GRID_KEYS)}")
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise MinnetsError(f'grid file {path}: "models" must be a non-empty list of model names (see `minnets models`)')
    seeds = data.get("seeds")
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if seeds is not None and not (integers and seeds):
        raise MinnetsError(f'grid file {path}: "seeds" must be a non-empty list of integers (or left out '
                           "for the recipe's seeds)")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        raise MinnetsError(f'grid file {path}: "overrides" must be an object of `minnets train` options')
    for key, value in overrides.items():
        _check_override(path, key, value)
    if "recipe" in overrides and overrides["recipe"] is not None:
        get_recipe(overrides["recipe"])
    return make_jobs(_expand_models(models, path), seeds, overrides)


def _expand_models(models: list[str], path: Path) -> list[str]:
    names: list[str] = []
    for entry in models:
        if any(char in entry for char in "*?["):
            matched = list_models(entry)
            if not matched:
                raise MinnetsError(f"grid file {path}: pattern {entry!r} matches no model; see `minnets models`")
            names += matched
        else:
            model_info(entry)  # one-line error naming close matches
            names.append(entry)
    return list(dict.fromkeys(names))


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _check_override(path: Path, key: str, value: Any) -> None:
    if key not in OVERRIDE_KEYS:
        owned = " (the grid sets it per job)" if key in _SWEEP_OWNED else ""
        raise MinnetsError(f"grid file {path}: unknown override {key!r}{owned}; allowed: {', '.join(OVERRIDE_KEYS)}")
    hint = typing.get_type_hints(TrainOptions)[key]
    declared = typing.get_args(hint) or (hint,)
    accepted = declared + ((int,) if float in declared else ())
    if isinstance(value, bool) and bool not in declared or not isinstance(value, accepted):
        expected = " or ".join(_TYPE_NAMES[t] for t in declared)
        raise MinnetsError(f"grid file {path}: override {key!r} must be {expected}, got {json.dumps(value)}")
