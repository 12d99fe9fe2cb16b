r"""The Min-unit on CUDA GPUs, forward and backward, as Triton kernels.

The unit (paper Eq. 2) filters every channel ``m`` of a map with two depthwise kernels and
keeps, per pixel, the smaller of the two rectified, instance-normalised responses::

    out[n, m] = min( ReLU(IN(v_m * x[n, m])), ReLU(IN(g_m * x[n, m])) )

IN normalises each sample and channel by its spatial mean and biased variance (``eps`` inside
the square root, no affine part), as ``F.instance_norm`` does.

Interface (plain functions; :mod:`minnets.ops` registers them as the CUDA implementation of
its Min-unit operator)::

    min_unit_forward(x, weight_v, weight_g, stride, padding, eps) -> (out, stats)
    min_unit_backward(grad_out, x, weight_v, weight_g, stats, stride, padding, eps)
        -> (grad_x, grad_v, grad_g)

- ``x``: ``(N, C, H, W)``, float32 or bfloat16, any memory format (taken to channels-last);
  ``weight_v``, ``weight_g``: ``(C, 1, k, k)`` depthwise filters, any float dtype.
- ``out``: ``(N, C, H_out, W_out)`` in channels-last memory, ``x``'s dtype, with
  ``H_out = (H + 2 * padding - k) // stride + 1`` (likewise ``W_out``; the layers use
  ``padding = k // 2``).
- ``stats``: ``(N, 4, C)`` float32: mean(v), 1/sqrt(var(v) + eps), mean(g), 1/sqrt(var(g) + eps)
  per sample, the layout of the native CPU kernel (:mod:`minnets.kernels`).
- ``grad_x`` in ``x``'s dtype and memory format channels-last; ``grad_v``, ``grad_g`` in the
  filters' dtype. Gradients follow PyTorch's conventions for ``minimum`` and ``relu``: none
  where the output is 0, all of it to the smaller response, half to each on a tie.

All arithmetic is float32, whatever the storage dtype.

Design. Instance norm needs a reduction over all ``H_out * W_out`` pixels of a sample and
channel before any output can be written. One program handles one sample and a block of
``BLOCK_C`` channels and loops over the pixels twice: the first loop computes both filter
responses tile by tile and combines per-tile means and squared deviations (the pairwise
update of Chan, Golub and LeVeque, 1979, as accurate as two passes over stored values); the second recomputes the
responses and writes the output. So the reduction never leaves the program (no atomics, no
second launch, bit-for-bit deterministic), the filter responses are never stored (recomputing
them costs 2 k^2 multiply-adds an element; storing and re-reading them would cost two
full-size maps of memory traffic each way), and the program's slab of ``x`` that the second loop
re-reads (at most 32 x 32 pixels x 32 channels x 4 B = 128 KiB at the paper's sizes) is still in
the L2 cache. Tiles are ``(BLOCK_P pixels, BLOCK_C channels)``, channels fastest, so in
channels-last storage every load and store is contiguous along the channels. The price is
parallelism: ``N * ceil(C / BLOCK_C)`` programs, 128 to 512 for the ResNets' units at batch
128, but only 64 for the DenseNets' (24 channels at batch 64), fewer than an A100 or H100 has
multiprocessors; splitting the pixels over programs would need a second reduction step.

The backward pass recomputes the responses as the forward pass did (as the CPU kernel does):
``_backward_norm_kernel`` loops twice per sample and channel block, first for the two sums
instance norm's gradient needs (``sum(da)`` and ``sum(da * a)`` per filter), then writing the
gradients at the two filter outputs, ``dv`` and ``dg``, to float32 scratch maps. Those feed
two fully parallel kernels: ``_weight_grad_kernel`` (one program per tap, sample and channel
block, accumulating ``dv * x`` in a register tile and reducing once at the end; the per-sample
sums are added over the batch afterwards, in a fixed order) and ``_input_grad_kernel`` (the
transposed depthwise convolution, gathered per input pixel, so no atomics). The scratch maps
are the price of a scatter-free backward: ``x``'s gradient at one pixel needs ``dv`` at up to
k^2 output pixels, which the program that computed them does not own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minnets import kernels
from minnets.ops.min_unit import _out_size

__all__ = ["COMPILE_OPTIONS", "min_unit_forward", "min_unit_backward", "launch_config"]

# A (pixels x channels) tile of 1024 elements over 8 warps is 4 per thread: one 16-byte access
# per load along the channels, and at most 128 registers, no spills, in every kernel for sm_80
# and sm_90 (tests/test_triton.py compiles them and fails on spills). Tiles of 2048 elements
# spilled; 1024 over 4 warps needed up to 246 registers. 32 channels per block keep a pixel's
# row one 128-byte line and give 4 programs per sample at the ResNets' widest (128 channels).
TILE_ELEMENTS = 1024
MAX_BLOCK_C = 32
# Launch options of every kernel; fused multiply-adds for the filter taps, as in the CPU kernel.
COMPILE_OPTIONS = {"num_warps": 8, "enable_fp_fusion": True}


@triton.jit
def _responses(x_base, taps_v_ptr, taps_g_ptr, oy, ox, pixel_ok, c, c_ok, H, W, C,
               K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Both depthwise filter responses ``(v, g)`` at output pixels ``(oy, ox)``, float32."""
    v = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    g = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(K):
        iy = oy * STRIDE - PAD + i
        row_ok = pixel_ok & (iy >= 0) & (iy < H)
        for j in tl.static_range(K):
            ix = ox * STRIDE - PAD + j
            ok = row_ok & (ix >= 0) & (ix < W)
            offsets = (iy * W + ix) * C
            tile = tl.load(x_base + offsets[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :],
                           other=0.0).to(tl.float32)
            w_v = tl.load(taps_v_ptr + (i * K + j) * C + c, mask=c_ok, other=0.0)
            w_g = tl.load(taps_g_ptr + (i * K + j) * C + c, mask=c_ok, other=0.0)
            v += tile * w_v[None, :]
            g += tile * w_g[None, :]
    return v, g


