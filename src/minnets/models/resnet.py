"""The CIFAR ResNet with pyramid basic blocks, and its Min-Net (paper Section 3, Appendix A.1).

Three stacks of N blocks at widths 16, 32, 64 (depth 6N + 2); block 0 of stacks 2 and 3
halves the resolution. The Min-Net is the same network after the design rule.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from minnets.layers import MinBlock, Shortcut
from minnets.metadata import paper_grid, paper_params
from minnets.models.design_rule import replace_first_blocks
from minnets.models.init import initialize
from minnets.models.registry import ModelInfo, register_model

__all__ = ["PyramidBasicBlock", "CifarResNet", "cifar_resnet"]

WIDTHS = (16, 32, 64)


def conv3x3(d_in: int, d_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(d_in, d_out, 3, stride=stride, padding=1, bias=False)


class PyramidBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a parameter-free shortcut.

    No ReLU after the sum (PyramidNet); widening appends zero channels to the shortcut.
    """

    def __init__(self, d_in: int, d_out: int, stride: int = 1) -> None:
        super().__init__()
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.residual = nn.Sequential(
            nn.BatchNorm2d(d_in),
            conv3x3(d_in, d_out, stride),
            nn.BatchNorm2d(d_out),
            nn.ReLU(inplace=True),
            conv3x3(d_out, d_out),
            nn.BatchNorm2d(d_out),
        )
        self.shortcut = Shortcut(d_in, d_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class CifarResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU), three stacks, global average pool, linear classifier.

    ``stacks`` is an ``nn.ModuleList`` of ``nn.Sequential`` stacks, the shape the design rule
    works on. There is no BN/ReLU between the last stack and the pooling.
    """

    def __init__(self, blocks_per_stack: int, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, WIDTHS[0]), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU(inplace=True))
        stacks, d_in = [], WIDTHS[0]
        for index, width in enumerate(WIDTHS):
            stride = 1 if index == 0 else 2
            blocks = [PyramidBasicBlock(d_in, width, stride)]
            blocks += [PyramidBasicBlock(width, width) for _ in range(blocks_per_stack - 1)]
            stacks.append(nn.Sequential(*blocks))
            d_in = width
        self.stacks = nn.ModuleList(stacks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stack in self.stacks:
            x = stack(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


def cifar_resnet(
    blocks_per_stack: int,
    num_classes: int = 10,
    *,
    min_net: bool = False,
    expansion: int = 2,
    init: str = "published",
    unit: str = "min",
) -> CifarResNet:
    """The paper's ResNet with N = ``blocks_per_stack``; ``min_net`` applies the design rule,
    with Min-units of the AND operator ``unit`` (see :class:`minnets.MinUnit`)."""
    if blocks_per_stack < 1:
        raise ValueError(f"blocks_per_stack must be >= 1, got {blocks_per_stack}")
    model = CifarResNet(blocks_per_stack, num_classes)
    if min_net:
        replace_first_blocks(
            model.stacks, lambda block: MinBlock(block.d_in, block.d_out, block.stride, expansion, unit=unit)
        )
    initialize(model, "resnet", min_net, init)
    return model


def _register() -> None:
    for min_net in (False, True):
        for n in paper_grid("resnet")["depths"]:
            name = f"{'min_' if min_net else ''}resnet_n{n}"
            info = ModelInfo(name=name, family="resnet", depth=n, min_net=min_net, paper_params=paper_params(name))
            register_model(info, partial(cifar_resnet, n, min_net=min_net))


_register()
