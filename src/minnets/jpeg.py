"""JPEG round trips of uint8 test images (paper Section 3.2, Appendix A.3) and an on-disk cache of the results.

Three codec modes, because the published numbers depend on a detail the paper does not state:

- ``paper``: the RGB array goes to OpenCV unchanged, as the published runs did. OpenCV reads it
  as BGR, so the colour transform and 4:2:0 chroma subsampling run with red and blue swapped.
- ``correct``: RGB is turned into BGR before OpenCV and back after, so the codec sees true colours.
- ``pillow``: Pillow's encoder and decoder (what CIFAR-10-C used).

Results depend on the codec library and its libjpeg build, so :func:`codec_version` names both
and the cache key and every result row include it.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import PIL
import PIL.features
from PIL import Image

from minnets.errors import MinnetsError
from minnets.files import atomic_write, cache_folder

MODES = ("paper", "correct", "pillow")

# Images per task handed to a worker; small enough to balance two to many cores, large enough
# that task overhead stays below a few percent of the codec time.
_CHUNK = 256


def check_mode(mode: str) -> None:
    """Refuse a mode outside MODES, listing them."""
    if mode not in MODES:
        raise MinnetsError(f"unknown JPEG mode {mode!r}; choose one of: {', '.join(MODES)}")


def check_quality(quality: int) -> None:
    """Refuse anything but an integer JPEG quality from 1 to 100."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise MinnetsError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")


