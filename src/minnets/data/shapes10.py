"""shapes10: a small synthetic dataset whose ten classes differ only in 2-D local structure.

Min-units are motivated by end-stopped cells, which respond to 2-D features (line ends,
corners, junctions, curvature) and not to straight 1-D structure. shapes10 asks exactly that
question and needs no download: every class is drawn from the same kind of strokes on the
same kind of background, and only the local geometry tells the classes apart.

Classes (strokes extend beyond the image unless they are said to end):
  line        a straight stroke across the image (1-D: no end, no junction, no curvature)
  curve       a gently curved stroke across the image (an arc of a circle of radius 18-40)
  line_end    a straight stroke that ends inside the image
  corner      two strokes meeting at their ends (L-junction), 60-120 degrees apart
  t_junction  a straight stroke with a second one ending on it at 65-115 degrees
  x_crossing  two straight strokes crossing at 40-90 degrees
  y_junction  three strokes ending at one point, about 120 (105-135) degrees apart
  arc         an open circular contour (150-270 degrees of a circle), both ends inside
  circle      a closed circular contour (radius 5-11) inside the image
  polygon     a closed straight-sided contour (3-5 corners, radius 7-12) inside the image

Nuisances, drawn independently of the class: position, orientation, radius, stroke width
(OpenCV thickness 1-2, antialiased, sub-pixel placement), background and stroke colours
(stroke brighter or darker by 60-160 grey levels, then each colour jittered by up to 30 per
channel), a linear background gradient, smooth low-frequency background clutter and uniform
pixel noise (standard deviation 2-10).

Defaults: 10,000 training and 2,000 test images (classes exactly balanced when the size is a
multiple of ten), generated in about 1.5 CPU-seconds. The same (seed, n_train, n_test) gives identical
arrays on the same numpy and OpenCV versions (PCG64 streams and OpenCV's integer rasteriser
are deterministic); the test split is drawn from its own stream, so it does not change with
the training size. ``mean``/``std`` are the exact per-channel statistics of the generated
training pixels (pixels / 255, population std).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from minnets.data.dataset import ImageDataset

CLASSES = (
    "line", "curve", "line_end", "corner", "t_junction",
    "x_crossing", "y_junction", "arc", "circle", "polygon",
)
N_TRAIN = 10_000
N_TEST = 2_000
SIZE = 32

_SHIFT = 4  # OpenCV fixed-point bits: coordinates in 1/16 pixel
_CENTRE = (SIZE - 1) / 2
_FAR = 3 * SIZE  # length that takes a stroke well outside the image
_CHUNK = 1024  # images rendered per vectorised block (bounds memory)

_Canvas = np.ndarray
_Draw = Callable[[_Canvas, np.ndarray, int], None]


def _fixed(x: float, y: float) -> tuple[int, int]:
    return round(x * (1 << _SHIFT)), round(y * (1 << _SHIFT))


def _segment(canvas: _Canvas, x0: float, y0: float, x1: float, y1: float, width: int) -> None:
    cv2.line(canvas, _fixed(x0, y0), _fixed(x1, y1), 255, width, cv2.LINE_AA, _SHIFT)


def _ray(canvas: _Canvas, p: tuple[float, float], angle: float, width: int) -> None:
    """A stroke that starts at ``p`` and leaves the image in direction ``angle``."""
    _segment(canvas, *p, p[0] + _FAR * np.cos(angle), p[1] + _FAR * np.sin(angle), width)


def _through(canvas: _Canvas, p: tuple[float, float], angle: float, width: int) -> None:
    """A straight stroke through ``p`` that crosses the whole image."""
    dx, dy = _FAR * np.cos(angle), _FAR * np.sin(angle)
    _segment(canvas, p[0] - dx, p[1] - dy, p[0] + dx, p[1] + dy, width)


def _junction_point(u: np.ndarray) -> tuple[float, float]:
    """Where a class's 2-D feature sits: anywhere in the central 12 x 12 pixels."""
    return _CENTRE + 12 * (u[0] - 0.5), _CENTRE + 12 * (u[1] - 0.5)


def _contained_centre(u: np.ndarray, radius: float) -> tuple[float, float]:
    """A centre that keeps a circle of ``radius`` (plus stroke) inside the image."""
    slack = _CENTRE - 2 - radius
    return _CENTRE + 2 * slack * (u[0] - 0.5), _CENTRE + 2 * slack * (u[1] - 0.5)


