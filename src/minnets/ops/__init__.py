"""The Min-unit's operators: the AND-operator family and the registered PyTorch operators.

- :mod:`~minnets.ops.operators`: how the unit combines its two responses (``min``, ``product``,
  ``smoothmin:tau=0.1``, ...), one registry entry each.
- :mod:`~minnets.ops.min_unit`: ``minnets::min_unit``, the Min-unit as a ``torch.library``
  operator with a native CPU, a Triton CUDA and a composite implementation.
- :mod:`~minnets.ops.min_block`: ``minnets::min_block_branch``, a Min-block's expansion, unit and
  reduction fused into one native CPU operator.
"""

from minnets.ops.min_block import fused_min_block
from minnets.ops.min_unit import and_unit, composite_unit, has_fast_kernel, instance_norm, min_unit, use_triton
from minnets.ops.operators import AndOperator, get_operator, operator_names, register_operator

__all__ = [
    "AndOperator", "and_unit", "composite_unit", "fused_min_block", "get_operator", "has_fast_kernel",
    "instance_norm", "min_unit", "operator_names", "register_operator", "use_triton",
]
