"""The run config: one typed record of everything that decides a training run.

:class:`RunConfig` is what ``minnets train`` builds from its flags (the flags are generated
from the fields below), what ``config.json`` of a run directory holds (whole, with
``schema_version``), what a sweep hands to its workers (as a JSON file, never as argv
strings) and what decides whether a run directory may be resumed (:meth:`RunConfig.identity`)
and which runs a report may average (:meth:`RunConfig.setting`).

A field left ``None`` means "the recipe's value" (or, for ``threads``, "this process's
thread count"); :meth:`RunConfig.resolved` fills every such field, and a run directory's
``config.json`` always holds the resolved config.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from minnets.errors import MinnetsError
from minnets.files import read_json, write_json

__all__ = [
    "SCHEMA_VERSION", "AMP_CHOICES", "RunConfig", "add_config_arguments", "config_from_args", "option_flag",
]

SCHEMA_VERSION = 1
AMP_CHOICES = ("none", "bf16")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _option(default: Any, help: str, *, choices: Any = None, metavar: str | None = None, cli: bool = True,
            resume: bool = True, setting: bool = True) -> Any:
    """A field with its ``minnets train`` flag's help and choices.

    ``resume``: a run directory is only resumed when this field agrees; ``setting``: a report
    only averages runs that agree on it (seeds and model excluded, of course).
    """
    metadata = {"help": help, "choices": choices, "metavar": metavar, "cli": cli, "resume": resume,
                "setting": setting and resume}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _recipes() -> tuple[str, ...]:
    from minnets.training.recipes import RECIPES

    return tuple(RECIPES)


def _datasets() -> tuple[str, ...]:
    from minnets.data import DATASETS

    return DATASETS


def _inits() -> tuple[str, ...]:
    from minnets.models import INIT_SCHEMES

    return tuple(INIT_SCHEMES)


@dataclass(frozen=True)
class RunConfig:
    """Every option of a training run (see the module docstring)."""

    model: str = _option(MISSING, "a name from `minnets models`", metavar="NAME", setting=False)  # required
    dataset: str = _option("cifar10", "dataset", choices=_datasets, setting=False)
    data: str | None = _option(None, "folder holding cifar-10-batches-py/ (or the .tar.gz); default: $MINNETS_DATA",
                               metavar="DIR", resume=False)
    recipe: str | None = _option(None, "default: the paper's recipe of the model family", choices=_recipes)
    epochs: int | None = _option(None, "override the recipe (its lr drops stay at the same fractions of training)")
    batch_size: int | None = _option(None, "global batch size (override the recipe)")
    lr: float | None = _option(None, "initial learning rate (override the recipe)")
    momentum: float | None = _option(None, "SGD momentum (override the recipe)")
    nesterov: bool | None = _option(None, "Nesterov momentum (override the recipe)")
    weight_decay: float | None = _option(None, "L2 weight decay on every parameter (override the recipe)")
    milestones: list[int] | None = _option(
        None, "comma-separated 0-based epochs from which the lr is multiplied by gamma again, e.g. 100,150 "
        "(default: the recipe's fractions of --epochs)", metavar="E1,E2")
    gamma: float | None = _option(None, "lr factor at each milestone (override the recipe)")
    seed: int = _option(0, "model init and batch order", setting=False)
    subset: int | None = _option(None, "train on the first N training images", metavar="N")
    test_subset: int | None = _option(None, "evaluate on the first N test images (quick checks; default and "
                                      "paper: all)", metavar="N")
    init: str = _option("published", "published: as the paper's runs; same: the family's baseline init for "
                        "every model", choices=_inits)
    unit: str = _option("min", "the AND operator of the Min-units, NAME or NAME:KEY=VALUE (min: the paper's; "
                        "product, max, sum, smoothmin[:tau=T], powermean[:p=P], geomean, single: the ablation's, "
                        "see `minnets sweep ablation`)", metavar="OPERATOR")
    memory_efficient: bool = _option(False, "DenseNet gradient checkpointing (same results, less memory)",
                                     resume=False)
    amp: str = _option("none", "bf16 autocast (or none)", choices=AMP_CHOICES)
    channels_last: bool = _option(False, "channels-last memory format")
    float64: bool = _option(False, "double precision (slow): for exact numerical comparisons, e.g. DDP against "
                            "one process")
    compile: bool = _option(False, "torch.compile the model", resume=False)
    threads: int | None = _option(
        None, "CPU threads (results depend on it; default: this process's, and on resume the run's own)",
        metavar="N", setting=False)
    device: str = _option("auto", "auto (CUDA if present), cpu, cuda or cuda:N", resume=False)
    # Filled in by the trainer; recorded, never given.
    num_classes: int | None = _option(None, "", cli=False, setting=False)
    world_size: int | None = _option(None, "", cli=False, resume=False)
    versions: dict[str, str] = _option({}, "", cli=False, resume=False)
    command: list[str] = _option([], "", cli=False, resume=False)
    schema_version: int = _option(SCHEMA_VERSION, "", cli=False, resume=False)

    # --- identity ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The fields that must agree for a run directory to be resumed with this config."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["resume"]}

    def setting(self) -> dict[str, Any]:
        """The fields a report's averaged runs share: :meth:`identity` without model, seed,
        dataset and thread count (a thread count changes float rounding, not the recipe)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["setting"]}

    # --- checks -----------------------------------------------------------------------------

    def validate(self) -> RunConfig:
        """Refuse what training would refuse, with one line naming the option; returns self."""
        hints = typing.get_type_hints(RunConfig)
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        for f in fields(self):
            choices = _choices(f)
            value = getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                raise MinnetsError(f"{option_flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
        from minnets.models import model_info

        info = model_info(self.model)  # unknown names: one line with close matches
        for name in ("epochs", "batch_size", "subset", "test_subset", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MinnetsError(f"{option_flag(name)} must be at least 1, got {value}")
        for name, allowed, bound in _REAL_RANGES:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and allowed(value)):
                raise MinnetsError(f"{option_flag(name)} must be {bound}, got {value}")
        if self.milestones is not None:
            check_milestones(self.milestones, self.epochs)
        if not _DEVICE.fullmatch(self.device):
            raise MinnetsError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.amp != "none" and self.float64:
            raise MinnetsError("--amp and --float64 exclude each other; choose one")
        from minnets.ops import get_operator

        try:
            get_operator(self.unit)
        except MinnetsError as error:
            raise MinnetsError(f"--unit: {error}") from None
        if self.unit != "min" and not info["min_net"]:
            raise MinnetsError(f"--unit {self.unit} needs a Min-Net; {self.model} has no Min-units "
                               f"(try min_{self.model})")
        if self.schema_version != SCHEMA_VERSION:
            raise MinnetsError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}, the one this "
                               "minnets reads")
        return self

    # --- resolution -------------------------------------------------------------------------

    def resolved(self, num_classes: int, n_train: int, n_test: int, threads: int) -> RunConfig:
        """Every ``None`` replaced: the recipe's values, the dataset's class count, ``threads``.

        ``data`` becomes absolute, so the run can be evaluated from any working directory.
        """
        from minnets.ops import get_operator
        from minnets.training.recipes import model_recipe

        recipe = model_recipe(self.model, self.recipe)
        epochs = self.epochs if self.epochs is not None else recipe.epochs
        for name, size in (("subset", n_train), ("test_subset", n_test)):
            value = getattr(self, name)
            if value is not None and value > size:
                raise MinnetsError(f"{option_flag(name)} must be between 1 and {size}, got {value}")
        data = self.data or (os.environ.get("MINNETS_DATA") if self.dataset != "shapes10" else None)
        config = replace(
            self, recipe=recipe.name, epochs=epochs,
            batch_size=self.batch_size if self.batch_size is not None else recipe.batch_size,
            lr=self.lr if self.lr is not None else recipe.lr,
            momentum=self.momentum if self.momentum is not None else recipe.momentum,
            nesterov=self.nesterov if self.nesterov is not None else recipe.nesterov,
            weight_decay=self.weight_decay if self.weight_decay is not None else recipe.weight_decay,
            milestones=list(self.milestones) if self.milestones is not None else recipe.milestones(epochs),
            gamma=self.gamma if self.gamma is not None else recipe.gamma,
            threads=self.threads if self.threads is not None else threads,
            num_classes=num_classes,
            data=str(Path(data).expanduser().resolve()) if data else None,
            unit=get_operator(self.unit).spec,  # canonical: "smoothmin" and "smoothmin:tau=0.1" are one run
        )
        return config.validate()

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`minnets.models.create_model` for this run."""
        from minnets.models import model_info

        kwargs: dict[str, Any] = {"init": self.init}
        if model_info(self.model)["family"] == "densenet":
            kwargs["memory_efficient"] = self.memory_efficient
        kwargs["unit"] = self.unit
        return kwargs

    # --- files ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the whole config (atomically) as a JSON object."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunConfig:
        """A config from a JSON object; ``source`` names the file in the one-line errors."""
        if not isinstance(data, dict):
            raise MinnetsError(f"{source} must hold a JSON object (a run config), not {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = [key for key in data if key not in names]
        if unknown:
            raise MinnetsError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(names)}); "
                               "it was written by another minnets version or edited by hand")
        missing = [name for name in names if name not in data]
        if missing:
            hint = ("; it was written by a minnets from before run configs had a schema version"
                    if "schema_version" in missing else "")
            raise MinnetsError(f"{source}: missing key {missing[0]!r}{hint}; repair it or train into a new --out")
        try:
            return cls(**data).validate()
        except MinnetsError as error:
            raise MinnetsError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RunConfig:
        return cls.from_dict(read_json(Path(path)), str(path))


_REAL_RANGES = (  # (field, test of a finite value, how the error states the range); NaN fails every test
    ("lr", lambda v: v > 0, "a finite number above 0"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, "a finite number of at least 0"),
    ("gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
)


def check_milestones(milestones: list[int], epochs: int | None) -> None:
    """Distinct, increasing drops after the first epoch and (if known) before the last."""
    if any(m < 1 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise MinnetsError(f"--milestones must be increasing epochs of at least 1, got {milestones}")
    if epochs is not None and milestones and milestones[-1] >= epochs:
        raise MinnetsError(f"--milestones {','.join(map(str, milestones))} must lie before --epochs {epochs} "
                           "(a drop at or after the last epoch never applies)")


def option_flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``: how errors name an option, in grids too."""
    return "--" + name.replace("_", "-")


