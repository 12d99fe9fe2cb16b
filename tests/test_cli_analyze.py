"""`minnets analyze` on tiny real trained runs, and the report's ablation and analysis sections."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minnets.analysis.geometry import filter_angles
from minnets.cli import main
from minnets.models import create_model
from minnets.reports.build import build_report

TINY = ["--dataset", "shapes10", "--epochs", "1", "--subset", "200", "--test-subset", "100", "--batch-size", "50",
        "--quiet"]
ANALYSE = ["--units", "2", "--images", "10", "--grid", "9", "--ascent-steps", "3"]
TABLES = ("blocks.csv", "gamma.csv", "units.csv", "end_stopping.csv", "iso_response.csv")
FIGURES = ("gamma_hist.png", "filters_stack1.png", "filters_stack2.png", "filters_stack3.png", "iso_examples.png",
           "curvature.png", "end_stopping.png")


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Min-Net (min), one with the product operator, and the baseline, 1 epoch on 200 images."""
    root = tmp_path_factory.mktemp("runs")
    for name, args in (("min", ["--model", "min_resnet_n3"]), ("product", ["--model", "min_resnet_n3", "--unit",
                                                                           "product"]),
                       ("baseline", ["--model", "resnet_n3"])):
        assert main(["train", *args, *TINY, "--out", str(root / name)]) == 0
    return root


@pytest.fixture(scope="session")
def analysed(runs_root: Path) -> Path:
    for name in ("min", "baseline"):
        assert main(["analyze", str(runs_root / name), *ANALYSE]) == 0
    return runs_root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_analyze_writes_every_table_and_figure(analysed: Path) -> None:
    out = analysed / "min" / "analysis"
    for name in (*TABLES, *FIGURES, "analysis.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "analysis.json").read_text())
    assert result["unit"] == "min" and sorted(result["figures"]) == sorted(FIGURES)
    weights = load_file(str(analysed / "min" / "model.safetensors"))
    for index, (block, channels) in enumerate((("stack1", 32), ("stack2", 64), ("stack3", 128))):
        prefix = f"stacks.{index}.0.min_unit."
        gamma = filter_angles(weights[prefix + "filter_v.weight"], weights[prefix + "filter_g.weight"])
        entry = result["blocks"][block]
        assert entry["kind"] == "min" and entry["channels"] == channels
        assert entry["gamma_deg"]["median"] == pytest.approx(float(np.median(gamma)))
        assert 0.0 <= entry["silent_fraction"] <= 1.0
        assert len(entry["iso_units"]) == 2
    torch.manual_seed(0)  # the run's seed: training built its model right after seeding
    fresh = create_model("min_resnet_n3").stacks[0][0].min_unit
    initial = filter_angles(fresh.filter_v.weight, fresh.filter_g.weight)
    assert result["blocks"]["stack1"]["gamma_deg_initial"]["median"] == pytest.approx(float(np.median(initial)))
    assert len(_csv(out / "gamma.csv")) == 32 + 64 + 128
    assert len(_csv(out / "end_stopping.csv")) == 32  # the first block's units
    fits = _csv(out / "iso_response.csv")
    assert {row["plane"] for row in fits} == {"random", "other_unit"}
    assert len(fits) == 3 * 2 * 2 * 4  # blocks x units x planes x levels


def test_analyze_resumes_finished_steps(analysed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(analysed / "min"), *ANALYSE]) == 0
    log = capsys.readouterr().err
    assert log.count("kept from an earlier run") == 6  # filters, silent, end-stopping, 3 iso-response blocks


def test_analyze_a_baseline_measures_the_corresponding_blocks(analysed: Path) -> None:
    out = analysed / "baseline" / "analysis"
    result = json.loads((out / "analysis.json").read_text())
    assert [(b, e["kind"], e["channels"]) for b, e in result["blocks"].items()] == [
        ("stack1", "baseline", 16), ("stack2", "baseline", 32), ("stack3", "baseline", 64)]
    assert all("gamma_deg" not in entry for entry in result["blocks"].values())  # no filter pairs
    assert not (out / "gamma_hist.png").exists() and (out / "curvature.png").is_file()


def test_report_shows_the_ablation_and_the_analyses(analysed: Path, tmp_path: Path) -> None:
    report = build_report(analysed, tmp_path / "report").read_text()
    ablation = report[report.index("## AND operator ablation"):report.index("## Hyperselectivity analysis")]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in ablation.splitlines() if line.startswith("| ")}
    assert table["min"][0] == "1" and table["product"][0] == "1"
    assert table["max"] == ["0", "missing", "missing", "missing", "missing"]  # no run with that operator
    assert table["baseline (resnet_n3)"][0] == "1"
    assert table["paper Min-Net (min)"][0] == "n/a"  # shapes10: the paper has no number
    product = json.loads((analysed / "product" / "summary.json").read_text())["final_test_err"]
    assert table["product"][1] == f"{product:.2f}"
    assert "## Hyperselectivity analysis" in report
    for line in report.splitlines():
        if line.startswith("!["):
            assert (tmp_path / "report" / line.split("](")[1].rstrip(")")).is_file(), line
    assert "analysis/shapes10_min_resnet_n3_min/iso_examples.png" in report
    assert (tmp_path / "report" / "and_operator_summary.csv").is_file()
    assert (tmp_path / "report" / "analysis_summary.csv").is_file()


def test_analyze_refuses_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minnets: error:") and "\n" not in err
