"""``minnets models``: every model's parameter count next to the published model's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minnets.cli import main

NAMES = [
    "resnet_n3", "resnet_n5", "resnet_n7", "resnet_n9",
    "min_resnet_n3", "min_resnet_n5", "min_resnet_n7", "min_resnet_n9",
    "densenet_l22", "densenet_l58", "densenet_l100",
    "min_densenet_l22", "min_densenet_l58", "min_densenet_l100",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


def rows_by_name(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_models_lists_all_14_models_matching_the_paper(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    rows = rows_by_name(capsys.readouterr().out)
    assert set(NAMES) <= set(rows)
    assert len(rows) == 15  # header and 14 models
    for name in NAMES:
        assert rows[name][-1] == "yes", rows[name]
    assert rows["min_densenet_l100"][1:3] == ["751,786", "751,786"]
    assert rows["resnet_n3"][1:3] == ["270,298", "270,298"]


def test_models_pattern_filters_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "min_resnet_*"]) == 0
    rows = rows_by_name(capsys.readouterr().out)
    assert sorted(set(rows) & set(NAMES)) == sorted(n for n in NAMES if n.startswith("min_resnet_"))
    assert len(rows) == 5


def test_python_dash_m_minnets_models_runs_in_a_subprocess() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "minnets", "models"], capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = rows_by_name(result.stdout)
    assert all(rows[name][-1] == "yes" for name in NAMES)


def test_a_pattern_that_matches_nothing_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "nothing*"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "no model matches 'nothing*'" in captured.err
