"""JPEG robustness of a model or a run: predictions, test error and POCP, jpeg.csv, ``minnets jpeg``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minnets import robustness
from minnets.cli import main
from minnets.errors import MinnetsError
from minnets.jpeg import JpegCache, codec_version, compress
from minnets.config import RunConfig
from minnets.robustness import (
    COLUMNS,
    QUALITIES,
    evaluate_jpeg,
    format_jpeg_table,
    jpeg_metrics,
    predict,
    read_jpeg_csv,
    run_jpeg,
    write_jpeg_csv,
)
from minnets.rundir import load_run_model, write_config

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """64 smooth colour images with noise: JPEG changes them a little at high Q, a lot at low Q."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (64, 4, 4, 3)).astype(np.float32)
    smooth = coarse.repeat(8, axis=1).repeat(8, axis=2) + rng.normal(0, 25, (64, 32, 32, 3))
    return np.clip(smooth, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 10, 64)


def manual_predictions(model: nn.Module, images: np.ndarray) -> np.ndarray:
    x = (images.astype(np.float32) / 255 - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_on_hand_counted_predictions() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    original = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 0])  # wrong on images 8 and 9
    on_jpeg = np.array([0, 1, 2, 3, 4, 5, 9, 7, 8, 1])
    # Wrong after compression: image 6 (9 != 6) and image 9 (1 != 9): 2 of 10 -> 20 %.
    # Changed from the original predictions: image 6 (right -> wrong), image 8 (wrong -> right) and
    # image 9 (wrong -> another wrong class): 3 of 10 -> 30 %, more than the error rose (20 - 20 = 0).
    assert jpeg_metrics(labels, original, on_jpeg) == (20.0, 30.0)
    assert jpeg_metrics(labels, original, original) == (20.0, 0.0)
    assert jpeg_metrics(labels[:8], original[:8], on_jpeg[:8]) == (12.5, 12.5)  # one of eight


def test_metrics_are_exact_decimals_for_ten_thousand_images() -> None:
    labels = np.zeros(10_000, dtype=np.int64)
    preds = labels.copy()
    preds[:832] = 1
    assert jpeg_metrics(labels, labels, preds) == (8.32, 8.32)


def test_metrics_refuse_mismatched_lengths() -> None:
    with pytest.raises(MinnetsError, match="equally long"):
        jpeg_metrics(np.zeros(10), np.zeros(10), np.zeros(9))
    with pytest.raises(MinnetsError, match="equally long"):
        jpeg_metrics(np.zeros(0), np.zeros(0), np.zeros(0))


# --- predict -----------------------------------------------------------------------------------


