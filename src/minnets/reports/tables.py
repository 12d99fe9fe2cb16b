"""Grouping runs into experiments and models, and the statistics of the paper's tables.

An *experiment* is a dataset plus the config settings that differ between its runs (epochs,
recipe, ...), so a 10-epoch smoke run is never averaged with a 200-epoch run. Within an
experiment, runs of one model are that model's seeds. Paper columns only apply to CIFAR-10;
for other datasets they hold ``NA``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from minnets.reports import published
from minnets.reports.runs import SETTING_KEYS, Run
from minnets.text import slug

NA = "n/a"  # the paper has no number that applies (other dataset or a model the paper lacks)
FAMILY_ORDER = ("resnet", "densenet")
FAMILY_LABELS = {"resnet": "ResNet", "densenet": "DenseNet-BC"}
DEPTH_SYMBOLS = {"resnet": "N", "densenet": "L"}
STATS = ("mean", "std", "min", "max")


@dataclass(frozen=True)
class Stats:
    """Summary of one number over seeds; std is the sample std (ddof=1), None below two seeds."""

    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        n = len(values)
        if n == 0:
            return cls(0, None, None, None, None)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(n, mean, std, min(values), max(values))


@dataclass
class ModelGroup:
    """The runs (seeds) of one model within one experiment."""

    model: str
    family: str | None
    depth: int | None
    min_net: bool | None
    runs: list[Run] = field(default_factory=list)
    expected_seeds: list[int] | None = None  # the paper grid's seeds, when the runs look like it
    published: dict[str, Any] | None = None  # the paper's numbers, when they apply

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def label(self) -> str:
        if self.family is None:
            return self.model
        variant = "Min-Net" if self.min_net else "baseline"
        return f"{FAMILY_LABELS[self.family]} {DEPTH_SYMBOLS[self.family]}={self.depth} {variant}"

    def final_stats(self, key: str) -> Stats:
        """Stats over finished seeds of a summary.json number (final_test_err or min_test_err)."""
        return Stats.of([float(run.summary[key]) for run in self.finished])

    def num_params(self) -> int | None:
        counts = {int(run.summary["num_params"]) for run in self.finished}
        return counts.pop() if len(counts) == 1 else None


@dataclass
class Experiment:
    """Runs on one dataset with one setting; the unit of Table 1, the figures and the suites' tables."""

    dataset: str
    setting: str  # "" or e.g. "epochs=10, subset=1000": the settings that vary between runs
    models: list[ModelGroup]
    grid_families: list[str]  # families whose runs look like the paper's grid

    @property
    def title(self) -> str:
        return f"{self.dataset} ({self.setting})" if self.setting else self.dataset

    @property
    def slug(self) -> str:
        return slug(self.title)

    @property
    def paper_applies(self) -> bool:
        return self.dataset == published.paper_dataset()

    @property
    def runs(self) -> list[Run]:
        return [run for group in self.models for run in group.runs]

    def families(self) -> list[str | None]:
        present = {group.family for group in self.models}
        return [f for f in FAMILY_ORDER if f in present] + ([None] if None in present else [])

    def jpeg_modes(self) -> list[str]:
        return paper_mode_first({mode for run in self.runs for mode in (run.jpeg or {})})


def paper_mode_first(modes: set[str]) -> list[str]:
    """JPEG modes sorted with the paper's mode (the one its tables used) first."""
    paper_mode = published.paper_jpeg_mode()
    return sorted(modes, key=lambda mode: (mode != paper_mode, mode))


def build_experiments(runs: list[Run]) -> list[Experiment]:
    """Group runs into experiments and models; add the paper grid's absent models as empty rows."""
    buckets: dict[tuple[str, str | None], list[Run]] = {}
    for run in runs:
        buckets.setdefault((run.dataset, _family(run)), []).append(run)
    by_experiment: dict[tuple[str, str], list[Run]] = {}
    for (dataset, _), bucket in buckets.items():
        varying = tuple(k for k in SETTING_KEYS if len({r.setting((k,)) for r in bucket}) > 1)
        for run in bucket:
            setting = ", ".join(f"{k}={v}" for k, v in zip(varying, run.setting(varying)))
            by_experiment.setdefault((dataset, setting), []).append(run)
    experiments = [_experiment(ds, setting, rs) for (ds, setting), rs in by_experiment.items()]
    return sorted(experiments, key=lambda e: (not e.paper_applies, e.dataset, e.setting))


