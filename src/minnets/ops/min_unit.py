r"""The Min-unit as one registered PyTorch operator, with an implementation per device.

``minnets::min_unit(x, weight_v, weight_g, stride, padding, eps) -> (out, stats)`` computes
paper Eq. 2 for the minimum,

    out = min(ReLU(IN(v)), ReLU(IN(g))),   v = weight_v * x,  g = weight_g * x  (depthwise),

and ``stats`` ``(N, 4, C)``: mean(v), 1/sqrt(var(v) + eps), mean(g), 1/sqrt(var(g) + eps) per
sample and channel (biased variance, as instance norm normalises with), what the backward
operator ``minnets::min_unit_backward`` needs to recompute the rest from ``x``. Both are
``torch.library.custom_op`` operators with a fake (meta) implementation, so ``torch.compile``
traces them without a graph break, an autograd formula, and a ``vmap`` rule (a stack of models
becomes a stack of channels: the unit is depthwise, every channel independent).

Implementations: on the CPU the native C kernel (:mod:`minnets.kernels`) for float32 maps and
"same" padding; on CUDA the Triton kernels (:mod:`minnets.ops.triton_kernels`) when Triton is
installed; everywhere else, and as the tests' reference, :func:`composite_unit`, plain PyTorch.
Outputs are channels-last (as the kernels write them), input gradients too.

:func:`and_unit` is what :class:`minnets.MinUnit` calls: the operator where a fast kernel runs
(the minimum, on a device that has one), else :func:`composite_unit` inline, which
``torch.compile``'s Inductor fuses (instance norm, ReLU and the AND operator in one loop over a
channels-last map, what ``F.instance_norm`` prevents) and which takes any AND operator.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from minnets import kernels
from minnets.ops.operators import AndOperator, get_operator

__all__ = ["and_unit", "composite_unit", "has_fast_kernel", "instance_norm", "min_unit", "min_unit_backward",
           "use_triton"]

_MIN = get_operator("min")
_CHANNELS_LAST = torch.channels_last


def instance_norm(v: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(v - mean) / sqrt(var + eps)`` per sample and channel, and that mean and scale.

    Two passes (the mean, then the mean square of the centred values), as accurate as
    ``F.instance_norm``; written out so that it keeps channels-last and fuses with what follows.
    """
    mean = v.mean(dim=(2, 3), keepdim=True)
    centred = v - mean
    scale = torch.rsqrt(centred.square().mean(dim=(2, 3), keepdim=True) + eps)
    return centred * scale, mean, scale


