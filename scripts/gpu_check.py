#!/usr/bin/env python
"""GPU check: the speed of all 14 models on one CUDA GPU, and what the paper's grid would take.

    python scripts/gpu_check.py              # on a machine with a CUDA GPU; about 8 minutes at most
    python scripts/gpu_check.py --device cpu --quick   # a dry run of the code path on the CPU

For every baseline and its Min-Net (ResNet N = 3, 5, 7, 9 at batch 128; DenseNet-BC L = 22, 58,
100 at batch 64, the paper's batch sizes), training and inference images per second in float32
and under bf16 autocast, in up to four modes:

- ``eager``: PyTorch as written; the Min-unit takes the composite path (convs, instance norm,
  ReLU and minimum as PyTorch operations), the Triton kernel switched off;
- ``compile``: the same under ``torch.compile`` (Inductor fuses the composite unit);
- ``triton``: eager, the Min-unit running the Triton kernels (``minnets.ops.triton_kernels``);
- ``triton+compile``: both.

The modes with and without the Triton kernel use the operator's switch,
``minnets.ops.use_triton(enabled)``; without Triton installed only ``eager`` and ``compile`` run.

Every measurement is :func:`minnets.benchmark.benchmark` on the pair (baseline first), so the
two models take turns over interleaved rounds and the Min-Net's speed relative to its baseline
is paired (the median of per-round ratios), as ``minnets benchmark`` reports it. All maps are
channels-last on the GPU (the Triton kernel's layout, and cuDNN's fastest for bf16).

The steps run cheapest and most informative first (eager, then Triton, then the compiled
modes, whose warm-up steps compile each model) and each is given its share
of the time left (``--budget-s``, default 450 s): fewer rounds when steps run slow, and the
steps that no longer fit are skipped with a line saying so. Last comes the projected wall time
of the paper's 58-run grid (``minnets sweep paper``) on this GPU: per run, the recipe's
epochs times (50,000 training images at the measured training speed + 10,000 test images at
the inference speed), summed over the runs in one process at a time; data loading, checkpoints
and evaluation beyond the test pass are not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minnets.benchmark import benchmark, tune_cpu_allocator
from minnets.models import model_info
from minnets.ops import use_triton
from minnets.sweep.grid import load_grid
from minnets.training.recipes import default_recipe_name, get_recipe, model_recipe

_HAS_TRITON = importlib.util.find_spec("triton") is not None

PAIRS = [("resnet_n3", "min_resnet_n3"), ("resnet_n5", "min_resnet_n5"), ("resnet_n7", "min_resnet_n7"),
         ("resnet_n9", "min_resnet_n9"), ("densenet_l22", "min_densenet_l22"),
         ("densenet_l58", "min_densenet_l58"), ("densenet_l100", "min_densenet_l100")]
MODES = ("eager", "triton", "compile", "triton+compile")
AMPS = (None, "bf16")
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10
MIN_ROUNDS = 2


@dataclass(frozen=True)
class Settings:
    device: str
    steps: int
    rounds: int
    warmup: int
    budget_s: float
    batch: dict[str, int]  # per family
    pairs: list[tuple[str, str]]
    modes: tuple[str, ...]


def _settings(args: argparse.Namespace) -> Settings:
    if args.quick:  # a dry run of every code path on tiny batches: seconds, not minutes
        return Settings(args.device, steps=1, rounds=2, warmup=1, budget_s=args.budget_s,
                        batch={"resnet": 4, "densenet": 4}, pairs=PAIRS[:1], modes=("eager",))
    # Triton's kernels are for CUDA; without Triton the triton modes would repeat the others.
    modes = MODES if args.device == "cuda" and _HAS_TRITON else ("eager", "compile")
    return Settings(args.device, steps=args.steps, rounds=args.rounds, warmup=2, budget_s=args.budget_s,
                    batch={family: get_recipe(default_recipe_name(family)).batch_size
                           for family in ("resnet", "densenet")},
                    pairs=PAIRS, modes=modes)


def _say(message: str) -> None:
    print(f"gpu_check: {message}", flush=True)


def _measure(settings: Settings, pair: tuple[str, str], mode: str, amp: str | None, rounds: int) -> dict[str, Any]:
    family = model_info(pair[0])["family"]
    if "compile" in mode:
        # A fresh compiler cache per step: the models share their classes' forward code, and past
        # Dynamo's recompile limit (8 per code object) a step would silently run uncompiled.
        torch._dynamo.reset()
    with use_triton("triton" in mode):  # the Triton kernels on for the triton modes, off for the others
        rows = benchmark(list(pair), device=settings.device, batch_size=settings.batch[family],
                         steps=settings.steps, rounds=rounds, amp=amp, channels_last=settings.device == "cuda",
                         compile="compile" in mode, warmup=settings.warmup, progress=False)
    base, min_net = rows
    return {"pair": list(pair), "mode": mode, "amp": amp or "fp32", "rounds": rounds,
            "batch_size": settings.batch[family],
            "base_train": base["train_img_per_s"], "base_infer": base["infer_img_per_s"],
            "min_train": min_net["train_img_per_s"], "min_infer": min_net["infer_img_per_s"],
            "train_ratio": min_net["train_speed_vs_first"], "infer_ratio": min_net["infer_speed_vs_first"]}


def _plan(settings: Settings) -> list[tuple[str, str | None, tuple[str, str]]]:
    """(mode, amp, pair) in the order they run: by mode, then precision, then pair (cheapest first)."""
    return [(mode, amp, pair) for mode in settings.modes for amp in AMPS for pair in settings.pairs]


def run_steps(settings: Settings) -> list[dict[str, Any]]:
    """Every step of the plan that fits the budget, a line per step."""
    plan = _plan(settings)
    start = time.perf_counter()
    last_seconds: dict[str, float] = {}  # mode -> seconds of its last step (at `settings.rounds` rounds)
    results = []
    for index, (mode, amp, pair) in enumerate(plan):
        label = f"[{index + 1}/{len(plan)}] {mode} {amp or 'fp32'} {pair[0]} vs {pair[1]}"
        left = settings.budget_s - (time.perf_counter() - start)
        share = left / (len(plan) - index)
        rounds = settings.rounds
        if mode in last_seconds and last_seconds[mode] > share:  # slow: fewer rounds, down to MIN_ROUNDS
            rounds = max(MIN_ROUNDS, int(settings.rounds * share / last_seconds[mode]))
        expected = last_seconds.get(mode, 0.0) * rounds / settings.rounds
        if left <= 0 or expected > left:
            _say(f"{label}: skipped, {max(left, 0):.0f} s of the budget left")
            continue
        began = time.perf_counter()
        try:
            row = _measure(settings, pair, mode, amp, rounds)
        except Exception as error:  # one failing mode (e.g. a compiler error) must not end the check
            _say(f"{label}: failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            continue
        seconds = time.perf_counter() - began
        last_seconds[mode] = seconds * settings.rounds / rounds
        row["seconds"] = seconds
        results.append(row)
        _say(f"{label}: train {row['base_train']:.0f} / {row['min_train']:.0f} img/s (x{row['train_ratio']:.3f}), "
             f"inference {row['base_infer']:.0f} / {row['min_infer']:.0f} img/s (x{row['infer_ratio']:.3f}), "
             f"{rounds} rounds, {seconds:.0f} s")
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    """One line per measured step: img/s of baseline and Min-Net, and the paired ratios."""
    header = ("mode", "amp", "baseline", "train img/s", "infer img/s", "Min-Net", "train img/s", "infer img/s",
              "train x base", "infer x base")
    cells = [header] + [
        (r["mode"], r["amp"], r["pair"][0], f"{r['base_train']:.0f}", f"{r['base_infer']:.0f}", r["pair"][1],
         f"{r['min_train']:.0f}", f"{r['min_infer']:.0f}", f"{r['train_ratio']:.3f}", f"{r['infer_ratio']:.3f}")
        for r in results]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in cells)


def _speeds(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(mode, amp) -> model -> (train, inference) img/s."""
    speeds: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for r in results:
        table = speeds.setdefault((r["mode"], r["amp"]), {})
        table[r["pair"][0]] = (r["base_train"], r["base_infer"])
        table[r["pair"][1]] = (r["min_train"], r["min_infer"])
    return speeds


