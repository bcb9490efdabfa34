"""The device-resident CIFAR pipeline: the images as uint8 tensors on the training device, each batch's 4-pixel
pad + random crop + horizontal flip + normalisation done there as a few batched tensor operations.

Its batches are the torchvision pipeline's bit for bit (harness/data/datasets.py `cifar`: RandomCrop(32,
padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std), with the CPU generator seeded per batch
by harness/data/loaders.py), which is what lets `data.pipeline` stay out of the run id:

- The draws. Per sample and in order, torchvision calls `torch.randint(0, 9, (1,))` (crop row),
  `torch.randint(0, 9, (1,))` (crop column) and `torch.rand(1) < 0.5` (flip). Each takes one 32-bit value v
  of the CPU mt19937 generator: randint keeps v % 9, rand keeps v's 24 low bits as a fraction of 2**24. One
  call drawing 3 values per sample in [0, 9 * 2**24) from a generator with the batch's seed takes the same
  values v % (9 * 2**24), and since 9 * 2**24 is a multiple of both 9 and 2**24 it gives the same v % 9 and
  the same 24 low bits (`crop_flip_draws`).
- The values. ToTensor turns a uint8 value u into `float32(u).div(255)` and Normalize subtracts the channel's
  float32 mean and divides by its float32 std; the result depends only on (channel, u), so a 3 x 256 table
  computed once with those very operations on the CPU gives every value, and a lookup in it is exact on
  any device (computing on the GPU instead could round differently: CUDA divides by a scalar as a multiply
  by its reciprocal).
- The geometry. Crop of the zero-padded image at (top, left), then a mirror: output pixel (y, x) is padded
  pixel (top + y, left + x), or (top + y, left + W - 1 - x) when flipped; padding pixels are the uint8 0
  that torchvision's `fill=0` pads with, so they go through the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

PADDING = 4  # RandomCrop(32, padding=4)
POSITIONS = 2 * PADDING + 1  # crop offsets per axis: 0 .. 8
LEVELS = 256  # uint8 values
# randint(0, 9) keeps v % 9 and rand() keeps the 24 low bits of the same 32-bit draw v; a range that is a
# multiple of both gives both from one value.
_FRACTION_BITS = 24
_DRAW_RANGE = POSITIONS * 2**_FRACTION_BITS


def normalisation_table(mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """float32 (channels, 256): what ToTensor + Normalize(mean, std) make of each uint8 value of each channel,
    computed on the CPU with the same operations (torchvision.transforms.functional.to_tensor / normalize)."""
    channels = len(mean)
    levels = torch.arange(LEVELS, dtype=torch.uint8).expand(channels, 1, LEVELS)
    scaled = levels.to(torch.float32).div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return scaled.sub(mean_t).div(std_t).view(channels, LEVELS)


def crop_flip_draws(batch_seeds: Sequence[int], batch_sizes: Sequence[int]) -> Tensor:
    """int64 (sum(batch_sizes), 3): each sample's crop top, crop left and flip (1 = mirrored), batch by batch,
    as torchvision's RandomCrop(padding=4) and RandomHorizontalFlip() draw them for a batch whose samples are
    transformed in order with the CPU generator seeded with the batch's seed. One small call per batch."""
    parts = []
    for seed, size in zip(batch_seeds, batch_sizes, strict=True):
        generator = torch.Generator().manual_seed(int(seed))
        # Filled in memory order: sample 0's row, column and flip values, then sample 1's, as torchvision draws.
        parts.append(torch.empty(size, 3, dtype=torch.int64).random_(0, _DRAW_RANGE, generator=generator))
    raw = torch.cat(parts) if parts else torch.empty(0, 3, dtype=torch.int64)
    fraction = raw[:, 2] % 2**_FRACTION_BITS  # rand() = fraction / 2**24, flipped when below 0.5
    flip = (fraction < 2 ** (_FRACTION_BITS - 1)).to(torch.int64)
    return torch.stack([raw[:, 0] % POSITIONS, raw[:, 1] % POSITIONS, flip], dim=1)