def _normalised(x: Tensor, weight: Tensor, stride: int, padding: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`instance_norm` of the depthwise filter response ``weight * x``."""
    return instance_norm(F.conv2d(x, weight, stride=stride, padding=padding, groups=weight.shape[0]), eps)


def composite_unit(x: Tensor, weight_v: Tensor, weight_g: Tensor | None, stride: int, padding: int, eps: float,
                   operator: AndOperator = _MIN) -> Tensor:
    """The unit in plain PyTorch: ``operator(ReLU(IN(v * x)), ReLU(IN(g * x)))`` (paper Eq. 2)."""
    def response(weight: Tensor) -> Tensor:
        return F.relu(_normalised(x, weight, stride, padding, eps)[0])

    return operator(response(weight_v), None if weight_g is None else response(weight_g))


def _composite_forward(x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int, eps: float
                       ) -> tuple[Tensor, Tensor]:
    v, mean_v, scale_v = _normalised(x, weight_v, stride, padding, eps)
    g, mean_g, scale_g = _normalised(x, weight_g, stride, padding, eps)
    out = torch.minimum(v, g).clamp_min(0)
    stats = torch.stack([t.flatten(1) for t in (mean_v, scale_v, mean_g, scale_g)], dim=1)
    return out.contiguous(memory_format=_CHANNELS_LAST), stats.float()


def _composite_backward(grad: Tensor, x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int,
                        eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The closed-form backward pass (an operator's implementation runs below autograd).

    The gradient follows PyTorch's conventions for ``relu`` and ``minimum``: nothing where the
    output is 0, all of it to the smaller response, half to each on a tie. Instance norm's
    backward is ``scale * (d - mean(d) - y * mean(d * y))`` for the gradient ``d`` at its output ``y``.
    """
    a, _, scale_v = _normalised(x, weight_v, stride, padding, eps)
    b, _, scale_g = _normalised(x, weight_g, stride, padding, eps)
    grad = torch.where(torch.minimum(a, b) > 0, grad, 0)
    side = torch.sign(b - a)  # +1 where a is the minimum, -1 where b is, 0 on a tie

    def norm_backward(d: Tensor, y: Tensor, scale: Tensor) -> Tensor:
        dims = (2, 3)
        return scale * (d - d.mean(dim=dims, keepdim=True) - y * (d * y).mean(dim=dims, keepdim=True))

    def conv_backward(d: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        grads = torch.ops.aten.convolution_backward(d, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False,
                                                    [0, 0], weight.shape[0], [True, True, False])
        return grads[0], grads[1]

    grad_x_v, grad_v = conv_backward(norm_backward(grad * (1 + side) * 0.5, a, scale_v), weight_v)
    grad_x_g, grad_g = conv_backward(norm_backward(grad * (1 - side) * 0.5, b, scale_g), weight_g)
    return (grad_x_v + grad_x_g).contiguous(memory_format=_CHANNELS_LAST), grad_v.contiguous(), grad_g.contiguous()


def _native(x: Tensor, weight_v: Tensor, weight_g: Tensor, padding: int) -> bool:
    """Whether the native CPU kernel takes this input: float32, "same" padding, k <= 7."""
    return padding == weight_v.shape[-1] // 2 and kernels.usable(x, weight_v, weight_g)


_HAS_TRITON = importlib.util.find_spec("triton") is not None
_triton_enabled = True


def _triton_usable() -> bool:
    return _HAS_TRITON and _triton_enabled


def _triton_takes(x: Tensor) -> bool:
    """Whether the Triton kernels take these (CUDA) maps: float32 or bfloat16, and not switched off."""
    return x.dtype in (torch.float32, torch.bfloat16) and _triton_usable()


@contextlib.contextmanager
def use_triton(enabled: bool) -> Iterator[None]:
    """Turn the Triton kernels off (or back on) inside a ``with`` block, like
    :func:`minnets.kernels.use_native`: CUDA Min-units then take the composite path (what
    ``scripts/gpu_check.py`` compares the kernels against)."""
    global _triton_enabled
    before, _triton_enabled = _triton_enabled, enabled
    try:
        yield
    finally:
        _triton_enabled = before


_TRITON = None


def _triton():
    """The Triton kernels module, imported on first use (Triton is the optional ``gpu`` extra)."""
    global _TRITON
    if _TRITON is None:
        from minnets.ops import triton_kernels

        _TRITON = triton_kernels
    return _TRITON


@torch.library.custom_op("minnets::min_unit", mutates_args=())
def min_unit(x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int, eps: float
             ) -> tuple[Tensor, Tensor]:
    """The Min-unit's output and statistics (see the module docstring); the composite implementation."""
    return _composite_forward(x, weight_v, weight_g, stride, padding, eps)


@torch.library.custom_op("minnets::min_unit_backward", mutates_args=())
def min_unit_backward(grad: Tensor, x: Tensor, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                      padding: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``x``, ``weight_v`` and ``weight_g``; the composite implementation recomputes
    the forward pass (``stats`` is for the kernels)."""
    return _composite_backward(grad, x, weight_v, weight_g, stride, padding, eps)


@min_unit.register_kernel("cpu")
def _min_unit_cpu(x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int, eps: float
                  ) -> tuple[Tensor, Tensor]:
    x = x.contiguous(memory_format=_CHANNELS_LAST)
    if _native(x, weight_v, weight_g, padding):
        return kernels.min_unit_forward(x, weight_v, weight_g, stride, eps)
    return _composite_forward(x, weight_v, weight_g, stride, padding, eps)


@min_unit_backward.register_kernel("cpu")
def _min_unit_backward_cpu(grad: Tensor, x: Tensor, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                           padding: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    x = x.contiguous(memory_format=_CHANNELS_LAST)
    if _native(x, weight_v, weight_g, padding) and grad.dtype == torch.float32:
        grad_x, grad_v, grad_g, _ = kernels.min_unit_backward(grad, x, weight_v, weight_g, stats, stride, False)
        return grad_x, grad_v.contiguous(), grad_g.contiguous()
    return _composite_backward(grad, x, weight_v, weight_g, stride, padding, eps)


@min_unit.register_kernel("cuda")
def _min_unit_cuda(x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int, eps: float
                   ) -> tuple[Tensor, Tensor]:
    if _triton_takes(x):
        return _triton().min_unit_forward(x, weight_v, weight_g, stride, padding, eps)  # channels-last
    return _composite_forward(x, weight_v, weight_g, stride, padding, eps)


@min_unit_backward.register_kernel("cuda")
def _min_unit_backward_cuda(grad: Tensor, x: Tensor, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                            padding: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    if _triton_takes(x):
        grad_x, grad_v, grad_g = _triton().min_unit_backward(grad, x, weight_v, weight_g, stats, stride, padding, eps)
        return grad_x, grad_v.contiguous(), grad_g.contiguous()  # grad_x is channels-last
    return _composite_backward(grad, x, weight_v, weight_g, stride, padding, eps)


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


@min_unit.register_fake
def _min_unit_fake(x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int, eps: float
                   ) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    k = weight_v.shape[-1]
    out = torch.empty(n, c, _out_size(h, k, stride, padding), _out_size(w, k, stride, padding),
                      dtype=x.dtype, device=x.device, memory_format=_CHANNELS_LAST)
    return out, x.new_empty(n, 4, c, dtype=torch.float32)


@min_unit_backward.register_fake
def _min_unit_backward_fake(grad: Tensor, x: Tensor, weight_v: Tensor, weight_g: Tensor, stats: Tensor, stride: int,
                            padding: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(x, memory_format=_CHANNELS_LAST),
            torch.empty_like(weight_v, memory_format=torch.contiguous_format),
            torch.empty_like(weight_g, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight_v, weight_g, stride, padding, eps = inputs
    ctx.save_for_backward(x, weight_v, weight_g, output[1])
    ctx.geometry = stride, padding, eps
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the statistics


def _backward(ctx, grad: Tensor, _grad_stats: Tensor | None) -> tuple:
    if grad is None:  # the output itself was not used
        return None, None, None, None, None, None
    x, weight_v, weight_g, stats = ctx.saved_tensors
    grads = min_unit_backward(grad, x, weight_v, weight_g, stats, *ctx.geometry)
    return (*grads, None, None, None)


min_unit.register_autograd(_backward, setup_context=_setup_context)


def _stack_maps(x: Tensor, dim: int | None, size: int) -> Tensor:
    """Maps of ``size`` models ``(B, N, C, H, W)`` (``dim`` the models' axis, None: shared) as ``(N, B*C, H, W)``."""
    x = x.expand(size, *x.shape) if dim is None else x.movedim(dim, 0)
    return x.transpose(0, 1).flatten(1, 2)


def _stack_filters(weight: Tensor, dim: int | None, size: int) -> Tensor:
    """Filter banks of ``size`` models ``(B, C, 1, k, k)`` as ``(B*C, 1, k, k)``."""
    weight = weight.expand(size, *weight.shape) if dim is None else weight.movedim(dim, 0)
    return weight.flatten(0, 1)


@min_unit.register_vmap
def _min_unit_vmap(info, in_dims: tuple, x: Tensor, weight_v: Tensor, weight_g: Tensor, stride: int, padding: int,
                   eps: float) -> tuple:
    """Models stacked by ``vmap`` (``torch.func.stack_module_state``) are stacked channels."""
    size = info.batch_size
    x_dim, v_dim, g_dim = in_dims[:3]
    c = weight_v.shape[0] if v_dim is None else weight_v.shape[1 if v_dim == 0 else 0]
    if v_dim is None and g_dim is None:  # one model, many inputs: a bigger batch
        out, stats = min_unit(x.movedim(x_dim, 0).flatten(0, 1), weight_v, weight_g, stride, padding, eps)
        return (out.unflatten(0, (size, -1)), stats.unflatten(0, (size, -1))), (0, 0)
    out, stats = min_unit(_stack_maps(x, x_dim, size), _stack_filters(weight_v, v_dim, size),
                          _stack_filters(weight_g, g_dim, size), stride, padding, eps)
    out = out.unflatten(1, (size, c)).transpose(0, 1)  # (B, N, C, H', W')
    stats = stats.unflatten(2, (size, c)).permute(2, 0, 1, 3)  # (B, N, 4, C)
    return (out, stats), (0, 0)


def has_fast_kernel(x: Tensor, weight_v: Tensor, padding: int) -> bool:
    """Whether :func:`min_unit` runs a kernel of its own for this input (native CPU or Triton)."""
    if x.device.type == "cpu":
        return (x.dtype == weight_v.dtype == torch.float32 and padding == weight_v.shape[-1] // 2
                and weight_v.shape[-1] <= kernels.MAX_KERNEL and kernels.enabled())
    return x.device.type == "cuda" and _triton_takes(x)


def and_unit(x: Tensor, weight_v: Tensor, weight_g: Tensor | None, stride: int, padding: int, eps: float,
             operator: AndOperator) -> Tensor:
    """``operator(ReLU(IN(v * x)), ReLU(IN(g * x)))``: the registered operator where a kernel of
    its own runs (the minimum), else the composite."""
    if operator.name == "min" and weight_g is not None and has_fast_kernel(x, weight_v, padding):
        return min_unit(x, weight_v, weight_g, stride, padding, eps)[0]
    return composite_unit(x, weight_v, weight_g, stride, padding, eps, operator)
