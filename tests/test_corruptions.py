"""The CIFAR-10-C corruptions against the published generator's formulas, on real CIFAR-10 images."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from minnets.data import load_dataset
from minnets.errors import MinnetsError
from minnets.robustness import corruptions as C

FROST = REPO_ROOT.parent / "shared" / "data" / "frost"
#: Corruptions that draw random numbers (the others must not depend on the seed).
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform", "speckle_noise", "spatter"}


@pytest.fixture(scope="module")
def test_images(cifar_root) -> np.ndarray:
    return load_dataset("cifar10", root=cifar_root).test_images[:64]


@pytest.fixture(scope="module")
def frost_dir():
    if not (FROST / "frost1.png").is_file():
        pytest.skip(f"frost pictures not found in {FROST}")
    return FROST


def grey(value: int, n: int = 16) -> np.ndarray:
    return np.full((n, 32, 32, 3), value, dtype=np.uint8)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_every_severity_is_uint8_deterministic_distinct_and_per_image(name, test_images, frost_dir):
    images = test_images[:4]
    outputs = []
    for severity in C.SEVERITIES:
        out = C.corrupt(images, name, severity, seed=3, frost_dir=frost_dir)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(out, C.corrupt(images, name, severity, seed=3, frost_dir=frost_dir))
        # Image k's pixels depend only on (seed, corruption, severity, k): batches and --n agree.
        part = C.corrupt(images[2:], name, severity, seed=3, start=2, frost_dir=frost_dir)
        assert np.array_equal(part, out[2:])
        other_seed = C.corrupt(images, name, severity, seed=4, frost_dir=frost_dir)
        assert np.array_equal(other_seed, out) == (name not in RANDOM)
        assert not np.array_equal(out, images)
        outputs.append(out)
    for weaker, stronger in zip(outputs, outputs[1:]):
        assert not np.array_equal(weaker, stronger)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_noise_has_the_published_std(severity):
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    out = C.corrupt(grey(128), "gaussian_noise", severity).astype(np.float64)
    # np.uint8() truncates: a uniform [0, 1) error on top of the noise, mean -0.5, variance 1/12.
    assert out.std() == pytest.approx(np.sqrt((sigma * 255) ** 2 + 1 / 12), rel=0.02)
    assert out.mean() == pytest.approx(127.5, abs=0.3)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_shot_noise_is_poisson_with_the_published_photon_count(severity):
    count = (500, 250, 100, 75, 50)[severity - 1]
    out = C.corrupt(grey(102), "shot_noise", severity).astype(np.float64) / 255
    assert out.var() == pytest.approx((102 / 255) / count, rel=0.05)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_impulse_noise_flips_the_published_fraction_half_salt_half_pepper(severity):
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    out = C.corrupt(grey(128, 32), "impulse_noise", severity)
    salt, pepper = np.mean(out == 255), np.mean(out == 0)
    assert salt + pepper == pytest.approx(amount, rel=0.06)
    assert salt == pytest.approx(pepper, rel=0.15)
    assert set(np.unique(out)) == {0, 128, 255}


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_speckle_noise_is_multiplicative_with_the_published_std(severity):
    sigma = (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]
    out = C.corrupt(grey(100), "speckle_noise", severity).astype(np.float64)
    assert out.std() == pytest.approx(np.sqrt((sigma * 100) ** 2 + 1 / 12), rel=0.02)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_brightness_adds_the_published_shift_to_the_hsv_value(severity, test_images):
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    out = C.corrupt(test_images, "brightness", severity)
    value = test_images.max(axis=-1) / 255  # HSV value is the largest channel
    expected = np.floor(255 * np.minimum(value + shift, 1))
    assert np.abs(out.max(axis=-1) - expected).max() <= 1


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_saturate_scales_the_hsv_saturation_as_published(severity, test_images):
    scale, offset = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]
    images = test_images[:4]
    out = C.corrupt(images, "saturate", severity)
    for before, after in zip(images.reshape(-1, 3)[::7] / 255, out.reshape(-1, 3)[::7] / 255):
        h, s, v = colorsys.rgb_to_hsv(*before)
        if v < 0.4:  # dark pixels: 8-bit steps make their saturation too coarse to compare
            continue
        assert colorsys.rgb_to_hsv(*after)[1] == pytest.approx(min(max(s * scale + offset, 0), 1), abs=0.03)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_contrast_keeps_each_channel_mean_and_scales_the_deviations(severity, test_images):
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    images = test_images[:8].astype(np.float64)
    out = C.corrupt(test_images[:8], "contrast", severity).astype(np.float64)
    means = images.mean(axis=(1, 2))
    shift = out.mean(axis=(1, 2)) - means
    assert np.all((shift > -1) & (shift <= 0))  # kept, but for np.uint8()'s truncation (under one level)
    assert np.abs(out - ((images - means[:, None, None]) * factor + means[:, None, None])).max() <= 1


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_jpeg_compression_is_pillow_at_the_published_quality(severity, test_images):
    quality = (80, 65, 58, 50, 40)[severity - 1]
    images = test_images[:4]
    expected = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        expected.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    assert np.array_equal(C.corrupt(images, "jpeg_compression", severity), np.stack(expected))


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_pixelate_is_a_box_down_and_up_scale_by_the_published_factor(severity, test_images):
    side = {1: 30, 2: 28, 3: 27, 4: 24, 5: 20}[severity]  # int(32 * .95/.9/.85/.75/.65)
    image = test_images[0]
    small = Image.fromarray(image).resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
    assert np.array_equal(C.corrupt(image[None], "pixelate", severity)[0], np.asarray(small))


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_blur_is_skimage_gaussian_with_the_published_sigma(severity, test_images):
    from skimage.filters import gaussian

    sigma = (0.4, 0.6, 0.7, 0.8, 1)[severity - 1]
    images = test_images[:2]
    expected = [np.uint8(np.clip(gaussian(image / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)
                for image in images]
    assert np.array_equal(C.corrupt(images, "gaussian_blur", severity), np.stack(expected))


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"])
def test_blurs_keep_a_flat_image_flat(name):
    out = C.corrupt(grey(90, 2), name, 5, use_wand=False).astype(int)
    assert np.abs(out - 90).max() <= 1


def test_glass_blur_copies_neighbours_as_published(test_images):
    """Severity 1 blurs by sigma 0.05 (nothing); each visited pixel then holds its own value or
    its upper/left neighbour's: the published tuple "swap" of numpy views is a copy."""
    images = test_images[:4]
    out = C.corrupt(images, "glass_blur", 1)
    inner = out[:, 2:, 2:]
    candidates = [images[:, 2 - dy:32 - dy, 2 - dx:32 - dx] for dy in (0, 1) for dx in (0, 1)]
    assert np.all(np.any([np.all(inner == c, axis=-1) for c in candidates], axis=0))
    assert not np.array_equal(inner, images[:, 2:, 2:])