def _line(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    _through(canvas, _junction_point(u), np.pi * u[2], width)


def _curve(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    # A circle wider than the image cannot close inside it; it passes through the centre region.
    x, y = _junction_point(u)
    radius, direction = 18 + 22 * u[3], 2 * np.pi * u[2]
    centre = _fixed(x + radius * np.cos(direction), y + radius * np.sin(direction))
    cv2.circle(canvas, centre, round(radius * (1 << _SHIFT)), 255, width, cv2.LINE_AA, _SHIFT)


def _line_end(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    _ray(canvas, _junction_point(u), 2 * np.pi * u[2], width)


def _corner(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    p, angle = _junction_point(u), 2 * np.pi * u[2]
    _ray(canvas, p, angle, width)
    _ray(canvas, p, angle + np.radians(60 + 60 * u[3]), width)


def _t_junction(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    p, angle = _junction_point(u), 2 * np.pi * u[2]
    _through(canvas, p, angle, width)
    _ray(canvas, p, angle + np.radians(65 + 50 * u[3]), width)


def _x_crossing(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    p, angle = _junction_point(u), np.pi * u[2]
    _through(canvas, p, angle, width)
    _through(canvas, p, angle + np.radians(40 + 50 * u[3]), width)


def _y_junction(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    p, angle = _junction_point(u), 2 * np.pi * u[2]
    _ray(canvas, p, angle, width)
    _ray(canvas, p, angle + np.radians(105 + 30 * u[3]), width)
    _ray(canvas, p, angle + np.radians(225 + 30 * u[4]), width)


def _circle_arc(canvas: _Canvas, u: np.ndarray, width: int, span: float) -> None:
    radius = 5 + 6 * u[3]
    centre = _fixed(*_contained_centre(u, radius))
    axes = _fixed(radius, radius)
    start = 360 * u[2]
    cv2.ellipse(canvas, centre, axes, 0, start, start + span, 255, width, cv2.LINE_AA, _SHIFT)


def _arc(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    _circle_arc(canvas, u, width, 150 + 120 * u[4])


def _circle(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    _circle_arc(canvas, u, width, 360)


def _polygon(canvas: _Canvas, u: np.ndarray, width: int) -> None:
    corners = 3 + int(3 * u[4])
    radius = 7 + 5 * u[3]
    cx, cy = _contained_centre(u, radius)
    step = 2 * np.pi / corners
    angles = 2 * np.pi * u[2] + step * (np.arange(corners) + 0.5 * (u[5 : 5 + corners] - 0.5))
    points = np.array([_fixed(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles])
    cv2.polylines(canvas, [points.astype(np.int32)], True, 255, width, cv2.LINE_AA, _SHIFT)


_DRAW: tuple[_Draw, ...] = (
    _line, _curve, _line_end, _corner, _t_junction,
    _x_crossing, _y_junction, _arc, _circle, _polygon,
)
_UNIFORMS = 10  # per-image uniforms the drawers may read (polygon uses up to u[9])


def _bilinear_matrix(coarse: int) -> np.ndarray:
    """(SIZE, coarse) weights that upsample a coarse grid linearly to SIZE pixels."""
    pos = np.linspace(0, coarse - 1, SIZE)
    lower = np.minimum(pos.astype(int), coarse - 2)
    frac = pos - lower
    weights = np.zeros((SIZE, coarse), np.float32)
    weights[np.arange(SIZE), lower] = 1 - frac
    weights[np.arange(SIZE), lower + 1] = frac
    return weights


def _render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images for ``labels``: class strokes drawn one by one, everything else vectorised."""
    n = len(labels)
    uniforms = rng.random((n, _UNIFORMS))
    widths = rng.integers(1, 3, n)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for mask, label, u, width in zip(masks, labels, uniforms, widths):
        _DRAW[label](mask, u, int(width))

    # Colours: a grey level and a signed contrast, then independent per-channel jitter.
    contrast = rng.uniform(60, 160, n) * rng.choice((-1.0, 1.0), n)
    low = np.maximum(0, -contrast)
    level = low + rng.random(n) * (np.minimum(255, 255 - contrast) - low)
    background = (level[:, None] + rng.uniform(-30, 30, (n, 3))).astype(np.float32)
    foreground = ((level + contrast)[:, None] + rng.uniform(-30, 30, (n, 3))).astype(np.float32)

    # Background: colour + linear gradient + smooth clutter (a random 5x5 grid, upsampled).
    ramp = np.arange(SIZE, dtype=np.float32) - np.float32(_CENTRE)
    slope = rng.uniform(-0.6, 0.6, (n, 2, 3)).astype(np.float32)
    upsample = _bilinear_matrix(5)
    coarse = rng.standard_normal((n, 5, 5, 3), np.float32) * rng.uniform(0, 15, (n, 1, 1, 1)).astype(np.float32)
    image = upsample @ (upsample @ coarse.reshape(n, 5, 15)).reshape(n, SIZE, 5, 3)
    image += background[:, None, None, :]
    image += slope[:, None, None, 0] * ramp[None, :, None, None]
    image += slope[:, None, None, 1] * ramp[None, None, :, None]

    alpha = masks[..., None] * np.float32(1 / 255)
    image += alpha * (foreground[:, None, None, :] - image)
    # Pixel noise: uniform with standard deviation sigma (integer draws are cheaper than normals).
    sigma = rng.uniform(2, 10, (n, 1, 1, 1)).astype(np.float32)
    image += rng.integers(-127, 128, (n, SIZE, SIZE, 3), np.int8) * (sigma * np.float32(np.sqrt(3) / 127))
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def _split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for start in range(0, n, _CHUNK):
        images[start : start + _CHUNK] = _render(labels[start : start + _CHUNK], rng)
    return images, labels


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact mean/std of pixels / 255 per channel, from histograms (no float copy of the data)."""
    values = np.arange(256) / 255
    means, stds = [], []
    for channel in range(3):
        counts = np.bincount(images[..., channel].ravel(), minlength=256)
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)


def make_shapes10(seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST) -> ImageDataset:
    """Generate shapes10; the same (seed, n_train, n_test) always gives identical arrays."""
    train_stream, test_stream = np.random.SeedSequence(seed).spawn(2)
    train_images, train_labels = _split(n_train, np.random.default_rng(train_stream))
    test_images, test_labels = _split(n_test, np.random.default_rng(test_stream))
    mean, std = _channel_stats(train_images)
    return ImageDataset(
        name="shapes10",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(CLASSES),
        mean=mean,
        std=std,
    )
