"""CIFAR-10-C on disk: the released files (read, download) and the regenerated set (make, read).

Released (Hendrycks & Dietterich, ICLR 2019; Zenodo record 2535967): ``CIFAR-10-C/<corruption>.npy``
holds the test set under one corruption, severities 1-5 in consecutive blocks of 10,000
images in test-set order, and ``labels.npy`` the labels of those 50,000 rows.

Regenerated: the same corruptions made here from the CIFAR-10 test set by
:mod:`minnets.robustness.corruptions`, one file ``<corruption>-<severity>.npy`` per level (so a
killed run resumes at the next file) and a ``manifest.json`` beside them that records the seed,
the library versions, which corruptions are approximated, and the sha256 of every array. It is
never the released set: the original generator was not seeded.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from minnets.data.cifar import default_data_root, download_file, extract_folder, resolve_root
from minnets.errors import MinnetsError
from minnets.files import atomic_write, cache_folder, read_json, write_json
from minnets.robustness import corruptions as C

FOLDER = "CIFAR-10-C"
ARCHIVE = "CIFAR-10-C.tar"
RELEASED_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
RELEASED_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"  # as listed on Zenodo (2,918,471,680 bytes)
RELEASED_VERSION = "released CIFAR-10-C (Zenodo 2535967)"
#: Raw files of hendrycks/robustness at the commit whose frost pictures FROST_FILES lists.
FROST_URL = ("https://raw.githubusercontent.com/hendrycks/robustness/"
             "8190fe329f5f072a06e3a2aea02bb5dda69aed9f/ImageNet-C/create_c/")
#: Bumped whenever a corruption made here changes its output for the same seed.
GENERATOR = "minnets-cifar10c-1"
MANIFEST = "manifest.json"
CHUNK = 500  # images per task when several worker processes share the work


def cache_base() -> Path:
    """``$MINNETS_CACHE/corruptions`` or ``~/.cache/minnets/corruptions``."""
    return cache_folder("corruptions")


def default_regenerated_dir(dataset: str = "cifar10") -> Path:
    return cache_base() / f"regenerated-{dataset}"


def default_frost_dir() -> Path:
    return cache_base() / "frost"


def sha256_array(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (its shape and dtype are recorded beside it)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (no ``.npy`` appended), without pickles."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


# /////////////// released ///////////////

def find_released(root: str | os.PathLike[str] | None) -> Path | None:
    """``root/CIFAR-10-C`` (or ``root`` itself) when it holds ``labels.npy``; else None.

    ``root`` None means $MINNETS_DATA, else where ``--download`` puts data (the user cache).
    """
    root = Path(root or os.environ.get("MINNETS_DATA") or default_data_root()).expanduser()
    for folder in (root / FOLDER, root):
        if (folder / "labels.npy").is_file():
            return folder
    return None


def download_released(root: str | os.PathLike[str] | None = None, url: str = RELEASED_URL,
                      md5: str = RELEASED_MD5) -> Path:
    """The released ``CIFAR-10-C`` folder under ``root`` (default $MINNETS_DATA, else the cache),
    fetching and md5-checking the archive (about 2.9 GB) and unpacking it first when absent."""
    folder = find_released(root)
    if folder is not None:
        return folder
    root = resolve_root(root, True, "CIFAR-10-C")
    archive = root / ARCHIVE
    if not archive.is_file():
        download_file(url, archive, md5)
    return extract_folder(archive, FOLDER)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise MinnetsError(f"{path} does not exist: the CIFAR-10-C folder is incomplete; "
                           "download it again (minnets corruptions download)") from None
    except (ValueError, OSError, EOFError) as error:
        raise MinnetsError(f"{path} is not a readable .npy file ({error}); delete it and download "
                           "CIFAR-10-C again (minnets corruptions download)") from None


class Released:
    """The released files in ``folder``: images per (corruption, severity), and the labels."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        labels = _load_npy(self.folder / "labels.npy")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0 or len(labels) % 5:
            raise MinnetsError(f"{self.folder / 'labels.npy'} should hold integer labels for 5 severity blocks, "
                               f"got {labels.dtype} of shape {labels.shape}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.per_severity = len(labels) // 5

    def images(self, name: str, severity: int, n: int | None = None) -> np.ndarray:
        """The first ``n`` (default all) test images under ``name`` at ``severity``, uint8 N x 32 x 32 x 3."""
        C.check_corruption(name, severity)
        path = self.folder / f"{name}.npy"
        array = _load_npy(path)
        expected = (5 * self.per_severity, C.SIZE, C.SIZE, 3)
        if array.dtype != np.uint8 or array.shape != expected:
            raise MinnetsError(f"{path} should be uint8 of shape {expected} like labels.npy, "
                               f"got {array.dtype} of shape {array.shape}")
        n = self.per_severity if n is None else n
        if n > self.per_severity:
            raise MinnetsError(f"{path} has {self.per_severity} images per severity, {n} were asked for")
        start = (severity - 1) * self.per_severity
        return np.array(array[start:start + n])

    def severity_labels(self, severity: int) -> np.ndarray:
        start = (severity - 1) * self.per_severity
        return self.labels[start:start + self.per_severity]


# /////////////// frost pictures ///////////////

def download_frost(folder: str | os.PathLike[str] | None = None, base_url: str = FROST_URL) -> Path:
    """Fetch the six frost pictures into ``folder`` (default the cache) unless they are there;
    the download is md5-checked, and :func:`corruptions.frost_pictures` checks every sha256."""
    folder = Path(folder).expanduser() if folder is not None else default_frost_dir()
    for name, (sha256, md5) in C.FROST_FILES.items():
        path = folder / name
        if path.is_file() and C.sha256_file(path) == sha256:
            continue
        path.unlink(missing_ok=True)
        download_file(base_url + name, path, md5)
    C.frost_pictures(folder)
    return folder


# /////////////// regenerated ///////////////

def library_versions() -> dict[str, str]:
    """Versions of everything the corruptions' pixels depend on (ImageMagick only when used)."""
    C.require_extra()
    import cv2
    import PIL
    import scipy
    import skimage

    versions = {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
                "opencv": cv2.__version__, "pillow": PIL.__version__}
    if C.wand_works():
        from wand.version import MAGICK_VERSION, VERSION

        versions["wand"] = VERSION
        versions["imagemagick"] = MAGICK_VERSION.split()[1]
    return versions


def regenerated_version(seed: int, use_wand: bool | None = None) -> str:
    """The version string of a regenerated set: generator, seed, library versions, ImageMagick path."""
    use_wand = C.wand_works() if use_wand is None else use_wand
    libraries = " ".join(f"{k}={v}" for k, v in library_versions().items()
                         if use_wand or k not in ("wand", "imagemagick"))
    motion = "imagemagick" if use_wand else "numpy-motion-blur"
    return f"regenerated {GENERATOR} seed={seed} {motion} {libraries}"


def source_of(name: str, use_wand: bool | None = None) -> str:
    """The ``source`` column of a regenerated row: says when the corruption is approximated."""
    return "regenerated-approx" if C.approximated(name, use_wand) else "regenerated"


def _corrupt_chunk(task: tuple[np.ndarray, str, int, int, int, str | None, bool]) -> np.ndarray:
    images, name, severity, seed, start, frost_dir, use_wand = task
    return C.corrupt(images, name, severity, seed=seed, start=start, frost_dir=frost_dir, use_wand=use_wand)


class Regenerated:
    """A folder of regenerated levels made from one set of test images with one seed.

    ``folder`` holds ``<corruption>-<severity>.npy`` and ``manifest.json``. A file counts only
    if the manifest lists it with its sha256 and the manifest's version and test images are the
    current ones; anything else is made again (and the old manifest replaced).
    """

    def __init__(self, folder: str | os.PathLike[str], images: np.ndarray, dataset: str = "cifar10", seed: int = 0,
                 frost_dir: str | os.PathLike[str] | None = None, use_wand: bool | None = None,
                 workers: int = 1) -> None:
        self.folder = Path(folder).expanduser()
        self.images = images
        self.dataset = dataset
        self.seed = int(seed)
        self.frost_dir = str(frost_dir) if frost_dir is not None else str(default_frost_dir())
        self.use_wand = C.wand_works() if use_wand is None else use_wand
        self.workers = max(1, int(workers))
        self.version = regenerated_version(self.seed, self.use_wand)
        self.fingerprint = sha256_array(images)

    def path(self, name: str, severity: int) -> Path:
        return self.folder / f"{name}-{severity}.npy"

    def _fresh_manifest(self) -> dict[str, Any]:
        return {
            "source": "regenerated",
            "reference": "hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py (parameters for 32x32 images)",
            "version": self.version,
            "generator": GENERATOR,
            "seed": self.seed,
            "seed_rule": "image k of (corruption, severity) draws from numpy.random.default_rng("
                         "(seed, index of the corruption in 'corruptions', severity, k))",
            "corruptions": list(C.CORRUPTIONS),
            "test_images": {"dataset": self.dataset, "n": len(self.images), "sha256": self.fingerprint},
            "libraries": library_versions(),
            "imagemagick": "Wand" if self.use_wand else "numpy re-implementation of MotionBlurImage",
            "approximated": [name for name in C.CORRUPTIONS if C.approximated(name, self.use_wand)],
            "files": {},
        }

    def _stored(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        manifest = read_json(path)
        return manifest if isinstance(manifest, dict) else None

    def _matches(self, manifest: dict[str, Any] | None) -> bool:
        return (manifest is not None and manifest.get("version") == self.version
                and manifest.get("test_images", {}).get("sha256") == self.fingerprint)

    def manifest(self) -> dict[str, Any]:
        """The folder's manifest if it belongs to these images and this version, else a new one."""
        stored = self._stored()
        return stored if stored is not None and self._matches(stored) else self._fresh_manifest()

    def may_store(self) -> bool:
        """Whether levels of these images may go into the folder: it holds these images' levels,
        nothing, or levels of fewer images (a quick check never replaces a larger set)."""
        stored = self._stored()
        return stored is None or self._matches(stored) or stored.get("test_images", {}).get("n", 0) <= len(self.images)

    def load(self, name: str, severity: int, manifest: dict[str, Any] | None = None) -> np.ndarray | None:
        """The stored level if the manifest vouches for it (sha256), else None."""
        manifest = self.manifest() if manifest is None else manifest
        entry = manifest["files"].get(self.path(name, severity).name)
        path = self.path(name, severity)
        if entry is None or not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return None
        if array.shape != self.images.shape or array.dtype != np.uint8 or sha256_array(array) != entry["sha256"]:
            return None
        return array

    def generate(self, name: str, severity: int, bar: tqdm | None = None) -> np.ndarray:
        """Make one level in memory (in ``workers`` processes when more than one)."""
        C.check_corruption(name, severity)
        frost = self.frost_dir if name == "frost" else None
        if frost is not None:
            C.frost_pictures(frost)  # a missing picture is an error before any work
        starts = range(0, len(self.images), CHUNK)
        tasks = [(self.images[s:s + CHUNK], name, severity, self.seed, s, frost, self.use_wand) for s in starts]
        parts = []
        if self.workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(self.workers) as pool:
                for part in pool.map(_corrupt_chunk, tasks):
                    parts.append(part)
                    if bar is not None:
                        bar.update(len(part))
        else:
            for task in tasks:
                parts.append(_corrupt_chunk(task))
                if bar is not None:
                    bar.update(len(parts[-1]))
        return np.concatenate(parts) if parts else self.images[:0].copy()

    def get(self, name: str, severity: int, bar: tqdm | None = None) -> np.ndarray:
        """The level from the folder, or made, stored (atomically) and recorded in the manifest."""
        manifest = self.manifest()
        array = self.load(name, severity, manifest)
        if array is not None:
            if bar is not None:
                bar.update(len(array))
            return array
        array = self.generate(name, severity, bar)
        path = self.path(name, severity)
        atomic_write(path, lambda tmp: save_npy(tmp, array))
        manifest = self.manifest()  # re-read: another process may have added files meanwhile
        manifest["files"][path.name] = {
            "corruption": name, "severity": severity, "shape": list(array.shape), "dtype": "uint8",
            "sha256": sha256_array(array), "approximated": C.approximated(name, self.use_wand),
            "method": C.method(name, self.use_wand),
            "seeds": f"default_rng(({self.seed}, {C.CORRUPTIONS.index(name)}, {severity}, k)), "
                     f"k = 0..{len(array) - 1}",
        }
        write_json(self.folder / MANIFEST, manifest)
        return array

    def make(self, names: Sequence[str] = C.CORRUPTIONS, severities: Sequence[int] = C.SEVERITIES) -> Path:
        """Every (corruption, severity) asked for, with one progress bar (a line per level when
        stderr is not a terminal); resumes file by file."""
        for name in names:
            for severity in severities:
                C.check_corruption(name, severity)
        if "frost" in names:
            C.frost_pictures(self.frost_dir)
        manifest = self.manifest()
        todo = [(n, s) for n in names for s in severities if self.load(n, s, manifest) is None]
        done = len(names) * len(severities) - len(todo)
        if done:
            print(f"{done} of {len(names) * len(severities)} levels already in {self.folder}", file=sys.stderr)
        with tqdm(total=len(todo) * len(self.images), unit="img", desc="CIFAR-10-C regenerated",
                  disable=None) as bar:
            for i, (name, severity) in enumerate(todo, 1):
                bar.set_postfix_str(f"{name} {severity}")
                self.get(name, severity, bar)
                if bar.disable:  # no terminal: a line per level instead of the bar
                    print(f"{name} severity {severity} made ({i} of {len(todo)})", file=sys.stderr, flush=True)
        return self.folder / MANIFEST