class ModeSpy(nn.Module):
    """Records whether it was called in training mode and whether autograd was on."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


def test_predict_normalises_like_training_in_eval_mode_without_grad(images: np.ndarray) -> None:
    model = ModeSpy()
    model.train()
    preds = predict(model, images, MEAN, STD, "cpu", batch_size=500)
    np.testing.assert_array_equal(preds, manual_predictions(model.inner, images))
    assert model.seen == [(False, False)]
    assert model.training  # the caller's mode is restored


def test_predict_does_not_depend_on_batch_size(images: np.ndarray) -> None:
    model = tiny_model()
    reference = predict(model, images, MEAN, STD, "cpu")
    for batch_size in (7, 64):
        np.testing.assert_array_equal(predict(model, images, MEAN, STD, "cpu", batch_size), reference)


def test_predict_refuses_normalised_float_images(images: np.ndarray) -> None:
    with pytest.raises(MinnetsError, match="uint8"):
        predict(tiny_model(), images.astype(np.float32) / 255, MEAN, STD)


# --- evaluate_jpeg -----------------------------------------------------------------------------


def test_evaluate_jpeg_rows_match_a_manual_evaluation(images: np.ndarray, labels: np.ndarray, tmp_path) -> None:
    model = tiny_model()
    rows = evaluate_jpeg(model, images, labels, mean=MEAN, std=STD, qualities=(90, 50, 10), mode="paper",
                         dataset_name="toy", cache=JpegCache(tmp_path), device="cpu")
    assert [row["quality"] for row in rows] == [100, 90, 50, 10]
    original = manual_predictions(model, images)
    assert rows[0]["pocp"] == 0.0 and rows[0]["test_err"] == 100 * np.mean(original != labels)
    for row in rows[1:]:
        preds = manual_predictions(model, compress(images, row["quality"], "paper"))
        assert row["test_err"] == pytest.approx(100 * np.mean(preds != labels))
        assert row["pocp"] == pytest.approx(100 * np.mean(preds != original))
    assert rows[-1]["pocp"] > 0  # quality 10 changes some predictions of this model
    assert all(row["mode"] == "paper" and row["n_images"] == 64 and row["codec"] == codec_version("paper")
               for row in rows)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    again = evaluate_jpeg(model, images, labels, mean=MEAN, std=STD, qualities=(90, 50, 10), mode="paper",
                          dataset_name="toy", cache=None, device="cpu")
    assert again == rows


def test_evaluate_jpeg_sorts_and_deduplicates_qualities(images: np.ndarray, labels: np.ndarray) -> None:
    rows = evaluate_jpeg(tiny_model(), images[:8], labels[:8], mean=MEAN, std=STD, qualities=(10, 90, 90, 100),
                         mode="pillow", dataset_name="toy")
    assert [(row["quality"], row["mode"]) for row in rows] == [(100, "pillow"), (90, "pillow"), (10, "pillow")]
    assert QUALITIES == (90, 80, 70, 60, 50, 40, 30, 20, 10)


@pytest.mark.parametrize("qualities", [(90, 0), (101,), (50.5,)])
def test_evaluate_jpeg_refuses_bad_qualities(images: np.ndarray, labels: np.ndarray, qualities) -> None:
    with pytest.raises(MinnetsError, match="from 1 to 100"):
        evaluate_jpeg(tiny_model(), images, labels, mean=MEAN, std=STD, qualities=qualities, dataset_name="toy")


def test_evaluate_jpeg_refuses_labels_of_another_length(images: np.ndarray, labels: np.ndarray) -> None:
    with pytest.raises(MinnetsError, match="one label per image"):
        evaluate_jpeg(tiny_model(), images, labels[:10], mean=MEAN, std=STD, dataset_name="toy")


# --- jpeg.csv ----------------------------------------------------------------------------------


def rows_for(mode: str, errors: dict[int, tuple[float, float]]) -> list[dict]:
    return [{"quality": q, "mode": mode, "test_err": e, "pocp": p, "n_images": 10_000, "codec": f"codec of {mode}"}
            for q, (e, p) in errors.items()]


def test_jpeg_csv_round_trips_exactly_and_keeps_other_modes(tmp_path) -> None:
    paper = rows_for("paper", {100: (8.32, 0.0), 90: (10.1, 5.43), 10: (60.07, 58.9)})
    pillow = rows_for("pillow", {100: (8.32, 0.0), 50: (20.0, 1 / 3)})
    path = write_jpeg_csv(tmp_path, paper)
    assert path == tmp_path / "jpeg.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS) == "quality,mode,test_err,pocp,n_images,codec"
    assert read_jpeg_csv(path) == paper
    write_jpeg_csv(tmp_path, pillow)
    assert read_jpeg_csv(tmp_path) == paper + pillow
    newer = rows_for("paper", {90: (11.0, 6.0), 50: (15.0, 9.0)})
    write_jpeg_csv(tmp_path, newer)
    expected = [paper[0], newer[0], newer[1], paper[2], *pillow]  # one row per (quality, mode)
    assert read_jpeg_csv(path) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["jpeg.csv"]  # no temporary files left


def test_read_jpeg_csv_explains_missing_or_damaged_files(tmp_path) -> None:
    with pytest.raises(MinnetsError, match="minnets jpeg"):
        read_jpeg_csv(tmp_path / "jpeg.csv")
    (tmp_path / "jpeg.csv").write_text("quality,mode,test_err\n90,paper,1.0\n")
    with pytest.raises(MinnetsError, match="lacks the columns n_images, pocp"):
        read_jpeg_csv(tmp_path)
    (tmp_path / "jpeg.csv").write_text("quality,mode,test_err,pocp,n_images\nninety,paper,1,2,3\n")
    with pytest.raises(MinnetsError, match="damaged"):
        read_jpeg_csv(tmp_path)
    (tmp_path / "jpeg.csv").write_text("quality,mode,test_err,pocp,n_images\n90,paper,1.5,2,3\n")
    assert read_jpeg_csv(tmp_path) == [{"quality": 90, "mode": "paper", "test_err": 1.5, "pocp": 2.0,
                                        "n_images": 3, "codec": ""}]


def test_table_marks_the_original_and_names_the_codec() -> None:
    table = format_jpeg_table(rows_for("paper", {100: (8.32, 0.0), 90: (10.1, 5.43)}))
    lines = table.splitlines()
    assert "100 orig" in lines[1] and "8.32" in lines[1] and "0.00" in lines[1]
    assert lines[2].split() == ["paper", "90", "10.10", "5.43", "10000"]
    assert lines[-1] == "codec (paper): codec of paper"


# --- runs and the command line -----------------------------------------------------------------


def test_run_jpeg_explains_missing_and_unfinished_runs(tmp_path) -> None:
    with pytest.raises(MinnetsError, match="train it first: minnets train"):
        run_jpeg(tmp_path / "nowhere")
    write_config(tmp_path, RunConfig(model="resnet_n3", dataset="shapes10", num_classes=10))
    with pytest.raises(MinnetsError, match="unfinished"):
        run_jpeg(tmp_path, device="cpu")


@pytest.mark.parametrize("argv, message", [
    (["--qualities", "90,,80"], "invalid --qualities '90,,80'"),
    (["--qualities", "90,0"], "JPEG quality must be an integer from 1 to 100, got 0"),
    (["--qualities", ""], "invalid --qualities ''"),
    (["--qualities", "high"], "invalid --qualities"),
])
def test_cli_refuses_bad_quality_lists_in_one_line(tmp_path, capsys, argv, message) -> None:
    assert main(["jpeg", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minnets: error: ") and message in err and err.count("\n") == 1


def test_minnets_jpeg_on_a_hand_made_run(tmp_path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from minnets import data
    from minnets.models import create_model

    # A run in the documented format, with untrained weights (nothing is trained here).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir, RunConfig(model="resnet_n3", dataset="shapes10", num_classes=10, seed=9, epochs=1))
    torch.manual_seed(0)
    save_file(create_model("resnet_n3", num_classes=10).state_dict(), str(run_dir / "model.safetensors"))

    # Keep the test fast: a small shapes10 (100 training, 50 test images) instead of the full one.
    small = data.make_shapes10(seed=0, n_train=100, n_test=50)
    calls = []
    monkeypatch.setattr(robustness.evaluate, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or small)

    cache_dir = tmp_path / "cache"
    argv = ["jpeg", str(run_dir), "--qualities", "10,50", "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert [line.split()[2] for line in captured.err.splitlines()] == ["100", "50", "10"]  # a line per quality
    assert "100 orig" in out and f"codec (paper): {codec_version('paper')}" in out and "jpeg.csv" in out
    assert calls == [(("shapes10",), {"root": None})]
    rows = read_jpeg_csv(run_dir / "jpeg.csv")
    assert [(row["quality"], row["mode"], row["n_images"]) for row in rows] == [
        (100, "paper", 50), (50, "paper", 50), (10, "paper", 50)]
    assert len(list(cache_dir.glob("shapes10-paper-q*.npy"))) == 2

    model, _ = load_run_model(run_dir)
    expected = evaluate_jpeg(model, small.test_images, small.test_labels, mean=small.mean, std=small.std,
                             qualities=(50, 10), dataset_name="shapes10", device="cpu")
    assert rows == expected
