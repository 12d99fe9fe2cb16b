"""Silent units: channels of a block that never respond on the test images.

A rectified unit that outputs 0 for every image and position carries no information; with
instance norm and a minimum, a Min-unit is silent when its two filters are never active at
the same place. A channel counts as silent when its largest output over the images and all
positions is below ``tol`` times the largest output of any channel of the block (outputs are
non-negative). ``activity`` is the fraction of (image, position) pairs where a channel's
output is above that floor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

__all__ = ["TOL", "unit_activity"]

TOL = 1e-3


def unit_activity(maps: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor],
                  tol: float = TOL) -> dict[str, np.ndarray]:
    """Per channel: ``peak`` (largest output), ``activity`` and ``silent`` (bool) over all batches."""
    peaks, positives, count, outputs = None, None, 0, []
    with torch.no_grad():
        for x in batches:
            out = maps(x).float()
            outputs.append(out)
            peak = out.amax(dim=(0, 2, 3)).double()
            peaks = peak if peaks is None else torch.maximum(peaks, peak)
    if peaks is None:
        raise ValueError("no images to measure activity on")
    floor = tol * max(float(peaks.max()), 0.0)
    for out in outputs:
        active = (out > floor).sum(dim=(0, 2, 3))
        positives = active if positives is None else positives + active
        count += out.shape[0] * out.shape[2] * out.shape[3]
    return {
        "peak": peaks.numpy(),
        "activity": (positives.double() / count).numpy(),
        "silent": (peaks <= floor).numpy(),
    }
