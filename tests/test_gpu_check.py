"""scripts/gpu_check.py: its refusal without a GPU and its projection of the paper's grid."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_grid_projection_counts_the_papers_58_runs(gpu_check):
    """40 ResNet runs (8 models x 5 seeds) of 200 epochs and 18 DenseNet runs (6 x 3) of 300,
    each epoch 50,000 training and 10,000 test images (paper Section 3, Appendix A.1)."""
    speed = {model: (1000.0, 4000.0) if "resnet" in model else (500.0, 2000.0)
             for pair in gpu_check.PAIRS for model in pair}
    resnet_run = 200 * (50_000 / 1000 + 10_000 / 4000)
    densenet_run = 300 * (50_000 / 500 + 10_000 / 2000)
    assert gpu_check.grid_hours(speed) == pytest.approx((40 * resnet_run + 18 * densenet_run) / 3600)
    del speed["min_densenet_l100"]
    assert gpu_check.grid_hours(speed) is None


def test_projection_takes_each_models_fastest_setting(gpu_check):
    rows = [{"pair": list(pair), "mode": mode, "amp": "fp32", "base_train": rate, "base_infer": 4 * rate,
             "min_train": rate, "min_infer": 4 * rate}
            for mode, rate in (("eager", 1000.0), ("triton", 2000.0)) for pair in gpu_check.PAIRS]
    rows[-1] = {**rows[-1], "min_train": 500.0}  # triton slower for one model: eager's speed counts there
    lines = gpu_check.projections(rows)
    assert any(line.endswith(f"eager fp32: {gpu_check.grid_hours(gpu_check._speeds(rows)[('eager', 'fp32')]):.1f} "
                             "GPU-hours") for line in lines)
    fastest = {**gpu_check._speeds(rows)[("triton", "fp32")], "min_densenet_l100": (1000.0, 4000.0)}
    assert lines[-1].endswith(f"fastest measured setting: {gpu_check.grid_hours(fastest):.1f} GPU-hours")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_in_one_line_without_a_gpu():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "no CUDA GPU" in result.stderr
