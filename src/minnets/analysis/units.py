"""Which units of a network are analysed, and how their response maps are read out.

A Min-Net's units are the Min-units of its Min-blocks: ``T2 = MinUnit(T1)`` (paper Eq. 2), one
map per channel of the block's hidden width. A baseline has no Min-units; its *corresponding*
units are those of the blocks the paper's design rule replaces (Section 2.2: the first block of
every stack), at the same place in the block: the first rectified 3x3 filtering of the input,

* pyramid ResNet block: ``ReLU(BN(conv3x3(BN(x))))``, the first half of the residual branch;
* DenseNet-BC layer: ``ReLU(conv3x3(...))``, the layer's k new maps rectified (the next layer's
  BN-ReLU rectifies them after a per-channel affine map, which leaves their iso-response
  contours unchanged).

Those are linear filters with a pointwise non-linearity at their own input (LN-neurons), so
comparing their iso-response geometry in pixel space with the Min-units' asks whether the Min-
units are *more* hyperselective than what the baseline learns in the same place. Blocks are
named ``stack1``, ``stack2``, ... in both networks. The response maps are computed by running the
network up to the block (a forward pre-hook stops it there) and applying the block's own
modules, so the fast fused paths of :class:`minnets.MinBlock` are not involved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minnets.errors import MinnetsError
from minnets.layers import MinBlock
from minnets.models.densenet import DenseLayer, DenseMinLayer
from minnets.models.resnet import PyramidBasicBlock

__all__ = ["AnalysedBlock", "analysed_blocks", "UnitProbe", "centre_response"]


@dataclass(frozen=True)
class AnalysedBlock:
    """One analysed block: ``kind`` is ``"min"`` (a Min-block) or ``"baseline"``."""

    name: str
    kind: str
    module: nn.Module
    channels: int
    unit_maps: Callable[..., torch.Tensor]  # the block's forward arguments -> (B, channels, h, w)

    def filter_pair(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The Min-units' depthwise kernels ``v`` and ``g``, each ``(channels, 1, k, k)``; None for
        a baseline block and for a unit with one filter (the operator ``single``)."""
        unit = getattr(self.module, "min_unit", None)
        if self.kind != "min" or unit.filter_g is None:
            return None
        return unit.filter_v.weight.detach(), unit.filter_g.weight.detach()


def _describe(name: str, block: nn.Module) -> AnalysedBlock:
    if isinstance(block, DenseMinLayer):
        block = block.block
    if isinstance(block, MinBlock):
        return AnalysedBlock(name, "min", block, block.min_unit.filter_v.out_channels,
                             lambda x: block.min_unit(block.expand(x)))
    if isinstance(block, PyramidBasicBlock):
        return AnalysedBlock(name, "baseline", block, block.d_out, lambda x: block.residual[:4](x))
    if isinstance(block, DenseLayer):
        return AnalysedBlock(name, "baseline", block, block.growth_rate, lambda features: F.relu(block(features)))
    raise MinnetsError(f"cannot analyse a {type(block).__name__} at {name}: only Min-blocks, pyramid ResNet "
                       "blocks and DenseNet-BC layers are supported")


def analysed_blocks(model: nn.Module) -> list[AnalysedBlock]:
    """The first block of every stack of the paper's models (a Min-block in a Min-Net); for other
    networks, every Min-block in module order (``block1``, ``block2``, ...)."""
    stacks = getattr(model, "stacks", None)
    if isinstance(stacks, nn.ModuleList):
        firsts = [stack.layers[0] if hasattr(stack, "layers") else stack[0] for stack in stacks]
        return [_describe(f"stack{index + 1}", block) for index, block in enumerate(firsts)]
    blocks = [module for module in model.modules() if isinstance(module, MinBlock)]
    if not blocks:
        raise MinnetsError(f"{type(model).__name__} has no Min-blocks and no stacks of the paper's models to analyse")
    return [_describe(f"block{index + 1}", block) for index, block in enumerate(blocks)]


class _Reached(Exception):
    """Raised by the pre-hook to stop the forward pass once a block's input is known."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.args = args


class UnitProbe:
    """``probe(x, block)`` -> the block's unit maps for a batch of (normalised) images ``x``.

    Puts the model in eval mode and freezes its parameters: gradients are taken with respect to
    the input only, which halves the cost of every backward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, x: torch.Tensor, block: AnalysedBlock) -> torch.Tensor:
        def stop(_module: nn.Module, args: tuple[Any, ...]) -> None:
            raise _Reached(args)

        handle = block.module.register_forward_pre_hook(stop)
        try:
            self.model(x)
        except _Reached as reached:
            args = reached.args
        else:
            raise RuntimeError(f"the forward pass never reached {block.name}")  # a model that skips the block
        finally:
            handle.remove()
        return block.unit_maps(*args)  # the hook is gone: a DenseNet layer's unit calls the layer itself


def centre_response(probe: UnitProbe, block: AnalysedBlock) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (B, channels)``: every unit's response at the centre pixel of its map."""
    def response(x: torch.Tensor) -> torch.Tensor:
        maps = probe(x, block)
        return maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2]

    return response
