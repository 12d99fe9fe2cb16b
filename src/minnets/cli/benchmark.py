"""``minnets benchmark``: interleaved training and inference throughput of models."""

from __future__ import annotations

import argparse
import json

import torch

from minnets.benchmark import AMP_DTYPES, benchmark, data_check, format_table, tune_cpu_allocator
from minnets.errors import MinnetsError

DEFAULT_MODELS = "resnet_n3,min_resnet_n3,densenet_l22,min_densenet_l22"


def run(args: argparse.Namespace) -> int:
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    if args.threads is not None and args.threads < 1:
        raise MinnetsError(f"--threads must be at least 1, got {args.threads}")
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        common = dict(device=args.device, batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
                      amp=args.amp, channels_last=args.channels_last, compile=args.compile, warmup=args.warmup)
        if args.data_check:
            rows = [data_check(name, **common) for name in models]
        else:
            rows = benchmark(models, **common)
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        row["tuned_allocator"] = tuned
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="training and inference throughput, memory and FLOPs of models",
        description=(
            "Times training steps (forward, cross-entropy, backward, SGD with momentum 0.9 and "
            "weight decay 1e-4) and inference batches (eval mode, inference_mode) on a fixed random "
            "CIFAR-sized batch. The models take turns over several rounds and the median round is "
            "reported, so ratios between models hold on a noisy machine (on a shared one, also pass "
            "--threads 1). FLOPs per image are counted with torch.utils.flop_counter on one forward "
            "pass in eval mode (2 per multiply-add; convolutions, depthwise ones included, and "
            "matrix products; norms and element-wise ops are not counted); train GFLOP/s uses the "
            "counted forward+backward FLOPs of a training step. Peak memory is the model state plus "
            "the most a training step had allocated at once (CUDA: max_memory_allocated; CPU: the "
            "PyTorch profiler's allocation record). Unless --no-tune-allocator, glibc's malloc is "
            "first told to keep big freed blocks for reuse (minnets.benchmark.tune_cpu_allocator)."
        ),
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated names (default {DEFAULT_MODELS})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all models; the median is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the rounds (default 2)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="autocast to this dtype (default off)")
    parser.add_argument("--channels-last", action="store_true", help="model and batch in channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="run the models through torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: PyTorch's choice)")
    parser.add_argument("--data-check", action="store_true",
                        help="instead: time an epoch of --steps batches fed by the batch loader against the "
                             "same steps on a ready batch, per model (epoch / compute near 1.0: no starving)")
    parser.add_argument("--no-tune-allocator", action="store_true",
                        help="leave glibc's malloc thresholds alone (see minnets.benchmark.tune_cpu_allocator)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    parser.set_defaults(handler=run)