def test_frost_overlays_a_crop_of_one_of_the_first_five_pictures(frost_dir):
    pictures = C.frost_pictures(frost_dir)
    black = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    out = C.corrupt(black, "frost", 5, frost_dir=frost_dir)  # 0.75 * 0 + 0.45 * frost
    for overlay in out:
        found = []
        for index, picture in enumerate(pictures):
            crops = np.lib.stride_tricks.sliding_window_view(picture[..., ::-1], (32, 32, 3))[..., 0, :, :, :]
            hits = np.all(np.uint8(0.45 * crops.astype(np.float64)) == overlay, axis=(-3, -2, -1))
            if hits.any():
                found.append(index)
        assert found and found[0] < 5  # frost6 is never picked (randint(5))


def test_fog_keeps_black_black_and_the_plasma_spans_zero_to_one():
    # The published fog rescales by the image's maximum, which is 0 for a black image.
    assert not C.corrupt(np.zeros((2, 32, 32, 3), np.uint8), "fog", 5).any()
    plasma = C._plasma_fractal(np.random.default_rng(0))
    assert plasma.min() == 0 and plasma.max() == 1 and plasma.shape == (32, 32)


@pytest.mark.parametrize("name", C.IMAGEMAGICK)
def test_numpy_motion_blur_agrees_with_imagemagick(name, test_images):
    if not C.wand_works():
        pytest.skip("Wand or its MagickWand library does not work here")
    images = test_images[:8]
    for severity in (1, 5):
        wand = C.corrupt(images, name, severity, use_wand=True).astype(int)
        numpy = C.corrupt(images, name, severity, use_wand=False).astype(int)
        assert np.abs(wand - numpy).max() <= 1
        assert np.mean(wand != numpy) < 0.03