class ResidentImages(Dataset):
    """uint8 images with their int64 targets, held where batches are assembled (the CPU or the training
    device). `batch(indices, draws)` is a gather of the batch's pixels (cropped and flipped by `draws` when
    `augment`) and a lookup of their normalised values: float32 (B, C, H, W), no per-sample Python work."""

    def __init__(self, images: Tensor, targets: Tensor, table: Tensor, *, augment: bool) -> None:
        """`images` uint8 (N, C, H, W); `table` float32 (C, 256) from `normalisation_table`, on the same device."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), not {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.augment = augment
        self.shape = tuple(images.shape[1:])
        channels, height, width = self.shape
        # Stored padded once, so a crop is a plain gather (the padding is torchvision's fill value, 0).
        # contiguous: the gather below computes offsets for the (N, C, H, W) layout, which `pad` of images
        # permuted from the files' (N, H, W, C) does not give.
        self.pixels = (F.pad(images, (PADDING,) * 4) if augment else images).contiguous()
        self.targets = targets
        self.table = table.reshape(-1)
        device = images.device
        stored_height, stored_width = self.pixels.shape[2:]
        self._image_stride = channels * stored_height * stored_width
        self._stored_width = stored_width
        self._channel_starts = (torch.arange(channels, device=device) * stored_height * stored_width).view(
            1, channels, 1, 1
        )
        self._channel_levels = (torch.arange(channels, device=device) * LEVELS).view(1, channels, 1, 1)
        self._rows = torch.arange(height, device=device)
        self._columns = torch.arange(width, device=device)
        self._mirrored = self._columns.flip(0)

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """One sample without augmentation (augmentation happens per batch, in the loaders)."""
        indices = torch.tensor([index], device=self.device)
        # The crop that undoes the padding, unflipped.
        centred = torch.tensor([[PADDING, PADDING, 0]], device=self.device)
        inputs, targets = self.batch(indices, centred if self.augment else None)
        return inputs[0], targets[0]

    def batch(self, indices: Tensor, draws: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of the samples `indices` (int64, on this device); `draws` (B, 3) from
        `crop_flip_draws` (crop top, crop left, flip) when `augment`, else None."""
        if (draws is not None) != self.augment:
            raise ValueError("draws are needed exactly when the images are augmented")
        channels, height, width = self.shape
        if draws is None:
            pixels = self.pixels.index_select(0, indices)
        else:
            top, left, flip = draws[:, 0], draws[:, 1], draws[:, 2].bool()
            rows = (top[:, None] + self._rows) * self._stored_width
            columns = left[:, None] + torch.where(flip[:, None], self._mirrored, self._columns)
            flat = (
                (indices * self._image_stride).view(-1, 1, 1, 1)
                + self._channel_starts
                + rows.view(-1, 1, height, 1)
                + columns.view(-1, 1, 1, width)
            )
            pixels = self.pixels.view(-1).index_select(0, flat.view(-1)).view(-1, channels, height, width)
        levels = pixels.to(torch.int64) + self._channel_levels
        inputs = self.table.index_select(0, levels.view(-1)).view(-1, channels, height, width)
        return inputs, self.targets.index_select(0, indices)


@dataclass(frozen=True)
class ResidentSource:
    """What the resident pipeline is built from: a dataset's images as uint8 (N, H, W, C) host tensors in
    their files' layout (views of the arrays torchvision loaded: no copy until `load`), its targets, the
    fixed split, the normalisation table and whether training images are augmented."""

    train_images: Tensor  # the whole training file, the validation split included
    train_targets: Tensor
    test_images: Tensor
    test_targets: Tensor
    train_indices: Tensor
    val_indices: Tensor | None
    table: Tensor
    augment: bool

    @property
    def nbytes(self) -> int:
        """Bytes the loaded data take on the device (training images padded when augmented, targets)."""
        _, height, width, channels = self.train_images.shape
        image = channels * height * width
        train_image = channels * (height + 2 * PADDING) * (width + 2 * PADDING) if self.augment else image
        train, test = len(self.train_indices), len(self.test_targets)
        val = 0 if self.val_indices is None else len(self.val_indices)
        targets = self.train_targets.element_size() * (train + val + test)
        return train * train_image + (val + test) * image + targets

    def load(self, device: torch.device) -> tuple[ResidentImages, ResidentImages | None, ResidentImages]:
        """(train, val, test) on `device`; validation images are not augmented (the test transform)."""
        table = self.table.to(device)
        full = self.train_images.to(device)
        targets = self.train_targets.to(device)

        def part(indices: Tensor, augment: bool) -> ResidentImages:
            indices = indices.to(device)
            images = full.index_select(0, indices).permute(0, 3, 1, 2)
            return ResidentImages(images, targets.index_select(0, indices), table, augment=augment)

        train = part(self.train_indices, self.augment)
        val = part(self.val_indices, False) if self.val_indices is not None else None
        test_images = self.test_images.to(device).permute(0, 3, 1, 2)
        test = ResidentImages(test_images, self.test_targets.to(device), table, augment=False)
        return train, val, test
