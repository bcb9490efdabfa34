"""What the notebooks call so that "Run All" always reaches the last cell.

A view whose runs lack the data it shows returns a `Missing` note (rendered as the cell's output) instead of
raising, as `harness figures` skips the same cases; any other error still raises.

Jupyter starts its kernel in the notebook's folder (notebooks/), not where the runs are: `find_store` looks
for the store the way the first cell explains (HARNESS_RUNS, else a runs/ folder in the kernel's folder or
above it, up to the project root). An empty store is said once, by the first cell; every later view is then
silent instead of repeating what it lacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError


class NoData(Exception):
    """The runs lack what a notebook view shows; the message is the one-line reason."""


@dataclass(frozen=True)
class Missing:
    """A cell's output when its data is missing: says what and why, and lets the notebook go on."""

    what: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: not shown: {self.reason}"

    def _repr_markdown_(self) -> str:
        return f"**{self.what}: not shown** ({self.reason})"


class EmptyStore(Missing):
    """A view over an empty store: the first cell already said why, so the cell shows nothing."""

    def __repr__(self) -> str:
        return ""

    def _repr_markdown_(self) -> str:
        return ""


STORE_VARIABLE = "HARNESS_RUNS"
PROJECT_MARKER = "pyproject.toml"


def find_store(start: Path | None = None) -> tuple[Path, str]:
    """(the run store to read, how it was chosen): `HARNESS_RUNS` if set, else the first runs/ folder in
    `start` (default: the current folder) or a folder above it, stopping at the project root (the folder with
    pyproject.toml); without one, the project root's (or `start`'s) runs/, which `load` reports missing."""
    chosen = os.environ.get(STORE_VARIABLE)
    if chosen:
        return Path(chosen), f"{STORE_VARIABLE} is set"
    start = (Path.cwd() if start is None else start).resolve()
    for folder in (start, *start.parents):
        if (folder / "runs").is_dir():
            where = "this folder" if folder == start else f"{folder}, above this folder"
            return folder / "runs", f"{STORE_VARIABLE} is not set; the runs/ folder of {where}"
        if (folder / PROJECT_MARKER).is_file():
            return folder / "runs", f"{STORE_VARIABLE} is not set; the project's runs/ folder (none yet)"
    return start / "runs", f"{STORE_VARIABLE} is not set; no runs/ folder here or above"


def _is_empty_store(values: Any) -> bool:
    return any(isinstance(value, pd.DataFrame) and "missing" in value.attrs for value in values)


def view(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, or a `Missing` note when the runs cannot support it (a silent one when
    the store is empty: the first cell says so once)."""
    from analysis.figures import NotSupported

    what = getattr(function, "__name__", "view")
    if _is_empty_store([*args, *kwargs.values()]):
        return EmptyStore(what, "the run store is empty")
    try:
        result = function(*args, **kwargs)
    except (NotSupported, NoData) as error:
        return Missing(what, str(error))
    except UserError as error:
        # aggregate raises UserError for runs that lack required columns: on an empty store, every view.
        return Missing(what, str(error))
    if isinstance(result, pd.DataFrame) and result.empty:
        return Missing(what, "no runs with this data")
    return result


def load(runs_dir: Path | str) -> pd.DataFrame:
    """The completed runs under `runs_dir`; an empty frame (the reason kept in `attrs`) when there are none."""
    from analysis.runs import META_COLUMNS, load_runs

    try:
        return load_runs(runs_dir)
    except UserError as error:  # a missing or empty store: every view below then says what it lacks
        frame = pd.DataFrame(columns=list(META_COLUMNS))
        frame.attrs["missing"] = str(error)
        return frame


@dataclass(frozen=True)
class StoreNote:
    """The first cell's output: which store was read, why that one, what it holds, how to read another."""

    path: Path
    how: str
    counts: pd.Series | None
    missing: str | None

    def _repr_markdown_(self) -> str:
        where = f"**Run store: `{self.path.resolve()}`** ({self.how})."
        elsewhere = (
            f"To read another store, set `{STORE_VARIABLE}=/path/to/runs` before starting Jupyter, or run "
            "`runs_dir, runs = Path('/path/to/runs'), load('/path/to/runs')` in this cell."
        )
        if self.counts is None:
            return (
                f"{where}\n\n**No runs to show:** {self.missing}. Every view below stays empty until the "
                f"store has completed runs (e.g. `make sweep-plasticity SCALE=cpu`).\n\n{elsewhere}"
            )
        table = "\n".join(f"| {group} | {job} | {count} |" for (group, job), count in self.counts.items())
        return (
            f"{where} {int(self.counts.sum())} completed runs:\n\n| group | job | runs |\n|---|---|---:|\n"
            f"{table}\n\n{elsewhere}"
        )

    def __repr__(self) -> str:
        return self._repr_markdown_()


def run_counts(runs: pd.DataFrame, runs_dir: Path | str | None = None, how: str = "given") -> StoreNote:
    """Which store the notebook read (`runs_dir`, chosen as `how` says) and its runs per (group, job)."""
    path = Path(runs_dir) if runs_dir is not None else Path("runs")
    if runs.empty:
        return StoreNote(path, how, None, runs.attrs.get("missing", "the run store has no completed runs"))
    return StoreNote(path, how, runs.groupby(["group", "job_type"]).size(), None)


def continuation_curves(runs: pd.DataFrame) -> Any:
    """Test accuracy per epoch of the first probe (with regeneration where there is one), its control and
    its base run up to the probe epoch: how the pruned copy recovers next to the unpruned one."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    from analysis import style
    from analysis.runs import load_curves

    probes = runs[runs["job_type"] == "probe"] if "job_type" in runs.columns else runs.iloc[0:0]
    if probes.empty:
        raise NoData("no plasticity probe runs (job_type probe) among the runs")
    probe = probes.sort_values(["probe_epoch", "pruning_rate", "run_key"]).iloc[0]
    keys = [probe["run_key"], probe.get("control_run"), probe.get("base_run")]
    curves = load_curves(runs[runs["run_key"].isin(keys)], "epoch")
    if curves.empty or probe["run_key"] not in set(curves["run_key"]):
        raise NoData(f"probe {probe['run_key']} logged no epoch lines")
    with mpl.rc_context(style.RC):
        figure, axes = style.new_figure(1, 1, panel=(6.0, 3.6))
        axis = axes[0, 0]
        regrowth = "with" if probe["regeneration"] else "without"
        lines = (
            (probe.get("base_run"), "base run", "0.6", ":"),
            (probe.get("control_run"), "control (not pruned, same k epochs)", "black", "--"),
            (
                probe["run_key"],
                f"probe ({100 * probe['pruning_rate']:g}% pruned, {probe['criterion']}, {regrowth} regeneration)",
                style.method_colour("granet"),
                "-",
            ),
        )
        for key, label, colour, dash in lines:
            curve = curves[curves["run_key"] == key]
            if key == probe.get("base_run"):
                curve = curve[curve["epoch"] <= probe["probe_epoch"]]
            if not curve.empty:
                axis.plot(
                    curve["epoch"], 100 * curve["test/acc"], dash, color=colour, marker="o", label=label
                )
        axis.axvline(probe["probe_epoch"], color="0.45", linewidth=0.8)
        axis.annotate(
            "pruned here",
            xy=(probe["probe_epoch"], 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=8,
            color="0.35",
        )
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"Continuation of {probe['run_key']}", fontsize=9)
        axis.legend(loc="lower right")
    return figure
