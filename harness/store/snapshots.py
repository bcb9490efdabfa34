"""Bit-packed mask snapshots: the files under `masks/` in a run directory (and in W&B mask artifacts).

One `.npz` per snapshot. For every masked tensor `name` it holds `name` (the mask flattened and packed
with `numpy.packbits`, 1 bit per weight) and `name.shape` (the tensor's shape). A 25 M-weight
ResNet-50 mask set is about 3 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from harness.store import rundir

SHAPE_SUFFIX = ".shape"


def save_masks(path: Path, masks: Mapping[str, torch.Tensor]) -> Path:
    """Write `masks` (name -> 0/1 tensor) to `path` atomically (see `harness.store.rundir.atomic_write`)."""
    arrays: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        flat = mask.detach().reshape(-1).to("cpu", torch.bool).numpy()
        arrays[name] = np.packbits(flat)
        arrays[name + SHAPE_SUFFIX] = np.asarray(mask.shape, dtype=np.int64)
    rundir.atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
    return path


def load_masks(path: Path) -> dict[str, np.ndarray]:
    """name -> boolean array of the tensor's shape; `rundir.DamagedFile` for a truncated or foreign file."""
    rundir.check_snapshot(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [key for key in archive.files if not key.endswith(SHAPE_SUFFIX)]
            masks = {}
            for name in names:
                shape = tuple(int(dim) for dim in archive[name + SHAPE_SUFFIX])
                count = int(np.prod(shape))
                masks[name] = np.unpackbits(archive[name], count=count).astype(bool).reshape(shape)
            return masks
    except (KeyError, ValueError, OSError) as error:
        # A whole zip that is not a snapshot: a missing `.shape` entry, pickled objects, wrong sizes.
        raise rundir.DamagedFile(path, f"not a mask snapshot ({type(error).__name__}: {error})") from None
