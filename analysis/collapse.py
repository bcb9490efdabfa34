"""The high-sparsity collapse ablation (`sweeps/collapse-mnist1d.yaml`): one candidate cause changed at a time.

A run's variant is read from its config, not from its name: the ablated fields whose values differ from
what the recipe resolves to for the same method, dataset, arch and sparsity (`harness.config.resolve`,
which also resets the fields the method does not read). A run that differs in none is the `baseline`.

Besides accuracy, each run is measured where its regrowth went: the share of weights grown into filters
that had no active weight before the event ("dead" filters). BatchNorm divides a dead filter's output
gradient by sqrt(batch variance + eps) with a batch variance of exactly 0, so the gradient of every
weight of a dead filter is scaled by 1/sqrt(eps) ~ 316 relative to a live channel of unit variance, and
gradient growth prefers dead filters (SPEC 5's growth score does not see BatchNorm).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import style
from analysis.aggregate import seed_stats
from analysis.dynamics import snapshot_paths
from analysis.runs import flatten
from harness.config import deep_merge, resolve
from harness.store.snapshots import load_masks

JOB_TYPE = "ablation"
# Config column -> the variant's label, in the sweep file's order.
ABLATED = {
    "sparsity.regen_until": "regen_until",
    "sparsity.update_until": "update_until",
    "sparsity.regen_rate": "r_0",
    "sparsity.update_frequency": "dT",
    "sparsity.growth": "growth",
    "model.width": "width",
    "data.num_samples": "samples",
    "sparsity.drop_rounding": "drop_rounding",
}
VALUES = ("test_acc", "test_acc_at_best_val", "late_drop", "dead_regrowth", "dead_filters")
KEYS = ("arch", "dataset", "method", "sparsity", "variant")


# The ablation's baseline is the recipe as it was when the collapse was seen: the sweep file pins these
# values (the recipe has since taken r_0 = 0.1 from the ablation's own result).
ABLATION_BASE = {"sparsity": {"regen_rate": 0.5}}


@functools.cache
def _baseline(method: str, dataset: str, arch: str, sparsity: float) -> dict[str, object]:
    """The ablated fields' values in the ablation's baseline run of this method at this sparsity."""
    overrides = deep_merge(ABLATION_BASE, {"sparsity": {"sparsity": sparsity}})
    config = resolve(method, dataset=dataset, arch=arch, overrides=overrides)
    flat = flatten(config.to_dict())
    return {column: flat.get(column) for column in ABLATED}


def variant_of(run: pd.Series) -> str:
    """`baseline`, or `label=value` for each ablated field that differs from the recipe (joined by ', ')."""
    baseline = _baseline(run["method"], run["dataset"], run["arch"], float(run["sparsity"]))
    changed = []
    for column, label in ABLATED.items():
        value = run.get(column)
        expected = baseline[column]
        # Missing: the run was written before the field existed, so it ran with the field's default.
        missing = value is None or (isinstance(value, float) and np.isnan(value))
        if not missing and value != expected:
            changed.append(f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}")
    return ", ".join(changed) or "baseline"


def regrowth_targets(run_dir: Path | str) -> tuple[float, float]:
    """(share of conv weights grown into dead filters over all mask events, share of dead filters at the
    end), from the run's mask snapshots; NaN, NaN without snapshots or without any growth."""
    previous: dict[str, np.ndarray] | None = None
    grown = into_dead = 0
    dead_end = total_filters = 0
    for path in snapshot_paths(run_dir):
        masks = {name: mask for name, mask in load_masks(path).items() if mask.ndim >= 3}  # conv filters
        if previous is not None:
            for name, mask in masks.items():
                before = previous[name].reshape(mask.shape[0], -1)
                new = (mask.reshape(mask.shape[0], -1)) & ~before
                grown += int(new.sum())
                into_dead += int(new[~before.any(axis=1)].sum())
        previous = masks
        alive = [mask.reshape(mask.shape[0], -1).any(axis=1) for mask in masks.values()]
        dead_end = sum(int((~filters).sum()) for filters in alive)
        total_filters = sum(filters.size for filters in alive)
    if previous is None:
        return float("nan"), float("nan")
    share = into_dead / grown if grown else float("nan")
    return share, dead_end / total_filters if total_filters else float("nan")


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The ablation's completed runs with their variant, late drop (best-validation epoch's test accuracy
    minus the final one) and regrowth targets."""
    if "job_type" not in runs.columns:
        return runs.iloc[0:0]
    chosen = runs[runs["job_type"] == JOB_TYPE].copy()
    if chosen.empty:
        return chosen
    chosen["variant"] = [variant_of(row) for _, row in chosen.iterrows()]
    chosen["late_drop"] = chosen["test_acc_at_best_val"] - chosen["test_acc"]
    targets = [
        regrowth_targets(path) if isinstance(path, str) else (np.nan, np.nan) for path in chosen["run_dir"]
    ]
    chosen["dead_regrowth"] = [share for share, _ in targets]
    chosen["dead_filters"] = [dead for _, dead in targets]
    return chosen


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n over seeds of every value per (arch, dataset, method, sparsity, variant)."""
    chosen = ablation_runs(runs)
    if chosen.empty:
        stats = [f"{value}_{stat}" for value in VALUES for stat in ("mean", "std")]
        return pd.DataFrame(columns=[*KEYS, *stats, "n"])
    return seed_stats(chosen, KEYS, VALUES)


