"""CIFAR-10-C files: the released-format reader, downloads from 127.0.0.1, the regenerated cache, the suite."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from minnets.cli import main
from minnets.data import load_dataset
from minnets.errors import MinnetsError
from minnets.robustness import cifar10c
from minnets.robustness import corruptions as C
from minnets.robustness.evaluate import evaluate_suite
from minnets.robustness.suite import Clean, get_suite

FROST = REPO_ROOT.parent / "shared" / "data" / "frost"
PER = 4  # images per severity in the small released-format sets made here


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the caller's data or cache folders."""
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    monkeypatch.setenv("MINNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return load_dataset("cifar10", root=cifar_root)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def released_set(root: Path, labels: np.ndarray, names=("gaussian_noise", "fog")) -> dict[str, np.ndarray]:
    """``root/CIFAR-10-C`` in the released layout: severity blocks of PER images, labels repeated."""
    rng = np.random.default_rng(0)
    arrays = {name: rng.integers(0, 256, (5 * PER, 32, 32, 3), dtype=np.uint8) for name in names}
    for name, array in arrays.items():
        save(root / "CIFAR-10-C" / f"{name}.npy", array)
    save(root / "CIFAR-10-C" / "labels.npy", np.tile(labels[:PER], 5).astype(np.uint8))
    return arrays


# --- released ---------------------------------------------------------------------------------


def test_released_reader_takes_each_severity_block(tmp_path, cifar, monkeypatch):
    arrays = released_set(tmp_path, cifar.test_labels)
    released = cifar10c.Released(cifar10c.find_released(tmp_path))
    assert released.per_severity == PER
    for severity in C.SEVERITIES:
        block = arrays["fog"][(severity - 1) * PER:severity * PER]
        assert np.array_equal(released.images("fog", severity), block)
        assert np.array_equal(released.images("fog", severity, n=2), block[:2])
    assert np.array_equal(released.severity_labels(3), cifar.test_labels[:PER])
    monkeypatch.setenv("MINNETS_DATA", str(tmp_path))
    assert cifar10c.find_released(None) == tmp_path / "CIFAR-10-C"
    assert cifar10c.find_released(tmp_path / "CIFAR-10-C") == tmp_path / "CIFAR-10-C"
    assert cifar10c.find_released(tmp_path / "elsewhere") is None


def test_released_reader_refuses_bad_files_in_one_line(tmp_path, cifar):
    released_set(tmp_path, cifar.test_labels)
    folder = tmp_path / "CIFAR-10-C"
    save(folder / "snow.npy", np.zeros((5 * PER, 32, 32), dtype=np.uint8))
    save(folder / "frost.npy", np.zeros((5 * PER, 32, 32, 3), dtype=np.float32))
    np.save(folder / "contrast.npy", np.array([{"evil": 1}] * 3, dtype=object), allow_pickle=True)
    released = cifar10c.Released(folder)
    with pytest.raises(MinnetsError, match=r"snow.npy should be uint8 of shape \(20, 32, 32, 3\)"):
        released.images("snow", 1)
    with pytest.raises(MinnetsError, match="frost.npy should be uint8"):
        released.images("frost", 1)
    with pytest.raises(MinnetsError, match="contrast.npy is not a readable .npy file"):
        released.images("contrast", 1)
    with pytest.raises(MinnetsError, match="brightness.npy does not exist"):
        released.images("brightness", 1)
    with pytest.raises(MinnetsError, match="has 4 images per severity, 5 were asked for"):
        released.images("fog", 1, n=5)
    save(folder / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(MinnetsError, match="labels.npy should hold integer labels for 5 severity blocks"):
        cifar10c.Released(folder)


def test_download_released_fetches_checks_and_unpacks(server, tmp_path, cifar):
    base, www = server
    arrays = released_set(tmp_path / "made", cifar.test_labels)
    with tarfile.open(www / "CIFAR-10-C.tar", "w") as tar:
        tar.add(tmp_path / "made" / "CIFAR-10-C", arcname="CIFAR-10-C")
    md5 = hashlib.md5((www / "CIFAR-10-C.tar").read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(MinnetsError, match="has md5 .* expected 0{32}"):
        cifar10c.download_released(root, base + "CIFAR-10-C.tar", "0" * 32)
    assert not (root / "CIFAR-10-C.tar").exists()
    folder = cifar10c.download_released(root, base + "CIFAR-10-C.tar", md5)
    assert folder == root / "CIFAR-10-C"
    assert np.array_equal(cifar10c.Released(folder).images("gaussian_noise", 5), arrays["gaussian_noise"][-PER:])
    assert cifar10c.download_released(root, base + "missing.tar", md5) == folder  # present: no network
    # Without --data or $MINNETS_DATA it goes to the user cache, where the suite then finds it.
    cached = cifar10c.download_released(None, base + "CIFAR-10-C.tar", md5)
    assert cached == tmp_path / "xdg" / "minnets" / "CIFAR-10-C" == cifar10c.find_released(None)
    assert get_suite("corruptions").source == "released"


def test_download_frost_fetches_the_six_pictures_and_checks_them(server, tmp_path):
    if not (FROST / "frost1.png").is_file():
        pytest.skip(f"frost pictures not found in {FROST}")
    base, www = server
    for name in C.FROST_FILES:
        (www / name).write_bytes((FROST / name).read_bytes())
    target = cifar10c.download_frost(tmp_path / "frost", base)
    assert sorted(os.listdir(target)) == sorted(C.FROST_FILES)
    assert len(C.frost_pictures(target)) == 6
    (target / "frost2.png").write_bytes(b"damaged")  # fetched again, the rest kept
    (www / "frost4.jpg").write_bytes(b"tampered on the server")
    cifar10c.download_frost(target, base)
    assert C.sha256_file(target / "frost2.png") == C.FROST_FILES["frost2.png"][0]
    (target / "frost4.jpg").unlink()
    with pytest.raises(MinnetsError, match="frost4.jpg has md5"):
        cifar10c.download_frost(target, base)


# --- regenerated ------------------------------------------------------------------------------


def test_regenerated_files_match_the_manifest_and_the_corruptions(tmp_path, cifar):
    images = cifar.test_images[:6]
    cache = cifar10c.Regenerated(tmp_path / "regen", images, seed=5)
    manifest_path = cache.make(["brightness", "gaussian_noise"], [1, 4])
    manifest = json.loads(manifest_path.read_text())
    assert manifest["source"] == "regenerated" and manifest["seed"] == 5
    assert manifest["test_images"] == {"dataset": "cifar10", "n": 6, "sha256": cifar10c.sha256_array(images)}
    assert set(manifest["libraries"]) >= {"numpy", "scipy", "scikit-image", "opencv", "pillow"}
    assert sorted(manifest["files"]) == ["brightness-1.npy", "brightness-4.npy", "gaussian_noise-1.npy",
                                         "gaussian_noise-4.npy"]
    for entry in manifest["files"].values():
        array = np.load(tmp_path / "regen" / f"{entry['corruption']}-{entry['severity']}.npy", allow_pickle=False)
        assert hashlib.sha256(array.tobytes()).hexdigest() == entry["sha256"]
        assert np.array_equal(array, C.corrupt(images, entry["corruption"], entry["severity"], seed=5))


def test_regenerated_resumes_file_by_file_and_remakes_damaged_files(tmp_path, cifar):
    images = cifar.test_images[:6]
    folder = tmp_path / "regen"
    cifar10c.Regenerated(folder, images).make(["contrast"], [1, 2, 3])
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    (folder / "contrast-2.npy").unlink()
    first = np.load(folder / "contrast-3.npy")
    np.save(folder / "contrast-3.npy", first[::-1])  # same shape, other pixels: the sha256 tells
    cifar10c.Regenerated(folder, images).make(["contrast"], [1, 2, 3])
    assert (folder / "contrast-1.npy").stat().st_mtime_ns == stamps["contrast-1.npy"]
    assert np.array_equal(np.load(folder / "contrast-3.npy"), first)
    assert np.array_equal(np.load(folder / "contrast-2.npy"), C.corrupt(images, "contrast", 2))
    assert not list(folder.glob(".*.tmp"))


def test_regenerated_with_workers_is_the_same_pixels(tmp_path, cifar, monkeypatch):
    monkeypatch.setattr(cifar10c, "CHUNK", 3)
    images = cifar.test_images[:7]
    together = cifar10c.Regenerated(tmp_path / "a", images).generate("elastic_transform", 3)
    apart = cifar10c.Regenerated(tmp_path / "b", images, workers=2).generate("elastic_transform", 3)
    assert np.array_equal(together, apart)


def test_regenerated_motion_blur_is_marked_when_approximated(tmp_path, cifar):
    images = cifar.test_images[:3]
    cache = cifar10c.Regenerated(tmp_path / "regen", images, use_wand=False)
    manifest = json.loads(cache.make(["motion_blur", "fog"], [2]).read_text())
    assert manifest["approximated"] == ["motion_blur", "snow"]
    assert manifest["files"]["motion_blur-2.npy"]["approximated"] is True
    assert manifest["files"]["fog-2.npy"]["approximated"] is False
    assert "numpy-motion-blur" in manifest["version"]
    assert cifar10c.source_of("motion_blur", use_wand=False) == "regenerated-approx"
    assert cifar10c.source_of("fog", use_wand=False) == "regenerated"


# --- the suite and the command line -------------------------------------------------------------


def tiny_clean(cifar, n: int) -> Clean:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    return Clean(model, cifar.test_images[:n], cifar.test_labels[:n], cifar.mean, cifar.std, "cifar10",
                 batch_size=8)


def test_suite_rows_from_regenerated_and_released(tmp_path, cifar):
    clean = tiny_clean(cifar, PER)
    suite = get_suite("corruptions", corruptions=["fog", "gaussian_noise"], cache_dir=tmp_path / "regen")
    rows = evaluate_suite(suite, clean)
    assert [(r["corruption"], r["severity"]) for r in rows] == [(c, s) for c in ("fog", "gaussian_noise")
                                                               for s in C.SEVERITIES]
    assert {r["source"] for r in rows} == {"regenerated"} and rows[0]["version"].startswith("regenerated ")
    assert all(r["n_images"] == PER for r in rows)
    # The rows are the model's error on exactly the corrupted images.
    model_preds = clean.model(((torch.from_numpy(C.corrupt(clean.images, "fog", 5)).permute(0, 3, 1, 2) / 255)
                               - torch.tensor(cifar.mean).view(1, 3, 1, 1)) / torch.tensor(cifar.std).view(1, 3, 1, 1))
    err = 100 * np.mean(model_preds.argmax(1).numpy() != clean.labels)
    assert rows[4]["test_err"] == pytest.approx(err)

    arrays = released_set(tmp_path, cifar.test_labels)
    released = get_suite("corruptions", corruptions=["fog"], data_root=tmp_path)
    assert released.source == "released" and released.version() == cifar10c.RELEASED_VERSION
    perturbed = released.perturb({"corruption": "fog", "severity": 2}, clean)
    assert perturbed.fields == {"source": "released"}
    assert np.array_equal(perturbed.images, arrays["fog"][PER:2 * PER])
    with pytest.raises(MinnetsError, match="released CIFAR-10-C not found"):
        get_suite("corruptions", source="released", data_root=tmp_path / "empty")


def test_quick_checks_never_replace_a_larger_regenerated_set(tmp_path, cifar):
    folder = tmp_path / "regen"
    cifar10c.Regenerated(folder, cifar.test_images[:6]).make(["contrast"], [1])
    before = (folder / "manifest.json").read_text()
    suite = get_suite("corruptions", corruptions=["contrast"], cache_dir=folder)
    images = suite.perturb({"corruption": "contrast", "severity": 2}, tiny_clean(cifar, 3)).images
    assert np.array_equal(images, C.corrupt(cifar.test_images[:3], "contrast", 2))
    assert (folder / "manifest.json").read_text() == before and not (folder / "contrast-2.npy").exists()


def test_cli_list_and_make(tmp_path, cifar_root, capsys):
    assert main(["corruptions", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in C.CORRUPTIONS) and "80; 65; 58; 50; 40" in listing
    out = tmp_path / "made"
    assert main(["corruptions", "make", "--data", str(cifar_root), "--out", str(out), "--n", "3",
                 "--corruptions", "brightness,pixelate", "--severities", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["brightness-2.npy", "manifest.json", "pixelate-2.npy"]
    assert main(["corruptions", "make", "--data", str(cifar_root), "--out", str(out), "--severities", "0"]) == 2
    assert "invalid --severities '0'" in capsys.readouterr().err
    assert main(["corruptions", "make", "--data", str(cifar_root), "--out", str(out), "--n", "2",
                 "--corruptions", "frost", "--frost", str(tmp_path / "none")]) == 2
    assert "frost picture" in capsys.readouterr().err
