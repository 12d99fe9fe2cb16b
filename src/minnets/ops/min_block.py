r"""A Min-block as native CPU operators: the whole block in training, its branch otherwise.

``minnets::min_block_branch(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps,
reduce_weight) -> (out, mean, var, stats, mean_x, gram)`` is ``conv1x1(reduce_weight, MinUnit(ReLU(BN(W x))))``
with BatchNorm in training mode (batch statistics): the expansion, the Min-unit for the
minimum, and the reduction's 1x1 conv. It returns the batch mean and unbiased variance of ``W x``,
from which the caller (:func:`fused_min_block`) updates the running statistics as
``nn.BatchNorm2d`` would, and for its backward pass the per-sample statistics and the moments of
x (its mean and ``count`` times its covariance).

``minnets::min_block(x, shortcut, residual, ...)`` is the whole block in training mode, the
branch above plus the reduction's BatchNorm (batch statistics), its ReLU and the sum with the
shortcut: x itself, the stride-2 block's 2x2 average pool of x with zero channels appended
(both computed in the kernel's passes), or a given tensor (the projection). It runs wherever
the reduction is exactly conv, BatchNorm, ReLU with that BatchNorm normalising by batch
statistics; ``min_block_branch`` covers the rest (a frozen reduction BatchNorm, replaced
modules), followed by the modules.

Why one operator: the statistics of ``W x`` follow from those of the (narrower) input, mean
``W mu`` and variance ``diag(W Sigma W^T)`` with ``Sigma`` its ``d_in x d_in`` covariance, so the
BatchNorm folds into the conv before the wide maps exist, and the native kernel
(:mod:`minnets.kernels`, :class:`~minnets.kernels.Expansion`) then computes the expansion's
output and the unit's output a sample at a time in the cache, applying the reduction there;
its backward pass recomputes them. None of the block's wide maps (the expansion's and the
unit's outputs and their gradients) is ever written to memory, and x stays where it lies
(NCHW maps are transposed a sample at a time in the cache). The reduction's BatchNorm takes
its batch statistics from per-sample moments the forward kernel records, so it needs one more
pass over the (narrow) output, forward and backward, and none over the wide maps. The small
matrices are computed in float64.
``minnets::min_block_branch_inference`` is the branch with the running statistics of both
BatchNorms folded in (and the reduction's ReLU applied, and x or its pool added), for
inference without gradients.

All take float32 CPU tensors; :func:`fused_min_block` says when they apply and otherwise
returns None, and :class:`minnets.MinBlock` runs its modules, the same mathematics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from minnets import kernels
from minnets.ops.min_unit import _out_size, has_fast_kernel

__all__ = ["fused_min_block"]

_CHANNELS_LAST = torch.channels_last


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """x's per-channel mean and ``count`` times its covariance over batch and pixels, in float64."""
    n, c, h, w = x.shape
    count = n * h * w
    # Sums run in x's dtype over one sample's pixels and in float64 across samples: a float64
    # sum over all of x would first copy it to float64 (measured: 0.95 ms against 0.05 ms for a
    # 128 x 16 x 32 x 32 batch).
    if x.is_contiguous(memory_format=_CHANNELS_LAST) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(count, c)  # a view
        total = rows.view(n, h * w, c).sum(dim=1).sum(dim=0, dtype=torch.float64)
        raw = (rows.T @ rows).double()
    else:
        maps = x.reshape(n, c, h * w)
        total = maps.sum(dim=2).sum(dim=0, dtype=torch.float64)
        raw = torch.bmm(maps, maps.transpose(1, 2)).double().sum(dim=0)
    mean = total / max(count, 1)
    return mean, raw - count * torch.outer(mean, mean)


