"""JPEG codec modes (SPEC section 8) and the on-disk cache of compressed test sets."""

from __future__ import annotations

import hashlib
import io
import json

import cv2
import numpy as np
import PIL
import pytest
from PIL import Image

from minnets import jpeg
from minnets.errors import MinnetsError
from minnets.jpeg import MODES, JpegCache, codec_version, compress, default_cache_root


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """64 colourful 32x32 images: smooth colour gradients with red and blue far apart, plus noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    out = np.empty((64, 32, 32, 3), dtype=np.uint8)
    for i in range(64):
        a, b, c = rng.uniform(0, 1, 3)
        planes = [255 * (a * x + (1 - a) * y), 255 * (b * (1 - x)), 255 * (c * y * x + (1 - c) * (1 - y))]
        noisy = np.stack(planes, axis=-1) + rng.normal(0, 20, (32, 32, 3))
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def opencv_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def pillow_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.parametrize("quality", [90, 30, 1, 100])
def test_paper_mode_is_opencv_on_the_raw_rgb_array(images: np.ndarray, quality: int) -> None:
    expected = np.stack([opencv_roundtrip(image, quality) for image in images])
    np.testing.assert_array_equal(compress(images, quality, "paper"), expected)


def test_correct_mode_swaps_to_bgr_around_the_codec_and_differs_from_paper(images: np.ndarray) -> None:
    expected = np.stack([opencv_roundtrip(np.ascontiguousarray(image[..., ::-1]), 30)[..., ::-1] for image in images])
    correct = compress(images, 30, "correct")
    np.testing.assert_array_equal(correct, expected)
    paper = compress(images, 30, "paper")
    differs = [not np.array_equal(c, p) for c, p in zip(correct, paper)]
    assert all(differs)  # chroma is subsampled differently when red and blue trade places


def test_pillow_mode_is_a_pillow_round_trip(images: np.ndarray) -> None:
    expected = np.stack([pillow_roundtrip(image, 40) for image in images])
    np.testing.assert_array_equal(compress(images, 40, "pillow"), expected)


@pytest.mark.parametrize("mode", MODES)
def test_shape_and_dtype_are_preserved(mode: str) -> None:
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 256, (3, 20, 44, 3), dtype=np.uint8)
    out = compress(odd, 50, mode)
    assert out.shape == odd.shape and out.dtype == np.uint8
    assert compress(odd[:0], 50, mode).shape == (0, 20, 44, 3)


def test_lower_quality_moves_further_from_the_original(images: np.ndarray) -> None:
    distance = [np.abs(compress(images, q).astype(int) - images).mean() for q in (95, 50, 5)]
    assert distance[0] < distance[1] < distance[2]


@pytest.mark.parametrize("mode", MODES)
def test_worker_count_does_not_change_results(images: np.ndarray, mode: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jpeg, "_CHUNK", 7)  # several chunks (an uneven last one) from 64 images
    serial = compress(images, 60, mode, workers=1)
    for workers in (2, 3):
        np.testing.assert_array_equal(compress(images, 60, mode, workers=workers), serial)


@pytest.mark.parametrize("quality", [0, 101, -5, 50.0, True, "90"])
def test_quality_outside_1_to_100_is_refused(images: np.ndarray, quality: object) -> None:
    with pytest.raises(MinnetsError, match="quality must be an integer from 1 to 100"):
        compress(images, quality)  # type: ignore[arg-type]


def test_unknown_mode_lists_the_modes(images: np.ndarray) -> None:
    with pytest.raises(MinnetsError, match="paper, correct, pillow"):
        compress(images, 50, "opencv")
    with pytest.raises(MinnetsError, match="paper, correct, pillow"):
        codec_version("bgr")


@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8, 3), dtype=np.float32),
    np.zeros((8, 8, 3), dtype=np.uint8),
    np.zeros((2, 8, 8), dtype=np.uint8),
    np.zeros((2, 3, 8, 8), dtype=np.uint8),
    [[0]],
])
def test_wrong_dtype_or_shape_is_refused(bad: object) -> None:
    with pytest.raises(MinnetsError, match="expected uint8 images of shape N x H x W x 3"):
        compress(bad, 50)  # type: ignore[arg-type]


def test_workers_below_one_are_refused(images: np.ndarray) -> None:
    with pytest.raises(MinnetsError, match="workers must be at least 1"):
        compress(images, 50, workers=0)


def test_codec_version_names_library_and_libjpeg() -> None:
    opencv = codec_version("paper")
    assert opencv == codec_version("correct")
    assert opencv.startswith(f"opencv {cv2.__version__}; ") and "jpeg" in opencv.lower()
    jpeg_line = next(line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("JPEG:"))
    assert jpeg_line.split(":", 1)[1].strip() in opencv
    pillow = codec_version("pillow")
    assert pillow.startswith(f"pillow {PIL.__version__}; libjpeg")


# --- cache -----------------------------------------------------------------------------------


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record every real compression the cache asks for."""
    calls: list[tuple[int, str]] = []
    real = jpeg.compress

    def counting(images: np.ndarray, quality: int, mode: str = "paper", workers: int | None = None) -> np.ndarray:
        calls.append((quality, mode))
        return real(images, quality, mode, workers)

    monkeypatch.setattr(jpeg, "compress", counting)
    return calls


