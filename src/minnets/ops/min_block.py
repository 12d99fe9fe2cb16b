r"""A Min-block's residual branch up to its last BatchNorm as one native CPU operator.

``minnets::min_block_branch(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps,
reduce_weight) -> (out, mean, var, stats, rows, gram)`` is ``conv1x1(reduce_weight, MinUnit(ReLU(BN(W x))))``
with BatchNorm in training mode (batch statistics): the expansion, the Min-unit for the
minimum, and the reduction's 1x1 conv. It returns the batch mean and unbiased variance of ``W x``,
from which the caller (:func:`fused_min_block`) updates the running statistics as
``nn.BatchNorm2d`` would, and for its backward pass the per-sample statistics, the rows
``[x - mu, 1]`` and their gram matrix.

Why one operator: the statistics of ``W x`` follow from those of the (narrower) input, mean
``W mu`` and variance ``diag(W Sigma W^T)`` with ``Sigma`` its ``d_in x d_in`` covariance, so the
BatchNorm folds into the conv before the wide maps exist, and the native kernel
(:mod:`minnets.kernels`, :class:`~minnets.kernels.Expansion`) then computes the expansion's
output and the unit's output a sample at a time in the cache, applying the reduction there;
its backward pass recomputes them. None of the block's wide maps (the expansion's and the
unit's outputs and their gradients) is ever written to memory. The small matrices are computed
in float64. ``minnets::min_block_branch_inference`` is the same pass with the running
statistics folded in, for inference without gradients.

Both take float32 CPU tensors; :func:`fused_min_block` says when they apply and otherwise
returns None, and :class:`minnets.MinBlock` runs its modules, the same mathematics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from minnets import kernels
from minnets.ops.min_unit import _out_size

__all__ = ["fused_min_block"]

_CHANNELS_LAST = torch.channels_last


def _rows(x: Tensor) -> Tensor:
    """A channels-last ``(N, C, H, W)`` tensor as the ``(N*H*W, C)`` matrix it is in memory (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _pixels(x: Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[2], x.shape[3]


def _maps(rows: Tensor, pixels: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`_rows`: ``(N*H*W, C)`` rows as a channels-last ``(N, C, H, W)`` view."""
    n, h, w = pixels
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class _Fold(NamedTuple):
    """A 1x1 conv with a training-mode BatchNorm folded in, as forward and backward need it."""

    ones: Tensor  # (count, d_in + 1): [x - mu, 1] per pixel
    w: Tensor  # (f, d_in) the conv's weights, float64
    gram: Tensor  # (d_in, d_in): count * covariance of x, float64
    scale: Tensor  # (f,) 1 / sqrt(var + eps)
    gain: Tensor  # (f,) gamma * scale
    weights: Tensor  # (f, d_in + 1) [gain * w | beta], x's dtype: ReLU(BN(W x)) = ReLU(ones @ weights^T)
    var: Tensor  # (f,) biased batch variance of W x, float64


def _centred_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``[x - mu, 1]`` per pixel of a channels-last batch, and the mean ``mu``."""
    rows = _rows(x)
    count, d_in = rows.shape
    mean_x = rows.mean(dim=0)
    ones = rows.new_empty(count, d_in + 1)
    torch.sub(rows, mean_x, out=ones[:, :d_in])
    ones[:, d_in] = 1
    return ones, mean_x


def _fold(ones: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, eps: float, gram: Tensor | None = None
          ) -> _Fold:
    """The BatchNorm folded into the conv, from the batch's rows ``[x - mu, 1]`` (and their
    ``gram`` matrix, when the forward pass computed it already)."""
    count, d_in = ones.shape[0], ones.shape[1] - 1
    if gram is None:
        gram = (ones.T @ ones)[:d_in, :d_in].double()
    w = weight.flatten(1).double()
    var = ((w @ gram) * w).sum(dim=1) / count
    scale = (var + eps).rsqrt()
    gain = gamma.double() * scale
    # W x - W mu = W (x - mu): with the ones column the bias is part of the product.
    weights = torch.cat([gain[:, None] * w, beta.double()[:, None]], dim=1).to(ones.dtype)
    return _Fold(ones, w, gram, scale, gain, weights, var)


def _fold_backward(fold: _Fold, sums: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the conv weight, gamma and beta, and ``cross``, from ``sums = u^T [x - mu, 1]``
    (``u``: the gradient at the BN output where the ReLU let it through); x's gradient is then
    ``[x - mu, 1] @ cross + u @ (gain * w)`` at every pixel (BatchNorm's backward, multiplied out)."""
    count, d_in = fold.ones.shape[0], fold.w.shape[1]
    w, gain = fold.w, fold.gain
    u_x, d_beta = sums[:, :d_in], sums[:, d_in]  # sum_m u_m (x_m - mu)^T, sum_m u_m
    d_gamma = fold.scale * (u_x * w).sum(dim=1)  # sum_m u_m * normalised_m
    k = gain * fold.scale * d_gamma / count
    d_weight = gain[:, None] * u_x - k[:, None] * (w @ fold.gram)
    # dx_m = W^T d(Wx)_m = (gain w)^T u_m - W^T diag(k) W (x_m - mu) - W^T (gain * d_beta) / count
    cross = torch.cat([-(w.T * k) @ w, -(w.T @ (gain * d_beta))[None] / count])  # (d_in + 1, d_in)
    return d_weight.to(dtype).view(-1, d_in, 1, 1), d_gamma.to(dtype), d_beta.to(dtype), cross.to(dtype)


@torch.library.custom_op("minnets::min_block_branch", mutates_args=(), device_types="cpu")
def _branch(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, bn_eps: float, weight_v: Tensor,
            weight_g: Tensor, stride: int, eps: float, reduce_weight: Tensor
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    x = x.contiguous(memory_format=_CHANNELS_LAST)
    ones, mean_x = _centred_rows(x)
    fold = _fold(ones, weight, gamma, beta, bn_eps)
    count = ones.shape[0]
    out, stats = kernels.min_unit_forward(None, weight_v, weight_g, stride, eps, reduce_weight,
                                          kernels.Expansion(ones, fold.weights, _pixels(x)))
    mean = (fold.w @ mean_x.double()).to(x.dtype)
    unbiased = (fold.var * count / max(count - 1, 1)).to(x.dtype)
    return out, mean, unbiased, stats, ones, fold.gram


@torch.library.custom_op("minnets::min_block_branch_backward", mutates_args=(), device_types="cpu")
def _branch_backward(grad: Tensor, ones: Tensor, gram: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                     bn_eps: float, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                     reduce_weight: Tensor, n: int, h: int, w: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The branch's gradients from the forward pass's rows ``[x - mu, 1]`` and their gram matrix
    (which replace x, so the block keeps no second copy of its input) of the ``(n, d_in, h, w)`` input."""
    fold = _fold(ones, weight, gamma, beta, bn_eps, gram)
    pixels = (n, h, w)
    expansion = kernels.Expansion(ones, fold.weights, pixels)
    _, d_weight_v, d_weight_g, d_reduce = kernels.min_unit_backward(
        grad, None, weight_v, weight_g, stats, stride, True, expansion, reduce_weight)
    d_weight, d_gamma, d_beta, cross = _fold_backward(fold, expansion.sums, ones.dtype)
    d_x = _maps(expansion.grad_rows.addmm_(ones, cross), pixels)
    # Layouts as the fake implementation promises them: x's gradient channels-last, the rest contiguous.
    return (d_x.contiguous(memory_format=_CHANNELS_LAST),
            *(t.contiguous() for t in (d_weight, d_gamma, d_beta, d_weight_v, d_weight_g, d_reduce)))


@torch.library.custom_op("minnets::min_block_branch_inference", mutates_args=(), device_types="cpu")
def _branch_inference(x: Tensor, weight: Tensor, bias: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int,
                      eps: float, reduce_weight: Tensor) -> Tensor:
    """The branch with BatchNorm's running statistics folded into ``weight`` and ``bias``."""
    x = x.contiguous(memory_format=_CHANNELS_LAST)
    rows = torch.cat([_rows(x), x.new_ones(x.numel() // x.shape[1], 1)], dim=1)  # [x, 1]
    expansion = kernels.Expansion(rows, torch.cat([weight.flatten(1), bias[:, None]], dim=1), _pixels(x))
    return kernels.min_unit_forward(None, weight_v, weight_g, stride, eps, reduce_weight, expansion)[0]


def _fake_out(x: Tensor, weight_v: Tensor, stride: int, reduce_weight: Tensor) -> Tensor:
    n, _, h, w = x.shape
    k = weight_v.shape[-1]
    return torch.empty(n, reduce_weight.shape[0], _out_size(h, k, stride, k // 2), _out_size(w, k, stride, k // 2),
                       dtype=x.dtype, device=x.device, memory_format=_CHANNELS_LAST)


@_branch.register_fake
def _(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight):
    f = weight.shape[0]
    return (_fake_out(x, weight_v, stride, reduce_weight), x.new_empty(f), x.new_empty(f),
            x.new_empty(x.shape[0], 4, f), x.new_empty(x.numel() // x.shape[1], x.shape[1] + 1),
            x.new_empty(x.shape[1], x.shape[1], dtype=torch.float64))


@_branch_backward.register_fake
def _(grad, ones, gram, weight, gamma, beta, bn_eps, weight_v, weight_g, stats, stride, reduce_weight, n, h, w):
    d_x = torch.empty(n, ones.shape[1] - 1, h, w, dtype=ones.dtype, device=ones.device, memory_format=_CHANNELS_LAST)
    return (d_x, *(
        torch.empty_like(t, memory_format=torch.contiguous_format)
        for t in (weight, gamma, beta, weight_v, weight_g, reduce_weight)))


@_branch_inference.register_fake
def _(x, weight, bias, weight_v, weight_g, stride, eps, reduce_weight):
    return _fake_out(x, weight_v, stride, reduce_weight)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight = inputs
    ctx.save_for_backward(output[4], output[5], weight, gamma, beta, weight_v, weight_g, output[3], reduce_weight)
    ctx.bn_eps, ctx.stride, ctx.pixels = bn_eps, stride, _pixels(x)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the outputs kept for backward


def _backward(ctx, grad: Tensor, *_unused: Tensor) -> tuple:
    if grad is None:  # the output itself was not used
        return (None,) * 10
    ones, gram, weight, gamma, beta, weight_v, weight_g, stats, reduce_weight = ctx.saved_tensors
    d = _branch_backward(grad, ones, gram, weight, gamma, beta, ctx.bn_eps, weight_v, weight_g, stats, ctx.stride,
                         reduce_weight, *ctx.pixels)
    return d[0], d[1], d[2], d[3], None, d[4], d[5], None, None, d[6]


_branch.register_autograd(_backward, setup_context=_setup_context)


def _is_conv1x1(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None)


def _foldable(seq: nn.Module) -> bool:
    """Whether ``seq`` is exactly a bias-free 1x1 conv, an affine BatchNorm2d and a ReLU."""
    return (isinstance(seq, nn.Sequential) and len(seq) == 3 and _is_conv1x1(seq[0])
            and type(seq[1]) is nn.BatchNorm2d and seq[1].affine and type(seq[2]) is nn.ReLU)


def _applies(block: nn.Module, x: Tensor) -> bool:
    unit = block.min_unit
    return (x.device.type == "cpu" and x.dtype == torch.float32 and unit.operator.name == "min"
            and not _functorch_wrapped(x) and _foldable(block.expand) and isinstance(block.reduce, nn.Sequential)
            and len(block.reduce) > 0 and _is_conv1x1(block.reduce[0])
            and unit.padding == unit.kernel_size // 2 and unit.kernel_size <= kernels.MAX_KERNEL
            and all(p.dtype == torch.float32 for p in block.parameters())
            and not (unit.filter_v._forward_hooks or unit.filter_g._forward_hooks) and kernels.enabled())


def _functorch_wrapped(x: Tensor) -> bool:
    """Inside ``vmap``/``grad`` the block runs its modules, which those transforms know."""
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


class _ChannelsLastGradient(torch.autograd.Function):
    """Identity forward; backward hands the gradient on in channels-last memory format.

    Where the channels-last branch meets an NCHW tensor (the block's output, or the sum after
    the projection), the gradient comes back NCHW; oneDNN's backward passes of the branch's
    channels-last BatchNorm were measured 20 to 45 % slower with it than after this one copy.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad.contiguous(memory_format=_CHANNELS_LAST)


def _running_update(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor) -> None:
    """``nn.BatchNorm2d``'s bookkeeping in training mode, for statistics computed elsewhere."""
    if not (bn.track_running_stats and bn.running_mean is not None):
        return
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(var.to(bn.running_var.dtype), factor)


def fused_min_block(block: nn.Module, x: Tensor) -> Tensor | None:
    """``block.shortcut(x) + block.reduce(block.min_unit(block.expand(x)))`` of a
    :class:`minnets.MinBlock` through the fused native operators, or None where they do not
    apply (other devices, dtypes or AND operators, replaced modules, evaluation with gradients).
    """
    if not _applies(block, x):
        return None
    conv, bn = block.expand[0], block.expand[1]
    unit, reduce = block.min_unit, block.reduce
    wide = x.contiguous(memory_format=_CHANNELS_LAST)
    if bn.training or bn.running_mean is None:
        out, mean, var, *_ = _branch(wide, conv.weight, bn.weight, bn.bias, bn.eps, unit.filter_v.weight,
                                    unit.filter_g.weight, unit.stride, unit.eps, reduce[0].weight)
        if bn.training:
            _running_update(bn, mean, var)
    elif not torch.is_grad_enabled():
        gain = bn.weight * (bn.running_var + bn.eps).rsqrt()
        out = _branch_inference(wide, conv.weight * gain.view(-1, 1, 1, 1), bn.bias - bn.running_mean * gain,
                                unit.filter_v.weight, unit.filter_g.weight, unit.stride, unit.eps, reduce[0].weight)
    else:
        return None
    branch = reduce[1:](out)
    last = x.is_contiguous(memory_format=_CHANNELS_LAST)
    if block.shortcut.projection is None:  # the sum takes the format of its first term, x's
        return block.shortcut(x) + (branch if last else _ChannelsLastGradient.apply(branch))
    total = block.shortcut(wide) + branch  # the projection's 1x1 conv is faster on the channels-last copy
    return total if last else _ChannelsLastGradient.apply(total).contiguous()
