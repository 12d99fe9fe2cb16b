"""minnets report: tables, figures and gaps from synthetic run directories with known numbers."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from minnets.cli import main
from minnets.errors import MinnetsError
from minnets.reports import build_report

PARAMS = {"resnet_n3": 270_298, "min_resnet_n3": 217_082}
# Known numbers: (seed, final error, min over epochs, JPEG results or None)
RESNET = [(9, 8.0, 7.9, True), (16, 8.5, 8.2, True), (507, 9.1, 8.8, False)]
MIN_RESNET = [(9, 7.5, 7.4, True), (16, 7.9, 7.7, True)]


def jpeg_values(final: float, seed: int) -> dict[int, tuple[float, float]]:
    """Made-up JPEG results: error and POCP grow as the quality falls, seed-dependent."""
    return {q: (final if q == 100 else final + (100 - q) / 2 + seed / 100,
                0.0 if q == 100 else (100 - q) / 2 + seed / 1000)
            for q in range(100, 0, -10)}


def write_run(root: Path, model: str, seed: int, final: float | None, min_err: float | None,
              jpeg: bool, dataset: str = "cifar10", epochs: int = 200,
              modes: tuple[str, ...] = ("paper",), **config_keys: object) -> Path:
    """A run directory in the documented format; ``final=None`` leaves it unfinished.

    ``config_keys`` are added to (or replace) config.json's keys, e.g. ``test_subset=200``;
    a name-only key ``folder`` puts the run below another folder than the dataset's.
    """
    run = root / str(config_keys.pop("folder", dataset)) / f"{model}_seed{seed}"
    run.mkdir(parents=True)
    family, depth, min_net = "resnet", 3, model.startswith("min_")
    config = {"model": model, "dataset": dataset, "seed": seed, "epochs": epochs,
              "batch_size": 128, "lr": 0.1, "recipe": "resnet", "subset": None, "init": "paper",
              "versions": {"torch": "2.13.0"}, **config_keys}
    (run / "config.json").write_text(json.dumps(config))
    done = 3 if final is not None else 2
    errors = [40.0, min_err or 20.0, final or 25.0][:done]
    with open(run / "metrics.csv", "w", newline="") as handle:
        handle.write("epoch,lr,train_loss,train_err,test_loss,test_err,seconds\n")
        for epoch, err in enumerate(errors, start=1):
            handle.write(f"{epoch},0.1,1.0,{round(err - 5, 6)},1.2,{err},10.0\n")  # train error 5 points lower
    if final is None:
        return run
    summary = {"model": model, "dataset": dataset, "family": family, "depth": depth,
               "min_net": min_net, "num_params": PARAMS[model], "seed": seed,
               "final_test_err": final, "min_test_err": min_err, "argmin_epoch": 2,
               "epochs": epochs, "wall_seconds": 30.0}
    (run / "summary.json").write_text(json.dumps(summary))
    if jpeg:
        with open(run / "jpeg.csv", "w", newline="") as handle:
            handle.write("quality,mode,test_err,pocp,n_images\n")
            for mode in modes:
                for q, (err, pocp) in jpeg_values(final, seed).items():
                    handle.write(f"{q},{mode},{err},{pocp},10000\n")
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report over a partial paper grid: 2 ResNet N=3 models, one unfinished run."""
    root = tmp_path_factory.mktemp("runs")
    for seed, final, min_err, jpeg in RESNET:
        write_run(root, "resnet_n3", seed, final, min_err, jpeg, modes=("paper", "correct"))
    for seed, final, min_err, jpeg in MIN_RESNET:
        write_run(root, "min_resnet_n3", seed, final, min_err, jpeg)
    write_run(root, "min_resnet_n3", 507, None, None, False)  # still training
    out = root.parent / "report"
    return build_report(root, out, data_root=root / "no-data-here")


def table1(report: Path) -> dict[str, dict[str, str]]:
    return {row["model"]: row for row in read_csv(report.parent / "table1.csv")}


