r"""The Min-unit and the Min-block (SPEC section 1), usable in any network.

A Min-unit is an AND of two learned filters: for every channel ``m`` it filters the same map
with two depthwise kernels ``v_m`` and ``g_m``, normalises each result per sample (instance
norm), rectifies it, and keeps the element-wise minimum, so it only responds where *both*
filters respond (paper Eq. 2)::

    T2[m] = min( ReLU(IN(v_m * T1[m])), ReLU(IN(g_m * T1[m])) )

A Min-block wraps it MobileNet-V2 style (paper Fig. 1, middle)::

    x (d_in) ──► 1x1 conv ─► BN ─► ReLU ──► Min-unit (stride s) ──► 1x1 conv ─► BN ─► ReLU ──► (+) ──► y (d_out)
       │          d_in -> q*d_out            two depthwise 3x3       q*d_out -> d_out            ▲
       └──────────► shortcut: [AvgPool 2x2 if s = 2] ► [1x1 conv+bias if d_in > d_out,  ─────────┘
                                                        zero channels if d_in < d_out]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.projection is not None:
            return self.projection(x)
        if self.d_out > self.d_in:
            return F.pad(x, (0, 0, 0, 0, 0, self.d_out - self.d_in))
        return x


class MinUnit(nn.Module):
    """Element-wise minimum of two rectified, instance-normalised depthwise filters (Eq. 2).

    Instance norm has no affine parameters and no running statistics: it uses each sample's
    own spatial mean and variance in training *and* evaluation, so a sample's output never
    depends on the rest of its batch.

    Parameters: ``filter_v.weight`` and ``filter_g.weight``, each ``(channels, 1, k, k)``.
    """

    def __init__(self, channels: int, stride: int = 1, kernel_size: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        conv = dict(kernel_size=kernel_size, stride=stride, padding=kernel_size // 2,
                    groups=channels, bias=False)
        self.filter_v = nn.Conv2d(channels, channels, **conv)
        self.filter_g = nn.Conv2d(channels, channels, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.relu(F.instance_norm(self.filter_v(x), eps=self.eps))
        g = F.relu(F.instance_norm(self.filter_g(x), eps=self.eps))
        return torch.minimum(v, g)


class MinBlock(nn.Module):
    r"""Min-block (paper Section 2.1, SPEC section 1): ``y = shortcut(x) + T3``.

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

    Eval mode: the instance norms still use per-sample statistics (see :class:`MinUnit`);
    only the two BatchNorms switch to running statistics.

    Trainable parameters: ``2*d_in*d_out + 2*d_out**2 + 42*d_out`` with q = 2 and k = 3, plus
    ``d_in*d_out + d_out`` with the projection.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        stride: int = 1,
        expansion: int = 2,
        projection: bool | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if projection is None:
            projection = d_in > d_out
        hidden = expansion * d_out
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.expand = nn.Sequential(
            nn.Conv2d(d_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
        )
        self.min_unit = MinUnit(hidden, stride=stride, kernel_size=kernel_size)
        self.reduce = nn.Sequential(
            nn.Conv2d(hidden, d_out, 1, bias=False), nn.BatchNorm2d(d_out), nn.ReLU(inplace=True)
        )
        self.shortcut = Shortcut(d_in, d_out, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.reduce(self.min_unit(self.expand(x)))