def _small_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for the block's small float64 matrices (``b`` a matrix or a vector), summed
    elementwise: a BLAS product of this size starts a parallel region, and when the OpenMP
    workers have gone idle, waking them took 14 ms on the 2-core test VM (measured after a
    pause: a 12x24 by 24x24 product, against 0.2 ms for this)."""
    if b.dim() == 1:
        return (a * b).sum(dim=-1)
    return (a.unsqueeze(-1) * b.unsqueeze(0)).sum(dim=1)


class _Fold(NamedTuple):
    """A 1x1 conv with a training-mode BatchNorm folded in, as forward and backward need it."""

    w: Tensor  # (f, d_in) the conv's weights, float64
    gram: Tensor  # (d_in, d_in): count * covariance of x, float64
    count: int  # pixels in the batch
    scale: Tensor  # (f,) 1 / sqrt(var + eps)
    gain: Tensor  # (f,) gamma * scale
    var: Tensor  # (f,) biased batch variance of W x, float64
    expansion: kernels.Expansion  # ReLU(BN(W x)) = ReLU(gain * W x + bias), for the kernel


def _fold(x: Tensor, mean_x: Tensor, gram: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> _Fold:
    """The BatchNorm folded into the conv, from the batch's moments: ``BN(W x) = gain * W x + bias``
    with ``bias = beta - gain * W mu``."""
    n, _, h, w_ = x.shape
    count = n * h * w_
    w = weight.flatten(1).double()
    var = (_small_mm(w, gram) * w).sum(dim=1) / max(count, 1)
    scale = (var + eps).rsqrt()
    gain = gamma.double() * scale
    folded = gain[:, None] * w
    bias = beta.double() - _small_mm(folded, mean_x)
    return _Fold(w, gram, count, scale, gain, var, kernels.Expansion(x, folded.to(x.dtype), bias.to(x.dtype)))


def _fold_backward(fold: _Fold, u_x: Tensor, u_sum: Tensor, dtype: torch.dtype
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the conv weight, gamma and beta, and ``cross`` with its bias, from
    ``u_x = sum_m u_m (x_m - mu)^T`` and ``u_sum = sum_m u_m`` (``u``: the gradient at the BN
    output where the ReLU let it through); x's gradient is then
    ``(gain w)^T u + (x - mu) @ cross + bias`` at every pixel (BatchNorm's backward, multiplied out)."""
    w, gain, count = fold.w, fold.gain, max(fold.count, 1)
    d_beta = u_sum
    d_gamma = fold.scale * (u_x * w).sum(dim=1)  # sum_m u_m * normalised_m
    k = gain * fold.scale * d_gamma / count
    d_weight = gain[:, None] * u_x - k[:, None] * _small_mm(w, fold.gram)
    # dx_m = W^T d(Wx)_m = (gain w)^T u_m - W^T diag(k) W (x_m - mu) - W^T (gain * d_beta) / count
    cross = -_small_mm(w.T * k, w)  # (d_in, d_in)
    return (d_weight.to(dtype).view(*w.shape, 1, 1), d_gamma.to(dtype), d_beta.to(dtype), cross,
            -_small_mm(w.T, gain * d_beta) / count)


