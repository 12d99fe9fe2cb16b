"""The suite interface and its one evaluator: resume after a kill, reuse of rows, the registry, the report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from minnets.cli import main
from minnets.config import RunConfig
from minnets.errors import MinnetsError
from minnets.models import create_model
from minnets.robustness import (
    Clean,
    JpegSuite,
    Perturbed,
    Suite,
    evaluate_suite,
    get_suite,
    read_suite_csv,
    suite_complete,
    write_suite_csv,
)
from minnets.robustness.adversarial import AdversarialSuite
from minnets.rundir import write_config


def make_run(run_dir: Path, model: str, data: Path | None, dataset: str = "cifar10", seed: int = 0) -> Path:
    """A run directory in the documented format with untrained weights (nothing is trained here)."""
    run_dir.mkdir(parents=True)
    write_config(run_dir, RunConfig(model=model, dataset=dataset, data=str(data) if data else None,
                                    num_classes=10, seed=seed, epochs=1))
    torch.manual_seed(seed)
    save_file(create_model(model, num_classes=10).state_dict(), str(run_dir / "model.safetensors"))
    return run_dir


class Darken(Suite):
    """A real suite of the interface: subtract ``level`` grey levels from every pixel."""

    name: ClassVar[str] = "darken"
    columns: ClassVar[tuple[str, ...]] = ("amount", "test_err", "pocp", "n_images", "version")
    key: ClassVar[tuple[str, ...]] = ("amount",)

    def __init__(self, amounts: tuple[int, ...] = (0, 60, 200), version: str = "v1") -> None:
        self.amounts, self._version, self.perturbed = amounts, version, []

    def levels(self) -> list[dict]:
        return [{"amount": a} for a in self.amounts]

    def version(self) -> str:
        return self._version

    def perturb(self, level: dict, clean: Clean) -> Perturbed:
        self.perturbed.append(level["amount"])
        return Perturbed((clean.images.astype(np.int16) - level["amount"]).clip(0, 255).astype(np.uint8))

    def parse_row(self, raw):
        return {**super().parse_row(raw), "amount": int(raw["amount"])}


@pytest.fixture
def clean(one_thread) -> Clean:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 10)).eval()
    return Clean(model, rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 40),
                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "toy")


def test_evaluator_rows_match_a_direct_count(clean: Clean) -> None:
    suite = Darken()
    rows = evaluate_suite(suite, clean)
    model = clean.model
    x = lambda imgs: (torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).float() / 255 - 0.5) / 0.25  # noqa: E731
    with torch.no_grad():
        original = model(x(clean.images)).argmax(1).numpy()
        dark = model(x((clean.images.astype(int) - 200).clip(0, 255).astype(np.uint8))).argmax(1).numpy()
    assert rows[0] == {"amount": 0, "test_err": 100 * np.count_nonzero(original != clean.labels) / 40, "pocp": 0.0,
                       "n_images": 40, "version": "v1"}
    assert rows[2]["pocp"] == 100 * np.count_nonzero(dark != original) / 40 > 0


def test_evaluator_reuses_rows_of_the_same_version_and_image_count(clean: Clean) -> None:
    first = evaluate_suite(Darken(), clean)
    again = Darken(amounts=(0, 60, 200, 120))
    assert evaluate_suite(again, clean, done=first)[:3] == first and again.perturbed == [120]
    newer = Darken(version="v2")
    assert [row["version"] for row in evaluate_suite(newer, clean, done=first)] == ["v2"] * 3
    assert newer.perturbed == [0, 60, 200]
    fewer = Clean(clean.model, clean.images[:10], clean.labels[:10], clean.mean, clean.std, "toy")
    smaller = Darken()
    evaluate_suite(smaller, fewer, done=first)
    assert smaller.perturbed == [0, 60, 200]  # rows of 40 images do not stand for 10


def test_csv_merges_levels_and_keeps_suite_order(tmp_path, clean: Clean) -> None:
    rows = evaluate_suite(Darken(), clean)
    write_suite_csv(tmp_path, Darken(), [rows[2]])
    write_suite_csv(tmp_path, Darken(), rows[:2])
    assert (tmp_path / "darken.csv").read_text().splitlines()[0] == "amount,test_err,pocp,n_images,version"
    assert read_suite_csv(tmp_path, Darken()) == rows


def test_registry_names_the_suites_and_refuses_others() -> None:
    assert isinstance(get_suite("jpeg"), JpegSuite) and isinstance(get_suite("adversarial"), AdversarialSuite)
    with pytest.raises(MinnetsError, match="unknown robustness suite 'blur'; choose from jpeg, corruptions, "
                                           "adversarial"):
        get_suite("blur")


def test_suite_complete_needs_every_default_level(tmp_path, clean: Clean) -> None:
    assert not suite_complete(tmp_path, "jpeg")
    suite = JpegSuite(qualities=(90, 10), cache=False)
    clean.images = np.repeat(np.repeat(clean.images, 4, 1), 4, 2)  # 32 x 32: JPEG needs 8 x 8 blocks anyway
    write_suite_csv(tmp_path, suite, evaluate_suite(suite, clean))
    assert not suite_complete(tmp_path, "jpeg")  # only 90 and 10 of the nine qualities
    full = JpegSuite(cache=False)
    write_suite_csv(tmp_path, full, evaluate_suite(full, clean))
    assert suite_complete(tmp_path, "jpeg")
    (tmp_path / "jpeg.csv").write_text("quality,mode\n90,paper\n")
    assert not suite_complete(tmp_path, "jpeg")  # damaged: evaluated again


def test_cli_refuses_an_unknown_suite_and_too_many_images(tmp_path, capsys, cifar_root) -> None:
    with pytest.raises(SystemExit):
        main(["robustness", str(tmp_path), "--suite", "blur"])
    assert "invalid choice: 'blur'" in capsys.readouterr().err
    run = make_run(tmp_path / "run", "resnet_n3", cifar_root)
    assert main(["robustness", str(run), "--suite", "jpeg", "--n", "10001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minnets: error: --n 10001 exceeds the 10000 test images") and err.count("\n") == 1


# --- kill and resume ---------------------------------------------------------------------------------


def _robustness(run: Path, env: dict[str, str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "minnets", "robustness", str(run), "--suite", "adversarial", "--attack", "pgd",
            "--eps", "2/255,8/255", "--n", "8", "--device", "cpu"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_suite_resumes_to_the_same_csv(tmp_path, cifar_root) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    reference = make_run(tmp_path / "reference", "resnet_n3", cifar_root)
    killed = make_run(tmp_path / "killed", "resnet_n3", cifar_root)
    whole = _robustness(reference, env)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    victim = _robustness(killed, env)
    csv = killed / "adversarial.csv"
    deadline = time.monotonic() + 600
    while not (csv.is_file() and "2/255" in csv.read_text()) and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    partial = csv.read_text()
    assert "pending" in partial and "8/255" not in partial  # killed mid-suite, after a checkpoint

    resumed = _robustness(killed, env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert csv.read_text() == (reference / "adversarial.csv").read_text()
    assert "pending" not in csv.read_text()


# --- report --------------------------------------------------------------------------------------------


def test_report_shows_suites_beside_baselines_and_marks_missing_and_unreliable(tmp_path) -> None:
    from minnets.reports.build import build_report

    runs = tmp_path / "runs"
    suite = AdversarialSuite("Linf", "2/255,8/255", "apgd")
    version = suite.version()
    numbers = {"resnet_n3": [(8.0, 0.0, "passed"), (60.0, 55.0, "passed"), (99.0, 91.0, "passed")],
               "min_resnet_n3": [(7.5, 0.0, "passed"), (40.0, 35.0, "unreliable: zero-grad 12.0%"),
                                 (70.0, 66.0, "unreliable: zero-grad 12.0%; large-eps apgd 64/255 80.0%")]}
    for model, values in numbers.items():
        for seed in (0, 1):
            run = runs / f"{model}_s{seed}"
            run.mkdir(parents=True)
            write_config(run, RunConfig(model=model, dataset="cifar10", num_classes=10, seed=seed, epochs=1))
            rows = [{"attack": "apgd", "norm": "Linf", "eps": eps, "test_err": err + seed, "pocp": pocp,
                     "n_images": 1000, "checks": checks, "version": version}
                    for eps, (err, pocp, checks) in zip(("0", "2/255", "8/255"), values)]
            write_suite_csv(run, suite, rows)
    report = build_report(runs, tmp_path / "report").read_text()
    section = report[report.index("### Robustness beyond JPEG"):]
    assert "#### CIFAR-10-C corruptions" in section and "**missing**" in section.split("#### Adversarial")[0]
    table = section[section.index("| eps"):].split("\n\n")[0].splitlines()
    assert table[0].split("|")[1:-1] == [" eps ", " resnet_n3 err ", " resnet_n3 POCP ", " min_resnet_n3 err ",
                                         " min_resnet_n3 POCP "]
    assert [cell.strip() for cell in table[3].split("|")[1:-1]] == ["2/255", "60.50", "55.00", "40.50 (unreliable)",
                                                                   "35.00"]
    assert "min_resnet_n3, eps 8/255: zero-grad 12.0%; large-eps apgd 64/255 80.0%" in section
    summary = (tmp_path / "report" / "adversarial_summary.csv").read_text().splitlines()
    assert any(line.startswith("cifar10") and ",min_resnet_n3,apgd Linf,8/255,2,70.5," in line and
               line.endswith(",unreliable") for line in summary), summary
    figure = tmp_path / "report" / "adversarial_cifar10_apgd_Linf.png"
    assert figure.is_file() and figure.stat().st_size > 10_000


def test_report_corruption_means_and_mce_against_the_paired_baseline(tmp_path) -> None:
    from minnets.reports.build import build_report
    from minnets.robustness.corruptions import BENCHMARK, CORRUPTIONS, CorruptionSuite

    runs = tmp_path / "runs"
    suite = CorruptionSuite()
    # Baseline: 20 % error on the 15, 40 % on the 4 extra; Min-Net: 15 % and 30 %, so its mCE is 75 %.
    for model, (bench, extra) in {"resnet_n3": (20.0, 40.0), "min_resnet_n3": (15.0, 30.0)}.items():
        run = runs / model
        run.mkdir(parents=True)
        write_config(run, RunConfig(model=model, dataset="cifar10", num_classes=10, seed=0, epochs=1))
        write_suite_csv(run, suite, [
            {"corruption": c, "severity": s, "test_err": bench if c in BENCHMARK else extra, "pocp": float(s),
             "n_images": 100, "source": "regenerated", "version": suite.version()}
            for c in CORRUPTIONS for s in range(1, 6)])
    report = build_report(runs, tmp_path / "report").read_text()
    section = report[report.index("#### CIFAR-10-C corruptions"):report.index("#### Adversarial")]
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in section.splitlines() if line.startswith("| ")}
    assert lines["gaussian_noise"] == ["20.00", "3.00", "15.00", "3.00"]  # baseline first, POCP mean of 1..5
    assert lines["severity 5, mean of 15"] == ["20.00", "5.00", "15.00", "5.00"]
    assert lines["mean of 15"] == ["20.00", "3.00", "15.00", "3.00"]
    assert lines["mean of 19"] == [f"{(15 * 20 + 4 * 40) / 19:.2f}", "3.00", f"{(15 * 15 + 4 * 30) / 19:.2f}", "3.00"]
    assert "- min_resnet_n3: mCE 75.00 % relative to resnet_n3" in section
    assert "**missing**: no run has adversarial results yet" in report
    figure = tmp_path / "report" / "corruptions_cifar10_CIFAR_10_C.png"
    assert figure.is_file()