def check_images(images: np.ndarray) -> None:
    """Refuse anything but raw uint8 RGB images (N x H x W x 3), e.g. normalised floats or NCHW."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return
    what = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
    raise MinnetsError(f"expected uint8 images of shape N x H x W x 3 (RGB), got {what}; "
                       "pass the raw test images, before normalisation")


def codec_version(mode: str) -> str:
    """Name the codec library and its libjpeg, so results from different builds stay apart."""
    check_mode(mode)
    if mode == "pillow":
        turbo = PIL.features.version("libjpeg_turbo")
        jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {PIL.features.version('jpg')}"
        return f"pillow {PIL.__version__}; {jpeg}"
    lines = [line.strip() for line in cv2.getBuildInformation().splitlines()]
    jpeg = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("JPEG:")), "unknown libjpeg")
    return f"opencv {cv2.__version__}; {jpeg}"


def _roundtrip(image: np.ndarray, quality: int, mode: str) -> np.ndarray:
    if mode == "pillow":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB"))
    if mode == "correct":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MinnetsError(f"OpenCV could not encode an image of shape {image.shape} as JPEG; "
                           "check that the images are ordinary uint8 pictures")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if mode == "correct" else decoded


def _roundtrip_chunk(images: np.ndarray, quality: int, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = _roundtrip(image, quality, mode)
    return out


def _executor(mode: str, workers: int) -> Executor:
    """Threads for OpenCV, which releases the GIL while it codes; forked processes for Pillow,
    whose Python side holds the GIL (threads barely beat one core there). Measured, see compress.
    Where fork is not the safe default (macOS, Windows) or the caller is a daemon process that
    may not have children, Pillow also gets threads."""
    if mode == "pillow" and sys.platform.startswith("linux") and not multiprocessing.current_process().daemon:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def compress(images: np.ndarray, quality: int, mode: str = "paper", workers: int | None = None) -> np.ndarray:
    """JPEG-encode and decode every image at ``quality``; same shape and dtype out.

    ``workers`` defaults to every core; the result does not depend on it.
    """
    check_images(images)
    check_quality(quality)
    check_mode(mode)
    if workers is not None and workers < 1:
        raise MinnetsError(f"workers must be at least 1, got {workers}")
    quality = int(quality)
    images = np.ascontiguousarray(images)  # OpenCV needs plain strides; a no-op for ordinary arrays
    workers = min(workers or os.cpu_count() or 1, -(-len(images) // _CHUNK))
    if workers <= 1:
        return _roundtrip_chunk(images, quality, mode)
    starts = range(0, len(images), _CHUNK)
    with _executor(mode, workers) as pool:
        if isinstance(pool, ThreadPoolExecutor):
            out = np.empty_like(images)
            jobs = [pool.submit(_roundtrip_chunk, images[s:s + _CHUNK], quality, mode, out[s:s + _CHUNK])
                    for s in starts]
            for job in jobs:
                job.result()
            return out
        return np.concatenate(list(pool.map(_roundtrip_chunk, (images[s:s + _CHUNK] for s in starts),
                                            [quality] * len(starts), [mode] * len(starts))))


def default_cache_root() -> Path:
    """``$MINNETS_CACHE/jpeg`` or ``~/.cache/minnets/jpeg``."""
    return cache_folder("jpeg")


def _fingerprint(images: np.ndarray) -> str:
    digest = hashlib.sha256(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


class JpegCache:
    """Compressed test sets on disk, so repeated evaluations skip the codec.

    An entry is keyed by dataset name, quality, mode, codec version and a fingerprint of the
    input images (different subsets never collide). Each ``.npy`` has a sidecar ``.json``
    holding its sha256, shape and codec; a damaged entry is reported on stderr and rebuilt.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def entry_path(self, dataset_name: str, images: np.ndarray, quality: int, mode: str) -> Path:
        """Where the compressed copy of ``images`` lives (the sidecar is the same path with .json)."""
        check_images(images)
        check_quality(quality)
        check_mode(mode)
        codec = codec_version(mode)
        key = json.dumps([dataset_name, int(quality), mode, codec, _fingerprint(images)])
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name).strip("._") or "dataset"
        return self.root / f"{slug}-{mode}-q{int(quality)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"

    def get_or_compress(self, dataset_name: str, images: np.ndarray, quality: int, mode: str = "paper",
                        workers: int | None = None) -> np.ndarray:
        """The cached compressed copy of ``images``, made (and stored) on first use."""
        path = self.entry_path(dataset_name, images, quality, mode)
        codec = codec_version(mode)
        stored, problem = self._read(path, images.shape, codec)
        if stored is not None:
            return stored
        if problem is not None:
            print(f"minnets: warning: JPEG cache entry {path} is damaged ({problem}); rebuilding it",
                  file=sys.stderr)
        compressed = compress(images, quality, mode, workers=workers)
        buffer = io.BytesIO()
        np.save(buffer, compressed, allow_pickle=False)
        payload = buffer.getvalue()
        meta = {"sha256": hashlib.sha256(payload).hexdigest(), "shape": list(compressed.shape),
                "dtype": str(compressed.dtype), "dataset": dataset_name, "quality": int(quality),
                "mode": mode, "codec": codec}
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(payload))
            atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
        except (OSError, MinnetsError) as error:  # a cache that cannot be written must not cost the evaluation
            print(f"minnets: warning: cannot store JPEG cache entry {path} ({error}); continuing without it; "
                  "choose a writable folder with --cache-dir or $MINNETS_CACHE", file=sys.stderr)
        return compressed

    @staticmethod
    def _read(path: Path, shape: tuple[int, ...], codec: str) -> tuple[np.ndarray | None, str | None]:
        """The stored array, or None and why it cannot be used (None when simply absent)."""
        sidecar = path.with_suffix(".json")
        if not path.exists() and not sidecar.exists():
            return None, None
        try:
            meta = json.loads(sidecar.read_text())
            payload = path.read_bytes()
        except (OSError, ValueError) as error:
            return None, f"unreadable: {error}"
        if not isinstance(meta, dict) or hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            return None, "checksum mismatch"
        if meta.get("shape") != list(shape) or meta.get("dtype") != "uint8" or meta.get("codec") != codec:
            return None, "its shape, dtype or codec differs from its key"
        try:
            stored = np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError as error:
            return None, f"not a valid .npy file: {error}"
        if stored.shape != tuple(shape) or stored.dtype != np.uint8:
            return None, f"holds a {stored.dtype} array of shape {stored.shape}"
        return stored, None