def _branch_forward(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, bn_eps: float, weight_v: Tensor,
                    weight_g: Tensor, stride: int, eps: float, reduce_weight: Tensor, moments: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    mean_x, gram = _moments(x)
    fold = _fold(x, mean_x, gram, weight, gamma, beta, bn_eps)
    out, stats = kernels.min_unit_forward(None, weight_v, weight_g, stride, eps, reduce_weight, fold.expansion,
                                          maps=x.is_contiguous(), moments=moments)
    mean = _small_mm(fold.w, mean_x).to(x.dtype)
    unbiased = (fold.var * fold.count / max(fold.count - 1, 1)).to(x.dtype)
    return out, mean, unbiased, stats, mean_x, gram


@torch.library.custom_op("minnets::min_block_branch", mutates_args=(), device_types="cpu")
def _branch(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, bn_eps: float, weight_v: Tensor,
            weight_g: Tensor, stride: int, eps: float, reduce_weight: Tensor
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _branch_forward(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight)


def _reduction_norm(moments: Tensor, pixels: int, gamma: Tensor, beta: Tensor, eps: float
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The reduction's BatchNorm from its output's per-sample moments (``moments`` of
    :func:`kernels.min_unit_forward`), in float64: the kernel's ``norm`` coefficients (the
    backward pass's two rows still zero), the batch mean and the unbiased variance."""
    shift, centred, squares = moments.unbind(1)  # (n, c) each
    count = max(moments.shape[0] * pixels, 1)
    mean = (pixels * shift + centred).sum(dim=0) / count
    offset = shift - mean
    m2 = (squares + 2 * offset * centred + pixels * offset * offset).sum(dim=0)  # sum of (out - mean)^2
    inv_sigma = (m2 / count + eps).rsqrt()
    gain = gamma.double() * inv_sigma
    zeros = torch.zeros_like(mean)
    norm = torch.stack([gain, beta.double() - gain * mean, mean, inv_sigma, zeros, zeros]).to(gamma.dtype)
    return norm, mean.to(gamma.dtype), (m2 / max(count - 1, 1)).to(gamma.dtype)


def _residual_operands(residual: str, t: Tensor, given: Tensor | None = None
                       ) -> tuple[Tensor | None, Tensor | None]:
    """What the kernel's passes add for ``residual``, from x (forward) or the output's gradient
    (backward) ``t``: (a tensor added as it lies, a tensor whose 2x2 average pool is added, or
    whose pool's backward pass is)."""
    return {"given": (given, None), "input": (t, None), "pooled": (None, t)}[residual]


@torch.library.custom_op("minnets::min_block", mutates_args=(), device_types="cpu")
def _block(x: Tensor, shortcut: Tensor | None, residual: str, weight: Tensor, gamma: Tensor, beta: Tensor,
           bn_eps: float, weight_v: Tensor, weight_g: Tensor, stride: int, eps: float, reduce_weight: Tensor,
           reduce_gamma: Tensor, reduce_beta: Tensor, reduce_eps: float
           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole Min-block in training mode: ``shortcut + ReLU(BN(branch))``, the shortcut as
    ``residual`` says: "given" (``shortcut``, which gets the output's gradient), "input" (x
    itself), or "pooled" (the stride-2 block's 2x2 average pool of NCHW x with zero channels
    appended, computed in the kernel's passes, forward and backward).
    Returns the output, then the reduction's output and ``norm`` for the backward pass, the
    branch's bookkeeping (as ``min_block_branch``) and the reduction's batch mean and unbiased
    variance."""
    moments = x.new_zeros(x.shape[0], 3, reduce_weight.shape[0], dtype=torch.float64)  # zeros: maps without pixels
    reduced, *branch = _branch_forward(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight,
                                       moments)
    norm, reduce_mean, reduce_var = _reduction_norm(moments, reduced.shape[2] * reduced.shape[3], reduce_gamma,
                                                    reduce_beta, reduce_eps)
    out = kernels.reduce_norm_forward(reduced, norm, *_residual_operands(residual, x, shortcut))
    return out, reduced, norm, *branch, reduce_mean, reduce_var


def _through_branch(grad: Tensor, x: Tensor, mean_x: Tensor, gram: Tensor, weight: Tensor, gamma: Tensor,
                    beta: Tensor, bn_eps: float, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                    reduce_weight: Tensor, reduce_norm: tuple[Tensor, Tensor] | None = None,
                    addend: Tensor | None = None, pooled: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The branch's gradients from its input x and the moments the forward pass computed (through
    the reduction's BatchNorm and ReLU too with ``reduce_norm``; x's plus ``addend``, or plus the
    pooled shortcut's share of the gradient ``pooled``)."""
    fold = _fold(x, mean_x, gram, weight, gamma, beta, bn_eps)
    expansion = fold.expansion
    _, d_weight_v, d_weight_g, d_reduce = kernels.min_unit_backward(
        grad, None, weight_v, weight_g, stats, stride, True, expansion, reduce_weight, reduce_norm)
    d_in = x.shape[1]
    u_sum = expansion.sums[d_in]
    u_x = expansion.sums[:d_in].T - torch.outer(u_sum, mean_x)  # sum_m u_m (x_m - mu)^T
    d_weight, d_gamma, d_beta, cross, cross_bias = _fold_backward(fold, u_x, u_sum, x.dtype)
    # [x - mu] @ cross + cross_bias = x @ cross + (cross_bias - mu @ cross)
    shift = (cross_bias - _small_mm(cross.T, mean_x)).to(x.dtype)
    d_x = kernels.expansion_input_grad(expansion, cross.to(x.dtype), shift, maps=x.is_contiguous(), addend=addend,
                                       pooled=pooled)
    # Layouts as the fake implementation promises them: x's gradient as x, the rest contiguous.
    return (d_x, *(t.contiguous() for t in (d_weight, d_gamma, d_beta, d_weight_v, d_weight_g, d_reduce)))


@torch.library.custom_op("minnets::min_block_branch_backward", mutates_args=(), device_types="cpu")
def _branch_backward(grad: Tensor, x: Tensor, mean_x: Tensor, gram: Tensor, weight: Tensor, gamma: Tensor,
                     beta: Tensor, bn_eps: float, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                     reduce_weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The branch's gradients from its input x and the moments the forward pass computed."""
    return _through_branch(grad, x, mean_x, gram, weight, gamma, beta, bn_eps, weight_v, weight_g, stats, stride,
                           reduce_weight)


@torch.library.custom_op("minnets::min_block_backward", mutates_args=(), device_types="cpu")
def _block_backward(grad: Tensor, x: Tensor, residual: str, mean_x: Tensor, gram: Tensor, weight: Tensor,
                    gamma: Tensor, beta: Tensor, bn_eps: float, weight_v: Tensor, weight_g: Tensor, stats: Tensor,
                    stride: int, reduce_weight: Tensor, reduced: Tensor, norm: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``min_block``'s gradients: the branch's, then the reduction's BatchNorm gamma and beta.
    BatchNorm's backward, ``gain * (d - mean(d) - r_hat * mean(d * r_hat))``, needs two sums over
    the batch first; the branch's kernel then applies it a sample at a time, in the cache."""
    grad = grad.contiguous(memory_format=_layout(x))
    sums = kernels.reduce_norm_sums(grad, reduced, norm)  # sum d, sum d * r_hat
    count = max(reduced.numel() // max(reduced.shape[1], 1), 1)
    gain, inv_sigma = norm[0].double(), norm[3].double()
    coefficients = torch.cat([norm[:4], torch.stack([gain * sums[0], gain * inv_sigma * sums[1]]).div(count).to(norm)])
    branch = _through_branch(grad, x, mean_x, gram, weight, gamma, beta, bn_eps, weight_v, weight_g, stats, stride,
                             reduce_weight, (reduced, coefficients), *_residual_operands(residual, grad))
    return (*branch, sums[1].to(x.dtype), sums[0].to(x.dtype))


@torch.library.custom_op("minnets::min_block_branch_inference", mutates_args=(), device_types="cpu")
def _branch_inference(x: Tensor, weight: Tensor, bias: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int,
                      eps: float, reduce_weight: Tensor, reduce_bias: Tensor | None, reduce_relu: bool,
                      residual: str) -> Tensor:
    """The branch with the expansion's BatchNorm folded into ``weight`` and ``bias`` and, with a
    ``reduce_bias``, the reduction's into ``reduce_weight`` and ``reduce_bias``; with
    ``reduce_relu``, plus the shortcut where ``residual`` (as in ``min_block``) is "input" or
    "pooled" (for "given" the caller adds it)."""
    expansion = kernels.Expansion(x, weight.flatten(1), bias)
    out = kernels.min_unit_forward(None, weight_v, weight_g, stride, eps, reduce_weight, expansion,
                                   reduce_bias, reduce_relu, maps=x.is_contiguous())[0]
    if residual == "given":
        return out
    if not reduce_relu:
        raise ValueError("min_block_branch_inference adds the shortcut only after the reduction's ReLU")
    # The output is rectified already: ReLU(1 * out + 0) + shortcut is the sum, in one pass.
    identity = torch.zeros(6, out.shape[1], dtype=out.dtype)
    identity[0] = 1.0
    return kernels.reduce_norm_forward(out, identity, *_residual_operands(residual, x))


def _layout(x: Tensor) -> torch.memory_format:
    """The format of the branch's output and of x's gradient: NCHW for an NCHW input, else channels-last."""
    return torch.contiguous_format if x.is_contiguous() else _CHANNELS_LAST


def _fake_out(x: Tensor, weight_v: Tensor, stride: int, reduce_weight: Tensor) -> Tensor:
    n, _, h, w = x.shape
    k = weight_v.shape[-1]
    return torch.empty(n, reduce_weight.shape[0], _out_size(h, k, stride, k // 2), _out_size(w, k, stride, k // 2),
                       dtype=x.dtype, device=x.device, memory_format=_layout(x))


def _fake_branch(x: Tensor, weight: Tensor, weight_v: Tensor, stride: int, reduce_weight: Tensor) -> tuple:
    f, d_in = weight.shape[0], x.shape[1]
    return (_fake_out(x, weight_v, stride, reduce_weight), x.new_empty(f), x.new_empty(f),
            x.new_empty(x.shape[0], 4, f), x.new_empty(d_in, dtype=torch.float64),
            x.new_empty(d_in, d_in, dtype=torch.float64))


def _fake_branch_grads(x: Tensor, *parameters: Tensor) -> tuple:
    return (torch.empty_like(x, memory_format=_layout(x)),
            *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in parameters))


@_branch.register_fake
def _(x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight):
    return _fake_branch(x, weight, weight_v, stride, reduce_weight)


@_branch_backward.register_fake
def _(grad, x, mean_x, gram, weight, gamma, beta, bn_eps, weight_v, weight_g, stats, stride, reduce_weight):
    return _fake_branch_grads(x, weight, gamma, beta, weight_v, weight_g, reduce_weight)


@_branch_inference.register_fake
def _(x, weight, bias, weight_v, weight_g, stride, eps, reduce_weight, reduce_bias, reduce_relu, residual):
    return _fake_out(x, weight_v, stride, reduce_weight)


@_block.register_fake
def _(x, shortcut, residual, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight, reduce_gamma,
      reduce_beta, reduce_eps):
    d_out = reduce_weight.shape[0]
    _, *branch = _fake_branch(x, weight, weight_v, stride, reduce_weight)
    return (_fake_out(x, weight_v, stride, reduce_weight), _fake_out(x, weight_v, stride, reduce_weight),
            x.new_empty(6, d_out), *branch, x.new_empty(d_out), x.new_empty(d_out))


@_block_backward.register_fake
def _(grad, x, residual, mean_x, gram, weight, gamma, beta, bn_eps, weight_v, weight_g, stats, stride, reduce_weight,
      reduced, norm):
    d_out = reduce_weight.shape[0]
    return (*_fake_branch_grads(x, weight, gamma, beta, weight_v, weight_g, reduce_weight), x.new_empty(d_out),
            x.new_empty(d_out))


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, eps, reduce_weight = inputs
    ctx.save_for_backward(x, output[4], output[5], weight, gamma, beta, weight_v, weight_g, output[3], reduce_weight)
    ctx.bn_eps, ctx.stride = bn_eps, stride
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the outputs kept for backward


def _backward(ctx, grad: Tensor, *_unused: Tensor) -> tuple:
    if grad is None:  # the output itself was not used
        return (None,) * 10
    x, mean_x, gram, weight, gamma, beta, weight_v, weight_g, stats, reduce_weight = ctx.saved_tensors
    d = _branch_backward(grad, x, mean_x, gram, weight, gamma, beta, ctx.bn_eps, weight_v, weight_g, stats,
                         ctx.stride, reduce_weight)
    return d[0], d[1], d[2], d[3], None, d[4], d[5], None, None, d[6]


_branch.register_autograd(_backward, setup_context=_setup_context)


def _block_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, _, residual, weight, gamma, beta, bn_eps, weight_v, weight_g, stride, _, reduce_weight, *_ = inputs
    _, reduced, norm, _, _, stats, mean_x, gram, _, _ = output
    ctx.save_for_backward(x, mean_x, gram, weight, gamma, beta, weight_v, weight_g, stats, reduce_weight, reduced,
                          norm)
    ctx.bn_eps, ctx.stride, ctx.residual = bn_eps, stride, residual
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _block_backward_rule(ctx, grad: Tensor, *_unused: Tensor) -> tuple:
    if grad is None:
        return (None,) * 15
    x, mean_x, gram, weight, gamma, beta, weight_v, weight_g, stats, reduce_weight, reduced, norm = ctx.saved_tensors
    d = _block_backward(grad, x, ctx.residual, mean_x, gram, weight, gamma, beta, ctx.bn_eps, weight_v, weight_g,
                        stats, ctx.stride, reduce_weight, reduced, norm)
    d_shortcut = grad if ctx.residual == "given" else None
    return d[0], d_shortcut, None, d[1], d[2], d[3], None, d[4], d[5], None, None, d[6], d[7], d[8], None


_block.register_autograd(_block_backward_rule, setup_context=_block_setup_context)


def _is_conv1x1(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None)


def _foldable(seq: nn.Module) -> bool:
    """Whether ``seq`` is exactly a bias-free 1x1 conv, an affine BatchNorm2d and a ReLU."""
    return (isinstance(seq, nn.Sequential) and len(seq) == 3 and _is_conv1x1(seq[0])
            and type(seq[1]) is nn.BatchNorm2d and seq[1].affine and type(seq[2]) is nn.ReLU)


def _applies(block: nn.Module, x: Tensor) -> bool:
    unit = block.min_unit
    return (x.device.type == "cpu" and unit.operator.name == "min" and not _functorch_wrapped(x)
            and has_fast_kernel(x, unit.filter_v.weight, unit.padding) and _foldable(block.expand)
            and isinstance(block.reduce, nn.Sequential) and len(block.reduce) > 0 and _is_conv1x1(block.reduce[0])
            and all(p.dtype == torch.float32 for p in block.parameters()))


def _functorch_wrapped(x: Tensor) -> bool:
    """Inside ``vmap``/``grad`` the block runs its modules, which those transforms know."""
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


class _ChannelsLastGradient(torch.autograd.Function):
    """Identity forward; backward hands the gradient on in channels-last memory format.

    Where a projection block's channels-last branch and shortcut meet its NCHW output, the
    gradient comes back NCHW; oneDNN's backward passes of channels-last convs and BatchNorms
    were measured 20 to 45 % slower with it than after this one copy.
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
    given = x
    if block.shortcut.projection is not None:
        # The projection's 1x1 conv is faster on a channels-last copy, which the branch reads too.
        x = x.contiguous(memory_format=_CHANNELS_LAST)
    filters = (unit.filter_v.weight, unit.filter_g.weight, unit.stride, unit.eps)
    residual = _residual(block.shortcut, x)
    if (bn.training or bn.running_mean is None) and _batch_statistics(reduce):
        norm = reduce[1]
        shortcut = block.shortcut(x) if residual == "given" else None
        total, _, _, mean, var, _, _, _, reduce_mean, reduce_var = _block(
            x, shortcut, residual, conv.weight, bn.weight, bn.bias, bn.eps, *filters, reduce[0].weight, norm.weight,
            norm.bias, norm.eps)
        if bn.training:
            _running_update(bn, mean, var)
        if norm.training:
            _running_update(norm, reduce_mean, reduce_var)
    else:
        if bn.training or bn.running_mean is None:
            out, mean, var, *_ = _branch(x, conv.weight, bn.weight, bn.bias, bn.eps, *filters, reduce[0].weight)
            if bn.training:
                _running_update(bn, mean, var)
            branch = reduce[1:](out)
            residual = "given"
        elif not torch.is_grad_enabled():
            expand = _running_fold(conv, bn)
            folded = _evaluation_fold(reduce)
            if folded is not None:
                branch = _branch_inference(x, *expand, *filters, *folded, True, residual)
            else:
                branch = reduce[1:](_branch_inference(x, *expand, *filters, reduce[0].weight, None, False, "given"))
                residual = "given"
        else:
            return None
        total = block.shortcut(x) + branch if residual == "given" else branch  # both in x's format
    return total if x is given else _ChannelsLastGradient.apply(total).contiguous()


def _residual(shortcut: nn.Module, x: Tensor) -> str:
    """How ``minnets::min_block`` adds ``shortcut(x)``: itself where the shortcut says it is the
    identity or the stride-2 average pool without projection (on NCHW x), else as given."""
    if getattr(shortcut, "is_identity", False):
        return "input"
    if getattr(shortcut, "is_pooling", False) and x.is_contiguous():
        return "pooled"
    return "given"


def _batch_statistics(reduce: nn.Module) -> bool:
    """Whether ``reduce`` is exactly conv, BatchNorm normalising with batch statistics, ReLU: then
    the whole block runs as ``minnets::min_block``."""
    return _foldable(reduce) and (reduce[1].training or reduce[1].running_mean is None)


def _running_fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """A bias-free 1x1 conv followed by a BatchNorm with running statistics, as one conv's
    (weight, bias)."""
    gain = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return conv.weight * gain.view(-1, 1, 1, 1), bn.bias - bn.running_mean * gain


def _evaluation_fold(reduce: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The reduction's conv and BatchNorm folded (:func:`_running_fold`) when ``reduce`` is
    exactly conv, BatchNorm in evaluation, ReLU; else None."""
    if not _foldable(reduce) or reduce[1].training or reduce[1].running_mean is None:
        return None
    return _running_fold(reduce[0], reduce[1])