def to_markdown(table: pd.DataFrame) -> str:
    """The ablation as a Markdown table: accuracies in percent, shares in percent, mean ± std (n)."""

    def cell(row: pd.Series, value: str) -> str:
        mean, std = row[f"{value}_mean"], row[f"{value}_std"]
        if np.isnan(mean):
            return "–"
        return f"{100 * mean:.1f} ± {100 * std:.1f}" if not np.isnan(std) else f"{100 * mean:.1f}"

    lines = [
        "| method | sparsity | variant | final test acc (%) | test acc at best val (%) | late drop (pp) "
        "| regrowth into dead filters (%) | dead filters at end (%) | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        cells = [cell(row, value) for value in VALUES]
        lines.append(
            f"| {row['method']} | {row['sparsity']:g} | {row['variant']} | "
            + " | ".join(cells)
            + f" | {int(row['n'])} |"
        )
    return "\n".join(lines) + "\n"


@style.styled
def ablation_figure(table: pd.DataFrame) -> Figure:
    """One panel per method: final test accuracy per variant (bars, ± std over seeds), the test accuracy at
    the best-validation epoch (open diamonds), and the share of regrowth into dead filters (right labels)."""
    methods = sorted(set(table["method"]), key=style.method_sort_key)
    variants = list(dict.fromkeys(["baseline", *table["variant"]]))
    figure, axes = style.new_figure(len(methods), panel=(3.6, 0.45 * len(variants) + 1.4), sharey=True)
    for axis, method in zip(axes[0], methods, strict=True):
        rows = table[table["method"] == method].set_index("variant")
        positions = np.arange(len(variants))
        present = [variant in rows.index for variant in variants]
        for position, variant, shown in zip(positions, variants, present, strict=True):
            if not shown:
                continue
            row = rows.loc[variant]
            axis.barh(
                position,
                100 * row["test_acc_mean"],
                xerr=100 * np.nan_to_num(row["test_acc_std"]),
                color=style.method_colour(method),
                alpha=0.55 if variant != "baseline" else 0.9,
            )
            axis.plot(100 * row["test_acc_at_best_val_mean"], position, "D", mfc="none", color="0.2", ms=5)
            if not np.isnan(row["dead_regrowth_mean"]):
                axis.annotate(
                    f"{100 * row['dead_regrowth_mean']:.0f}% dead",
                    xy=(1.0, position),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                    color="0.35",
                )
        axis.set_yticks(positions, variants)
        axis.invert_yaxis()
        axis.set_xlim(0, 100)
        axis.set_xlabel("test accuracy (%)")
        n = "/".join(str(count) for count in sorted(set(rows["n"].astype(int))))
        axis.set_title(f"{method} at {table['sparsity'].iloc[0]:g} (n = {n})", fontsize=9)
    figure.suptitle(
        "Collapse ablation: bars final epoch (± std over seeds), ◇ at best validation; "
        "right: share of regrowth into dead filters",
        fontsize=9,
    )
    return figure
