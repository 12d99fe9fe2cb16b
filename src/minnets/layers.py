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
from torch.autograd.function import FunctionCtx, once_differentiable

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


def _instance_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean) * scale`` per sample and channel, and ``scale = 1 / sqrt(var + eps)``.

    Two passes (mean, then the variance of the centred values), as ``F.instance_norm`` does;
    ``torch.var_mean`` would be one call but is several times slower on the CPU.
    """
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    scale = (centred * centred).mean(dim=(2, 3), keepdim=True).add_(eps).rsqrt_()
    return centred.mul_(scale), scale


def _instance_norm_backward(grad: torch.Tensor, normed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Gradient through :func:`_instance_norm`: ``scale * (g - mean(g) - y * mean(g * y))``."""
    mean_grad = grad.mean(dim=(2, 3), keepdim=True)
    mean_grad_normed = (grad * normed).mean(dim=(2, 3), keepdim=True)
    return torch.addcmul(-mean_grad * scale, grad, scale).addcmul_(normed, -mean_grad_normed * scale)


class _NormReluMin(torch.autograd.Function):
    """``min(ReLU(IN(v)), ReLU(IN(g)))`` as one autograd node with a closed-form backward.

    Autograd of the plain composition stores five full-size tensors and spends most of its
    time in ``minimum``'s backward (``where``/``masked_fill``, unvectorised on the CPU) and in
    the reshapes around ``F.instance_norm``. Here the forward keeps the two normalised maps and
    the output; the backward uses only arithmetic kernels. ``ReLU(min(a, b)) = min(ReLU(a),
    ReLU(b))``, and the gradient follows PyTorch's conventions exactly: nothing flows where
    the output is 0, all of it to the smaller input, and half to each where they are equal.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, v: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
        v_normed, v_scale = _instance_norm(v, eps)
        g_normed, g_scale = _instance_norm(g, eps)
        out = torch.minimum(v_normed, g_normed).clamp_(min=0)
        ctx.save_for_backward(v_normed, g_normed, v_scale, g_scale, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        v_normed, g_normed, v_scale, g_scale, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # the ReLU: only where out > 0
        side = torch.sub(g_normed, v_normed).sign_()  # +1: v is the minimum, -1: g, 0: a tie
        # Twice the gradient reaching each normalised map (2, 1 or 0 times grad); the 1/2 goes
        # into the per-channel scale.
        grad_v = torch.addcmul(grad, grad, side)
        grad_g = torch.addcmul(grad, grad, side, value=-1)
        return (
            _instance_norm_backward(grad_v, v_normed, v_scale * 0.5),
            _instance_norm_backward(grad_g, g_normed, g_scale * 0.5),
            None,
        )


class MinUnit(nn.Module):
    """Element-wise minimum of two rectified, instance-normalised depthwise filters (Eq. 2).

    Instance norm has no affine parameters and no running statistics: it uses each sample's
    own spatial mean and variance in training *and* evaluation, so a sample's output never
    depends on the rest of its batch.

    Parameters: ``filter_v.weight`` and ``filter_g.weight``, each ``(channels, 1, k, k)``.

    Speed (same mathematics as the plain composition; the tests compare both): on the CPU the
    input is taken to channels-last memory format, where oneDNN's depthwise kernels run several
    times faster than in NCHW, above all backward, and the output stays channels-last. The two
    depthwise convs stay two calls: one grouped conv ``f -> 2f`` (channel multiplier 2) misses
    oneDNN's depthwise kernel and was measured 1.5 to 4 times slower. Instance norm, ReLU and
    the minimum are one autograd node (:class:`_NormReluMin`).
    """

    def __init__(self, channels: int, stride: int = 1, kernel_size: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        conv = dict(kernel_size=kernel_size, stride=stride, padding=kernel_size // 2,
                    groups=channels, bias=False)
        self.filter_v = nn.Conv2d(channels, channels, **conv)
        self.filter_g = nn.Conv2d(channels, channels, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return _NormReluMin.apply(self.filter_v(x), self.filter_g(x), self.eps)


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

    State dict (the published layout; ``f = expansion * d_out``)::

        expand.0.weight              (f, d_in, 1, 1)   1x1 conv
        expand.1.weight, .bias, .running_mean, .running_var  (f,)  BatchNorm2d
        expand.1.num_batches_tracked ()
        min_unit.filter_v.weight     (f, 1, k, k)      depthwise v_m, one per channel m
        min_unit.filter_g.weight     (f, 1, k, k)      depthwise g_m
        reduce.0.weight              (d_out, f, 1, 1)  1x1 conv
        reduce.1.weight, .bias, .running_mean, .running_var  (d_out,)  BatchNorm2d
        reduce.1.num_batches_tracked ()
        shortcut.projection.weight   (d_out, d_in, 1, 1)  only with the projection
        shortcut.projection.bias     (d_out,)             only with the projection

    Memory format: on the CPU the block runs in channels-last (see :class:`MinUnit`); an
    NCHW input is converted on the way in, where it is narrower than the hidden maps, and the
    output is given back in NCHW.
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
        if x.device.type == "cpu" and not x.is_contiguous(memory_format=torch.channels_last):
            return self._forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.reduce(self.min_unit(self.expand(x)))
