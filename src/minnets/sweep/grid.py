"""What a sweep runs: jobs (a :class:`~minnets.config.RunConfig` each), from a named grid or a JSON file.

A job's run directory is ``ROOT/<model>-s<seed>`` (e.g. ``min_resnet_n3-s9``), or
``ROOT/<model>-<unit>-s<seed>`` for a Min-Net with another AND operator than min. The name
does not encode the other overrides: one ROOT holds one grid configuration, and ``minnets
train`` refuses to resume a run directory whose config.json disagrees (the job then fails with
that message).

Named grids (the paper's Section 3): ``paper-resnet`` (8 ResNet models x seeds 9, 16, 507,
723, 744: 40 jobs), ``paper-densenet`` (6 DenseNet models x seeds 9, 507, 723: 18 jobs) and
``paper`` (both, 58 jobs), all with the paper's recipes; ``ablation``: ``min_resnet_n3`` and
``min_densenet_l22`` with every AND operator of :mod:`minnets.ops.operators` (min, product,
max, sum, smoothmin, powermean, geomean, single) beside
their baselines ``resnet_n3`` and ``densenet_l22``, with the paper's recipes and seeds
(9 x 5 + 9 x 3 = 72 jobs).

A JSON grid file holds ``models`` (names, or shell patterns such as ``"min_resnet_*"``),
optional ``seeds`` (default: the seeds of each model's recipe, which are the paper's for the
paper recipes) and optional ``overrides``: run config fields (:class:`~minnets.config.RunConfig`,
the options of ``minnets train`` by their Python names), e.g.
``{"dataset": "shapes10", "epochs": 1, "subset": 256, "channels_last": false, "device": "cpu"}``.
Every job's config is validated before any job starts: a value ``minnets train`` would refuse
is one line naming the grid file.

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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from minnets.config import RunConfig
from minnets.errors import MinnetsError
from minnets.models import list_models, model_info
from minnets.training.recipes import model_recipe

__all__ = ["Job", "NAMED_GRIDS", "GRID_KEYS", "OVERRIDE_KEYS", "load_grid", "make_jobs", "paper_models"]

GRID_KEYS = ("models", "seeds", "overrides")
# The sweep sets model and seed per job; the trainer fills in the rest of the recorded fields.
_SWEEP_OWNED = ("model", "seed")
OVERRIDE_KEYS = tuple(f.name for f in fields(RunConfig) if f.metadata["cli"] and f.name not in _SWEEP_OWNED)


@dataclass(frozen=True)
class Job:
    """One training run of a sweep, in its own directory ``ROOT/<name>``."""

    model: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        unit = self.overrides.get("unit", "min")
        return f"{self.model}-s{self.seed}" if unit == "min" else f"{self.model}-{unit}-s{self.seed}"

    def config(self) -> RunConfig:
        """The job's run config (validated), as its worker's ``minnets train --config`` reads it."""
        return RunConfig(model=self.model, seed=self.seed, **self.overrides).validate()


def paper_models(family: str) -> list[str]:
    """The family's baselines and Min-Nets, roughly cheapest first (by depth, baseline first)."""
    infos = [model_info(name) for name in list_models()]
    chosen = [info for info in infos if info["family"] == family]
    return [info["name"] for info in sorted(chosen, key=lambda info: (info["depth"], info["min_net"]))]


def make_jobs(models: list[str], seeds: list[int] | None = None, overrides: dict[str, Any] | None = None) -> list[Job]:
    """Jobs in rounds of seeds (see the module docstring); ``seeds=None``: each recipe's seeds."""
    return _rounds([(model, dict(overrides or {})) for model in models], seeds)


def _rounds(variants: list[tuple[str, dict[str, Any]]], seeds: list[int] | None) -> list[Job]:
    """Jobs of (model, overrides) variants, round by round of seeds; duplicates dropped."""
    per_variant = []
    for model, overrides in variants:
        if seeds is not None:
            model_seeds = list(seeds)
        else:
            model_seeds = list(model_recipe(model, overrides.get("recipe")).seeds)
        per_variant.append((model, overrides, model_seeds))
    jobs: list[Job] = []
    seen: set[str] = set()
    for position in range(max((len(s) for _, _, s in per_variant), default=0)):
        for model, overrides, model_seeds in per_variant:
            if position < len(model_seeds):
                job = Job(model, model_seeds[position], overrides)
                if job.name not in seen:
                    seen.add(job.name)
                    jobs.append(job)
    return jobs


ABLATION_MODELS = ("min_resnet_n3", "min_densenet_l22")


def ablation_jobs() -> list[Job]:
    """Each ablation Min-Net with every AND operator, after its baseline (the ``ablation`` grid)."""
    from minnets.ops import operator_names

    variants: list[tuple[str, dict[str, Any]]] = []
    for model in ABLATION_MODELS:
        variants.append((model.removeprefix("min_"), {}))
        variants += [(model, {} if unit == "min" else {"unit": unit}) for unit in operator_names()]
    return _rounds(variants, None)


def _paper_jobs(*families: str) -> Callable[[], list[Job]]:
    return lambda: make_jobs([model for family in families for model in paper_models(family)])


NAMED_GRIDS: dict[str, Callable[[], list[Job]]] = {
    "paper-resnet": _paper_jobs("resnet"), "paper-densenet": _paper_jobs("densenet"),
    "paper": _paper_jobs("resnet", "densenet"), "ablation": ablation_jobs,
}
"""Grid name -> its jobs: the paper's models of the families with their recipes and seeds, or the ablation."""


def load_grid(spec: str | Path) -> list[Job]:
    """The jobs of a named grid (:data:`NAMED_GRIDS`) or of a JSON grid file, each config validated."""
    if str(spec) in NAMED_GRIDS:
        return NAMED_GRIDS[str(spec)]()
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
    try:
        return _parse_grid(data, path)
    except MinnetsError as error:  # every error names the grid file
        if f"grid file {path}" in str(error):
            raise
        raise MinnetsError(f"grid file {path}: {error}") from None


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
    for key in overrides:
        if key not in OVERRIDE_KEYS:
            owned = " (the grid sets it per job)" if key in _SWEEP_OWNED else ""
            raise MinnetsError(f"grid file {path}: unknown override {key!r}{owned}; allowed: {', '.join(OVERRIDE_KEYS)}")
    jobs = make_jobs(_expand_models(models, path), seeds, overrides)
    for job in jobs:
        try:
            job.config()
        except MinnetsError as error:  # what `minnets train` would refuse, before any job starts
            raise MinnetsError(f"job {job.name}: {error}") from None
    return jobs


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
