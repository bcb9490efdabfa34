"""Bit-packed mask snapshots: the files under `masks/` in a run directory (and in W&B mask artifacts).

One `.npz` per snapshot. For every masked tensor `name` it holds `name` (the mask flattened and packed
with `numpy.packbits`, 1 bit per weight) and `name.shape` (the tensor's shape). A 25 M-weight
ResNet-50 mask set is about 3 MB.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

SHAPE_SUFFIX = ".shape"


def snapshot_name(step: int) -> str:
    return f"step_{step:09d}.npz"


def save_masks(path: Path, masks: Mapping[str, torch.Tensor]) -> Path:
    """Write `masks` (name -> 0/1 tensor) to `path` atomically (temporary file, then rename)."""
    arrays: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        flat = mask.detach().reshape(-1).to("cpu", torch.bool).numpy()
        arrays[name] = np.packbits(flat)
        arrays[name + SHAPE_SUFFIX] = np.asarray(mask.shape, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_masks(path: Path) -> dict[str, np.ndarray]:
    """name -> boolean array of the tensor's shape."""
    with np.load(path) as archive:
        names = [key for key in archive.files if not key.endswith(SHAPE_SUFFIX)]
        masks = {}
        for name in names:
            shape = tuple(int(dim) for dim in archive[name + SHAPE_SUFFIX])
            count = int(np.prod(shape))
            masks[name] = np.unpackbits(archive[name], count=count).astype(bool).reshape(shape)
        return masks


def step_of(path: Path) -> int:
    """The optimizer step a snapshot file was taken at (from its name)."""
    return int(Path(path).stem.removeprefix("step_"))
