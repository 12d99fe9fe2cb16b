"""Iso-response geometry of a unit: is it hyperselective, and how strongly?

After Vilankar & Field (2017, J. Vis. 17(9):9) and Paiton et al. (2020, J. Vis. 20(12):10).
A unit's response ``f`` is examined in a plane through a base stimulus ``x0``::

    x(t, o) = x0 + t e1 + o e2,   |e1| = |e2| = 1,  e1 . e2 = 0

``e1`` is the unit's optimal direction near ``x0`` (the maximiser of ``f(x0 + r e)`` over unit
vectors ``e``, by projected gradient ascent on the sphere) and ``e2`` an orthogonal direction.
The response is sampled on a square grid of ``t, o`` in ``[-r, r]`` and its iso-response
contours at several levels between ``f(x0)`` and ``f(x0 + r e1)`` are fitted, in coordinates
divided by ``r``, with

* ``t = c0 + c1 o + c2 o^2``: ``c2`` is the curvature Paiton et al. report. ``c2 > 0``: the
  contour bends away from the origin, towards the optimal direction, so an orthogonal
  perturbation has to be paid for with more of ``e1``: the unit is hyperselective
  (paper Eq. 4). ``c2 = 0``: straight contours, as for a linear unit with a pointwise
  non-linearity (``ReLU(w.x)`` depends on ``t`` only). ``c2 < 0``: orthogonal perturbations
  *raise* the response (an OR-like unit, e.g. a maximum of two filters).
* ``t = c0 + c1 |o|``: the slope of a V-shaped (kinked) contour; an ideal Min-neuron with
  filter angle gamma has ``c1 = tan(gamma / 2)`` exactly when ``e2`` lies in the plane of its
  two filters (:func:`minnets.analysis.geometry.ideal_min_response`).

Responses are callables mapping a batch of stimuli ``(B, *shape)`` to ``(B, C)``: the response of
each of ``C`` units (for a network: every channel of a block at the centre pixel of its map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import contourpy
import numpy as np
import torch

__all__ = [
    "LEVELS", "Plane", "ContourFit", "optimal_directions", "orthogonalise", "response_plane",
    "contour_lines", "fit_contour", "plane_fits",
]

Response = Callable[[torch.Tensor], torch.Tensor]
LEVELS = (0.2, 0.4, 0.6, 0.8)  # contour levels, as fractions of the way from f(x0) to f(x0 + r e1)
MIN_SPAN = 0.1  # a contour must cover at least this much of o (in units of r) to be fitted
MIN_POINTS = 5


def optimal_directions(response: Response, x0: torch.Tensor, units: Sequence[int], radius: float, *,
                       stages: int = 3, growth: float = 8.0, steps: int = 40, starts: int = 4, step_size: float = 0.3,
                       decay: float = 0.85, start_window: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit vectors ``e1[k]`` (shape ``(K, *x0.shape)``) maximising ``f_units[k](x0 + radius e)``.

    Projected gradient ascent on the sphere ``|e| = 1``: each step moves ``e`` along the
    tangential part of the gradient by ``step_size * decay**i`` (radians, approximately) and
    renormalises; the step shrinks so the ascent settles on a kink (a Min-unit's maximum is
    where its two filters' responses are equal and the gradient switches between them). The
    radius grows in ``stages`` by a factor ``growth`` each, up to ``radius``, each stage starting
    from the last one's direction: a rectified unit has zero gradient wherever it is off, and a
    first jump of the full radius along the gradient at ``x0`` can land there, while on a small
    sphere the unit stays as active as at ``x0``. Every unit starts from the gradient direction
    at ``x0`` and from ``starts - 1`` random directions (Gaussian, times ``start_window`` if
    given: e.g. a window on the unit's receptive field); the best point of the last stage wins.
    All units and starts ascend together in one batch.
    """
    units = list(units)
    count = len(units)
    shape = tuple(x0.shape)
    columns = torch.tensor(units * starts)
    rows = torch.arange(len(columns))
    e = torch.randn((starts * count, *shape), generator=generator, dtype=x0.dtype)
    if start_window is not None:
        e = e * start_window
    first = _gradients(response, x0.expand(count, *shape).clone(), columns[:count])
    usable = _flat_norm(first) > 0
    e[:count][usable] = first[usable]
    e = _normalise(e)
    for stage in reversed(range(stages)):
        scale = radius / growth**stage
        best, best_value = e.clone(), torch.full((len(columns),), -math.inf, dtype=torch.float64)
        for step in range(steps + 1):
            e_var = e.detach().requires_grad_(True)
            values = response(x0 + scale * e_var)[rows, columns]
            better = values.detach().double() > best_value
            best[better], best_value[better] = e[better], values.detach().double()[better]
            if step == steps:
                break
            (grad,) = torch.autograd.grad(values.sum(), e_var)
            tangent = grad - _flat_dot(grad, e)[(...,) + (None,) * len(shape)] * e
            length = _flat_norm(tangent)[(...,) + (None,) * len(shape)]
            move = torch.where(length > 0, tangent / length.clamp_min(1e-30), torch.zeros_like(tangent))
            e = _normalise(e + step_size * decay**step * move)
        e = best
    winner = best_value.view(starts, count).argmax(dim=0)
    return e.view(starts, count, *shape)[winner, torch.arange(count)]