@triton.jit
def _tile(start, Wo, P, BLOCK_P: tl.constexpr):
    """Output pixels ``start .. start + BLOCK_P``: linear index, row, column and validity."""
    p = start + tl.arange(0, BLOCK_P)
    return p, p // Wo, p % Wo, p < P


@triton.jit
def _sample_block(x_ptr, H, W, C, Ho, Wo, BLOCK_C: tl.constexpr):
    """This program's sample ``n`` and block of channels ``c`` (grid ``(N, ceil(C / BLOCK_C))``):
    ``n``, ``c``, ``c < C``, the output's pixel count and the sample's ``x``."""
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c, c < C, Ho * Wo, x_ptr + n.to(tl.int64) * H * W * C


@triton.jit
def _normalised(x_base, taps_v_ptr, taps_g_ptr, oy, ox, pixel_ok, c, c_ok, H, W, C,
                mean_v, rstd_v, mean_g, rstd_g,
                K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Both filter responses at output pixels ``(oy, ox)``, instance-normalised: ``(a, b)``."""
    v, g = _responses(x_base, taps_v_ptr, taps_g_ptr, oy, ox, pixel_ok, c, c_ok, H, W, C,
                      K, STRIDE, PAD, BLOCK_P, BLOCK_C)
    return (v - mean_v[None, :]) * rstd_v[None, :], (g - mean_g[None, :]) * rstd_g[None, :]


@triton.jit
def _forward_kernel(x_ptr, taps_v_ptr, taps_g_ptr, out_ptr, stats_ptr, H, W, C, Ho, Wo, eps,
                    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, c, c_ok, P, x_base = _sample_block(x_ptr, H, W, C, Ho, Wo, BLOCK_C)
    mean_v = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2_v = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        p, oy, ox, p_ok = _tile(start, Wo, P, BLOCK_P)
        v, g = _responses(x_base, taps_v_ptr, taps_g_ptr, oy, ox, p_ok, c, c_ok, H, W, C,
                          K, STRIDE, PAD, BLOCK_P, BLOCK_C)
        # Chan's update: merge this tile's count, mean and squared deviations into the totals.
        seen = start * 1.0  # as float32 (a Python int in the interpreter)
        count = tl.minimum(P - start, BLOCK_P).to(tl.float32)
        total = seen + count
        tile_mean_v = tl.sum(v, axis=0) / count  # rows past P are zeros: they add nothing
        tile_mean_g = tl.sum(g, axis=0) / count
        dev_v = tl.where(p_ok[:, None], v - tile_mean_v[None, :], 0.0)
        dev_g = tl.where(p_ok[:, None], g - tile_mean_g[None, :], 0.0)
        delta_v = tile_mean_v - mean_v
        delta_g = tile_mean_g - mean_g
        mean_v += delta_v * (count / total)
        mean_g += delta_g * (count / total)
        m2_v += tl.sum(dev_v * dev_v, axis=0) + delta_v * delta_v * (seen * count / total)
        m2_g += tl.sum(dev_g * dev_g, axis=0) + delta_g * delta_g * (seen * count / total)
    rstd_v = 1.0 / tl.sqrt_rn(m2_v / P + eps)
    rstd_g = 1.0 / tl.sqrt_rn(m2_g / P + eps)
    stats = stats_ptr + n * 4 * C + c
    tl.store(stats, mean_v, mask=c_ok)
    tl.store(stats + C, rstd_v, mask=c_ok)
    tl.store(stats + 2 * C, mean_g, mask=c_ok)
    tl.store(stats + 3 * C, rstd_g, mask=c_ok)

    out_base = out_ptr + n.to(tl.int64) * P * C
    for start in range(0, P, BLOCK_P):
        p, oy, ox, p_ok = _tile(start, Wo, P, BLOCK_P)
        a, b = _normalised(x_base, taps_v_ptr, taps_g_ptr, oy, ox, p_ok, c, c_ok, H, W, C,
                           mean_v, rstd_v, mean_g, rstd_g, K, STRIDE, PAD, BLOCK_P, BLOCK_C)
        out = tl.maximum(tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL), 0.0,
                         propagate_nan=tl.PropagateNan.ALL)
        tl.store(out_base + p[:, None] * C + c[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _routed(x_base, taps_v_ptr, taps_g_ptr, grad_base, oy, ox, p, p_ok, c, c_ok, H, W, C,
            mean_v, rstd_v, mean_g, rstd_g,
            K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The normalised responses ``a``, ``b`` and the output gradient each receives through the
    ReLU and the minimum (none where the output is 0, half each on a tie)."""
    a, b = _normalised(x_base, taps_v_ptr, taps_g_ptr, oy, ox, p_ok, c, c_ok, H, W, C,
                       mean_v, rstd_v, mean_g, rstd_g, K, STRIDE, PAD, BLOCK_P, BLOCK_C)
    grad = tl.load(grad_base + p[:, None] * C + c[None, :], mask=p_ok[:, None] & c_ok[None, :],
                   other=0.0).to(tl.float32)
    grad = tl.where(tl.minimum(a, b) > 0.0, grad, 0.0)
    share_a = tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))
    return a, b, grad * share_a, grad * (1.0 - share_a)