def test_cache_stores_once_then_reads(images: np.ndarray, tmp_path, counted) -> None:
    cache = JpegCache(tmp_path)
    first = cache.get_or_compress("toy", images, 50, "paper")
    path = cache.entry_path("toy", images, 50, "paper")
    mtime = path.stat().st_mtime_ns
    second = cache.get_or_compress("toy", images, 50, "paper")
    assert counted == [(50, "paper")]
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first, compress(images, 50, "paper"))
    np.testing.assert_array_equal(second, first)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["shape"] == list(images.shape) and meta["codec"] == codec_version("paper")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_cache_keys_separate_quality_mode_dataset_and_subset(images: np.ndarray, tmp_path, counted) -> None:
    cache = JpegCache(tmp_path)
    keys = [("toy", images, 50, "paper"), ("toy", images, 40, "paper"), ("toy", images, 50, "correct"),
            ("toy", images, 50, "pillow"), ("other", images, 50, "paper"), ("toy", images[:32], 50, "paper"),
            ("toy", images[32:], 50, "paper")]
    results = [cache.get_or_compress(*key) for key in keys]
    assert len(counted) == len(keys)
    assert len({cache.entry_path(*key) for key in keys}) == len(keys)
    assert len(list(tmp_path.glob("*.npy"))) == len(keys)
    np.testing.assert_array_equal(results[5], compress(images[:32], 50))
    np.testing.assert_array_equal(results[6], compress(images[32:], 50))
    np.testing.assert_array_equal(results[3], compress(images, 50, "pillow"))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_shape_with_matching_checksum(path) -> None:
    """A valid .npy of another shape whose sidecar agrees with it: only the shape check can catch it."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 32, 32, 3), dtype=np.uint8))
    path.write_bytes(buffer.getvalue())
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    sidecar.write_text(json.dumps(meta))


def lose_sidecar(path) -> None:
    path.with_suffix(".json").unlink()


def garble_sidecar(path) -> None:
    path.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize("damage, reason", [
    (truncate, "checksum mismatch"),
    (flip_last_byte, "checksum mismatch"),
    (wrong_shape_with_matching_checksum, "holds a uint8 array of shape (3, 32, 32, 3)"),
    (lose_sidecar, "unreadable"),
    (garble_sidecar, "unreadable"),
])
def test_damaged_entry_is_reported_and_rebuilt(images: np.ndarray, tmp_path, counted, capsys, damage,
                                               reason: str) -> None:
    cache = JpegCache(tmp_path)
    good = cache.get_or_compress("toy", images, 30, "paper")
    path = cache.entry_path("toy", images, 30, "paper")
    damage(path)
    capsys.readouterr()
    rebuilt = cache.get_or_compress("toy", images, 30, "paper")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minnets: warning: JPEG cache entry") and reason in err
    assert len(counted) == 2
    np.testing.assert_array_equal(rebuilt, good)
    np.testing.assert_array_equal(cache.get_or_compress("toy", images, 30, "paper"), good)
    assert len(counted) == 2 and capsys.readouterr().err == ""


def test_default_cache_root_follows_minnets_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MINNETS_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c" / "jpeg"
    assert JpegCache().root == tmp_path / "c" / "jpeg"
    monkeypatch.delenv("MINNETS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / ".cache" / "minnets" / "jpeg"


def test_entry_name_is_a_safe_file_name(images: np.ndarray, tmp_path) -> None:
    path = JpegCache(tmp_path).entry_path("../weird/name", images, 10, "pillow")
    assert path.parent == tmp_path and path.name.startswith("weird_name-pillow-q10-")


def test_unwritable_cache_warns_and_still_compresses(images: np.ndarray, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = JpegCache(blocker / "jpeg").get_or_compress("toy", images, 70, "correct")
    np.testing.assert_array_equal(result, compress(images, 70, "correct"))
    err = capsys.readouterr().err
    assert err.startswith("minnets: warning: cannot store JPEG cache entry") and err.count("\n") == 1
