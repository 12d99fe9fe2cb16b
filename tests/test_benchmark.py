"""``minnets benchmark`` and :mod:`minnets.benchmark`: what they report, not how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from minnets.benchmark import REQUIRED_KEYS, count_flops, data_check, format_table
from minnets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


TINY = ["--batch-size", "4", "--steps", "1", "--rounds", "1", "--warmup", "0", "--threads", "1",
        "--no-tune-allocator"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["benchmark", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_has_the_required_keys_for_every_model(capsys):
    code, out, err = run_cli(capsys, "--models", "resnet_n3,min_resnet_n3", *TINY, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [row["model"] for row in rows] == ["resnet_n3", "min_resnet_n3"]
    for row in rows:
        assert set(REQUIRED_KEYS) <= row.keys()
        for key in REQUIRED_KEYS[1:]:
            assert isinstance(row[key], float) and row[key] > 0, (key, row[key])
    # Paired speed relative to the first model: exactly 1 for the first itself.
    assert rows[0]["train_speed_vs_first"] == rows[0]["infer_speed_vs_first"] == 1.0
    assert rows[1]["train_speed_vs_first"] > 0 and rows[1]["infer_speed_vs_first"] > 0
    # Counted forward FLOPs: the Min-Net has fewer, per image and independent of the batch size.
    assert rows[1]["flops_per_img"] < rows[0]["flops_per_img"]
    assert "round 1/1 min_resnet_n3" in err  # progress goes to stderr, JSON alone to stdout


def test_table_lists_each_model(capsys):
    code, out, _ = run_cli(capsys, "--models", "min_densenet_l22", *TINY)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["model", "train", "img/s"]
    assert row.startswith("min_densenet_l22")


@pytest.mark.parametrize("argv, words", [
    (["--models", "resnet_n4"], "unknown model 'resnet_n4'"),
    (["--models", ","], "no models given"),
    (["--models", "resnet_n3", "--steps", "0"], "steps must be at least 1"),
    (["--models", "resnet_n3", "--device", "tpu"], "unknown device 'tpu'; use cpu or cuda"),
    (["--models", "resnet_n3", "--device", "meta"], "unsupported device 'meta'; use cpu or cuda"),
])
def test_bad_input_is_one_line_error(capsys, argv, words):
    code, out, err = run_cli(capsys, *argv, "--no-tune-allocator")
    assert code == 2 and out == ""
    assert err.startswith("minnets: error: ") and words in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_request_without_cuda_names_the_fix(capsys):
    code, _, err = run_cli(capsys, "--models", "resnet_n3", "--device", "cuda", "--no-tune-allocator")
    assert code == 2 and "--device cpu" in err


def test_flops_count_depthwise_backward_at_the_forward_cost():
    """PyTorch's own formula counts a depthwise conv's weight gradient ``channels`` times too high."""
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Flatten(), nn.Linear(8 * 16, 10))
    x, y = torch.randn(2, 8, 4, 4), torch.randint(0, 10, (2,))
    forward, train = count_flops(model, x, y)
    conv = 2 * 2 * 8 * 16 * 9  # 2 FLOPs per multiply-add, batch 2, 8 channels, 4x4 outputs, 3x3 taps
    linear = 2 * 2 * 128 * 10
    assert forward == conv + linear
    # Backward: the input of the first layer needs no gradient, so the conv adds its weight
    # gradient only; the linear layer adds both.
    assert train == forward + conv + 2 * linear


def test_data_check_reports_epoch_against_compute(capsys):
    row = data_check("min_resnet_n3", batch_size=4, steps=2, rounds=1, warmup=0, progress=False)
    assert row["model"] == "min_resnet_n3" and row["steps"] == 2
    assert row["epoch_s"] > 0 and row["compute_s"] > 0 and row["loader_s"] > 0
    assert row["ratio"] == pytest.approx(row["epoch_s"] / row["compute_s"])
    assert row["loader_share"] == pytest.approx(row["loader_s"] / row["compute_s"])
    assert format_table([row]).splitlines()[1].startswith("min_resnet_n3")


def test_data_check_from_the_command_line(capsys):
    code, out, _ = run_cli(capsys, "--models", "resnet_n3", "--data-check", *TINY, "--format", "json")
    assert code == 0
    (row,) = json.loads(out)
    assert {"epoch_s", "compute_s", "loader_s", "ratio"} <= row.keys()


def test_allocator_tuning_applies_on_glibc():
    """Process-wide, so it runs in a child process; on Linux with glibc it must take effect."""
    code = "from minnets.benchmark import tune_cpu_allocator as t; print(t())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expected = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())
    assert out.strip() == str(expected)


def test_profiler_logging_does_not_reach_the_output():
    """Kineto writes its ``USDT:`` lines to the process's stderr (fd 2), so capsys cannot see them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("KINETO_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-m", "minnets", "benchmark", "--models", "resnet_n3", *TINY],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "USDT" not in result.stderr + result.stdout and "profiler_start" not in result.stderr
    assert result.stdout.splitlines()[1].startswith("resnet_n3")
