"""End-stopping: do a block's units prefer the corners of a shape to its straight edges?

End-stopped cells of visual cortex respond to line ends and corners but little to straight
edges or uniform regions; Min-units were built after them (paper Section 3; Grüning & Barth's
FP-net papers measured it with the ratio of responses at edge midpoints and at corners).

Stimuli: a centred square of side ``side`` pixels, once brighter and once darker than the
uniform background (``contrast`` on [0, 1] grey, all three colour channels alike). For every
unit ``R_corner`` is its largest response at the square's four corners, ``R_edge`` at the
four edge midpoints, ``R_uniform`` at the square's centre and at the background's centre
point between the square and the image border; each is the maximum over both polarities and
over a ``(2 window + 1)^2`` neighbourhood of the location in the unit's map (locations scaled
to the map's resolution). The **degree of end-stopping** is

    ES = (R_corner - R_edge) / (R_corner + R_edge)  in [-1, 1],

a monotone function of the FP-net papers' ratio ``R_edge / R_corner`` that stays bounded: 1 for
a unit silent on straight edges but active at corners, 0 for one that does not tell them apart,
negative for an edge unit that a corner weakens. Units with ``R_corner + R_edge`` below ``tol``
times the block's largest response get NaN (they respond to neither).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["square_stimuli", "end_stopping"]

Maps = Callable[[torch.Tensor], torch.Tensor]


def square_stimuli(size: int = 32, side: int = 16, contrast: float = 0.5,
                   background: float = 0.5) -> torch.Tensor:
    """``(2, 3, size, size)`` grey images in [0, 1]: a bright and a dark centred square."""
    if not 2 <= side <= size - 4:
        raise ValueError(f"the square's side must be between 2 and {size - 4} pixels, got {side}")
    low = (size - side) // 2
    images = torch.full((2, 3, size, size), background)
    images[0, :, low:low + side, low:low + side] = background + contrast / 2
    images[1, :, low:low + side, low:low + side] = background - contrast / 2
    return images


def _locations(size: int, side: int) -> dict[str, list[tuple[float, float]]]:
    """(row, col) in pixel coordinates of corners, edge midpoints and uniform points."""
    low, high = (size - side) / 2, (size + side) / 2  # pixel edges of the square
    mid = size / 2
    outside = low / 2  # halfway between the border and the square
    return {
        "corner": [(low, low), (low, high), (high, low), (high, high)],
        "edge": [(low, mid), (high, mid), (mid, low), (mid, high)],
        "uniform": [(mid, mid), (outside, mid)],
    }


def end_stopping(maps: Maps, images: torch.Tensor, side: int, window: int = 1,
                 tol: float = 1e-3) -> dict[str, np.ndarray]:
    """Per unit ``R_corner``, ``R_edge``, ``R_uniform`` and the degree ``es`` (see the module).

    ``maps``: stimuli ``(B, 3, H, W)`` -> unit maps ``(B, C, h, w)``; ``images`` the stimuli as
    the network takes them (e.g. :func:`square_stimuli` normalised), all with the square of
    side ``side`` pixels centred.
    """
    with torch.no_grad():
        responses = maps(images).double()
    size = images.shape[-1]
    scale = responses.shape[-1] / size
    result = {}
    for name, points in _locations(size, side).items():
        best = torch.full(responses.shape[1:2], -math.inf, dtype=torch.float64)
        for row, col in points:
            r, c = _map_index(row, scale, responses.shape[2]), _map_index(col, scale, responses.shape[3])
            patch = responses[:, :, max(r - window, 0):r + window + 1, max(c - window, 0):c + window + 1]
            best = torch.maximum(best, patch.amax(dim=(0, 2, 3)))
        result[f"r_{name}"] = best.numpy()
    total = result["r_corner"] + result["r_edge"]
    floor = tol * max(float(responses.max()), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        result["es"] = np.where(total > floor, (result["r_corner"] - result["r_edge"]) / total, np.nan)
    return result


def _map_index(pixel: float, scale: float, length: int) -> int:
    """The map position covering pixel coordinate ``pixel`` (at a pixel edge: the pixel after it)."""
    return int(min(max(math.floor(pixel * scale), 0), length - 1))

