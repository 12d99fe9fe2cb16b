"""Shared fixtures: the real CIFAR-10 ($MINNETS_DATA, else ../shared/data), and a small thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINNETS_DATA") or REPO_ROOT.parent / "shared" / "data").expanduser()

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """Directory holding the real ``cifar-10-batches-py/``; skips when it is absent."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 not found in {SHARED_DATA} (expected cifar-10-batches-py/)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """For modules of tiny tensors, where one thread beats two (above all on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
