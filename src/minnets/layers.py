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

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from minnets import kernels

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
    time in ``minimum``'s backward (``where`` and ``masked_fill``, measured 5 to 8 times slower
    than an arithmetic kernel on the CPU) and in the copies around ``F.instance_norm``, which
    cannot view a channels-last tensor as one batch of ``N*C`` channels. Here the forward
    keeps the two normalised maps and the output; the backward uses only arithmetic kernels.
    ``ReLU(min(a, b)) = min(ReLU(a), ReLU(b))``, and the gradient follows PyTorch's
    conventions exactly: nothing flows where the output is 0, all of it to the smaller input,
    and half to each where they are equal.
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


class _NativeMinUnit(torch.autograd.Function):
    """The whole Min-unit (both depthwise convs included) as one native CPU kernel.

    See :mod:`minnets.kernels`: the filter outputs are never stored, only ``x`` and per-sample
    statistics, and the backward pass recomputes them. With ``input_is_relu`` the gradient of
    ``x`` is also zeroed where ``x == 0``, the backward of the ReLU that made ``x``, so that
    ReLU can skip its own pass over the (widest) maps.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor,
                stride: int, eps: float, input_is_relu: bool) -> torch.Tensor:
        out, stats = kernels.min_unit_forward(x, weight_v, weight_g, stride, eps)
        ctx.save_for_backward(x, weight_v, weight_g, stats)
        ctx.stride, ctx.input_is_relu = stride, input_is_relu
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None]:
        x, weight_v, weight_g, stats = ctx.saved_tensors
        grads = kernels.min_unit_backward(grad, x, weight_v, weight_g, stats, ctx.stride, ctx.input_is_relu)
        return (*grads[:3], None, None, None)


class _ReluGradientMask(torch.autograd.Function):
    """Identity forward; backward zeroes the gradient where the (rectified) input is 0."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, x, 0)


