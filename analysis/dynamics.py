"""Mask dynamics of one run from its mask snapshots (`masks/step_NNNNNNNNN.npz`).

Turnover between two consecutive snapshots is the share of the later mask's active weights that were
inactive in the earlier one: 0 for pure pruning (GMP only removes), positive when a method regrows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.store import rundir
from harness.store.rundir import snapshot_step as step_of
from harness.store.snapshots import load_masks

DYNAMICS_COLUMNS = (
    "step",
    "layer",
    "layer_index",
    "size",
    "active",
    "density",
    "added",
    "removed",
    "turnover",
)


def snapshot_paths(run_dir: Path | str) -> list[Path]:
    """The run's mask snapshots ordered by step (empty if it wrote none)."""
    return rundir.mask_snapshots(Path(run_dir))


def mask_dynamics(run_dir: Path | str) -> pd.DataFrame:
    """One row per (snapshot, masked tensor): size, active count, density, and the weights added and
    removed since the previous snapshot with the resulting turnover (NaN at the first snapshot).
    A damaged snapshot raises `harness.store.rundir.DamagedFile` naming it."""
    records: list[dict[str, object]] = []
    previous: dict[str, np.ndarray] = {}
    for path in snapshot_paths(run_dir):
        masks = load_masks(path)
        for index, (name, mask) in enumerate(masks.items()):
            active = int(mask.sum())
            record: dict[str, object] = {
                "step": step_of(path),
                "layer": name,
                "layer_index": index,
                "size": mask.size,
                "active": active,
                "density": active / mask.size,
                "added": np.nan,
                "removed": np.nan,
                "turnover": np.nan,
            }
            before = previous.get(name)
            if before is not None:
                added = int(np.count_nonzero(mask & ~before))
                record["added"] = added
                record["removed"] = int(np.count_nonzero(before & ~mask))
                record["turnover"] = added / active if active else np.nan
            records.append(record)
        previous = masks
    return pd.DataFrame.from_records(records, columns=list(DYNAMICS_COLUMNS))


def global_dynamics(per_layer: pd.DataFrame) -> pd.DataFrame:
    """The per-layer dynamics summed over tensors: global density and turnover per snapshot."""
    if per_layer.empty:
        return pd.DataFrame(columns=["step", "size", "active", "density", "added", "removed", "turnover"])
    totals = per_layer.groupby("step", sort=True)[["size", "active", "added", "removed"]].sum(min_count=1)
    totals["density"] = totals["active"] / totals["size"]
    totals["turnover"] = totals["added"] / totals["active"]
    return totals.reset_index()