@triton.jit
def _backward_norm_kernel(grad_ptr, x_ptr, taps_v_ptr, taps_g_ptr, stats_ptr, dv_ptr, dg_ptr,
                          H, W, C, Ho, Wo,
                          K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, c, c_ok, P, x_base = _sample_block(x_ptr, H, W, C, Ho, Wo, BLOCK_C)
    grad_base = grad_ptr + n.to(tl.int64) * P * C
    stats = stats_ptr + n * 4 * C + c
    mean_v = tl.load(stats, mask=c_ok, other=0.0)
    rstd_v = tl.load(stats + C, mask=c_ok, other=0.0)
    mean_g = tl.load(stats + 2 * C, mask=c_ok, other=0.0)
    rstd_g = tl.load(stats + 3 * C, mask=c_ok, other=0.0)
    sum_da = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_da_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sum_db_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        p, oy, ox, p_ok = _tile(start, Wo, P, BLOCK_P)
        a, b, da, db = _routed(x_base, taps_v_ptr, taps_g_ptr, grad_base, oy, ox, p, p_ok, c, c_ok, H, W, C,
                               mean_v, rstd_v, mean_g, rstd_g, K, STRIDE, PAD, BLOCK_P, BLOCK_C)
        sum_da += tl.sum(da, axis=0)
        sum_db += tl.sum(db, axis=0)
        sum_da_a += tl.sum(da * a, axis=0)
        sum_db_b += tl.sum(db * b, axis=0)
    mean_da, mean_da_a = sum_da / P, sum_da_a / P
    mean_db, mean_db_b = sum_db / P, sum_db_b / P

    scratch = n.to(tl.int64) * P * C
    for start in range(0, P, BLOCK_P):
        p, oy, ox, p_ok = _tile(start, Wo, P, BLOCK_P)
        a, b, da, db = _routed(x_base, taps_v_ptr, taps_g_ptr, grad_base, oy, ox, p, p_ok, c, c_ok, H, W, C,
                               mean_v, rstd_v, mean_g, rstd_g, K, STRIDE, PAD, BLOCK_P, BLOCK_C)
        # Instance norm's backward: rstd * (da - mean(da) - a * mean(da * a)).
        dv = rstd_v[None, :] * (da - mean_da[None, :] - a * mean_da_a[None, :])
        dg = rstd_g[None, :] * (db - mean_db[None, :] - b * mean_db_b[None, :])
        offsets = scratch + p[:, None] * C + c[None, :]
        ok = p_ok[:, None] & c_ok[None, :]
        tl.store(dv_ptr + offsets, dv, mask=ok)
        tl.store(dg_ptr + offsets, dg, mask=ok)


@triton.jit
def _weight_grad_kernel(x_ptr, dv_ptr, dg_ptr, partial_ptr, H, W, C, Ho, Wo,
                        K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # The tap varies fastest over programs, so the k^2 programs reading one sample's slab run
    # together and share it through the L2 cache.
    tap = tl.program_id(0)
    n = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    P = Ho * Wo
    i = tap // K
    j = tap % K
    x_base = x_ptr + n.to(tl.int64) * H * W * C
    scratch = n.to(tl.int64) * P * C
    acc_v = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        p, oy, ox, p_ok = _tile(start, Wo, P, BLOCK_P)
        iy = oy * STRIDE - PAD + i
        ix = ox * STRIDE - PAD + j
        ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        tile = tl.load(x_base + ((iy * W + ix) * C)[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :],
                       other=0.0).to(tl.float32)
        offsets = scratch + p[:, None] * C + c[None, :]
        grads_ok = p_ok[:, None] & c_ok[None, :]
        acc_v += tl.load(dv_ptr + offsets, mask=grads_ok, other=0.0) * tile
        acc_g += tl.load(dg_ptr + offsets, mask=grads_ok, other=0.0) * tile
    # partial: (N, 2, K*K, C), per sample; summed over the batch by the caller.
    partial = partial_ptr + (n * 2 * K * K + tap) * C + c
    tl.store(partial, tl.sum(acc_v, axis=0), mask=c_ok)
    tl.store(partial + K * K * C, tl.sum(acc_g, axis=0), mask=c_ok)


@triton.jit
def _input_grad_kernel(dv_ptr, dg_ptr, taps_v_ptr, taps_g_ptr, grad_x_ptr, H, W, C, Ho, Wo,
                       K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # x[y, x] feeds output (oy, ox) through tap (i, j) where oy * STRIDE = y + PAD - i (and
    # likewise for the columns): gather those outputs' gradients for every tap.
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2)
    q_ok = q < H * W
    c_ok = c < C
    y = q // W
    x = q % W
    scratch = n.to(tl.int64) * Ho * Wo * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(K):
        ty = y + PAD - i
        sy = tl.maximum(ty, 0)  # keeps % and // off negative numbers (masked out anyway)
        oy = sy // STRIDE
        row_ok = q_ok & (ty >= 0) & (sy % STRIDE == 0) & (oy < Ho)
        for j in tl.static_range(K):
            tx = x + PAD - j
            sx = tl.maximum(tx, 0)
            ox = sx // STRIDE
            ok = row_ok & (tx >= 0) & (sx % STRIDE == 0) & (ox < Wo)
            offsets = scratch + ((oy * Wo + ox) * C)[:, None] + c[None, :]
            mask = ok[:, None] & c_ok[None, :]
            w_v = tl.load(taps_v_ptr + (i * K + j) * C + c, mask=c_ok, other=0.0)
            w_g = tl.load(taps_g_ptr + (i * K + j) * C + c, mask=c_ok, other=0.0)
            acc += tl.load(dv_ptr + offsets, mask=mask, other=0.0) * w_v[None, :]
            acc += tl.load(dg_ptr + offsets, mask=mask, other=0.0) * w_g[None, :]
    out = grad_x_ptr + n.to(tl.int64) * H * W * C + q[:, None] * C + c[None, :]
    tl.store(out, acc.to(grad_x_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])


def launch_config(channels: int, kernel_size: int, stride: int, padding: int,
                  block_pixels: int | None = None) -> dict[str, int]:
    """The compile-time constants of every kernel for this unit: filter size, stride, padding
    and the tile, ``BLOCK_C`` channels (a power of two, at most 32) by ``BLOCK_P`` pixels
    (``TILE_ELEMENTS / BLOCK_C`` unless ``block_pixels`` is given)."""
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(max(channels, 1)))
    block_p = TILE_ELEMENTS // block_c if block_pixels is None else block_pixels
    if block_p < 1 or block_p & (block_p - 1):
        raise ValueError(f"block_pixels must be a power of two, got {block_p}")
    return dict(K=kernel_size, STRIDE=stride, PAD=padding, BLOCK_P=block_p, BLOCK_C=block_c)


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise ``(C, 1, k, k)`` filter bank as the ``(k*k, C)`` float32 array the kernels read
    (the native CPU kernel's layout)."""
    return kernels._taps(weight).float()


def _check(x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor, stride: int) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"the Triton Min-unit takes float32 or bfloat16 maps, got {x.dtype}")
    c = x.shape[1]
    for weight in (weight_v, weight_g):
        if weight.dim() != 4 or weight.shape[:2] != (c, 1) or weight.shape[2] != weight.shape[3]:
            raise ValueError(f"depthwise filters must be ({c}, 1, k, k), got {tuple(weight.shape)}")
    if weight_v.shape != weight_g.shape:
        raise ValueError(f"filters differ in shape: {tuple(weight_v.shape)} and {tuple(weight_g.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")


def min_unit_forward(x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor, stride: int,
                     padding: int, eps: float, *, block_pixels: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit's output (channels-last, ``x``'s dtype) and the ``(N, 4, C)`` statistics the
    backward pass needs (see the module docstring). ``block_pixels`` overrides the tile height."""
    _check(x, weight_v, weight_g, stride)
    n, c, h, w = x.shape
    k = weight_v.shape[-1]
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    stats = torch.zeros(n, 4, c, dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out, stats
    config = launch_config(c, k, stride, padding, block_pixels)
    grid = (n, triton.cdiv(c, config["BLOCK_C"]))
    _forward_kernel[grid](x, _taps(weight_v), _taps(weight_g), out, stats, h, w, c, ho, wo, eps,
                          **config, **COMPILE_OPTIONS)
    return out, stats


def min_unit_backward(grad_out: torch.Tensor, x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor,
                      stats: torch.Tensor, stride: int, padding: int, eps: float, *,
                      block_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``x`` (channels-last, ``x``'s dtype) and of both filter banks (their dtype),
    from the output gradient and :func:`min_unit_forward`'s ``stats``; the filter responses are
    recomputed from ``x``. ``eps`` is already in ``stats`` (taken for the operator's schema)."""
    del eps  # the statistics carry it: rstd = 1 / sqrt(var + eps)
    _check(x, weight_v, weight_g, stride)
    n, c, h, w = x.shape
    k = weight_v.shape[-1]
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    if x.numel() == 0 or ho * wo == 0:
        return torch.zeros_like(x), torch.zeros_like(weight_v), torch.zeros_like(weight_g)
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)  # every pixel is written
    config = launch_config(c, k, stride, padding, block_pixels)
    block_c, block_p = config["BLOCK_C"], config["BLOCK_P"]
    taps_v, taps_g = _taps(weight_v), _taps(weight_g)
    stats = stats.float().contiguous()
    dv = torch.empty(n, ho * wo, c, dtype=torch.float32, device=x.device)
    dg = torch.empty_like(dv)
    _backward_norm_kernel[(n, triton.cdiv(c, block_c))](
        grad_out, x, taps_v, taps_g, stats, dv, dg, h, w, c, ho, wo, **config, **COMPILE_OPTIONS)
    partial = torch.empty(n, 2, k * k, c, dtype=torch.float32, device=x.device)
    _weight_grad_kernel[(k * k, n, triton.cdiv(c, block_c))](
        x, dv, dg, partial, h, w, c, ho, wo, **config, **COMPILE_OPTIONS)
    _input_grad_kernel[(triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), n)](
        dv, dg, taps_v, taps_g, grad_x, h, w, c, ho, wo, **config, **COMPILE_OPTIONS)
    grad_taps = partial.sum(dim=0)  # (2, k*k, C), summed over the batch in a fixed order
    grad_v = grad_taps[0].t().reshape(weight_v.shape).to(weight_v.dtype)
    grad_g = grad_taps[1].t().reshape(weight_g.shape).to(weight_g.dtype)
    return grad_x, grad_v, grad_g
