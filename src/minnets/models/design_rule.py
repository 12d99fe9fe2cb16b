"""The paper's design rule (Section 2.2): *each first block of a stack becomes a Min-block*.

Both Min-Nets of the paper are built by applying this one function to their baseline, and it
works on any network whose stacks are indexable containers of blocks
(``nn.Sequential`` or ``nn.ModuleList``)::

    replace_first_blocks(my_net.stages, lambda b: MinBlock(b.in_channels, b.out_channels, b.stride))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

__all__ = ["replace_first_blocks"]

Stack = nn.Sequential | nn.ModuleList


def replace_first_blocks(stacks: Iterable[Stack], make_min_block: Callable[[nn.Module], nn.Module]) -> None:
    """Replace block 0 of every stack, in place, by ``make_min_block(block)``.

    ``make_min_block`` receives the block it replaces, so it can read its widths and stride;
    the new block must accept and return tensors of the same shapes.
    """
    for stack in stacks:
        stack[0] = make_min_block(stack[0])
