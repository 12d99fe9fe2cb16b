"""CIFAR reading, extraction, download and safety (minnets.data.cifar via load_dataset)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minnets.data import DATASETS, ImageDataset, load_dataset
from minnets.data.cifar import CIFAR10, CIFAR100, CifarSpec
from minnets.errors import MinnetsError

PER_BATCH = 4  # images in each batch file of the small copies built here
SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


# --- small CIFAR copies in the canonical layout -------------------------------------------


def _pickle(obj: object) -> bytes:
    # Protocol 2 from Python 3 pickles bytes through _codecs.encode, the oldest form around.
    return pickle.dumps(obj, protocol=2)


def _batch(spec: CifarSpec, rng: np.random.Generator, label_offset: int) -> dict[bytes, object]:
    data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
    labels = [(label_offset + i) % spec.num_classes for i in range(PER_BATCH)]
    batch = {b"batch_label": b"test batch", b"data": data, b"filenames": [b"x.png"] * PER_BATCH}
    batch[spec.label_key.encode()] = labels
    if spec is CIFAR100:
        batch[b"coarse_labels"] = [0] * PER_BATCH
    return batch


def write_copy(parent: Path, spec: CifarSpec, seed: int = 0) -> Path:
    """``parent/<spec.folder>/`` with every batch file and the meta file; returns the folder."""
    folder = parent / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(spec.train_files + spec.test_files):
        (folder / name).write_bytes(_pickle(_batch(spec, rng, label_offset=3 * i)))
    names = [f"class_{i}".encode() for i in range(spec.num_classes)]
    (folder / spec.meta_file).write_bytes(_pickle({spec.names_key.encode(): names}))
    return folder


def write_archive(parent: Path, spec: CifarSpec, seed: int = 0) -> Path:
    """``parent/<spec.archive>`` holding the folder of write_copy (built in a scratch dir)."""
    scratch = parent / "scratch"
    folder = write_copy(scratch, spec, seed)
    archive = parent / spec.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=spec.folder)
    return archive


def raw_batch(folder: Path, name: str) -> dict[bytes, object]:
    with open(folder / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


def expected_images(folder: Path, names: tuple[str, ...]) -> np.ndarray:
    data = np.concatenate([raw_batch(folder, n)[b"data"] for n in names])
    # Planar rows: R plane, G plane, B plane, each 32 x 32 row-major -> HWC.
    return np.stack([row.reshape(3, 32, 32).transpose(1, 2, 0) for row in data])


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the caller's MINNETS_DATA or cache directory."""
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# --- the real CIFAR-10 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10(cifar_root: Path) -> ImageDataset:
    return load_dataset("cifar10", cifar_root)


def test_real_cifar10(cifar10: ImageDataset) -> None:
    d = cifar10
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.train_images.shape == (50_000, 32, 32, 3) and d.test_images.shape == (10_000, 32, 32, 3)
    assert d.train_images.dtype == np.uint8 and d.train_images.flags["C_CONTIGUOUS"]
    assert d.train_labels.dtype == np.int64 and d.train_labels.shape == (50_000,)
    assert d.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert d.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # data_batch_1 row 0 starts 59 43 50 in the red plane: the first three red pixels of row 0.
    assert d.train_images[0, 0, 0:3, 0].tolist() == [59, 43, 50]
    assert np.bincount(d.train_labels).tolist() == [5000] * 10
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer",
                         "dog", "frog", "horse", "ship", "truck"]
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2470, 0.2435, 0.2616)
    measured = d.train_images.reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(measured, d.mean, atol=1e-4)


