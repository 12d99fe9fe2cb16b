"""Batches from a dataset held whole on the device, augmented with batched tensor ops.

CIFAR fits in device memory many times over, so the images stay there as one uint8 tensor and
each step is a handful of tensor operations: gather, flip-and-crop in one indexing pass,
normalise. There are no worker processes and no per-image Python work.

All randomness of an epoch (order, flips, crop offsets) is drawn up front on the CPU from a
generator seeded by (seed, epoch): the batches of an epoch depend on nothing else, so a run
resumed at epoch e sees the same batches, and they do not depend on the device either. The
draws belong to positions in the global order, so DDP ranks slicing one global batch get
exactly the images a single process would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from minnets.errors import MinnetsError

PAD = 4
"""Zero padding on each side before the random crop (the paper's CIFAR augmentation)."""


class EpochPlan(NamedTuple):
    """One epoch's draws, indexed by position in the epoch (``flip``/``offsets`` None in eval)."""

    order: torch.Tensor
    flip: torch.Tensor | None
    offsets: torch.Tensor | None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch), well mixed across both."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def flip_crop(images: torch.Tensor, flip: torch.Tensor, offsets: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Flip some images horizontally, zero-pad by ``pad`` and crop back to size at ``offsets``.

    ``images`` is uint8 (B, H, W, C); ``offsets`` (B, 2) holds the crop's top-left corner
    (row, column) in the padded image, each in 0..2*pad, so (pad, pad) without a flip is the
    identity. Padding happens in pixel space, as torchvision's RandomCrop does before Normalize.
    Flipping the padded image equals padding the flipped one, so the flip is folded into the
    column indices and the whole batch is a single gather.
    """
    b, h, w, c = images.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad)).view(b * hp * wp, c)
    device = images.device
    rows = offsets[:, 0:1] + torch.arange(h, device=device)
    cols = offsets[:, 1:2] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None], wp - 1 - cols, cols)
    base = torch.arange(b, device=device)[:, None] * hp + rows
    pixels = (base * wp)[:, :, None] + cols[:, None, :]
    # index_select copies whole pixel rows; it is several times faster than fancy indexing.
    return padded.index_select(0, pixels.view(-1)).view(b, h, w, c)


class BatchLoader:
    """Epochs of normalised (x, y, n_global) batches; ``batch_size`` is the global batch size.

    The global batch i is positions i*B..(i+1)*B of the epoch's order (the last one smaller,
    never dropped); rank r of ``world_size`` takes its contiguous share as
    ``torch.tensor_split`` would give it, and ``n_global`` is the global batch's size, the
    divisor for a loss summed over the local share. Every rank yields the same number of
    steps; a rank's share of a tiny last batch can be empty.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise MinnetsError(f"batch size must be at least 1, got {batch_size}: pass a positive --batch-size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if seed < 0:
            raise MinnetsError(f"seed must be >= 0, got {seed}: pass a non-negative --seed")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.dtype = dtype
        # ((x / 255) - mean) / std as one multiply-subtract, in float32 or better: half-precision
        # outputs are rounded once at the end, float64 outputs keep full precision.
        self._compute_dtype = torch.promote_types(dtype, torch.float32)
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device, self._compute_dtype)
        self._shift = (mean_t / std_t).view(1, 3, 1, 1).to(self.device, self._compute_dtype)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def plan(self, epoch: int) -> EpochPlan:
        """The order and augmentation draws of ``epoch`` (all of them, for every rank)."""
        n = len(self.labels)
        if not self.train:
            return EpochPlan(torch.arange(n), None, None)
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
        return EpochPlan(order, flip, offsets)

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part of positions start..stop, split like tensor_split."""
        quota, extra = divmod(stop - start, self.world_size)
        lo = start + self.rank * quota + min(self.rank, extra)
        return lo, lo + quota + (self.rank < extra)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield (x, y, n_global) for every step of ``epoch``; x is normalised (B, 3, H, W)."""
        order, flip, offsets = (None if t is None else t.to(self.device) for t in self.plan(epoch))
        n = len(self.labels)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            lo, hi = self.shard(start, stop)
            index = order[lo:hi]
            images = self.images[index]
            if self.train:
                images = flip_crop(images, flip[lo:hi], offsets[lo:hi])
            yield self._normalise(images), self.labels[index], stop - start

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        # Changing the layout while still uint8 moves a quarter of the bytes.
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.permute(0, 3, 1, 2).contiguous(memory_format=memory_format).to(self._compute_dtype)
        return x.mul_(self._scale).sub_(self._shift).to(self.dtype)
