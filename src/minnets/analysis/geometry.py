"""The filter-pair angle gamma of a Min-unit, and the ideal Min-neuron it describes.

Paper Section 2.3: a Min-neuron ``min(v^T x, g^T x)`` has its optimal stimulus on the bisector
of ``v`` and ``g``; the angle gamma between them sets how strongly perturbations orthogonal to
that stimulus (in the v-g plane) lower the output. Instance norm divides each filter's response
by its own spatial standard deviation, so the filters' lengths drop out and gamma alone
describes the unit's two directions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["filter_angles", "ideal_min_response", "describe"]


def filter_angles(v: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    """Angle in degrees between ``v[m]`` and ``g[m]`` flattened, for every channel ``m``.

    ``v``, ``g``: ``(channels, ...)`` (e.g. the depthwise weights ``(f, 1, k, k)``). Computed in
    float64 from the cosine clipped to [-1, 1]; a channel with an all-zero filter has no angle
    (NaN).
    """
    if v.shape != g.shape:
        raise ValueError(f"filter pairs must have one shape, got {tuple(v.shape)} and {tuple(g.shape)}")
    v = v.detach().reshape(v.shape[0], -1).double().cpu()
    g = g.detach().reshape(g.shape[0], -1).double().cpu()
    norms = v.norm(dim=1) * g.norm(dim=1)
    cosine = (v * g).sum(dim=1) / norms
    cosine = torch.where(norms > 0, cosine.clamp(-1.0, 1.0), torch.full_like(cosine, math.nan))
    return torch.rad2deg(torch.arccos(cosine)).numpy()


def ideal_min_response(t: np.ndarray, o: np.ndarray, gamma_deg: float, norm: float = 1.0) -> np.ndarray:
    """Response of ``min(ReLU(v.x), ReLU(g.x))`` at ``x = t e1 + o e2`` (``|v| = |g| = norm``).

    ``e1`` is the bisector of v and g and ``e2`` the orthogonal direction in their plane, so
    ``v.x = norm (t cos(gamma/2) + o sin(gamma/2))`` and ``g.x = norm (t cos(gamma/2) - o
    sin(gamma/2))``; the minimum is ``norm (t cos(gamma/2) - |o| sin(gamma/2))^+``: its
    iso-response contours are V-shaped, ``t = level / (norm cos(gamma/2)) + |o| tan(gamma/2)``.
    """
    half = math.radians(gamma_deg) / 2
    return norm * np.maximum(np.asarray(t) * math.cos(half) - np.abs(o) * math.sin(half), 0.0)


def describe(values: np.ndarray) -> dict[str, float | int]:
    """Count, mean, std, quartiles, min and max of the finite values (NaN where there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, **{key: math.nan for key in ("mean", "std", "min", "q1", "median", "q3", "max")}}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "min": float(values.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(values.max()),
    }