# --- layouts and root resolution -------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_small_copy_layouts(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    folder = write_copy(tmp_path, spec)
    for root in (tmp_path, folder):
        d = load_dataset(name, root)
        assert d.name == name and d.num_classes == spec.num_classes
        assert d.classes[:2] == ["class_0", "class_1"]
        n_train = PER_BATCH * len(spec.train_files)
        assert d.train_images.shape == (n_train, 32, 32, 3) and d.test_images.shape == (PER_BATCH, 32, 32, 3)
        np.testing.assert_array_equal(d.train_images, expected_images(folder, spec.train_files))
        np.testing.assert_array_equal(d.test_images, expected_images(folder, spec.test_files))
        labels = np.concatenate([raw_batch(folder, n)[spec.label_key.encode()] for n in spec.train_files])
        np.testing.assert_array_equal(d.train_labels, labels)
        assert d.mean == spec.mean and d.std == spec.std


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_archive_is_extracted_once(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    root = tmp_path / "data"
    root.mkdir()
    write_archive(root, spec)
    first = load_dataset(name, root)
    assert (root / spec.folder / spec.meta_file).is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted([spec.archive, spec.folder, "scratch"])
    (root / spec.archive).unlink()  # the second load must use the extracted folder
    second = load_dataset(name, root)
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_env_var_is_the_fallback_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_copy(tmp_path / "env", CIFAR10)
    monkeypatch.setenv("MINNETS_DATA", str(tmp_path / "env"))
    assert len(load_dataset("cifar10").train_labels) == 5 * PER_BATCH
    with pytest.raises(MinnetsError, match="not found"):  # an explicit root wins over the env
        load_dataset("cifar10", tmp_path / "elsewhere")


def test_no_root_anywhere() -> None:
    with pytest.raises(MinnetsError, match=r"pass --data DIR or set MINNETS_DATA \(or add --download\)"):
        load_dataset("cifar10")


def test_nothing_in_root(tmp_path: Path) -> None:
    with pytest.raises(MinnetsError, match="CIFAR-100 not found in .*--download") as info:
        load_dataset("cifar100", tmp_path)
    assert "cifar-100-python.tar.gz" in str(info.value)


def test_unknown_dataset_lists_names() -> None:
    assert DATASETS == ("cifar10", "cifar100", "shapes10")
    with pytest.raises(MinnetsError, match="unknown dataset 'mnist': choose one of cifar10, cifar100, shapes10"):
        load_dataset("mnist")


# --- damaged copies ----------------------------------------------------------------------------


def assert_one_line(error: pytest.ExceptionInfo[MinnetsError], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_missing_batch(tmp_path: Path) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    (folder / "data_batch_3").unlink()
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path)
    assert_one_line(info, "missing", str(folder / "data_batch_3"), "--download", "--data")


def test_missing_meta(tmp_path: Path) -> None:
    folder = write_copy(tmp_path, CIFAR100)
    (folder / "meta").unlink()
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar100", tmp_path)
    assert_one_line(info, "missing", str(folder / "meta"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_batch(tmp_path: Path, damage: str) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    path = folder / "data_batch_2"
    content = path.read_bytes()
    path.write_bytes({"truncated": content[: len(content) // 2],
                      "garbage": bytes(range(256)) * 8,
                      "empty": b""}[damage])
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path)
    assert_one_line(info, str(path), "truncated or corrupt", f"delete {folder}", "--download")


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda b: b.pop(b"data"), "no 'data' entry"),
        (lambda b: b.pop(b"labels"), "no 'labels' entry"),
        (lambda b: b.update({b"data": b[b"data"][:, :3000]}), "expected uint8 (N, 3072)"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "float32"),
        (lambda b: b.update({b"data": b"not an array"}), "'data' is bytes"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), f"{PER_BATCH - 1} labels for {PER_BATCH} images"),
        (lambda b: b.update({b"labels": [10] * PER_BATCH}), "labels outside 0..9"),
        (lambda b: b.update({b"labels": ["a"] * PER_BATCH}), "not a list of integers"),
        (lambda b: b.update({b"labels": [0.5] * PER_BATCH}), "not a list of integers"),
    ],
)
def test_invalid_batch_content(tmp_path: Path, change, detail: str) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    batch = raw_batch(folder, "test_batch")
    change(batch)
    (folder / "test_batch").write_bytes(_pickle(batch))
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path)
    assert_one_line(info, str(folder / "test_batch"), detail, "--download")


def test_batch_that_is_not_a_dict(tmp_path: Path) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    (folder / "data_batch_1").write_bytes(_pickle([1, 2, 3]))
    with pytest.raises(MinnetsError, match="holds a list, expected a dict"):
        load_dataset("cifar10", tmp_path)


def test_meta_with_wrong_class_count(tmp_path: Path) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    (folder / "batches.meta").write_bytes(_pickle({b"label_names": [b"a", b"b"]}))
    with pytest.raises(MinnetsError, match="'label_names' is not a list of 10 names"):
        load_dataset("cifar10", tmp_path)