def _experiment(dataset: str, setting: str, runs: list[Run]) -> Experiment:
    groups: dict[str, ModelGroup] = {}
    for run in runs:
        group = groups.get(run.model)
        if group is None:
            family = _family(run)
            depth, min_net = (run.depth, run.min_net) if family else (None, None)
            group = groups[run.model] = ModelGroup(run.model, family, depth, min_net)
        group.runs.append(run)
    paper_applies = dataset == published.paper_dataset()
    grid_families = [f for f in FAMILY_ORDER if paper_applies and _looks_like_grid(f, runs)]
    for name in published.paper_models():
        entry = published.published_model(name)
        if entry["family"] in grid_families and name not in groups:
            groups[name] = ModelGroup(name, entry["family"], entry["depth"], entry["min_net"])
    for group in groups.values():
        if group.family in grid_families:
            group.expected_seeds = published.paper_grid(group.family)["seeds"]
        if paper_applies:
            group.published = published.published_model(group.model)
    ordered = sorted(groups.values(), key=_model_order)
    return Experiment(dataset, setting, ordered, grid_families)


def _family(run: Run) -> str | None:
    """The run's family if the paper has it; anything else is reported under "other models"."""
    return run.family if run.family in FAMILY_ORDER else None


def _looks_like_grid(family: str, runs: list[Run]) -> bool:
    """True when a family's runs use only the paper's seeds and its number of epochs."""
    grid = published.paper_grid(family)
    own = [run for run in runs if _family(run) == family]
    return bool(own) and all(
        run.seed in grid["seeds"] and run.config.get("epochs", grid["epochs"]) == grid["epochs"]
        for run in own
    )


def _model_order(group: ModelGroup) -> tuple[Any, ...]:
    family_rank = FAMILY_ORDER.index(group.family) if group.family in FAMILY_ORDER else 99
    return (family_rank, group.depth or 0, bool(group.min_net), group.model)


def paper_value(group: ModelGroup, *path: Any) -> float | str | None:
    """A published number for a model: NA if the paper has none that applies, None if unpublished."""
    value: Any = group.published
    if value is None:
        return NA
    for key in path:
        value = value.get(key)
        if value is None:
            return None
    return value


def difference(ours: float | None, paper: float | str | None) -> float | str | None:
    """ours - paper, NA when the paper does not apply, None when either number is absent."""
    if paper == NA:
        return NA
    if ours is None or paper is None:
        return None
    return ours - paper


def table1_rows(experiment: Experiment) -> list[dict[str, Any]]:
    """Table 1 (one row per model): parameters, final and min-over-epochs errors, paper, diff."""
    rows = []
    for group in experiment.models:
        finished = group.finished
        row: dict[str, Any] = {
            "dataset": experiment.dataset,
            "setting": experiment.setting,
            "family": group.family or "other",
            "depth": group.depth,
            "model": group.model,
            "min_net": group.min_net,
            "epochs": _common(run.config.get("epochs") for run in group.runs),
            "n_seeds": len(finished),
            "n_expected": len(group.expected_seeds) if group.expected_seeds else None,
            "seeds": " ".join(str(run.seed) for run in sorted(finished, key=lambda r: r.seed or 0)),
            "unfinished": len(group.runs) - len(finished),
            "params": group.num_params(),
            "paper_params": paper_value(group, "parameters"),
        }
        for prefix, key in (("final", "final_test_err"), ("min", "min_test_err")):
            stats = group.final_stats(key)
            for stat in STATS:
                ours = getattr(stats, stat)
                paper = paper_value(group, key, stat)
                row[f"{prefix}_{stat}"] = ours
                row[f"paper_{prefix}_{stat}"] = paper
                row[f"diff_{prefix}_{stat}"] = difference(ours, paper)
        rows.append(row)
    return rows


def _common(values: Any) -> Any:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None
