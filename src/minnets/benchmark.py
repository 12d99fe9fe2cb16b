"""Training and inference throughput of the registered models, measured so ratios hold.

A shared or throttling machine drifts by tens of percent within a minute, which would swamp
the difference between two models timed one after the other. So every model is built first,
and then the models take turns: each *round* times ``steps`` training steps and ``steps``
inference batches of every model in order, and the reported time is the median over rounds.
A slow phase of the machine then hits every model in the same round, and the median throws
that round away. The speed relative to the first model listed (``train_speed_vs_first``,
``infer_speed_vs_first``) is paired: the median over rounds of each round's ratio, which
cancels drift between rounds; on a shared machine it is the number to compare models by.

What is measured, per model:

- a *training step*: forward, cross-entropy, backward and an SGD step (momentum 0.9, weight
  decay 1e-4, the paper's optimiser) on one fixed random batch, in training mode;
- an *inference batch*: forward in evaluation mode under :func:`torch.inference_mode`;
- *peak memory* of a training step: the bytes of the model's state (parameters, buffers,
  optimizer state and the batch) plus the highest amount of memory the step itself had
  allocated at any moment (activations, gradients, workspaces). On CUDA the step's part is
  ``torch.cuda.max_memory_allocated`` above what was allocated when it began; on the CPU it is
  the running sum of every allocation and free the PyTorch profiler records for one extra,
  untimed step. Neither counts the caching allocator's reserve or Python objects;
- *FLOPs* counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is two
  FLOPs; convolutions, depthwise ones included, and matrix products are counted; norms,
  activations, the minimum and additions are not). ``flops_per_img`` is the forward pass in
  evaluation mode, ``train_flops_per_img`` forward plus backward of a training step; achieved
  GFLOP/s divides them by the times.

:func:`data_check` answers another question: does feeding the model from
:class:`minnets.data.BatchLoader` (flip, crop and normalisation on the device) slow training
down, compared with the same steps on a batch that is already there?
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from minnets import kernels
from minnets.errors import MinnetsError
from minnets.models import create_model, model_info

__all__ = [
    "AMP_DTYPES", "REQUIRED_KEYS", "benchmark", "count_flops", "data_check", "format_table",
    "resolve_device", "tune_cpu_allocator",
]

AMP_DTYPES = {"bf16": torch.bfloat16}
REQUIRED_KEYS = ("model", "train_img_per_s", "infer_img_per_s", "ms_per_step", "peak_mem_mb", "flops_per_img")
MB = 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


@dataclass
class _Case:
    """One model with everything its training and inference steps need, and its timings."""

    name: str
    model: nn.Module
    runner: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    train_seconds: list[float] = field(default_factory=list)
    infer_seconds: list[float] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:i]``, refusing a CUDA device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MinnetsError(f"unknown device {name!r}; use cpu or cuda") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinnetsError("CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise MinnetsError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse, so that big CPU tensors stop page-faulting.

    glibc hands every allocation above 32 MiB a fresh ``mmap`` and unmaps it on free, so a
    tensor that size pays page faults and kernel zeroing each time it is created: a
    (128, 64, 32, 32) float32 tensor, 32 MiB plus PyTorch's alignment and the size of the
    widest Min-block maps at batch 128, took 60 ms to create with ``torch.zeros`` instead of
    4 ms once tuned (one thread, the 2-core test machine). Raising the mmap and trim
    thresholds to 1 GiB serves such tensors from the heap, like the jemalloc or tcmalloc
    preload PyTorch's CPU tuning guide recommends.
    Process-wide and permanent; the process keeps its peak heap instead of returning it.
    Returns whether it took effect (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def _train_step(case: _Case, x: torch.Tensor, y: torch.Tensor, autocast: Callable[[], Any]) -> None:
    case.optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = F.cross_entropy(case.runner(x), y)
    loss.backward()
    case.optimizer.step()


def _infer_batch(case: _Case, autocast: Callable[[], Any]) -> None:
    case.model.eval()
    try:
        with torch.inference_mode(), autocast():
            case.runner(case.x)
    finally:
        case.model.train()


def _timed(device: torch.device, steps: int, step: Callable[[], None]) -> float:
    """Seconds per call of ``step``, averaged over ``steps`` back-to-back calls."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def _conv_backward_flops(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any, _stride: Any,
                         _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any, _groups: Any,
                         output_mask: Sequence[bool], out_shape: Any, **kwargs: Any) -> int:
    """Each gradient of a convolution costs its forward pass, grouped (depthwise) ones included.

    PyTorch's own formula for ``convolution_backward`` ignores ``groups`` in the weight
    gradient, which counts a depthwise conv's backward ``channels`` times too high.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _linear_pointwise_flops(input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None,
                            **kwargs: Any) -> int:
    """oneDNN's fused matmul (the Min-block's folded 1x1 conv): ``rows x d_in`` times ``d_in x d_out``."""
    rows = 1
    for size in input_shape[:-1]:
        rows *= size
    return 2 * rows * input_shape[-1] * weight_shape[0]


def _flop_formulas() -> dict[Any, Callable[..., int]]:
    formulas: dict[Any, Callable[..., int]] = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flops
    return formulas


def count_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """FLOPs of one forward pass on the batch ``x``, and of a training step's forward and backward.

    The forward pass is counted in evaluation mode, where every implementation of a layer runs
    the same convolutions, so that models compare by their mathematics; the training step counts
    what runs in training mode. The model's mode is restored; BatchNorm statistics see one batch.
    Counted on the PyTorch path: the counter cannot see inside the native Min-unit kernel, which
    does the same convolutions (and recomputes the forward ones in its backward pass).
    """
    was_training = model.training
    model.eval()
    flop_counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
    with torch.no_grad(), kernels.use_native(False), flop_counter as counter:
        model(x)
    forward = counter.get_total_flops()
    model.train()
    flop_counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
    with kernels.use_native(False), flop_counter as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return forward, counter.get_total_flops()


def _state_bytes(case: _Case) -> int:
    tensors = [*case.model.parameters(), *case.model.buffers(), case.x, case.y]
    for state in case.optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _profiled_peak_bytes(step: Callable[[], None]) -> int:
    """Highest net allocation during ``step``, from the profiler's record of every (de)allocation.

    Kineto, the profiler's backend, prints ``USDT:`` lines for every profile at its levels up
    to 5; level 6 (above all of them) keeps the benchmark's output clean. It is read when the
    profiler first starts, so a user's own ``KINETO_LOG_LEVEL`` still wins.
    """
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = [e for e in events if e.device_type() == torch._C._autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _peak_step_bytes(case: _Case, device: torch.device, autocast: Callable[[], Any]) -> int:
    case.optimizer.zero_grad(set_to_none=True)

    def step() -> None:
        _train_step(case, case.x, case.y, autocast)

    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _profiled_peak_bytes(step)


def _validate(models: Sequence[str], batch_size: int, steps: int, rounds: int, warmup: int, amp: str | None) -> None:
    if not models:
        raise MinnetsError("no models given; pass --models, e.g. --models resnet_n3,min_resnet_n3")
    for name in models:
        model_info(name)  # raises MinnetsError naming close matches
    for label, value, least in (("batch size", batch_size, 1), ("steps", steps, 1),
                                ("rounds", rounds, 1), ("warm-up steps", warmup, 0)):
        if value < least:
            raise MinnetsError(f"{label} must be at least {least}, got {value}")
    if amp is not None and amp not in AMP_DTYPES:
        raise MinnetsError(f"unknown --amp {amp!r}; use one of {', '.join(AMP_DTYPES)} or leave it out")


def _build(name: str, device: torch.device, batch_size: int, channels_last: bool, compile: bool,
           seed: int) -> _Case:
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name).to(device=device, memory_format=memory_format).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)
    runner = torch.compile(model) if compile else model
    return _Case(name, model, runner, _sgd(model), x, y)


def benchmark(
    models: Sequence[str],
    device: str = "cpu",
    batch_size: int = 128,
    steps: int = 10,
    rounds: int = 3,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    warmup: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Interleaved throughput of ``models``: one dict per model, medians over ``rounds``.

    Each dict has the keys of :data:`REQUIRED_KEYS` and more (see :func:`format_table`).
    ``warmup`` untimed training and inference steps per model come first (and trigger
    compilation with ``compile``). ``progress`` lines go to stderr.
    """
    _validate(models, batch_size, steps, rounds, warmup, amp)
    dev = resolve_device(device)

    def say(message: str) -> None:
        if progress:
            print(f"benchmark: {message}", file=sys.stderr, flush=True)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return _autocast(dev, amp)

    cases, extras = [], {}
    for name in models:
        say(f"building {name} and warming up")
        case = _build(name, dev, batch_size, channels_last, compile, seed)
        with autocast():
            forward_flops, train_flops = count_flops(case.model, case.x, case.y)
        for _ in range(warmup):
            _train_step(case, case.x, case.y, autocast)
            _infer_batch(case, autocast)
        peak = _state_bytes(case) + _peak_step_bytes(case, dev, autocast)
        extras[name] = dict(flops=forward_flops, train_flops=train_flops, peak=peak)
        cases.append(case)

    for round_index in range(rounds):
        for case in cases:
            case.train_seconds.append(_timed(dev, steps, lambda: _train_step(case, case.x, case.y, autocast)))
            case.infer_seconds.append(_timed(dev, steps, lambda: _infer_batch(case, autocast)))
            say(f"round {round_index + 1}/{rounds} {case.name}: "
                f"{batch_size / case.train_seconds[-1]:.0f} img/s training, "
                f"{batch_size / case.infer_seconds[-1]:.0f} img/s inference")

    rows = []
    reference = cases[0]
    for case in cases:
        train, infer = statistics.median(case.train_seconds), statistics.median(case.infer_seconds)
        info = extras[case.name]
        rows.append({
            "model": case.name,
            "train_img_per_s": batch_size / train,
            "infer_img_per_s": batch_size / infer,
            # Paired: each round's ratio to the first model, timed moments apart, then the median,
            # so that a drift of the machine between rounds cancels out.
            "train_speed_vs_first": statistics.median(
                r / t for r, t in zip(reference.train_seconds, case.train_seconds)),
            "infer_speed_vs_first": statistics.median(
                r / t for r, t in zip(reference.infer_seconds, case.infer_seconds)),
            "ms_per_step": 1000 * train,
            "infer_ms_per_batch": 1000 * infer,
            "peak_mem_mb": info["peak"] / MB,
            "flops_per_img": info["flops"] / batch_size,
            "train_flops_per_img": info["train_flops"] / batch_size,
            "train_gflop_per_s": info["train_flops"] / train / 1e9,
            "infer_gflop_per_s": info["flops"] / infer / 1e9,
            "device": str(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "batch_size": batch_size,
            "steps": steps,
            "rounds": rounds,
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile,
        })
    return rows


_THROUGHPUT_COLUMNS = (
    ("model", "model", "{}"),
    ("train img/s", "train_img_per_s", "{:.0f}"),
    ("infer img/s", "infer_img_per_s", "{:.0f}"),
    ("train x first", "train_speed_vs_first", "{:.3f}"),
    ("infer x first", "infer_speed_vs_first", "{:.3f}"),
    ("ms/step", "ms_per_step", "{:.1f}"),
    ("peak MB", "peak_mem_mb", "{:.0f}"),
    ("MFLOP/img", "mflops_per_img", "{:.1f}"),
    ("train GFLOP/s", "train_gflop_per_s", "{:.1f}"),
    ("infer GFLOP/s", "infer_gflop_per_s", "{:.1f}"),
)
_DATA_CHECK_COLUMNS = (
    ("model", "model", "{}"),
    ("steps", "steps", "{}"),
    ("epoch s", "epoch_s", "{:.2f}"),
    ("compute s", "compute_s", "{:.2f}"),
    ("loader alone s", "loader_s", "{:.3f}"),
    ("epoch / compute", "ratio", "{:.3f}"),
    ("loader / compute", "loader_share", "{:.4f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of :func:`benchmark` or of :func:`data_check` as an aligned text table."""
    columns = _DATA_CHECK_COLUMNS if rows and "ratio" in rows[0] else _THROUGHPUT_COLUMNS
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        values = {**row, "mflops_per_img": row.get("flops_per_img", 0) / 1e6}
        cells.append([fmt.format(values[key]) for _, key, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in cells
    )


def data_check(
    model: str,
    device: str = "cpu",
    batch_size: int = 128,
    steps: int = 10,
    rounds: int = 3,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Does the data path starve the model? An epoch fed by the loader against pure compute.

    An *epoch* is ``steps`` training steps on the batches of :class:`minnets.data.BatchLoader`
    (shuffle, flip, crop and normalisation on ``device``) over ``steps * batch_size``
    synthetic CIFAR-sized uint8 images (the loader's work does not depend on the pixels),
    each step timed from asking the loader for its batch to the end of the optimizer step;
    *compute* is the same steps on one batch already on the device. The two kinds of step
    alternate, so a machine that drifts slows both alike; ``ratio`` is the median over
    ``rounds`` of epoch / compute (1.0: the data path is free). ``loader_s`` times the loader
    alone for one epoch and ``loader_share`` = loader / compute. On CUDA every step is
    synchronised, so the loader cannot hide behind the GPU: an upper bound of its cost.
    """
    from minnets.data import BatchLoader
    from minnets.data.cifar import CIFAR10

    _validate([model], batch_size, steps, rounds, warmup, amp)
    dev = resolve_device(device)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return _autocast(dev, amp)

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (steps * batch_size, 32, 32, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (steps * batch_size,), generator=generator)
    loader = BatchLoader(images, labels, batch_size, train=True, seed=seed, mean=CIFAR10.mean, std=CIFAR10.std,
                         device=dev, channels_last=channels_last)
    case = _build(model, dev, batch_size, channels_last, compile, seed)
    epochs = iter(range(1 << 30))

    def epoch_and_compute() -> tuple[float, float]:
        fed = pure = 0.0
        batches = loader.epoch(next(epochs))
        for _ in range(steps):
            fed += _timed(dev, 1, lambda: _train_step(case, *next(batches)[:2], autocast))
            pure += _timed(dev, 1, lambda: _train_step(case, case.x, case.y, autocast))
        return fed, pure

    def loader_only() -> None:
        for x, _, _ in loader.epoch(next(epochs)):
            x.sum()  # make sure the batch is really produced, on an asynchronous device too

    if progress:
        print(f"benchmark: data check of {model}: warming up", file=sys.stderr, flush=True)
    for _ in range(warmup):
        epoch_and_compute()
    epoch_s, compute_s, loader_s = [], [], []
    for round_index in range(rounds):
        fed, pure = epoch_and_compute()
        epoch_s.append(fed)
        compute_s.append(pure)
        loader_s.append(_timed(dev, 1, loader_only))
        if progress:
            print(f"benchmark: round {round_index + 1}/{rounds} {model}: epoch {fed:.2f} s, "
                  f"compute {pure:.2f} s, loader alone {loader_s[-1]:.3f} s", file=sys.stderr, flush=True)
    return {
        "model": model,
        "steps": steps,
        "batch_size": batch_size,
        "epoch_s": statistics.median(epoch_s),
        "compute_s": statistics.median(compute_s),
        "loader_s": statistics.median(loader_s),
        "ratio": statistics.median(e / c for e, c in zip(epoch_s, compute_s)),
        "loader_share": statistics.median(loader_s) / statistics.median(compute_s),
        "device": str(dev),
        "channels_last": channels_last,
        "amp": amp,
    }