def test_str_keys_and_modern_protocols_are_accepted(tmp_path: Path) -> None:
    """Copies re-saved from Python 3 (str keys, protocol 5 arrays) read the same."""
    folder = write_copy(tmp_path, CIFAR10)
    before = load_dataset("cifar10", tmp_path)
    for name in CIFAR10.train_files + CIFAR10.test_files + (CIFAR10.meta_file,):
        batch = {k.decode(): v for k, v in raw_batch(folder, name).items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5))
    after = load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(before.train_images, after.train_images)
    assert before.classes == after.classes


def test_truncated_archive(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, CIFAR10)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path)
    assert_one_line(info, f"cannot extract {archive}", "--download")
    assert not (tmp_path / CIFAR10.folder).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_archive_without_the_folder(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / CIFAR10.archive, "w:gz") as tar:
        info = tarfile.TarInfo("something-else/readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(MinnetsError, match="does not contain cifar-10-batches-py/"):
        load_dataset("cifar10", tmp_path)


# --- safety ------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls ``function(argument)``: what a hostile batch file would do."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("where", ["batches.meta", "data_batch_4"])
def test_hostile_pickle_is_refused_unexecuted(tmp_path: Path, where: str) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    marker = tmp_path / "owned"
    payload = _RunsCode(os.system, f"touch {marker}")
    batch = raw_batch(folder, where)
    batch[b"extra"] = payload
    (folder / where).write_bytes(_pickle(batch))
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path)
    assert_one_line(info, f"refusing to unpickle {os.system.__module__}.system from {folder / where}",
                    "CIFAR batches contain only")
    assert not marker.exists()


def test_hostile_pickle_with_builtins_is_refused(tmp_path: Path) -> None:
    folder = write_copy(tmp_path, CIFAR10)
    marker = tmp_path / "owned"
    payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    (folder / "test_batch").write_bytes(_pickle({b"data": payload}))
    with pytest.raises(MinnetsError, match=r"refusing to unpickle (__builtin__|builtins)\.exec"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_archive_escaping_the_data_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / CIFAR10.archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(MinnetsError, match="cannot extract"):
        load_dataset("cifar10", root)
    assert not (tmp_path / "escaped.txt").exists()


# --- download from a local server ------------------------------------------------------------------


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download(server: tuple[str, Path], tmp_path: Path, name: str) -> None:
    base, www = server
    spec = SPECS[name]
    archive = write_archive(www, spec, seed=5)
    root = tmp_path / "new" / "dir"
    d = load_dataset(name, root, download=True, url=f"{base}{spec.archive}", md5=md5_of(archive))
    np.testing.assert_array_equal(d.train_images, expected_images(www / "scratch" / spec.folder, spec.train_files))
    assert sorted(p.name for p in root.iterdir()) == sorted([spec.archive, spec.folder])
    assert md5_of(root / spec.archive) == md5_of(archive)


def test_download_into_the_cache_without_a_root(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    archive = write_archive(www, CIFAR10)
    load_dataset("cifar10", download=True, url=f"{base}{CIFAR10.archive}", md5=md5_of(archive))
    assert (tmp_path / "cache" / "minnets" / CIFAR10.folder / "batches.meta").is_file()


def test_download_with_wrong_md5(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    archive = write_archive(www, CIFAR10)
    root = tmp_path / "dl"
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", root, download=True, url=f"{base}{CIFAR10.archive}")
    assert_one_line(info, f"has md5 {md5_of(archive)}, expected {CIFAR10.md5}", "removed")
    assert list(root.iterdir()) == []


def test_download_failure(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    root = tmp_path / "dl"
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", root, download=True, url=f"{base}missing.tar.gz")
    assert_one_line(info, f"could not download {base}missing.tar.gz", "HTTP Error 404")
    assert list(root.iterdir()) == []


def test_download_from_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(MinnetsError) as info:
        load_dataset("cifar10", tmp_path, download=True, url="http://127.0.0.1:9/x.tar.gz")
    assert_one_line(info, "could not download http://127.0.0.1:9/x.tar.gz", "refused")
    assert list(tmp_path.iterdir()) == []


def test_download_not_needed_when_present(tmp_path: Path) -> None:
    write_copy(tmp_path, CIFAR10)
    d = load_dataset("cifar10", tmp_path, download=True, url="http://127.0.0.1:9/unreachable")
    assert len(d.test_labels) == PER_BATCH
