"""Weight initialisation: as the published runs, or the same for every model.

The published runs initialised baselines and Min-Nets differently (the ResNet Min-Net kept
PyTorch defaults everywhere), a confound in the paper's comparison. ``init="published"``
reproduces it; ``init="same"`` gives a Min-Net exactly its family's baseline scheme, Min-blocks
included, so that an ablation isolates the architecture.
"""

from __future__ import annotations

import math

from torch import nn

from minnets.layers import MinBlock

__all__ = ["INIT_SCHEMES", "initialize"]

INIT_SCHEMES = ("published", "same")


def fan_out_normal_(conv: nn.Conv2d) -> None:
    """Normal(0, sqrt(2 / (k*k*C_out))), the PyramidNet/DenseNet scheme."""
    k_h, k_w = conv.kernel_size
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * conv.out_channels)))


def initialize(model: nn.Module, family: str, min_net: bool, init: str = "published") -> None:
    """Apply ``init`` to a freshly built model of ``family`` ("resnet" or "densenet")."""
    if init not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {init!r}")
    if init == "published" and family == "resnet" and min_net:
        return  # the published ResNet Min-Nets kept PyTorch defaults everywhere
    keep_default: set[nn.Module] = set()
    if init == "published" and min_net:  # DenseNet Min-Net: Min-blocks keep defaults ...
        for block in model.modules():
            if isinstance(block, MinBlock):
                keep_default.update(block.modules())
                if block.shortcut.projection is not None:  # ... except the projection weight
                    keep_default.discard(block.shortcut.projection)
    for module in model.modules():
        if module in keep_default:
            continue
        if isinstance(module, nn.Conv2d):
            fan_out_normal_(module)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and family == "densenet":
            nn.init.zeros_(module.bias)
