"""A timm-style registry: every model of the paper by name, with its metadata."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypedDict

from torch import nn

from minnets.errors import MinnetsError

__all__ = ["ModelInfo", "count_parameters", "create_model", "list_models", "model_info", "register_model"]


class ModelInfo(TypedDict):
    """What reports and sweeps need to know of a model without building it."""

    name: str
    family: str  # "resnet" or "densenet"
    depth: int  # N (blocks per stack) for ResNets, L (layers) for DenseNets
    min_net: bool
    paper_params: int  # trainable parameters with 10 classes, as published


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder(num_classes=..., **kwargs)`` available as ``create_model(info['name'])``.

    A name is registered once: a second model of the same name is refused, not silently swapped in.
    """
    if info["name"] in _BUILDERS:
        raise MinnetsError(f"a model named {info['name']!r} is registered already; choose another name")
    _BUILDERS[info["name"]] = builder
    _INFO[info["name"]] = info


def _unknown(name: str) -> MinnetsError:
    close = difflib.get_close_matches(name, _BUILDERS, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(list_models())}"
    return MinnetsError(f"unknown model {name!r}; {hint} (see `minnets models`)")


def create_model(name: str, num_classes: int = 10, *, unit: str = "min", **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` go to its family's builder (init, expansion, ...).

    ``unit`` is the AND operator of a Min-Net's Min-units (:mod:`minnets.ops.operators`:
    ``"min"``, the paper's, ``"product"``, ``"smoothmin:tau=0.1"``, ...); a baseline has no
    Min-units and takes only the default.
    """
    if name not in _BUILDERS:
        raise _unknown(name)
    from minnets.ops import get_operator

    operator = get_operator(unit)  # an unknown operator: one line, before anything is built
    if not _INFO[name]["min_net"]:
        if operator.name != "min" or operator.params:
            raise MinnetsError(f"{name} has no Min-units, so unit={unit!r} cannot apply; use a min_* model")
        return _BUILDERS[name](num_classes=num_classes, **kwargs)
    return _BUILDERS[name](num_classes=num_classes, unit=operator.spec, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, in registration order."""
    import fnmatch

    return [name for name in _BUILDERS if fnmatch.fnmatch(name, pattern)]


def model_info(name: str) -> ModelInfo:
    if name not in _INFO:
        raise _unknown(name)
    return _INFO[name]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the number the paper's tables give."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
