"""DenseNet-BC for CIFAR and its Min-Net (paper Section 3, Appendix A.1).

Three dense blocks of ``n = (L - 4) / 6`` bottleneck layers, each adding ``k`` maps; transitions
halve the width and the resolution. The Min-Net replaces the first layer of every dense block
by a Min-block (``d_in`` = the block's input width, ``d_out = k``, projection shortcut) whose
``k`` maps are concatenated like a dense layer's, so every width stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minnets.layers import MinBlock
from minnets.metadata import paper_grid, paper_params
from minnets.models.design_rule import replace_first_blocks
from minnets.models.init import initialize
from minnets.models.registry import ModelInfo, register_model

__all__ = ["DenseLayer", "DenseMinLayer", "DenseBlock", "DenseNetBC", "densenet_bc"]



class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (C -> 4k) -> BN -> ReLU -> 3x3 conv (4k -> k); returns the k new maps.

    ``memory_efficient`` recomputes the concatenation and the BN-ReLU-1x1 part in the backward
    pass instead of storing it (gradient checkpointing). The first BN then updates its running
    statistics once per step, as in the plain path.
    """

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_width: int = 4,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        hidden = bottleneck_width * growth_rate
        self.in_channels, self.growth_rate = in_channels, growth_rate
        self.memory_efficient = memory_efficient
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, growth_rate, 3, padding=1, bias=False)

    def _bottleneck(self, features: Sequence[torch.Tensor], recomputing: bool = False) -> torch.Tensor:
        x = torch.cat(list(features), 1)
        if not recomputing:
            return self.conv1(F.relu(self.norm1(x)))
        # The forward pass already updated the running statistics: keep them as they were.
        saved = [buffer.clone() for buffer in self.norm1.buffers()]
        x = self.norm1(x)
        with torch.no_grad():
            for buffer, value in zip(self.norm1.buffers(), saved):
                buffer.copy_(value)
        return self.conv1(F.relu(x))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and any(f.requires_grad for f in features):
            passes = iter((False,))  # the first call is the forward pass, any later one a recompute

            def bottleneck(*tensors: torch.Tensor) -> torch.Tensor:
                return self._bottleneck(tensors, recomputing=next(passes, True))

            x = checkpoint(bottleneck, *features, use_reentrant=False)
        else:
            x = self._bottleneck(features)
        return self.conv2(F.relu(self.norm2(x)))


class DenseMinLayer(nn.Module):
    """A Min-block in a dense block's place: reads the concatenated maps, returns k new ones."""

    def __init__(self, in_channels: int, growth_rate: int, expansion: int = 2, unit: str = "min") -> None:
        super().__init__()
        self.in_channels, self.growth_rate = in_channels, growth_rate
        self.block = MinBlock(in_channels, growth_rate, stride=1, expansion=expansion, projection=True, unit=unit)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.block(torch.cat(list(features), 1))


class DenseBlock(nn.Module):
    """``layers`` each see every earlier map; the output concatenates input and all new maps."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_kwargs) for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (C -> floor(C * compression)) -> 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class DenseNetBC(nn.Module):
    """Stem (one 3x3 conv to 2k maps), dense blocks separated by transitions, BN-ReLU-pool head."""

    def __init__(self, layers_per_block: int, num_classes: int = 10, growth_rate: int = 12,
                 bottleneck_width: int = 4, compression: float = 0.5, memory_efficient: bool = False) -> None:
        super().__init__()
        width = 2 * growth_rate
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        stacks, transitions = [], []
        for index in range(3):
            block = DenseBlock(layers_per_block, width, growth_rate,
                               bottleneck_width=bottleneck_width, memory_efficient=memory_efficient)
            stacks.append(block)
            width = block.out_channels
            if index < 2:
                transitions.append(Transition(width, int(width * compression)))
                width = int(width * compression)
        self.stacks = nn.ModuleList(stacks)
        self.transitions = nn.ModuleList(transitions)
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index, block in enumerate(self.stacks):
            x = block(x)
            if index < len(self.transitions):
                x = self.transitions[index](x)
        return self.classifier(torch.flatten(self.head(x), 1))


def densenet_bc(
    depth: int,
    num_classes: int = 10,
    *,
    growth_rate: int = 12,
    min_net: bool = False,
    expansion: int = 2,
    memory_efficient: bool = False,
    init: str = "published",
    unit: str = "min",
) -> DenseNetBC:
    """DenseNet-BC of depth ``L`` (``(L - 4) / 6`` layers per block); ``min_net`` applies the rule,
    with Min-units of the AND operator ``unit`` (see :class:`minnets.MinUnit`)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth L must be 6n + 4 with n >= 1 (22, 58, 100, ...), got {depth}")
    model = DenseNetBC((depth - 4) // 6, num_classes, growth_rate, memory_efficient=memory_efficient)
    if min_net:
        replace_first_blocks(
            (block.layers for block in model.stacks),
            lambda layer: DenseMinLayer(layer.in_channels, layer.growth_rate, expansion, unit),
        )
    initialize(model, "densenet", min_net, init)
    return model


def _register() -> None:
    for min_net in (False, True):
        for depth in paper_grid("densenet")["depths"]:
            name = f"{'min_' if min_net else ''}densenet_l{depth}"
            info = ModelInfo(name=name, family="densenet", depth=depth, min_net=min_net, paper_params=paper_params(name))
            register_model(info, partial(densenet_bc, depth, min_net=min_net))


_register()
