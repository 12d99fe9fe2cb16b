"""``minnets jpeg`` on a real (tiny) finished run: its numbers are printed once, in the table."""

from __future__ import annotations

import pytest

from minnets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_jpeg_prints_each_result_once(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet_n3", "--dataset", "shapes10", "--recipe", "quick", "--epochs", "1",
                 "--subset", "64", "--test-subset", "64", "--quiet", "--out", str(run), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["jpeg", str(run), "--qualities", "50", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.splitlines() if line.startswith("paper")]
    assert [row[1] for row in rows] == ["100", "50"]  # the table: each quality once
    assert "JPEG quality 50 evaluated" in err  # progress while it runs ...
    assert "%" not in err and "POCP" not in err  # ... without repeating the table's numbers