def test_table1_statistics_over_seeds_equal_hand_computed_values(report: Path) -> None:
    row = table1(report)["resnet_n3"]
    mean = (8.0 + 8.5 + 9.1) / 3
    std = math.sqrt(((8.0 - mean) ** 2 + (8.5 - mean) ** 2 + (9.1 - mean) ** 2) / 2)  # ddof=1
    assert float(row["final_mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(row["final_std"]) == pytest.approx(std, abs=1e-4)
    assert float(row["final_std"]) == pytest.approx(0.5508, abs=1e-4)
    assert (float(row["final_min"]), float(row["final_max"])) == (8.0, 9.1)
    min_mean = (7.9 + 8.2 + 8.8) / 3
    assert float(row["min_mean"]) == pytest.approx(min_mean, abs=1e-4)
    assert (float(row["min_min"]), float(row["min_max"])) == (7.9, 8.8)
    assert row["n_seeds"] == "3" and row["n_expected"] == "5" and row["seeds"] == "9 16 507"
    assert row["params"] == "270298" and row["paper_params"] == "270298"

    other = table1(report)["min_resnet_n3"]
    assert float(other["final_mean"]) == pytest.approx(7.7, abs=1e-4)
    assert float(other["final_std"]) == pytest.approx(math.sqrt(0.08), abs=1e-4)
    assert other["n_seeds"] == "2" and other["unfinished"] == "1"


def test_table1_puts_the_papers_numbers_and_the_differences_beside_ours(report: Path) -> None:
    rows = table1(report)
    ours = (8.0 + 8.5 + 9.1) / 3
    assert float(rows["resnet_n3"]["paper_final_mean"]) == 8.32
    assert float(rows["resnet_n3"]["paper_final_std"]) == 0.38
    assert float(rows["resnet_n3"]["diff_final_mean"]) == pytest.approx(ours - 8.32, abs=1e-4)
    assert float(rows["min_resnet_n3"]["paper_final_mean"]) == 8.05
    assert float(rows["min_resnet_n3"]["diff_final_mean"]) == pytest.approx(7.7 - 8.05, abs=1e-4)
    # The paper gives no ResNet min/max or min-over-epochs: empty, not n/a and not zero.
    assert rows["resnet_n3"]["paper_final_min"] == "" and rows["resnet_n3"]["diff_min_mean"] == ""
    text = report.read_text()
    assert "| resnet_n3 | 270,298 | 270,298 | 3/5 | 8.53 | 0.55 | 8.00 | 9.10 | 8.32 | 0.38 | – | – | +0.21 |" in text


def test_models_and_seeds_missing_from_the_paper_grid_are_marked(report: Path) -> None:
    rows = table1(report)
    assert rows["resnet_n9"]["n_seeds"] == "0" and rows["resnet_n9"]["final_mean"] == ""
    assert float(rows["resnet_n9"]["paper_final_mean"]) == 6.27
    text = report.read_text()
    assert "| resnet_n9 | missing | 854,938 | 0/5 | missing |" in text
    missing = text[text.index("## Missing and unfinished"):]
    assert "| cifar10 | resnet_n3 | 723 744 |" in missing
    assert "| cifar10 | min_resnet_n3 | 723 744 |" in missing  # 507 exists, unfinished
    assert "| cifar10 | resnet_n5 | 9 16 507 723 744 |" in missing
    assert "densenet" not in missing  # no DenseNet run: its grid is not expected


def test_unfinished_runs_and_runs_without_jpeg_are_listed(report: Path) -> None:
    text = report.read_text()
    missing = text[text.index("## Missing and unfinished"):text.index("## Runs")]
    unfinished = missing[missing.index("### Unfinished"):]
    assert "| cifar10/min_resnet_n3_seed507 | min_resnet_n3 | 507 | 2/200 |" in unfinished
    no_jpeg = missing[missing.index("### Finished runs without JPEG"):]
    assert "| cifar10/resnet_n3_seed507 | resnet_n3 | 507 |" in no_jpeg
    runs = {row["run"]: row for row in read_csv(report.parent / "runs.csv")}
    assert len(runs) == 6
    assert runs["cifar10/min_resnet_n3_seed507"]["status"] == "unfinished"
    assert runs["cifar10/resnet_n3_seed9"]["jpeg_modes"] == "correct paper"


def test_jpeg_tables_average_seeds_with_results_beside_the_paper(report: Path) -> None:
    error = {(r["model"], r["mode"], int(r["quality"])): r for r in read_csv(report.parent / "jpeg_error.csv")}
    row = error[("resnet_n3", "paper", 90)]
    expected = ((8.0 + 5 + 0.09) + (8.5 + 5 + 0.16)) / 2  # seeds 9 and 16; 507 has no jpeg.csv
    assert float(row["mean"]) == pytest.approx(expected, abs=1e-4)
    assert row["n_seeds"] == "2" and row["paper_table"] == "4"
    assert float(row["paper"]) == 13.2  # paper Table 4
    assert float(row["diff"]) == pytest.approx(expected - 13.2, abs=1e-4)
    assert error[("resnet_n3", "correct", 90)]["paper"] == "n/a"  # the paper used mode "paper"
    assert error[("resnet_n9", "paper", 90)]["mean"] == ""
    pocp = {(r["model"], r["mode"], int(r["quality"])): r for r in read_csv(report.parent / "jpeg_pocp.csv")}
    assert float(pocp[("min_resnet_n3", "paper", 90)]["paper"]) == 9.5  # paper Table 5
    assert 100 not in {q for (_, _, q) in pocp}  # the paper's POCP tables start at Q=90
    text = report.read_text()
    assert "#### Table 4: ResNet, test error (%) per JPEG quality, mode `paper`" in text
    assert "#### Table 5: ResNet, POCP (%) per JPEG quality, mode `correct`" in text
    assert "| resnet_n9 | ours | 0/5 | missing |" in text


def test_figures_are_valid_pngs_and_referenced_by_the_report(report: Path) -> None:
    text = report.read_text()
    names = {
        "fig2_error_vs_params_cifar10.png",
        "fig3_pocp_vs_quality_cifar10_paper.png",
        "fig4_test_err_vs_quality_cifar10_paper.png",
        "fig3_pocp_vs_quality_cifar10_correct.png",
        "curves_cifar10_resnet.png",
    }
    for name in names:
        assert f"]({name})" in text
        with Image.open(report.parent / name) as image:
            image.verify()
        with Image.open(report.parent / name) as image:
            assert image.format == "PNG" and image.width > 600 and image.height > 400
    assert not list(report.parent.glob(".*.tmp"))


def test_figure5_is_replaced_by_a_note_when_the_dataset_cannot_be_loaded(report: Path) -> None:
    text = report.read_text()
    assert "**Figure 5 is missing**" in text and "--data DIR" in text
    assert not (report.parent / "fig5_jpeg_examples.png").exists()


def test_figure5_shows_a_cifar_test_image_at_every_quality(tmp_path: Path, cifar_root: Path) -> None:
    write_run(tmp_path / "runs", "resnet_n3", 9, 8.0, 7.9, True)
    report = build_report(tmp_path / "runs", tmp_path / "out", data_root=cifar_root)
    assert "![Figure 5: cifar10 test image 0 (cat) at every JPEG quality](fig5_jpeg_examples.png)" in report.read_text()
    with Image.open(tmp_path / "out" / "fig5_jpeg_examples.png") as image:
        assert image.format == "PNG" and image.width > 1500


def test_other_datasets_and_settings_are_reported_without_paper_comparison(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    first = write_run(root, "resnet_n3", 0, 3.0, 2.5, True, dataset="cifar100", epochs=5)
    write_run(root, "resnet_n3", 1, 4.0, 3.5, False, dataset="cifar100", epochs=5)
    write_run(root, "resnet_n3", 2, 2.0, 1.5, False, dataset="cifar100", epochs=2)
    shutil.copytree(first, root / "again" / first.name)  # the same seed twice
    jpeg = first / "jpeg.csv"
    jpeg.write_text("".join(jpeg.read_text().splitlines(keepends=True)[:6]))  # Q=100..60 only
    report = build_report(root, tmp_path / "out", data_root=tmp_path)
    rows = read_csv(tmp_path / "out" / "table1.csv")
    assert {row["setting"] for row in rows} == {"epochs=5", "epochs=2"}  # never averaged together
    five = next(row for row in rows if row["setting"] == "epochs=5")
    assert float(five["final_mean"]) == pytest.approx(10 / 3, abs=1e-4) and five["n_expected"] == ""
    assert five["paper_final_mean"] == "n/a" and five["diff_final_mean"] == "n/a"
    text = report.read_text()
    assert "## Experiment: cifar100 (epochs=5)" in text and "this experiment has no paper columns" in text
    # Table 1 on a dataset the paper never used: no paper or Δ columns at all, not columns of n/a.
    table = text[text.index("## Experiment: cifar100 (epochs=5)"):]
    table = table[table.index("(a) After the last epoch"):table.index("### Figure 2")]
    assert "| model | params | seeds | mean | std | min | max |" in table
    assert "| resnet_n3 | 270,298 | 3 | 3.33 | 0.58 | 3.00 | 4.00 |" in table
    assert "n/a" not in table and "paper" not in table and "Δ" not in table
    assert "| cifar100 (epochs=5) | resnet_n3 | 0 |" in text  # listed as a repeated seed
    assert "| cifar100/resnet_n3_seed0 | paper | 50 40 30 20 10 |" in text  # incomplete JPEG
    assert "Expected by the paper's grid" not in text  # not a CIFAR-10 paper grid
    assert (tmp_path / "out" / "fig2_error_vs_params_cifar100_epochs_5.png").is_file()


def test_unfinished_only_and_unknown_models_still_give_a_report(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "min_resnet_n3", 9, None, None, False)
    other = root / "cifar10" / "tiny"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model": "tiny_cnn", "dataset": "cifar10", "seed": 1}))
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    report = build_report(root, tmp_path / "out", data_root=tmp_path)
    text = report.read_text()
    assert "2 runs: 0 finished, 2 unfinished, plus 1 unreadable" in text
    assert "| broken | " in text and "config.json is damaged" in text
    assert "No finished ResNet or DenseNet run yet" in text
    assert "| tiny_cnn | missing | n/a |" in text  # no paper numbers for an unknown model
    assert (tmp_path / "out" / "curves_cifar10_other.png").is_file()
    assert not (tmp_path / "out" / "jpeg_error.csv").exists()


def test_a_runs_root_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MinnetsError, match="no run directories found under .*config.json"):
        build_report(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MinnetsError, match="is not a directory"):
        build_report(tmp_path / "nowhere", tmp_path / "out")


def test_cli_builds_the_report_and_prints_errors_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "runs", "resnet_n3", 0, 80.0, 79.0, False, epochs=3)
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert (out / "table1.csv").is_file()
    assert "**Not the paper's recipe**: ResNet runs with epochs = 3 (paper: 200)" in (out / "report.md").read_text()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("minnets: error: no run directories found")


def test_runs_on_a_test_subset_are_neither_averaged_with_full_test_runs_nor_taken_for_the_recipe(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "resnet_n3", 9, 8.0, 7.9, False)
    write_run(root, "resnet_n3", 16, 30.0, 29.0, False, test_subset=200, folder="quick")
    report = build_report(root, tmp_path / "out", data_root=tmp_path)
    rows = {row["setting"]: row for row in read_csv(tmp_path / "out" / "table1.csv") if row["model"] == "resnet_n3"}
    assert set(rows) == {"test_subset=None", "test_subset=200"}
    assert float(rows["test_subset=None"]["final_mean"]) == 8.0 and rows["test_subset=None"]["n_seeds"] == "1"
    assert float(rows["test_subset=200"]["final_mean"]) == 30.0
    text = report.read_text()
    quick = text[text.index("## Experiment: cifar10 (test_subset=200)"):]
    assert "**Not the paper's recipe**: ResNet runs with test_subset = 200 test images (paper: all)" in quick
    full = text[text.index("## Experiment: cifar10 (test_subset=None)"):text.index("## Experiment: cifar10 (test_subset=200)")]
    assert "Not the paper's recipe" not in full
    assert "tested on the first 200 test images" in text[:text.index("Built by")]


def test_figure5_reads_the_data_folder_the_runs_recorded(tmp_path: Path, cifar_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    write_run(tmp_path / "runs", "resnet_n3", 9, 8.0, 7.9, False, data=str(cifar_root))
    report = build_report(tmp_path / "runs", tmp_path / "out")  # no --data
    assert "![Figure 5: cifar10 test image 0 (cat) at every JPEG quality]" in report.read_text()
    assert (tmp_path / "out" / "fig5_jpeg_examples.png").is_file()


def test_figure2_legend_names_only_what_is_drawn(tmp_path: Path) -> None:
    from minnets.reports import figures
    from minnets.reports.runs import find_runs
    from minnets.reports.tables import build_experiments

    root = tmp_path / "runs"
    write_run(root, "resnet_n3", 9, 8.0, 7.9, False)  # one seed: no std bars, no min-max band
    for seed, final in ((9, 7.5), (16, 7.9)):
        write_run(root, "min_resnet_n3", seed, final, final - 0.1, False)
    (experiment,) = build_experiments(find_runs(root)[0])
    fig = figures.error_vs_params(experiment, tmp_path / "fig2.png")
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert "ours: baseline, one seed" in labels and "ours: Min-Net, mean ± std" in labels
    assert "ours: Min-Net, min to max" in labels
    assert not any("baseline, min to max" in label or "baseline, mean ± std" in label for label in labels)
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    # Bars and band (collections) of the Min-Net only: blue; the baseline (black) has none to draw.
    colors = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in ax.collections}
    assert len(ax.collections) == 2 and colors == {tuple(np.round(to_rgb("tab:blue"), 3))}


def test_training_curves_share_one_linear_axis_and_show_train_beside_test_error(tmp_path: Path) -> None:
    from minnets.reports import figures
    from minnets.reports.runs import find_runs
    from minnets.reports.tables import build_experiments

    root = tmp_path / "runs"
    write_run(root, "resnet_n3", 9, 8.0, 7.9, False)
    write_run(root, "min_resnet_n3", 9, 7.5, 7.4, False)
    write_run(root, "min_resnet_n3", 16, None, None, False)  # unfinished: drawn faint
    (experiment,) = build_experiments(find_runs(root)[0])
    fig = figures.training_curves(experiment, "resnet", tmp_path / "curves.png")
    train_ax, test_ax = fig.axes  # one row: the grid's N = 5, 7, 9 have no runs yet, so no rows
    assert "train error" in train_ax.get_title() and "test error" in test_ax.get_title()
    assert train_ax.get_yscale() == test_ax.get_yscale() == "linear"
    assert test_ax.get_shared_y_axes().joined(train_ax, test_ax)
    # Both models in the same panels, in the paper's styles: baseline black dashed, Min-Net blue solid.
    drawn = [line for line in test_ax.get_lines() if len(line.get_xdata())]
    assert {(line.get_color(), line.get_linestyle()) for line in drawn} == {("black", "--"), ("tab:blue", "-")}
    assert sorted(tuple(line.get_ydata()) for line in test_ax.get_lines() if len(line.get_xdata())) == [
        (40.0, 7.4, 7.5), (40.0, 7.9, 8.0), (40.0, 20.0)]
    assert sorted(tuple(line.get_ydata()) for line in train_ax.get_lines()) == [
        (35.0, 2.4, 2.5), (35.0, 2.9, 3.0), (35.0, 15.0)]
    labels = [text.get_text() for text in test_ax.get_legend().get_texts()]
    assert labels == ["baseline (resnet_n3): 1 seed", "Min-Net (min_resnet_n3): 1 seed + 1 unfinished"]
    assert all(float(tick).is_integer() for tick in train_ax.get_xticks())


def test_a_demo_report_says_first_that_shapes10_is_not_a_benchmark_and_gives_the_recipe(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "resnet_n3", 0, 30.0, 29.0, False, dataset="shapes10", epochs=4, recipe="quick",
              subset=5000)
    text = build_report(root, tmp_path / "out").read_text()
    head = text.splitlines()[:8]
    assert any("**shapes10 is demo data, not a benchmark**" in line for line in head)
    assert any("recipe `quick`, 4 epochs, batch 128, lr 0.1; trained on the first 5,000 training images, "
               "tested on all test images; 1 seed (0), 1 run." in line for line in head), head
    assert "1 run: 1 finished, 0 unfinished. Datasets: shapes10 (1 run)." in text
    assert "1 runs" not in text


def test_real_runs_from_minnets_train_are_grouped_by_their_recorded_settings(tmp_path: Path) -> None:
    """Config files as `minnets train` writes them: only the test split differs, so two experiments."""
    common = ["train", "--model", "resnet_n3", "--dataset", "shapes10", "--recipe", "quick", "--epochs", "1",
              "--subset", "64", "--quiet", "--device", "cpu", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "runs" / "full")]) == 0
    assert main([*common, "--test-subset", "100", "--out", str(tmp_path / "runs" / "quick")]) == 0
    report = build_report(tmp_path / "runs", tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table1.csv")
    assert sorted(row["setting"] for row in rows) == ["test_subset=100", "test_subset=None"]
    assert all(row["n_seeds"] == "1" for row in rows)
    head = report.read_text().split("Built by")[0]
    assert "tested on the first 100 test images" in head and "tested on all test images" in head
    assert "trained on the first 64 training images" in head
