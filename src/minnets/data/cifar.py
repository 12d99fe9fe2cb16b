"""CIFAR-10 and CIFAR-100 from the official "python version": find, download, extract, read.

The batches are pickles, and unpickling runs whatever the file says, so they are read with
an unpickler that admits only the few numpy names a CIFAR batch needs; anything else is
refused before it runs. Every problem with the files ends in a one-line MinnetsError that
names the file and how to get a good copy.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minnets.data.dataset import ImageDataset
from minnets.errors import MinnetsError

ENV_VAR = "MINNETS_DATA"
FIX = "delete {folder} and run again with --download, or point --data at a complete copy"


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives on disk and online, and how its pickles are keyed."""

    name: str
    title: str
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

# Mean and std: the widely published CIFAR-100 training-set statistics (pixels / 255,
# population std), fixed here like CIFAR-10's so small or partial copies normalise the same.
CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

CIFAR_SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def _reconstruct_functions() -> dict[tuple[str, str], object]:
    """The numpy callables a pickled ndarray names, looked up from numpy itself.

    numpy 2 moved ``numpy.core`` to ``numpy._core``; files written by either name the same
    function, and asking an array how it pickles finds it without touching the deprecated
    module. Protocol 5 pickles use ``_frombuffer`` instead of ``_reconstruct``.
    """
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # Python 3 protocol <= 2 pickles bytes this way
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED = _reconstruct_functions()


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction; every other global is refused unexecuted."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise MinnetsError(
                f"refusing to unpickle {module}.{name} from {self._path}: CIFAR batches contain "
                "only numpy arrays, lists, numbers and strings, so this is not a genuine CIFAR file: "
                f"{FIX.format(folder=self._path.parent)}"
            ) from None


def _corrupt(path: Path, detail: str) -> MinnetsError:
    return MinnetsError(f"{path} is not a valid CIFAR file ({detail}): {FIX.format(folder=path.parent)}")


def _read_pickle(path: Path) -> dict[str, object]:
    """Safely unpickle one batch; keys come back as str whether the file used bytes or str."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MinnetsError(
            f"missing {path}: the copy in {path.parent} is incomplete; {FIX.format(folder=path.parent)}"
        ) from None
    try:
        obj = _CifarUnpickler(data, path).load()
    except MinnetsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse means the file is damaged
        raise _corrupt(path, f"truncated or corrupt: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Planar (N, 3072) pixels and int64 labels, after checking what the file holds."""
    batch = _read_pickle(path)
    for key in ("data", spec.label_key):
        if key not in batch:
            raise _corrupt(path, f"no {key!r} entry")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, f"'data' is {shape}, expected uint8 (N, 3072)")
    labels = np.asarray(batch[spec.label_key])
    if labels.dtype.kind not in "iu":
        raise _corrupt(path, f"{spec.label_key!r} is not a list of integers")
    labels = labels.astype(np.int64)
    if labels.shape != (len(data),):
        raise _corrupt(path, f"{labels.size} labels for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise _corrupt(path, f"labels outside 0..{spec.num_classes - 1}")
    return data, labels


def _read_class_names(path: Path, spec: CifarSpec) -> list[str]:
    names = _read_pickle(path).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise _corrupt(path, f"{spec.names_key!r} is not a list of {spec.num_classes} names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError:
        raise _corrupt(path, f"{spec.names_key!r} is not text") from None


def _read_split(folder: Path, files: tuple[str, ...], spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_batch(folder / name, spec) for name in files]
    planar = np.concatenate([p[0] for p in parts])
    # Each row is channel-planar: 1024 red, 1024 green, 1024 blue values, each row-major.
    images = np.ascontiguousarray(planar.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, np.concatenate([p[1] for p in parts])


def default_data_root() -> Path:
    """Where ``--download`` puts data when no directory is given: the user cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "minnets"


def resolve_root(root: str | os.PathLike[str] | None, download: bool, what: str) -> Path:
    """The data directory: ``root``, else $MINNETS_DATA, else the cache when downloading."""
    if root is None:
        root = os.environ.get(ENV_VAR) or None
    if root is None:
        if not download:
            raise MinnetsError(
                f"no data directory for {what}: pass --data DIR or set {ENV_VAR} (or add --download)"
            )
        root = default_data_root()
    return Path(root).expanduser()


def download_file(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file, so ``dest`` is complete or absent."""
    tmp: str | None = None
    digest = hashlib.md5(usedforsecurity=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=not sys.stderr.isatty()) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != md5:
            raise MinnetsError(
                f"download of {url} has md5 {actual}, expected {md5}; the file was removed: run again, "
                f"or download it yourself into {dest.parent}"
            )
        os.replace(tmp, dest)
        tmp = None
    except (OSError, http.client.HTTPException) as exc:
        # HTTPError's own text has the status code; a bare URLError's is only "<urlopen error>".
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the open error response
            reason: object = exc
        else:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise MinnetsError(
            f"could not download {url} to {dest.parent} ({reason}): check the network and that "
            f"the directory is writable, or download the file yourself into {dest.parent}"
        ) from None
    finally:
        if tmp is not None:  # failed or interrupted: leave nothing half-written behind
            os.unlink(tmp)


def extract_folder(archive: Path, folder: str) -> Path:
    """Unpack ``folder`` from ``archive`` next to it; it appears whole or not at all.

    The ``data`` filter refuses absolute paths, ``..``, links leaving the target and device
    files, so a hostile archive cannot write outside the data directory.
    """
    if not hasattr(tarfile, "data_filter"):
        raise MinnetsError(
            f"safe extraction of {archive} needs Python >= 3.10.12 or 3.11.4 (tarfile filters): "
            f"upgrade Python, or extract it yourself into {archive.parent}"
        )
    target = archive.parent / folder
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".{folder}."))
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, filter="data")
        if not (staging / folder).is_dir():
            raise MinnetsError(
                f"{archive} does not contain {folder}/: delete it and run again with --download, "
                "or point --data at a complete copy"
            )
        os.replace(staging / folder, target)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise MinnetsError(
            f"cannot extract {archive} ({type(exc).__name__}: {exc}): delete it and run again "
            "with --download, or point --data at a complete copy"
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def locate(spec: CifarSpec, root: Path, download: bool, url: str | None, md5: str | None) -> Path:
    """The batches folder under ``root`` (or ``root`` itself), extracting or fetching it first."""
    if root.name == spec.folder or (root / spec.meta_file).is_file():
        return root
    folder = root / spec.folder
    if folder.is_dir():
        return folder
    archive = root / spec.archive
    if not archive.is_file():
        if not download:
            raise MinnetsError(
                f"{spec.title} not found in {root} (expected {spec.folder}/ or {spec.archive} "
                "there): pass --data DIR pointing at a directory that holds either, or add --download"
            )
        download_file(url or spec.url, archive, md5 or spec.md5)
    return extract_folder(archive, spec.folder)


def load_cifar(
    spec: CifarSpec,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    url: str | None = None,
    md5: str | None = None,
) -> ImageDataset:
    """Read a CIFAR variant; ``url``/``md5`` replace the official source (mirrors, tests)."""
    folder = locate(spec, resolve_root(root, download, spec.name), download, url, md5)
    classes = _read_class_names(folder / spec.meta_file, spec)
    train_images, train_labels = _read_split(folder, spec.train_files, spec)
    test_images, test_labels = _read_split(folder, spec.test_files, spec)
    return ImageDataset(
        name=spec.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        mean=spec.mean,
        std=spec.std,
    )
