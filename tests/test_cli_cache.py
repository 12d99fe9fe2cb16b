"""``minnets cache`` (sizes and --clear of the caches below $MINNETS_CACHE) and ``minnets --version``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minnets
import minnets.cli.cache
from minnets.cli import main
from minnets.jpeg import JpegCache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MINNETS_CACHE", str(root))
    return root


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"minnets {minnets.__version__}"


def test_cache_shows_the_real_jpeg_cache_with_its_size_and_clears_it(cache: Path, capsys) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    JpegCache().get_or_compress("unit-test", images, 50, "paper")  # a real entry, as `minnets jpeg` makes
    (cache / "kernels").mkdir()
    (cache / "kernels" / "lib.so").write_bytes(b"x" * 1500)
    files = [p for p in (cache / "jpeg").rglob("*") if p.is_file()]
    jpeg_bytes = sum(p.stat().st_size for p in files)
    assert files and jpeg_bytes > 0

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out.splitlines()[0]
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert f"{len(files)} file" in rows["jpeg"] and "JPEG-compressed test sets" in rows["jpeg"]
    assert "1.5 KB" in rows["kernels"] and "1 file " in rows["kernels"] + " "
    assert rows["total"].split()[1:3] == minnets.cli.cache.format_bytes(jpeg_bytes + 1500).split()

    assert main(["cache", "--clear", "jpeg"]) == 0
    assert not (cache / "jpeg").exists() and (cache / "kernels" / "lib.so").is_file()
    assert "cleared" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert not (cache / "kernels").exists()
    assert main(["cache"]) == 0 and capsys.readouterr().out.strip().endswith("empty")


def test_clearing_an_unknown_cache_is_a_one_line_error(cache: Path, capsys) -> None:
    (cache / "jpeg").mkdir(parents=True)
    assert main(["cache", "--clear", "jpg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no cache named 'jpg'" in err and "there: jpeg" in err
    assert (cache / "jpeg").is_dir()