def test_motion_blur_is_marked_approximated_exactly_without_imagemagick():
    assert C.approximated("motion_blur", use_wand=False) and C.approximated("snow", use_wand=False)
    assert not C.approximated("motion_blur", use_wand=True)
    assert not any(C.approximated(name, use_wand=False) for name in C.CORRUPTIONS if name not in C.IMAGEMAGICK)
    assert "approximated" in C.method("snow", use_wand=False)


def test_bad_input_is_a_one_line_error(test_images):
    with pytest.raises(MinnetsError, match="unknown corruption 'fogg'"):
        C.corrupt(test_images[:1], "fogg", 1)
    with pytest.raises(MinnetsError, match="severity must be 1 to 5"):
        C.corrupt(test_images[:1], "fog", 6)
    with pytest.raises(MinnetsError, match="uint8 N x 32 x 32 x 3"):
        C.corrupt(test_images[:1].astype(np.float32), "fog", 1)
    with pytest.raises(MinnetsError, match="frost pictures"):
        C.corrupt(test_images[:1], "frost", 1)


def test_frost_pictures_are_checked_by_sha256(tmp_path, frost_dir):
    for name in C.FROST_FILES:
        (tmp_path / name).write_bytes((frost_dir / name).read_bytes())
    C.frost_pictures(tmp_path)
    (tmp_path / "frost3.png").write_bytes(b"not the picture")
    with pytest.raises(MinnetsError, match="frost3.png does not have the published sha256"):
        C.frost_pictures(tmp_path)


def test_corruption_lists_parse_groups_and_names():
    assert C.parse_corruptions("benchmark") == list(C.BENCHMARK) and len(C.BENCHMARK) == 15
    assert C.parse_corruptions("extra,fog") == [*C.EXTRA, "fog"]
    assert C.parse_corruptions("all") == list(C.CORRUPTIONS) and len(C.CORRUPTIONS) == 19
    with pytest.raises(MinnetsError, match="unknown corruption 'smog'"):
        C.parse_corruptions("fog,smog")


def test_the_figure_has_a_row_per_corruption(tmp_path, test_images, frost_dir):
    path = C.plot_corruption_grid(tmp_path / "grid.png", test_images[7], index=7, frost_dir=frost_dir)
    with Image.open(path) as figure:
        width, height = figure.size
    assert height > 2.5 * width  # 19 rows of 6 tiles


def test_summary_means_and_corruption_error_as_published():
    rows = [{"corruption": c, "severity": s, "test_err": float(i + s)} for i, c in enumerate(C.CORRUPTIONS)
            for s in C.SEVERITIES]
    reference = [{**row, "test_err": 2 * row["test_err"]} for row in rows]
    summary = C.summarize(rows, reference)
    # corruption i has errors i+1 .. i+5: mean i+3, accuracy 97-i
    assert summary["accuracy"]["gaussian_noise"] == 97 and summary["accuracy"]["saturate"] == 97 - 18
    assert summary["mean_15"] == pytest.approx(np.mean([97 - i for i in range(15)]))
    assert summary["mean_19"] == pytest.approx(np.mean([97 - i for i in range(19)]))
    assert summary["mce"] == pytest.approx(50) and summary["ce"]["fog"] == pytest.approx(50)
    partial = C.summarize([r for r in rows if not (r["corruption"] == "fog" and r["severity"] == 5)])
    assert "fog" not in partial["accuracy"] and partial["mean_15"] is None and partial["mean_19"] is None