def orthogonalise(e1: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The unit vector along ``direction`` minus its projection on ``e1`` (``e1`` a unit vector)."""
    rest = direction - (direction * e1).sum() * e1
    norm = rest.norm()
    if not norm > 1e-12 * max(direction.norm().item(), 1e-30):
        raise ValueError("the direction is parallel to e1: no orthogonal part")
    return rest / norm


@dataclass(frozen=True)
class Plane:
    """Responses ``values[i, j] = f(x0 + t[i] e1 + o[j] e2)`` with ``t, o`` in units of the radius."""

    t: np.ndarray
    o: np.ndarray
    values: np.ndarray

    @property
    def base(self) -> float:
        """``f(x0)``: the grid's centre."""
        return float(self.values[len(self.t) // 2, len(self.o) // 2])

    @property
    def peak(self) -> float:
        """``f(x0 + r e1)``: top of the e1 axis."""
        return float(self.values[-1, len(self.o) // 2])

    def level(self, fraction: float) -> float:
        return self.base + fraction * (self.peak - self.base)


def response_plane(response: Response, x0: torch.Tensor, unit: int, e1: torch.Tensor, e2: torch.Tensor,
                   radius: float, size: int = 41, batch_size: int = 256) -> Plane:
    """The unit's responses on a ``size x size`` grid of ``t, o`` in ``[-radius, radius]``."""
    if size % 2 == 0:
        raise ValueError(f"the grid size must be odd (a point at x0), got {size}")
    axis = torch.linspace(-1.0, 1.0, size, dtype=x0.dtype)
    t, o = torch.meshgrid(axis, axis, indexing="ij")
    offsets = radius * (t.reshape(-1, *[1] * x0.dim()) * e1 + o.reshape(-1, *[1] * x0.dim()) * e2)
    values = []
    with torch.no_grad():
        for start in range(0, len(offsets), batch_size):
            values.append(response(x0 + offsets[start:start + batch_size])[:, unit].double())
    return Plane(axis.double().numpy(), axis.double().numpy(), torch.cat(values).view(size, size).numpy())


def contour_lines(plane: Plane, level: float) -> list[np.ndarray]:
    """Iso-response lines at ``level``, each an ``(n, 2)`` array of ``(o, t)`` points (marching squares)."""
    generator = contourpy.contour_generator(x=plane.o, y=plane.t, z=plane.values, line_type="Separate")
    return [np.asarray(line, dtype=float) for line in generator.lines(level) if len(line) > 1]


@dataclass(frozen=True)
class ContourFit:
    """Fits of one iso-response contour (coordinates in units of the radius); NaN: not fitted."""

    fraction: float  # the level, as a fraction from f(x0) to f(x0 + r e1)
    level: float
    points: int
    span: float  # extent in o
    c0: float
    c1: float
    c2: float  # curvature of t = c0 + c1 o + c2 o^2
    v_c0: float
    slope: float  # c1 of t = c0 + c1 |o|
    rms_quadratic: float
    rms_v: float


def fit_contour(points: np.ndarray) -> dict[str, float]:
    """Least-squares fits ``t = c0 + c1 o + c2 o^2`` and ``t = c0 + c1 |o|`` to ``(o, t)`` points."""
    o, t = points[:, 0], points[:, 1]
    quadratic = np.stack([np.ones_like(o), o, o * o], axis=1)
    (c0, c1, c2), *_ = np.linalg.lstsq(quadratic, t, rcond=None)
    kinked = np.stack([np.ones_like(o), np.abs(o)], axis=1)
    (v_c0, slope), *_ = np.linalg.lstsq(kinked, t, rcond=None)
    return {
        "c0": float(c0), "c1": float(c1), "c2": float(c2), "v_c0": float(v_c0), "slope": float(slope),
        "rms_quadratic": float(np.sqrt(np.mean((quadratic @ [c0, c1, c2] - t) ** 2))),
        "rms_v": float(np.sqrt(np.mean((kinked @ [v_c0, slope] - t) ** 2))),
    }


def _axis_line(lines: list[np.ndarray]) -> np.ndarray | None:
    """The line crossing the e1 axis (o = 0) closest to it; longest on a tie."""
    if not lines:
        return None
    return min(lines, key=lambda line: (round(float(np.abs(line[:, 0]).min()), 6), -len(line)))


def plane_fits(plane: Plane, fractions: Sequence[float] = LEVELS) -> list[ContourFit]:
    """Fit the contour through the e1 axis at every level; NaN fits where there is none to fit
    (a unit whose response does not rise along e1, or a contour shorter than ``MIN_SPAN``)."""
    fits = []
    for fraction in fractions:
        level = plane.level(fraction)
        line = _axis_line(contour_lines(plane, level)) if plane.peak > plane.base else None
        span = float(np.ptp(line[:, 0])) if line is not None else 0.0
        if line is None or span < MIN_SPAN or len(line) < MIN_POINTS:
            numbers = dict.fromkeys(("c0", "c1", "c2", "v_c0", "slope", "rms_quadratic", "rms_v"), math.nan)
        else:
            numbers = fit_contour(line)
        fits.append(ContourFit(fraction, level, 0 if line is None else len(line), span, **numbers))
    return fits


def _gradients(response: Response, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    values = response(x)[torch.arange(len(columns)), columns]
    (grad,) = torch.autograd.grad(values.sum(), x)
    return grad


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _flat_norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def _normalise(a: torch.Tensor) -> torch.Tensor:
    return a / _flat_norm(a).clamp_min(1e-30)[(...,) + (None,) * (a.dim() - 1)]
