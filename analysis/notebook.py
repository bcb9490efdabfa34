"""What the notebooks call so that "Run All" always reaches the last cell.

A view whose runs lack the data it shows returns a `Missing` note (rendered as the cell's output) instead of
raising, as `harness figures` skips the same cases; any other error still raises.
"""

from __future__ import annotations

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


def view(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, or a `Missing` note when the runs cannot support it."""
    from analysis.figures import NotSupported

    what = getattr(function, "__name__", "view")
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


def run_counts(runs: pd.DataFrame) -> Any:
    """Runs per (group, job_type), or a note for an empty store."""
    if runs.empty:
        return Missing("runs", runs.attrs.get("missing", "the run store has no completed runs"))
    return runs.groupby(["group", "job_type"]).size().rename("runs")


def continuation_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Epoch curves of the first probe and its control (the control only where the store has it)."""
    from analysis.runs import load_curves

    probes = runs[runs["job_type"] == "probe"] if "job_type" in runs.columns else runs.iloc[0:0]
    if probes.empty:
        raise NoData("no plasticity probe runs (job_type probe) among the runs")
    probe = probes.iloc[0]
    pair = runs[runs["run_key"].isin([probe["run_key"], probe.get("control_run")])]
    curves = load_curves(pair, "epoch")
    if curves.empty:
        raise NoData(f"probe {probe['run_key']} logged no epoch lines")
    columns = [column for column in ("run_key", "epoch", "test/acc", "train/loss", "lr") if column in curves]
    return curves[columns]