class _ChannelsLastGradient(torch.autograd.Function):
    """Identity forward; backward hands on the gradient in channels-last memory format.

    Where a channels-last branch meets an NCHW tensor (the block's output, or the sum after
    the projection), the gradient comes back NCHW; oneDNN's backward passes of the branch's
    channels-last convs and BatchNorm were measured 20 to 45 % slower with it than after this
    one copy.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class MinUnit(nn.Module):
    """Element-wise minimum of two rectified, instance-normalised depthwise filters (Eq. 2).

    Instance norm has no affine parameters and no running statistics: it uses each sample's
    own spatial mean and variance in training *and* evaluation, so a sample's output never
    depends on the rest of its batch.

    Parameters: ``filter_v.weight`` and ``filter_g.weight``, each ``(channels, 1, k, k)``.

    Speed (same mathematics as the plain composition; the tests compare both): on the CPU the
    input is taken to channels-last memory format and, for float32, the whole unit runs as one
    native kernel (:mod:`minnets.kernels`; forward hooks on ``filter_v``/``filter_g`` do not
    fire there). Elsewhere, or without a C compiler, the two depthwise convs run as modules
    (channels-last on the CPU, where oneDNN's depthwise kernels are several times faster than
    in NCHW) and instance norm, ReLU and the minimum are one autograd node
    (:class:`_NormReluMin`) with a closed-form backward. Both support first derivatives only
    (no ``create_graph=True`` double backward).
    """

    def __init__(self, channels: int, stride: int = 1, kernel_size: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        conv = dict(kernel_size=kernel_size, stride=stride, padding=kernel_size // 2,
                    groups=channels, bias=False)
        self.filter_v = nn.Conv2d(channels, channels, **conv)
        self.filter_g = nn.Conv2d(channels, channels, **conv)

    def runs_natively(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes the native kernel for this channels-last input."""
        return (kernels.usable(x, self.filter_v.weight, self.filter_g.weight)
                and not (self.filter_v._forward_hooks or self.filter_g._forward_hooks))

    def forward(self, x: torch.Tensor, input_is_relu: bool = False) -> torch.Tensor:
        """``input_is_relu=True`` promises that ``x`` is a ReLU's output and asks for x's gradient
        already zeroed where ``x == 0``, so that the ReLU's own backward pass can be skipped."""
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            if self.runs_natively(x):
                return _NativeMinUnit.apply(x, self.filter_v.weight, self.filter_g.weight, self.filter_v.stride[0],
                                            self.eps, input_is_relu)
        if input_is_relu:
            x = _ReluGradientMask.apply(x)
        return _NormReluMin.apply(self.filter_v(x), self.filter_g(x), self.eps)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last ``(N, C, H, W)`` tensor as the ``(N*H*W, C)`` matrix it is in memory (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _pixels(x: torch.Tensor) -> tuple[int, int, int]:
    """``(N, H, W)`` of an ``(N, C, H, W)`` tensor: the pixel grid its rows run over."""
    return x.shape[0], x.shape[2], x.shape[3]


def _maps(rows: torch.Tensor, pixels: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`_rows`: ``(N*H*W, C)`` rows as a channels-last ``(N, C, H, W)`` view."""
    n, h, w = pixels
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _matmul_t(rows: torch.Tensor, weight: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``rows @ weight.T``, rectified if asked: oneDNN's fused matmul where it can, else ATen's.

    For the skinny products here (inner size ``d_in + 1``) oneDNN's matmul with a ReLU post-op
    was measured 2.5 times faster than ``torch.mm`` followed by ``clamp_``. Under
    ``torch.compile`` the ATen form is traced instead, which Inductor fuses itself.
    """
    if (rows.dtype == torch.float32 and rows.device.type == "cpu" and _HAS_ONEDNN_LINEAR
            and not torch.compiler.is_compiling()):
        return torch.ops.mkldnn._linear_pointwise(rows, weight.contiguous(), None, "relu" if relu else "none", [], "")
    out = torch.mm(rows, weight.T)
    return out.clamp_(min=0) if relu else out


class _Folded(NamedTuple):
    """A 1x1 conv with its BatchNorm folded in (see :class:`_ExpandBNReLU`), as the backward needs it."""

    ones: torch.Tensor  # (count, d_in + 1): [x - mu, 1] per pixel
    w: torch.Tensor  # (f, d_in) the conv's weights, float64
    gram: torch.Tensor  # (d_in, d_in): count * covariance of x, float64
    scale: torch.Tensor  # (f,) 1 / sqrt(var + eps)
    gain: torch.Tensor  # (f,) gamma * scale
    folded: torch.Tensor  # (f, d_in) gain * w


def _fold_forward(x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
                  ) -> tuple[_Folded, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The folded conv; ``[folded | bias]``, with which ``ReLU(BN(W x)) = ReLU([x - mu, 1] @
    weights^T)``; and the batch mean and unbiased variance."""
    rows = _rows(x)
    count, d_in = rows.shape
    mean_x = rows.mean(dim=0)
    ones = rows.new_empty(count, d_in + 1)  # [x - mu, 1]
    torch.sub(rows, mean_x, out=ones[:, :d_in])
    ones[:, d_in] = 1
    gram = (ones.T @ ones)[:d_in, :d_in].double()  # count * covariance of x
    w = weight.flatten(1).double()
    var = ((w @ gram) * w).sum(dim=1) / count  # biased, as BN normalises with
    scale = (var + eps).rsqrt()
    gain = gamma.double() * scale
    folded = gain[:, None] * w
    # W x - W mu = W (x - mu): with the ones column the bias is part of the product.
    weights = torch.cat([folded, beta.double()[:, None]], dim=1).to(x.dtype)
    mean = (w @ mean_x.double()).to(x.dtype)
    unbiased = (var * count / max(count - 1, 1)).to(x.dtype)
    return _Folded(ones, w, gram, scale, gain, folded), weights, mean, unbiased


def _fold_backward(fold: _Folded, sums: torch.Tensor, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the conv weight, gamma and beta, and ``cross``, from ``sums = u^T [x - mu, 1]``
    (``u``: the gradient at the BN output, where the ReLU let it through); x's gradient is then
    ``[x - mu, 1] @ cross + u @ folded`` at every pixel."""
    count, d_in = fold.ones.shape[0], fold.w.shape[1]
    w, gain = fold.w, fold.gain
    u_x, d_beta = sums[:, :d_in], sums[:, d_in]  # sum_m u_m (x_m - mu)^T, sum_m u_m
    d_gamma = fold.scale * (u_x * w).sum(dim=1)  # sum_m u_m * normalised_m
    k = gain * fold.scale * d_gamma / count
    d_weight = gain[:, None] * u_x - k[:, None] * (w @ fold.gram)
    # dx_m = W^T d(Wx)_m = folded^T u_m - W^T diag(k) W (x_m - mu) - W^T (gain * d_beta) / count
    cross = torch.cat([-(w.T * k) @ w, -(w.T @ (gain * d_beta))[None] / count])  # (d_in + 1, d_in)
    return d_weight.to(dtype).view(-1, d_in, 1, 1), d_gamma.to(dtype), d_beta.to(dtype), cross.to(dtype)


class _ExpandBNReLU(torch.autograd.Function):
    """``ReLU(BN(W x))`` for a 1x1 conv ``W`` and a BatchNorm with batch statistics, in one pass.

    The statistics of ``W x`` follow from those of ``x``: mean ``W mu`` and variance
    ``diag(W Sigma W^T)``, with ``Sigma`` the ``d_in x d_in`` covariance of the (narrower)
    input. So the BN folds into the conv before the wide maps exist; they are written once,
    by one matmul with a fused ReLU, and the backward needs two matmuls over the wide gradient
    instead of BN's and the conv's passes. Same mathematics as conv -> BatchNorm2d -> ReLU in
    training mode; the small matrices are computed in float64. Returns the batch mean and
    unbiased variance too, for the running statistics. ``x`` must be channels-last.

    The rows of ``x - mu`` carry a column of ones, so one product adds the bias in the forward
    pass and one gives both sums the backward pass needs.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor,
                beta: torch.Tensor, eps: float, gradient_masked: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fold, weights, mean, unbiased = _fold_forward(x, weight, gamma, beta, eps)
        out = _matmul_t(fold.ones, weights, relu=True)
        ctx.save_for_backward(*fold, out)
        ctx.gradient_masked = gradient_masked
        ctx.mark_non_differentiable(mean, unbiased)
        return _maps(out, _pixels(x)), mean, unbiased

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: FunctionCtx, grad: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        *saved, out = ctx.saved_tensors
        fold = _Folded(*saved)
        # u: gradient at the BN output, where the ReLU let it through.
        u = _rows(grad.contiguous(memory_format=torch.channels_last))
        if not ctx.gradient_masked:
            u = torch.ops.aten.threshold_backward(u, out, 0)
        d_weight, d_gamma, d_beta, cross = _fold_backward(fold, (u.T @ fold.ones).double(), u.dtype)
        d_rows = _matmul_t(fold.ones, cross.T).addmm_(u, fold.folded.to(u.dtype))
        return _maps(d_rows, _pixels(grad)), d_weight, d_gamma, d_beta, None, None


class _NativeExpandMinUnit(torch.autograd.Function):
    """A Min-block's residual branch up to its last BatchNorm as one native node: the expansion
    (:class:`_ExpandBNReLU`'s folded 1x1 conv, BatchNorm and ReLU), the Min-unit, and the
    reduction's 1x1 conv.

    The kernel computes the expansion's output and the unit's output a sample at a time, in the
    cache, and applies the reduction there; the backward pass recomputes them and goes from the
    reduction's output gradient through the unit and the expansion
    (:class:`minnets.kernels.Expansion`). So none of the block's wide maps (the expansion's
    output and its gradient, the unit's output and its gradient) is ever written to memory;
    what is saved for the backward pass is the narrow input and per-sample statistics.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                eps: float, weight_v: torch.Tensor, weight_g: torch.Tensor, stride: int, unit_eps: float,
                reduce_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fold, weights, mean, unbiased = _fold_forward(x, weight, gamma, beta, eps)
        out, stats = kernels.min_unit_forward(None, weight_v, weight_g, stride, unit_eps, reduce_weight,
                                              kernels.Expansion(fold.ones, weights, _pixels(x)))
        ctx.save_for_backward(*fold, weights, weight_v, weight_g, stats, reduce_weight)
        ctx.stride, ctx.pixels = stride, _pixels(x)
        ctx.mark_non_differentiable(mean, unbiased)
        return out, mean, unbiased

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: FunctionCtx, grad: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor) -> tuple:
        *saved, weights, weight_v, weight_g, stats, reduce_weight = ctx.saved_tensors
        fold = _Folded(*saved)
        expansion = kernels.Expansion(fold.ones, weights, ctx.pixels)
        _, d_weight_v, d_weight_g, d_reduce = kernels.min_unit_backward(
            grad, None, weight_v, weight_g, stats, ctx.stride, True, expansion, reduce_weight)
        d_weight, d_gamma, d_beta, cross = _fold_backward(fold, expansion.sums, weights.dtype)
        d_rows = expansion.grad_rows.addmm_(fold.ones, cross)
        return (_maps(d_rows, ctx.pixels), d_weight, d_gamma, d_beta, None, d_weight_v, d_weight_g, None, None,
                d_reduce)


def _conv_bn_relu(seq: nn.Sequential, x: torch.Tensor, then: MinUnit | None = None,
                  reduce: nn.Sequential | None = None) -> torch.Tensor:
    """``seq`` (1x1 conv, BatchNorm2d, ReLU) applied to a channels-last ``x``, BN folded into the
    conv; then the Min-unit ``then`` and the module ``reduce``, if given. The unit zeroes its
    input gradient where the ReLU was off, so the ReLU's backward is skipped; with batch
    statistics and the native kernel, the expansion, the unit and a plain 1x1 conv starting
    ``reduce`` run as one autograd node (:class:`_NativeExpandMinUnit`).

    Reproduces :class:`nn.BatchNorm2d`'s bookkeeping: batch statistics in training mode (or
    without running statistics), the running averages and ``num_batches_tracked`` updated as it
    would, running statistics folded into the conv weights in evaluation mode.
    """
    conv, bn = seq[0], seq[1]
    native = then is not None and reduce is not None and _foldable(reduce) and then.runs_natively(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    if bn.training or bn.running_mean is None:
        if native:
            out, mean, var = _NativeExpandMinUnit.apply(x, conv.weight, bn.weight, bn.bias, bn.eps,
                                                        then.filter_v.weight, then.filter_g.weight,
                                                        then.filter_v.stride[0], then.eps, reduce[0].weight)
            then, reduce = None, reduce[1:]  # applied: the unit and the reduction's conv
        else:
            out, mean, var = _ExpandBNReLU.apply(x, conv.weight, bn.weight, bn.bias, bn.eps, then is not None)
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_(var.to(bn.running_var.dtype), factor)
    else:
        gain = bn.weight * (bn.running_var + bn.eps).rsqrt()
        weight = conv.weight * gain.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * gain
        if native and not torch.is_grad_enabled():  # inference: the whole branch up to reduce's BN in one pass
            rows = torch.cat([_rows(x), x.new_ones(x.numel() // x.shape[1], 1)], dim=1)  # [x, 1]
            expansion = kernels.Expansion(rows, torch.cat([weight.flatten(1), bias[:, None]], dim=1).float(),
                                          _pixels(x))
            out, _ = kernels.min_unit_forward(None, then.filter_v.weight, then.filter_g.weight,
                                              then.filter_v.stride[0], then.eps, reduce[0].weight, expansion)
            return reduce[1:](out)
        out = F.relu(F.conv2d(x, weight, bias), inplace=True)
    if then is not None:
        out = then(out, input_is_relu=True)
    return out if reduce is None else reduce(out)


def _foldable(seq: nn.Module) -> bool:
    """Whether ``seq`` is exactly a bias-free 1x1 conv, an affine BatchNorm2d and a ReLU."""
    if not (isinstance(seq, nn.Sequential) and len(seq) == 3):
        return False
    conv, bn, relu = seq
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None
            and type(bn) is nn.BatchNorm2d and bn.affine and type(relu) is nn.ReLU)


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

    Speed on the CPU (same mathematics; ``tests/test_fast_min_block.py`` compares outputs,
    gradients and running statistics with the plain composition, on both paths below): the
    residual branch runs in channels-last, an NCHW input converted on the way in, where it is
    narrower than the hidden maps, and gradients converted back on the way out; the output
    keeps the input's memory format. The ``expand`` BatchNorm is folded into its 1x1 conv, its
    batch statistics computed from the input's covariance (:class:`_ExpandBNReLU`). With
    float32 maps, in training mode and in inference without gradients, the folded expansion,
    the Min-unit and the ``reduce`` conv then run as one native kernel
    (:class:`_NativeExpandMinUnit`, :mod:`minnets.kernels`): the block's wide maps (the
    expansion's and the unit's outputs and their gradients) never cross main memory. Without
    the kernel (no C compiler, ``MINNETS_NATIVE=0``, other dtypes) the Min-unit runs as in
    :class:`MinUnit` and ``reduce`` as its modules. BatchNorm's
    bookkeeping (running averages, ``momentum``, ``None`` momentum, ``num_batches_tracked``,
    evaluation mode) is kept; a replaced ``expand`` or ``reduce`` conv runs as written, and
    forward hooks on the fused convs do not fire. Other devices run the modules as they are.
    First derivatives only (see :class:`MinUnit`).
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
        if x.device.type != "cpu":
            return self.shortcut(x) + self.reduce(self.min_unit(self.expand(x)))
        wide = x.contiguous(memory_format=torch.channels_last)
        if _foldable(self.expand):
            branch = _conv_bn_relu(self.expand, wide, then=self.min_unit, reduce=self.reduce)
        else:
            branch = self.reduce(self.min_unit(self.expand(wide)))
        last = x.is_contiguous(memory_format=torch.channels_last)
        if self.shortcut.projection is None:  # the sum takes the format of its first term, x's
            return self.shortcut(x) + (branch if last else _ChannelsLastGradient.apply(branch))
        # The projection's 1x1 conv is faster on the channels-last copy; the sum goes back.
        total = self.shortcut(wide) + branch
        return total if last else _ChannelsLastGradient.apply(total).contiguous()
