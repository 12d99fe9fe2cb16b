"""A native CPU kernel for the Min-unit, built from C source on first use and cached.

The Min-unit (two depthwise convs, two instance norms, two ReLUs and a minimum) is memory
bound on the CPU: as separate PyTorch kernels, forward and backward, its full-size maps cross
main memory a dozen times a step, and oneDNN's depthwise weight gradient is slow besides.
``min_unit.c`` does the forward pass in one read of the input and the backward pass in one
read of the input and the output gradient (see the comment at its top), a sample at a time,
split across ``torch.get_num_threads()`` OpenMP threads. Inside a Min-block it also takes the
1x1 convs on either side (:class:`Expansion`, ``reduce_weight``), so that the block's widest
maps stay in the cache, and the reduction's BatchNorm, ReLU and shortcut sum
(:func:`reduce_norm_forward`, :func:`reduce_norm_sums`).

Building: the system C compiler (``$CC``, else ``cc``) compiles the source with
``-O3 -march=native -fopenmp`` into ``$MINNETS_CACHE/kernels`` (default
``~/.cache/minnets/kernels``), named by a hash of the source, the flags and the CPU, so a cache
shared by unlike machines stays correct. This takes about a second, once. Without a compiler
(or with ``MINNETS_NATIVE=0``) :func:`available` is False, one warning says why, and the
layers use their pure-PyTorch path: the same mathematics, slower on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minnets.files import cache_folder

__all__ = ["available", "enabled", "usable", "use_native", "min_unit_forward", "min_unit_backward",
           "expansion_input_grad", "reduce_norm_forward", "reduce_norm_sums", "Expansion", "build"]

SOURCE = Path(__file__).with_name("min_unit.c")
MAX_KERNEL = 7  # as MAX_KERNEL in the source
FLAGS = ("-O3", "-fPIC", "-shared", "-std=c11", "-ffp-contract=fast")  # fused multiply-adds where the CPU has them
# Tried in order: -march=native for the CPU's vector width, -fopenmp for threads. OpenMP code
# links libgomp.so.1, which the loader resolves to the copy PyTorch has already loaded, so
# both share one thread pool instead of two pools fighting over the cores.
OPTIONAL_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())

_library: ctypes.CDLL | None = None
_tried = False
_enabled = True
_lock = threading.Lock()


def _cache_dir() -> Path:
    return cache_folder("kernels")


def _cpu_identity() -> str:
    """What makes ``-march=native`` code run here: the CPU's model and instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def build(cache_dir: Path | None = None) -> Path:
    """Compile ``min_unit.c`` (unless a matching build is cached) and return the library's path.

    Raises ``RuntimeError`` with the compiler's message when no build succeeds.
    """
    cache_dir = _cache_dir() if cache_dir is None else cache_dir
    compiler = _compiler()
    source = SOURCE.read_bytes()
    errors = []
    for optional in OPTIONAL_FLAGS:
        flags = [*FLAGS, *optional]
        key = hashlib.sha256(b"\0".join([source, " ".join(compiler + flags).encode(), _cpu_identity().encode()]))
        target = cache_dir / f"min_unit-{key.hexdigest()[:16]}.so"
        if target.is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Compile to a private name, then rename: concurrent builders never see a partial file.
        fd, partial = tempfile.mkstemp(suffix=".so", dir=cache_dir)
        os.close(fd)
        try:
            result = subprocess.run([*compiler, *flags, str(SOURCE), "-o", partial, "-lm"],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(partial, target)
                return target
            errors.append(result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"])
        except OSError as error:
            errors.append([str(error)])
        finally:
            Path(partial).unlink(missing_ok=True)
    raise RuntimeError(f"cannot compile {SOURCE.name} with {' '.join(compiler)}: {errors[-1][0]}")


def _load() -> ctypes.CDLL | None:
    global _library, _tried
    with _lock:
        if _tried:
            return _library
        _tried = True
        if os.environ.get("MINNETS_NATIVE", "1") == "0":
            return None
        try:
            library = ctypes.CDLL(str(build()))
        except (RuntimeError, OSError) as error:
            warnings.warn(f"minnets: native Min-unit kernel unavailable ({error}); using the slower "
                          "pure-PyTorch path. Install a C compiler (or set CC) to get it.", RuntimeWarning,
                          stacklevel=3)
            return None
        pointer, size, flag = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        library.minnets_min_unit_forward.argtypes = ([pointer] * 5 + [size] * 6 + [ctypes.c_float]
                                                     + [pointer] * 2 + [flag, size] + [pointer] * 2 + [size] * 3
                                                     + [pointer] * 2 + [size, flag, flag])
        library.minnets_min_unit_backward.argtypes = ([pointer] * 8 + [size] * 6 + [flag, pointer] + [size] * 3
                                                      + [pointer] * 5 + [size] + [pointer] * 2 + [size]
                                                      + [pointer] * 2 + [flag, flag])
        library.minnets_expansion_input_grad.argtypes = ([pointer] * 2 + [size] * 6 + [pointer] * 5 + [size] * 3
                                                         + [flag])
        library.minnets_reduce_norm_forward.argtypes = [pointer] * 4 + [size] * 3 + [flag, pointer] + [size] * 3 + [flag]
        library.minnets_reduce_norm_sums.argtypes = [pointer] * 4 + [size] * 3 + [flag, flag]
        _library = library
        return library


def available() -> bool:
    """Whether the native kernel is built and loaded (building it now if needed)."""
    return _load() is not None


@contextmanager
def use_native(enabled: bool) -> Iterator[None]:
    """Turn the native kernel off (or back on) inside a ``with`` block, e.g. to compare paths."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def _assume_constant_result(fn: Callable[[], bool]) -> Callable[[], bool]:
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` (over a
    second at every start of the command line): that decorator only marks the function so."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def enabled() -> bool:
    """Whether the kernel is built and not turned off by :func:`use_native` (a constant to
    ``torch.compile``, which calls :mod:`minnets.ops`' registered operators, not this module)."""
    return _enabled and available()


def usable(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the kernel can take this input and these square filters: float32 on the CPU, a
    channels-last input, filters up to 7 x 7, and not turned off."""
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (x, *weights))
            and all(w.shape[-1] == w.shape[-2] <= MAX_KERNEL for w in weights)
            and x.is_contiguous(memory_format=torch.channels_last) and enabled())


def _check(status: int) -> None:
    if status:
        raise MemoryError("native Min-unit kernel: out of memory for its per-thread buffers")


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise ``(c, 1, k, k)`` filter bank as the ``(k*k, c)`` tap-major array the kernel reads."""
    return weight.detach().reshape(weight.shape[0], -1).t().contiguous()


def _shape(x: torch.Tensor | None, expansion: Expansion | None) -> tuple[int, int, int, int]:
    """(n, c, h, w) of the unit's input, given or to be computed from the expansion."""
    if expansion is None:
        return tuple(x.shape)
    n, _, h, w = expansion.x.shape
    return n, expansion.weights.shape[0], h, w


def _expansion_args(expansion: Expansion | None) -> tuple:
    """The block input's pointer and (sample, pixel, channel) strides, the transposed weights and the bias."""
    if expansion is None:
        return None, 0, 0, 0, None, None
    return (expansion.x.data_ptr(), *expansion.strides, expansion.weights_t.data_ptr(), expansion.bias.data_ptr())


def min_unit_forward(x: torch.Tensor | None, weight_v: torch.Tensor, weight_g: torch.Tensor, stride: int,
                     eps: float, reduce_weight: torch.Tensor | None = None, expansion: Expansion | None = None,
                     reduce_bias: torch.Tensor | None = None, reduce_relu: bool = False, maps: bool = False,
                     moments: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``min(ReLU(IN(w_v * x)), ReLU(IN(w_g * x)))`` and the per-sample statistics the backward needs.

    With ``reduce_weight`` (a 1x1 conv ``(d_out, channels, 1, 1)``), the output is that conv
    applied to the unit's output (plus ``reduce_bias``, rectified if ``reduce_relu``: a
    BatchNorm in evaluation folded in), and the unit's output is never written to memory; the
    output is then NCHW with ``maps``, channels-last without. With an ``expansion`` instead of
    ``x`` (None), the unit's input is computed from it, a sample at a time, and never written to
    memory either. ``moments``, a float64 ``(n, 3, d_out)`` tensor (with a reduction), receives
    per sample and channel of the output a shift ``s`` (its mean, rounded to float32), the sum of
    ``out - s`` and the sum of ``(out - s)**2``: the BatchNorm after the reduction gets its batch
    statistics from these (:func:`reduce_norm_forward`) without another pass over the maps.
    """
    n, c, h, w = _shape(x, expansion)
    k = weight_v.shape[-1]
    pad = k // 2  # as the module's convs: "same" padding for odd k
    size = ((h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    d_out = c if reduce_weight is None else reduce_weight.shape[0]
    maps = maps and reduce_weight is not None
    out = torch.empty(n, d_out, *size, memory_format=torch.contiguous_format if maps else torch.channels_last)
    stats = torch.empty(n, 4, c)
    taps_v, taps_g = _taps(weight_v), _taps(weight_g)  # named: they must outlive the call
    reduce_t = None if reduce_weight is None else reduce_weight.detach().reshape(d_out, c).t().contiguous()
    bias = None if reduce_bias is None else reduce_bias.detach().contiguous()
    if out.numel():
        block_input, sample, pixel, channel, weights_t, expand_bias = _expansion_args(expansion)
        _check(_load().minnets_min_unit_forward(
            None if x is None else x.data_ptr(), taps_v.data_ptr(), taps_g.data_ptr(), out.data_ptr(),
            stats.data_ptr(), n, h, w, c, k, stride, eps, None if reduce_t is None else reduce_t.data_ptr(),
            None if bias is None else bias.data_ptr(), int(reduce_relu), d_out,
            None if moments is None else moments.data_ptr(), block_input, sample, pixel, channel,
            weights_t, expand_bias, 0 if expansion is None else expansion.d_in, int(maps), torch.get_num_threads()))
    return out, stats


def min_unit_backward(grad: torch.Tensor, x: torch.Tensor | None, weight_v: torch.Tensor, weight_g: torch.Tensor,
                      stats: torch.Tensor, stride: int, input_is_relu: bool, expansion: Expansion | None = None,
                      reduce_weight: torch.Tensor | None = None,
                      reduce_norm: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of ``x``, both filter banks and ``reduce_weight`` (None without it).

    ``input_is_relu`` zeroes x's gradient where ``x == 0``. With ``reduce_weight`` (as in
    :func:`min_unit_forward`, without bias or ReLU), ``grad`` is the gradient at the reduction's
    output (NCHW or channels-last); with ``reduce_norm``, ``(out, norm)`` of
    :func:`reduce_norm_forward` (``norm`` completed by :func:`reduce_norm_sums`' caller), it is
    the gradient after that BatchNorm and ReLU, taken back through them a sample at a time.
    With an ``expansion`` instead of ``x`` (None), x's gradient is not returned (None): the
    kernel recomputes x and goes on through the expansion, filling ``expansion.grad_rows`` and
    ``expansion.sums``.
    """
    n, c, h, w = _shape(x, expansion)
    k = weight_v.shape[-1]
    d_out = 0 if reduce_weight is None else reduce_weight.shape[0]
    maps = reduce_weight is not None and grad.is_contiguous()
    grad = grad if maps else grad.contiguous(memory_format=torch.channels_last)
    reduced, norm = (None, None) if reduce_norm is None else reduce_norm
    if reduced is not None:
        reduced, norm = reduced.contiguous(memory_format=_format(maps)), norm.contiguous()
    grad_x = None if expansion is not None else torch.empty_like(x, memory_format=torch.channels_last)
    taps_v, taps_g = _taps(weight_v), _taps(weight_g)  # named: they must outlive the call
    grad_v, grad_g = torch.zeros(k * k, c), torch.zeros(k * k, c)
    reduce = None if reduce_weight is None else reduce_weight.detach().reshape(d_out, c).contiguous()
    grad_reduce = None if reduce_weight is None else torch.zeros(d_out, c, dtype=torch.float64)
    if expansion is not None:
        expansion.allocate_gradients()
    if n * c * h * w:
        block_input, sample, pixel, channel, weights_t, expand_bias = _expansion_args(expansion)
        _check(_load().minnets_min_unit_backward(
            grad.data_ptr(), None if x is None else x.data_ptr(), taps_v.data_ptr(), taps_g.data_ptr(),
            stats.data_ptr(), None if grad_x is None else grad_x.data_ptr(), grad_v.data_ptr(), grad_g.data_ptr(),
            n, h, w, c, k, stride, int(input_is_relu), block_input, sample, pixel, channel, weights_t, expand_bias,
            None if expansion is None else expansion.weights.data_ptr(),
            None if expansion is None else expansion.grad_rows.data_ptr(),
            None if expansion is None else expansion.sums.data_ptr(), 0 if expansion is None else expansion.d_in,
            None if reduce is None else reduce.data_ptr(), None if grad_reduce is None else grad_reduce.data_ptr(),
            d_out, None if reduced is None else reduced.data_ptr(), None if norm is None else norm.data_ptr(),
            int(maps), torch.get_num_threads()))
    if grad_reduce is not None:
        grad_reduce = grad_reduce.to(reduce_weight.dtype).view_as(reduce_weight)
    return grad_x, grad_v.t().reshape_as(weight_v), grad_g.t().reshape_as(weight_g), grad_reduce


def expansion_input_grad(expansion: Expansion, cross: torch.Tensor, bias: torch.Tensor, maps: bool = False,
                         addend: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """``expansion.grad_rows + x @ cross + bias`` at every pixel of the block's input x (in place),
    as the ``(n, d_in, h, w)`` gradient of x (``cross``: ``(d_in, d_in)``): NCHW with ``maps``,
    else channels-last; plus ``addend`` (an identity shortcut's gradient) where given, or (NCHW
    only) the gradient through :func:`reduce_norm_forward`'s pooled shortcut of the gradient
    ``pooled`` at its output."""
    n, d_in, h, w = expansion.x.shape
    grad_rows = expansion.grad_rows
    cross, bias = cross.contiguous(), bias.contiguous()
    out = torch.empty(n, d_in, h, w) if maps else grad_rows.view(n, h, w, d_in).permute(0, 3, 1, 2)
    addend, pooled = _shortcut_operands(addend, pooled, maps)
    if grad_rows.numel():
        _check(_load().minnets_expansion_input_grad(grad_rows.data_ptr(), expansion.x.data_ptr(), *expansion.strides,
                                                    n, h * w, d_in, cross.data_ptr(), bias.data_ptr(),
                                                    out.data_ptr() if maps else None,
                                                    None if addend is None else addend.data_ptr(),
                                                    None if pooled is None else pooled.data_ptr(),
                                                    0 if pooled is None else pooled.shape[1], h, w,
                                                    torch.get_num_threads()))
    return out


def _format(maps: bool) -> torch.memory_format:
    return torch.contiguous_format if maps else torch.channels_last


def _shortcut_operands(added: torch.Tensor | None, pooled: torch.Tensor | None, maps: bool
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A shortcut (or its gradient) laid out as the kernel reads the block's maps, and the pooled
    shortcut's input (or gradient at its output), which it reads as NCHW only."""
    if added is not None:
        added = added.contiguous(memory_format=_format(maps))
    if pooled is not None:
        if not maps:
            raise ValueError("the pooled shortcut needs NCHW maps")
        pooled = pooled.contiguous()
    return added, pooled


def reduce_norm_forward(reduced: torch.Tensor, norm: torch.Tensor, shortcut: torch.Tensor | None,
                        pool: torch.Tensor | None = None) -> torch.Tensor:
    """``shortcut + ReLU(gain * reduced + shift)`` per channel, ``gain`` and ``shift`` the first
    two rows of ``norm`` (``(6, c)``: gain, shift, mean, 1 / sigma of the reduction's BatchNorm,
    then the two backward coefficients), in ``reduced``'s layout (NCHW or channels-last). With
    ``pool`` instead of a shortcut (NCHW only), the shortcut is the stride-2 block's: ``pool``'s
    2x2 average pool (ceil mode) with zero channels appended."""
    n, c, h, w = reduced.shape
    maps = reduced.is_contiguous()
    shortcut, pool = _shortcut_operands(shortcut, pool, maps)
    out = torch.empty_like(reduced, memory_format=_format(maps))
    if out.numel():
        _check(_load().minnets_reduce_norm_forward(
            reduced.data_ptr(), norm.contiguous().data_ptr(), None if shortcut is None else shortcut.data_ptr(),
            out.data_ptr(), n, c, h * w, int(maps), None if pool is None else pool.data_ptr(),
            *((0, 0, 0) if pool is None else pool.shape[1:]), torch.get_num_threads()))
    return out


def reduce_norm_sums(grad: torch.Tensor, reduced: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``(2, c)`` float64: the sums over batch and pixels of ``d`` and of ``d * (reduced - mean) / sigma``,
    ``d`` the gradient ``grad`` where ReLU(gain * reduced + shift) is positive (``norm`` as in
    :func:`reduce_norm_forward`): its BatchNorm's backward reductions."""
    n, c, h, w = reduced.shape
    maps = reduced.is_contiguous()
    grad = grad.contiguous(memory_format=_format(maps))
    sums = torch.zeros(2, c, dtype=torch.float64)
    if grad.numel():
        _check(_load().minnets_reduce_norm_sums(grad.data_ptr(), reduced.data_ptr(), norm.contiguous().data_ptr(),
                                                sums.data_ptr(), n, c, h * w, int(maps), torch.get_num_threads()))
    return sums


@dataclass
class Expansion:
    """The 1x1 conv with its BatchNorm folded in, and its ReLU, that make the unit's input in a
    Min-block: the kernel computes that input itself and takes the conv's backward pass too.

    Inputs: ``x``, the block's input ``(n, d_in, h, w)``, NCHW or channels-last (read where it
    lies); ``weights`` ``(channels, d_in)`` and ``bias`` ``(channels,)``, so that the unit's
    input is ``ReLU(weights @ x + bias)`` at every pixel; float32. Outputs of
    :func:`min_unit_backward`, allocated by it: ``grad_rows`` ``(n*h*w, d_in)`` receives
    ``weights^T u`` at every pixel (channels-last order) and ``sums`` ``(d_in + 1, channels)``
    (float64) receives ``[x, 1]^T u`` summed over pixels, with ``u`` the gradient at the ReLU's
    output.
    """

    x: torch.Tensor
    weights: torch.Tensor
    bias: torch.Tensor
    weights_t: torch.Tensor = field(init=False)
    grad_rows: torch.Tensor | None = field(init=False, default=None)
    sums: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.x.stride(2) != self.x.shape[3] * self.x.stride(3):  # pixel p = y*w + x must sit at p * stride(3)
            self.x = self.x.contiguous()
        self.weights = self.weights.contiguous()
        self.bias = self.bias.contiguous()
        self.weights_t = self.weights.t().contiguous()

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def strides(self) -> tuple[int, int, int]:
        """(sample, pixel, channel) strides of x, in floats."""
        return self.x.stride(0), self.x.stride(3), self.x.stride(1)

    def allocate_gradients(self) -> None:
        n, d_in, h, w = self.x.shape
        self.grad_rows = self.x.new_empty(n * h * w, d_in)
        self.sums = torch.zeros(d_in + 1, self.weights.shape[0], dtype=torch.float64)
