r"""AND operators: how a Min-unit combines its two rectified, instance-normalised responses.

The paper's Min-unit keeps ``min(a, b)`` of ``a = ReLU(IN(v * x))`` and ``b = ReLU(IN(g * x))``
(Eq. 2). To ask what the minimum itself contributes, the same unit, with the same parameters
and placement, can combine ``a`` and ``b`` otherwise:

=============  ==============================================  ==================================
name           output                                          why
=============  ==============================================  ==================================
``min``        ``min(a, b)``                                   the paper (default)
``product``    ``a * b``                                       FP-nets (Grüning et al., JOV 2022)
``max``        ``max(a, b)``                                   OR control
``sum``        ``a + b``                                       linear control
``smoothmin``  ``-tau * log(exp(-a/tau) + exp(-b/tau))``       soft AND, ``<= min``, -> min as tau -> 0
``powermean``  ``((a'^p + b'^p) / 2)^(1/p)``, ``a' = max(a, eps)``  p -> -inf: min; 1: mean; +inf: max
``geomean``    ``sqrt(a * b + eps)``                           geometric mean, smooth at 0
``single``     ``a``                                           one filter, no AND (filter g dropped)
=============  ==============================================  ==================================

Names: ``"smoothmin"`` takes the default parameters, ``"smoothmin:tau=0.05"`` sets one,
``"powermean:p=-4,eps=1e-6"`` several (:func:`get_operator`). ``powermean`` raises its inputs to
``p``, so it clamps them at ``eps`` first (a zero response to a negative power is infinite; the
clamp keeps outputs and gradients finite and changes nothing where both responses exceed eps);
``p = 0`` is the geometric mean ``sqrt(a' b')``, its limit.

A new operator is one :func:`register_operator` call: a name, a function of ``(a, b, **params)``
and its default parameters.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from minnets.errors import MinnetsError

__all__ = ["AndOperator", "get_operator", "operator_names", "register_operator"]

Combine = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AndOperator:
    """One AND operator with its parameters fixed: ``operator(a, b)`` combines two responses.

    ``filters`` is 2, or 1 for an operator that reads only ``a`` (the unit then has no
    filter ``g``). ``spec`` is the canonical name, e.g. ``"smoothmin:tau=0.1"``, which
    :func:`get_operator` reads back.
    """

    name: str
    combine: Combine = field(repr=False)
    params: dict[str, float] = field(default_factory=dict)
    filters: int = 2

    def __call__(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self.combine(a, b, **self.params)

    @property
    def spec(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{key}={value:g}" for key, value in self.params.items())


_REGISTRY: dict[str, AndOperator] = {}


def register_operator(name: str, combine: Combine, filters: int = 2, **defaults: float) -> None:
    """Make ``combine(a, b, **params)`` available as the AND operator ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"AND operator {name!r} is already registered")
    if ":" in name or "," in name or "=" in name:
        raise ValueError(f"an operator name cannot contain ':', ',' or '=': {name!r}")
    _REGISTRY[name] = AndOperator(name, combine, dict(defaults), filters)


def operator_names() -> list[str]:
    """The registered operators, in registration order (``min`` first)."""
    return list(_REGISTRY)


def _parse_params(spec: str, text: str, defaults: Mapping[str, float]) -> dict[str, float]:
    params = dict(defaults)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            known = ", ".join(defaults) or "none"
            raise MinnetsError(f"AND operator {spec!r}: {item!r} is not KEY=VALUE with a known key "
                               f"(parameters: {known})")
        try:
            params[key] = float(value)
        except ValueError:
            raise MinnetsError(f"AND operator {spec!r}: {key} must be a number, got {value!r}") from None
        if not math.isfinite(params[key]):
            raise MinnetsError(f"AND operator {spec!r}: {key} must be finite, got {value!r}")
    return params


def get_operator(spec: str | AndOperator = "min") -> AndOperator:
    """The operator named by ``spec``: ``"name"`` or ``"name:key=value,key=value"``.

    An unknown name or parameter is one :class:`MinnetsError` line naming the close matches.
    """
    if isinstance(spec, AndOperator):
        return spec
    name, _, text = str(spec).partition(":")
    name = name.strip()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(_REGISTRY)}"
        raise MinnetsError(f"unknown AND operator {spec!r}; {hint}")
    base = _REGISTRY[name]
    params = _parse_params(str(spec), text, base.params)
    _check(str(spec), name, params)
    return AndOperator(name, base.combine, params, base.filters)


def _check(spec: str, name: str, params: Mapping[str, float]) -> None:
    if name == "smoothmin" and params["tau"] <= 0:
        raise MinnetsError(f"AND operator {spec!r}: tau must be > 0")
    if params.get("eps", 1.0) <= 0:
        raise MinnetsError(f"AND operator {spec!r}: eps must be > 0")


def _smoothmin(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.logaddexp(a / -tau, b / -tau) * -tau


def _powermean(a: torch.Tensor, b: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    a, b = a.clamp_min(eps), b.clamp_min(eps)
    if p == 0:
        return torch.sqrt(a * b)
    return ((a.pow(p) + b.pow(p)) * 0.5).pow(1.0 / p)


register_operator("min", lambda a, b: torch.minimum(a, b))
register_operator("product", lambda a, b: a * b)
register_operator("max", lambda a, b: torch.maximum(a, b))
register_operator("sum", lambda a, b: a + b)
register_operator("smoothmin", _smoothmin, tau=0.1)
register_operator("powermean", _powermean, p=-4.0, eps=1e-6)
register_operator("geomean", lambda a, b, eps: torch.sqrt(a * b + eps), eps=1e-6)
register_operator("single", lambda a, b: a, filters=1)