def _choices(f: Field[Any]) -> tuple[str, ...] | None:
    choices = f.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               type(None): "null", list: "a list of integers", dict: "an object"}


def _check_type(name: str, value: Any, hint: Any) -> None:
    declared = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    bases = tuple(typing.get_origin(t) or t for t in declared)
    accepted = bases + ((int,) if float in bases else ())
    ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in bases)
    if ok and isinstance(value, list):
        ok = all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value)
        ok = ok and (name != "milestones" or all(isinstance(v, int) for v in value))
    if not ok:
        expected = " or ".join(_TYPE_NAMES[t] for t in bases)
        raise MinnetsError(f"{option_flag(name)} must be {expected}, got {value!r}")


# --- command line -------------------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per CLI field of :class:`RunConfig`; booleans get ``--x`` and ``--no-x``.

    Every flag defaults to "not given" (``argparse.SUPPRESS``), so :func:`config_from_args`
    knows which options the user set and leaves the rest to the config file or the defaults.
    """
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if not f.metadata["cli"]:
            continue
        base = {typing.get_origin(t) or t for t in typing.get_args(hints[f.name]) or (hints[f.name],)} - {type(None)}
        kind = base.pop()
        default = f.default if f.default is not MISSING else None
        shown = "" if default in (None, False, MISSING) or kind is bool else f" (default: {default})"
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + shown, "default": argparse.SUPPRESS,
                                  "dest": f.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {int: int, float: _number, str: str, list: _int_list}[kind]
            choices = _choices(f)
            if choices is not None:
                kwargs["choices"] = choices
            if f.metadata["metavar"]:
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(option_flag(f.name), **kwargs)


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The given flags over ``base`` (a config file's values) or over the defaults; validated."""
    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if f.metadata["cli"] and hasattr(args, f.name)}
    if base is not None:
        return replace(base, **given).validate()
    if "model" not in given:
        raise MinnetsError("give --model NAME (see `minnets models`) or --config FILE")
    return RunConfig(**given).validate()
