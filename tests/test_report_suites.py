"""The report's suite sections: JPEG through the same path as the other suites, and the corruption figure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from minnets.config import RunConfig
from minnets.reports import build_report
from minnets.reports.suites import GRID_FIGURE, VIEWS, csv_files
from minnets.rundir import write_config



def grid_height(rows: int) -> int:
    """Pixels of plot_corruption_grid's PNG with ``rows`` corruptions: 0.9 inch a row, 110 dpi."""
    return round((rows * 0.9 + 0.3) * 110)


def write_run(root: Path, model: str = "resnet_n3", seed: int = 9, **config: object) -> Path:
    """A run directory with only config.json (what the suite sections need besides the suite CSVs)."""
    run = root / f"{model}_seed{seed}"
    run.mkdir(parents=True)
    write_config(run, RunConfig(model=model, dataset="cifar10", num_classes=10, seed=seed, epochs=1, **config))
    return run


def corruptions_section(report: Path) -> str:
    text = report.read_text()
    return text[text.index("#### CIFAR-10-C corruptions"):text.index("#### Adversarial")]


@pytest.fixture
def no_cached_frost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No frost pictures in the corruption cache and no $MINNETS_DATA: only what the runs recorded counts."""
    monkeypatch.setenv("MINNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINNETS_DATA", raising=False)


def test_every_suite_is_one_view_and_jpeg_keeps_the_papers_files() -> None:
    assert set(VIEWS) == {"jpeg", "corruptions", "adversarial"}
    assert VIEWS["jpeg"].paper is not None and VIEWS["corruptions"].paper is None
    assert VIEWS["jpeg"].paper.tables == {("densenet", "test_err"): 2, ("densenet", "pocp"): 3,
                                          ("resnet", "test_err"): 4, ("resnet", "pocp"): 5}
    assert csv_files() == ["jpeg_error.csv", "jpeg_pocp.csv", "corruptions_summary.csv", "adversarial_summary.csv"]


def test_corruption_figure_shows_the_cifar_test_image_the_runs_recorded(tmp_path: Path, cifar_root: Path,
                                                                        no_cached_frost) -> None:
    write_run(tmp_path / "runs", data=str(cifar_root))
    report = build_report(tmp_path / "runs", tmp_path / "out")  # no --data: the runs' data folder
    section = corruptions_section(report)
    assert f"![CIFAR-10-C: cifar10 test image 0 (cat) under every corruption]({GRID_FIGURE})" in section
    assert "Frost is not shown" not in section  # the frost pictures beside the data were found
    with Image.open(tmp_path / "out" / GRID_FIGURE) as image:
        assert image.format == "PNG"
        # 19 rows (every corruption, frost included) of a clean tile and 5 severities.
        assert image.height == grid_height(19) and image.width > 600
    assert "**missing**: no run has corruptions results yet" in section  # the figure does not need results


def test_corruption_figure_leaves_out_frost_without_its_pictures_and_says_so(tmp_path: Path, cifar_root: Path,
                                                                             no_cached_frost) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(cifar_root / "cifar-10-batches-py", data / "cifar-10-batches-py")  # CIFAR-10 without frost/
    write_run(tmp_path / "runs")
    report = build_report(tmp_path / "runs", tmp_path / "out", data_root=data)
    section = corruptions_section(report)
    assert f"]({GRID_FIGURE})" in section
    assert (f"Frost is not shown: its six pictures are not in `{data / 'frost'}` or "
            f"`{tmp_path / 'cache' / 'corruptions' / 'frost'}` (frost picture") in section
    with Image.open(tmp_path / "out" / GRID_FIGURE) as image:
        assert image.height == grid_height(18)  # every corruption but frost


def test_without_cifar10_the_corruption_section_says_in_one_line_why_the_figure_is_absent(
        tmp_path: Path, no_cached_frost) -> None:
    write_run(tmp_path / "runs", data=str(tmp_path / "nowhere"))
    report = build_report(tmp_path / "runs", tmp_path / "out")
    lines = [line for line in corruptions_section(report).splitlines() if "corruption figure" in line]
    assert len(lines) == 1
    assert lines[0].startswith("**The corruption figure is missing**: the test images of `cifar10` could not be "
                               f"loaded (CIFAR-10 not found in {tmp_path / 'nowhere'}")
    assert not (tmp_path / "out" / GRID_FIGURE).exists()


def test_jpeg_levels_outside_the_papers_tables_are_named_and_stale_suite_csvs_removed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs")
    (run / "jpeg.csv").write_text("quality,mode,test_err,pocp,n_images,codec\n100,paper,8.0,0.0,100,c\n"
                                  "95,paper,9.0,1.0,100,c\n90,paper,12.0,5.0,100,c\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "corruptions_summary.csv").write_text("stale\n")
    text = build_report(tmp_path / "runs", out, data_root=tmp_path).read_text()
    assert "| resnet_n3 | ours | 1 | 8.00 | 12.00 | missing |" in text
    assert ("Also evaluated in mode `paper`, but not a column of the paper's tables or figures: 95 "
            "(see the runs' `jpeg.csv`).") in text
    assert "(jpeg_error.csv)" in text and "(jpeg_pocp.csv)" in text
    assert "![Figure 3: POCP against JPEG quality, mode paper](fig3_pocp_vs_quality_cifar10_paper.png)" in text
    assert (out / "fig4_test_err_vs_quality_cifar10_paper.png").is_file()
    assert not (out / "corruptions_summary.csv").exists()  # no corruption results: no stale numbers either
