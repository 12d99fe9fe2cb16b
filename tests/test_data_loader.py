"""The device-resident BatchLoader: order, augmentation, normalisation and DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minnets.data import PAD, BatchLoader, flip_crop
from minnets.errors import MinnetsError

N = 50
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8))


def make(images: torch.Tensor, batch_size: int = 16, **kw) -> BatchLoader:
    """A loader whose labels are the sample indices, so y tells which images a batch holds."""
    kw = {"train": True, "seed": 3, "mean": MEAN, "std": STD, **kw}
    return BatchLoader(images, torch.arange(len(images)), batch_size, **kw)


def normalised(images_nhwc: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: torchvision's ToTensor then Normalize, written out in float64."""
    x = images_nhwc.permute(0, 3, 1, 2).double() / 255
    return ((x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1))
            / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)).to(dtype)


def reference_flip_crop(image: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
    """One image at a time, as the SPEC says: flip, zero-pad 4, crop 32 x 32 at (dy, dx)."""
    if flip:
        image = image[:, ::-1]
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
    return padded[dy : dy + 32, dx : dx + 32]


def batches(loader: BatchLoader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    return list(loader.epoch(epoch))


# --- augmentation --------------------------------------------------------------------------


def test_centre_crop_without_flip_is_identity(images: torch.Tensor) -> None:
    b = len(images)
    out = flip_crop(images, torch.zeros(b, dtype=torch.bool), torch.full((b, 2), PAD))
    assert torch.equal(out, images)
    flipped = flip_crop(images, torch.ones(b, dtype=torch.bool), torch.full((b, 2), PAD))
    assert torch.equal(flipped, images.flip(2))


def test_padding_is_zero_in_pixel_space(images: torch.Tensor) -> None:
    b = len(images)
    out = flip_crop(images, torch.zeros(b, dtype=torch.bool), torch.zeros(b, 2, dtype=torch.long))
    assert torch.equal(out[:, PAD:, PAD:], images[:, :-PAD, :-PAD])
    assert (out[:, :PAD] == 0).all() and (out[:, :, :PAD] == 0).all()
    out = flip_crop(images, torch.zeros(b, dtype=torch.bool), torch.full((b, 2), 2 * PAD))
    assert torch.equal(out[:, :-PAD, :-PAD], images[:, PAD:, PAD:])
    assert (out[:, -PAD:] == 0).all() and (out[:, :, -PAD:] == 0).all()


def test_flip_crop_matches_per_image_reference(images: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    flip = torch.rand(N, generator=g) < 0.5
    offsets = torch.randint(0, 2 * PAD + 1, (N, 2), generator=g)
    out = flip_crop(images, flip, offsets).numpy()
    for i in range(N):
        ref = reference_flip_crop(images[i].numpy(), bool(flip[i]), int(offsets[i, 0]), int(offsets[i, 1]))
        np.testing.assert_array_equal(out[i], ref)


def test_augmentation_draws_are_sane() -> None:
    loader = make(torch.zeros(20_000, 32, 32, 3, dtype=torch.uint8), train=True)
    plan = loader.plan(0)
    assert abs(plan.flip.float().mean().item() - 0.5) < 0.02
    for axis in range(2):
        counts = torch.bincount(plan.offsets[:, axis], minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1
        assert ((counts / 20_000 - 1 / 9).abs() < 0.01).all(), counts
    # Rows and columns, and flips and offsets, are drawn independently.
    assert abs(torch.corrcoef(plan.offsets.T.float())[0, 1].item()) < 0.03
    assert abs(torch.corrcoef(torch.stack([plan.flip.float(), plan.offsets[:, 1].float()]))[0, 1].item()) < 0.03


def test_train_batches_are_the_augmented_images(images: torch.Tensor) -> None:
    loader = make(images)
    plan = loader.plan(4)
    got = batches(loader, 4)
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert torch.equal(y, plan.order)
    expected = normalised(flip_crop(images[plan.order], plan.flip, plan.offsets))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    # Pixels that come from the padding normalise to -mean/std, flipped or not.
    pos = torch.arange(32)
    rows = ((plan.offsets[:, 0:1] + pos < PAD) | (plan.offsets[:, 0:1] + pos >= 32 + PAD))
    cols = ((plan.offsets[:, 1:2] + pos < PAD) | (plan.offsets[:, 1:2] + pos >= 32 + PAD))
    padding = rows[:, :, None] | cols[:, None, :]
    assert padding.any()
    for c in range(3):
        torch.testing.assert_close(x[:, c][padding], torch.full((int(padding.sum()),), -MEAN[c] / STD[c]))


# --- order and reproducibility ---------------------------------------------------------------


def test_len_and_batch_sizes(images: torch.Tensor) -> None:
    for train in (True, False):
        loader = make(images, 16, train=train)
        assert len(loader) == 4
        sizes = [(len(y), n) for _, y, n in loader.epoch(0)]
        assert sizes == [(16, 16), (16, 16), (16, 16), (2, 2)]
    assert len(make(images, 50)) == 1 and len(make(images, 64)) == 1 and len(make(images, 1)) == N


def test_each_sample_exactly_once_per_epoch(images: torch.Tensor) -> None:
    loader = make(images, 7)
    for epoch in range(3):
        y = torch.cat([b[1] for b in loader.epoch(epoch)])
        assert sorted(y.tolist()) == list(range(N))
        assert y.dtype == torch.int64


def test_same_seed_and_epoch_give_identical_batches(images: torch.Tensor) -> None:
    first = make(images)
    for epoch in range(3):  # consume epochs: there must be no hidden state between them
        batches(first, epoch)
    again = batches(first, 2)
    resumed = batches(make(images), 2)  # a fresh loader, as after resuming at epoch 2
    for (xa, ya, na), (xb, yb, nb) in zip(again, resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and na == nb


def test_epochs_and_seeds_differ(images: torch.Tensor) -> None:
    order = {
        (seed, epoch): torch.cat([b[1] for b in make(images, seed=seed).epoch(epoch)])
        for seed in (0, 1) for epoch in (0, 1)
    }
    values = list(order.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not torch.equal(values[i], values[j])
    plans = [make(images, seed=0).plan(e) for e in (0, 1)]
    assert not torch.equal(plans[0].offsets, plans[1].offsets)


def test_eval_order_is_fixed_and_unaugmented(images: torch.Tensor) -> None:
    labels = torch.arange(N) % 10
    loader = BatchLoader(images.numpy(), labels.numpy(), 16, train=False, seed=0, mean=MEAN, std=STD)
    for epoch in (0, 5):
        got = batches(loader, epoch)
        torch.testing.assert_close(torch.cat([b[0] for b in got]), normalised(images), rtol=0, atol=1e-5)
        assert torch.equal(torch.cat([b[1] for b in got]), labels)


def test_normalisation_constants() -> None:
    constant = torch.full((3, 32, 32, 3), 0, dtype=torch.uint8)
    constant[1] = 128
    constant[2] = 255
    loader = BatchLoader(constant, torch.zeros(3), 3, train=False, seed=0, mean=MEAN, std=STD)
    x, _, _ = next(loader.epoch(0))
    for i, value in enumerate((0, 128, 255)):
        for c in range(3):
            expected = (value / 255 - MEAN[c]) / STD[c]
            assert torch.allclose(x[i, c], torch.tensor(expected), atol=1e-5)


def test_layout_and_dtype(images: torch.Tensor) -> None:
    x, _, _ = next(make(images, channels_last=True).epoch(0))
    assert x.shape == (16, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    x_plain, _, _ = next(make(images).epoch(0))
    assert x_plain.is_contiguous() and x_plain.dtype == torch.float32
    assert torch.equal(x, x_plain)
    x_bf16, _, _ = next(make(images, dtype=torch.bfloat16).epoch(0))
    assert x_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(x_bf16.float(), x_plain, rtol=1e-2, atol=1e-2)
    x_f64, _, _ = next(make(images, dtype=torch.float64, train=False).epoch(0))
    torch.testing.assert_close(x_f64, normalised(images[:16], torch.float64), rtol=1e-14, atol=1e-14)


# --- DDP sharding --------------------------------------------------------------------------------


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 16), (3, 16), (4, 7)])
@pytest.mark.parametrize("train", [True, False])
def test_shards_concatenate_to_the_single_process_batch(
    images: torch.Tensor, world_size: int, batch_size: int, train: bool
) -> None:
    single = batches(make(images, batch_size, train=train), 1)
    ranks = [batches(make(images, batch_size, train=train, rank=r, world_size=world_size), 1)
             for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)  # every rank runs the same number of steps
    for step, (x, y, n_global) in enumerate(single):
        parts = [r[step] for r in ranks]
        assert all(p[2] == n_global == len(y) for p in parts)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # augmented pixels too
        sizes = [len(p[1]) for p in parts]
        assert sizes == [t.numel() for t in torch.tensor_split(torch.arange(n_global), world_size)]


def test_bad_arguments(images: torch.Tensor) -> None:
    with pytest.raises(MinnetsError, match="batch size must be at least 1"):
        make(images, 0)
    with pytest.raises(MinnetsError, match="seed must be >= 0"):
        make(images, seed=-1)
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        make(images, rank=2, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        make(images.float())