def grid_hours(speed: dict[str, tuple[float, float]]) -> float | None:
    """Hours of the paper's grid, one run after another, at these speeds; None if a model is missing."""
    total = 0.0
    for job in load_grid("paper"):
        if job.model not in speed:
            return None
        train, infer = speed[job.model]
        epochs = model_recipe(job.model).epochs
        total += epochs * (TRAIN_IMAGES / train + TEST_IMAGES / infer)
    return total / 3600


def projections(results: list[dict[str, Any]]) -> list[str]:
    """Grid wall time per fully measured (mode, precision), and with each model's fastest setting."""
    speeds = _speeds(results)
    lines = []
    for (mode, amp), speed in speeds.items():
        hours = grid_hours(speed)
        if hours is not None:
            lines.append(f"paper grid (58 runs), {mode} {amp}: {hours:.1f} GPU-hours")
    fastest: dict[str, tuple[float, float]] = {}
    for speed in speeds.values():
        for model, (train, infer) in speed.items():
            if model not in fastest or train > fastest[model][0]:
                fastest[model] = (train, infer)
    hours = grid_hours(fastest)
    if hours is not None:
        lines.append(f"paper grid (58 runs), each model in its fastest measured setting: {hours:.1f} GPU-hours")
    if not lines:
        lines.append("paper grid: not projected, some models were not measured in any setting")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu only for a dry run with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny batches, one pair, eager only: a dry run")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="seconds for the measurements (default 450: with start-up, under 8 minutes)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and round (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per step, fewer when slow (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure "
              "(for a dry run on the CPU: --device cpu --quick)", file=sys.stderr)
        return 2
    settings = _settings(args)
    if args.device == "cpu":
        tune_cpu_allocator()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    triton_state = "switched per mode" if _HAS_TRITON else "not installed (pip install 'minnets[gpu]')"
    _say(f"{name}, torch {torch.__version__}; Triton kernels {triton_state}; budget {settings.budget_s:.0f} s, "
         f"{settings.steps} steps x {settings.rounds} rounds per step")
    results = run_steps(settings)
    print(format_results(results))
    for line in projections(results):
        _say(line)
    if args.json is not None:
        from minnets.files import write_json

        write_json(args.json, {"device": name, "torch": torch.__version__, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
