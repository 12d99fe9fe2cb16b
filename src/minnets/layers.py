r"""The Min-unit and the Min-block (paper Section 2.1, Eq. 1-3, Appendix A.1), usable in any network.

A Min-unit is an AND of two learned filters: for every channel ``m`` it filters the same map
with two depthwise kernels ``v_m`` and ``g_m``, normalises each result per sample (instance
norm), rectifies it, and keeps the element-wise minimum, so it only responds where *both*
filters respond (paper Eq. 2)::

    T2[m] = min( ReLU(IN(v_m * T1[m])), ReLU(IN(g_m * T1[m])) )

A Min-block wraps it MobileNet-V2 style (paper Fig. 1, middle; Eq. 1 and 3)::

    x (d_in) ──► 1x1 conv ─► BN ─► ReLU ──► Min-unit (stride s) ──► 1x1 conv ─► BN ─► ReLU ──► (+) ──► y (d_out)
       │          d_in -> q*d_out            two depthwise 3x3       q*d_out -> d_out            ▲
       └──────────► shortcut: [AvgPool 2x2 if s = 2] ► [1x1 conv+bias if d_in > d_out,  ─────────┘
                                                        zero channels if d_in < d_out]

The modules here are the equations. Speed lives in :mod:`minnets.ops`: the Min-unit is a
registered operator with a native CPU and a Triton GPU kernel, and on the CPU a Min-block's
branch runs as one fused native operator; both compute the same function (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minnets import ops
from minnets.ops.operators import AndOperator

__all__ = ["MinUnit", "MinBlock", "Shortcut"]


class Shortcut(nn.Module):
    """The residual path of paper Appendix A.1 (shared by Min-blocks and pyramid blocks).

    Stride 2 averages 2x2 windows (ceil mode); a wider output gets zero channels appended
    after the input's channels; ``projection`` uses a 1x1 conv *with bias* (no BN, no ReLU),
    the only way to make the output narrower than the input.
    """

    def __init__(self, d_in: int, d_out: int, stride: int = 1, projection: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if d_in > d_out and not projection:
            raise ValueError(f"a shortcut from {d_in} to {d_out} channels needs projection=True")
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.projection = nn.Conv2d(d_in, d_out, 1, bias=True) if projection else None

    @property
    def is_identity(self) -> bool:
        """Whether the shortcut returns its input unchanged (stride 1, no projection, as wide)."""
        return self.stride == 1 and self.projection is None and self.d_out == self.d_in

    @property
    def is_pooling(self) -> bool:
        """Whether the shortcut is the 2x2 average pool with zero channels appended (stride 2, no projection)."""
        return self.stride == 2 and self.projection is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.projection is not None:
            return self.projection(x)
        if self.d_out > self.d_in:
            return F.pad(x, (0, 0, 0, 0, 0, self.d_out - self.d_in))
        return x


class MinUnit(nn.Module):
    """Two depthwise filters, each instance-normalised and rectified, combined by an AND (Eq. 2).

    ``unit`` names the AND operator (:mod:`minnets.ops.operators`): ``"min"``, the paper's, by
    default; ``"product"``, ``"smoothmin:tau=0.1"``, ... take the same parameters; ``"single"``
    keeps one filter (``filter_g`` is None). Instance norm has no affine parameters and no
    running statistics: it uses each sample's own spatial mean and variance in training *and*
    evaluation, so a sample's output never depends on the rest of its batch.

    Parameters: ``filter_v.weight`` and ``filter_g.weight``, each ``(channels, 1, k, k)``. The
    forward pass is :func:`minnets.ops.and_unit`: a native kernel for the minimum where one runs,
    plain PyTorch otherwise; both read the filters' weights, so forward hooks on the filter
    modules do not fire (hooks on the unit do). First derivatives
    only on the kernels' path (no ``create_graph=True``).
    """

    def __init__(self, channels: int, stride: int = 1, kernel_size: int = 3, eps: float = 1e-5,
                 unit: str | AndOperator = "min") -> None:
        super().__init__()
        self.operator = ops.get_operator(unit)
        self.eps, self.stride, self.kernel_size, self.padding = eps, stride, kernel_size, kernel_size // 2
        conv = dict(kernel_size=kernel_size, stride=stride, padding=self.padding, groups=channels, bias=False)
        self.filter_v = nn.Conv2d(channels, channels, **conv)
        self.filter_g = nn.Conv2d(channels, channels, **conv) if self.operator.filters == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_g = None if self.filter_g is None else self.filter_g.weight
        return ops.and_unit(x, self.filter_v.weight, weight_g, self.stride, self.padding, self.eps, self.operator)

    def extra_repr(self) -> str:
        return f"unit={self.operator.spec!r}"


class MinBlock(nn.Module):
    r"""Min-block (paper Section 2.1): ``y = shortcut(x) + T3``.

    ``T1 = ReLU(BN(W1 x))`` widens ``d_in`` to ``f = expansion * d_out`` maps (f depends on
    d_out, not d_in); ``T2 = MinUnit(T1)`` applies the stride; ``T3 = ReLU(BN(W3 T2))``
    recombines to ``d_out`` maps. There is no BN before the block and no ReLU after the sum.

    Shapes: ``(N, d_in, H, W) -> (N, d_out, ceil(H / stride), ceil(W / stride))``.

    Args:
        d_in, d_out: input and output channels.
        stride: 1, or 2 to halve the resolution (in the Min-unit and the shortcut).
        expansion: ``q`` of the paper (2 in every experiment).
        projection: use a 1x1 conv with bias on the shortcut; ``None`` decides by
            ``d_in > d_out`` (a narrower output needs it, a wider one appends zero maps).
        kernel_size: of the two depthwise filters.
        unit: the AND operator of the Min-unit (see :class:`MinUnit`), ``"min"`` by default.

    Eval mode: the instance norms still use per-sample statistics (see :class:`MinUnit`);
    only the two BatchNorms switch to running statistics.

    Trainable parameters: ``2*d_in*d_out + 2*d_out**2 + 42*d_out`` with q = 2 and k = 3, plus
    ``d_in*d_out + d_out`` with the projection; with ``unit="single"`` (no ``filter_g``)
    ``18*d_out`` fewer.

    State dict (the published layout, for every operator; ``f = expansion * d_out``)::

        expand.0.weight              (f, d_in, 1, 1)   1x1 conv
        expand.1.weight, .bias, .running_mean, .running_var  (f,)  BatchNorm2d
        expand.1.num_batches_tracked ()
        min_unit.filter_v.weight     (f, 1, k, k)      depthwise v_m, one per channel m
        min_unit.filter_g.weight     (f, 1, k, k)      depthwise g_m (absent with unit="single")
        reduce.0.weight              (d_out, f, 1, 1)  1x1 conv
        reduce.1.weight, .bias, .running_mean, .running_var  (d_out,)  BatchNorm2d
        reduce.1.num_batches_tracked ()
        shortcut.projection.weight   (d_out, d_in, 1, 1)  only with the projection
        shortcut.projection.bias     (d_out,)             only with the projection

    Speed: on the CPU, with float32 maps and the minimum, the whole block (the branch, its
    BatchNorms and ReLUs and the sum with the shortcut; a projection's conv stays a module) runs
    as one native operator in training, and the same in inference without gradients
    (:func:`minnets.ops.fused_min_block`, the same mathematics and BatchNorm bookkeeping);
    forward hooks on the fused modules do not fire there. Everything else runs the modules.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        stride: int = 1,
        expansion: int = 2,
        projection: bool | None = None,
        kernel_size: int = 3,
        unit: str | AndOperator = "min",
    ) -> None:
        super().__init__()
        if projection is None:
            projection = d_in > d_out
        hidden = expansion * d_out
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.expand = nn.Sequential(
            nn.Conv2d(d_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
        )
        self.min_unit = MinUnit(hidden, stride=stride, kernel_size=kernel_size, unit=unit)
        self.reduce = nn.Sequential(
            nn.Conv2d(hidden, d_out, 1, bias=False), nn.BatchNorm2d(d_out), nn.ReLU(inplace=True)
        )
        self.shortcut = Shortcut(d_in, d_out, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = ops.fused_min_block(self, x)
        if fused is not None:
            return fused
        return self.shortcut(x) + self.reduce(self.min_unit(self.expand(x)))
