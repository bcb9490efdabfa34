"""`harness runs`: the run store as a researcher's table, with filters, a count line and JSON for scripts.

Every run is listed whatever its state. A run that has not finished has no summary yet, so what tells runs
apart (method, architecture, sparsity, seed, ...) is read from its resolved config, and the epochs it has
done from its metrics lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.runs import load_runs
from harness.errors import UserError
from harness.sparse.methods.registry import methods_with_setting
from harness.store import rundir

# (table column, where its value comes from: summary key first, then the config column)
FIELDS = {
    "run_key": ("run_key", None),
    "group": ("group", None),
    "job_type": ("job_type", None),
    "method": ("method", "sparsity.method"),
    "arch": ("arch", "model.arch"),
    "dataset": ("dataset", "data.dataset"),
    "sparsity": ("sparsity", "sparsity.sparsity"),
    "init_sparsity": ("init_sparsity", "sparsity.init_sparsity"),
    "seed": ("seed", "run.seed"),
    "status": ("status", None),
    "test_acc": ("test_acc", None),
    "test_acc_at_best_val": ("test_acc_at_best_val", None),
    "wall_time_s": ("wall_time_s", None),
    "run_dir": ("run_dir", None),
}
# Short names a user may type in --where, for the columns the text table heads with them.
ALIASES = {
    "s_i": "init_sparsity",
    "run": "run_key",
    "acc": "test_acc",
    "best_val_acc": "test_acc_at_best_val",
}
# The text table: (heading, column)
SHOWN = (
    ("run", "run_key"),
    ("method", "method"),
    ("arch", "arch"),
    ("dataset", "dataset"),
    ("sparsity", "sparsity"),
    ("s_i", "init_sparsity"),
    ("seed", "seed"),
    ("status", "status"),
    ("epochs", "epochs"),
    ("test acc", "test_acc"),
    ("best-val test acc", "test_acc_at_best_val"),
    ("wall", "wall_time_s"),
)


def _value(row: pd.Series, summary_key: str, config_key: str | None) -> Any:
    for key in (summary_key, config_key):
        if key is not None and key in row.index:
            value = row[key]
            if not _missing(value):
                return value
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, so the JSON and the comparisons see plain values."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def _epochs(row: pd.Series) -> tuple[int | None, int | None]:
    """(epochs done, epochs the run will do): a probe stops at `run.stop_after_epochs`."""
    total = next(
        (int(row[key]) for key in ("run.stop_after_epochs", "optim.epochs") if not _missing(row.get(key))),
        None,
    )
    if row.get("status") == "completed":
        return total, total
    done = 0
    run_dir = row.get("run_dir")
    if isinstance(run_dir, str):
        epochs = [
            record.get("epoch")
            for record in rundir.read_metrics(rundir.metrics_path(Path(run_dir)))
            if record.get("kind") == "epoch"
        ]
        done = int(max((epoch for epoch in epochs if isinstance(epoch, int | float)), default=0))
    return done, total


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run with the columns of FIELDS plus `epochs_done`, `epochs_total`; sorted by run key."""
    rows = []
    for _, row in runs.iterrows():
        record = {name: _plain(_value(row, *sources)) for name, sources in FIELDS.items()}
        if record["method"] not in methods_with_setting("init_sparsity"):
            record["init_sparsity"] = None  # fixed by the method (0 or the final sparsity), not a setting
        if record["method"] == "dense":
            record["sparsity"] = 0.0
        record["epochs_done"], record["epochs_total"] = _epochs(row)
        rows.append(record)
    columns = [*FIELDS, "epochs_done", "epochs_total"]
    return pd.DataFrame(rows, columns=columns).sort_values("run_key", ignore_index=True)


def parse_where(items: Sequence[str] | None) -> list[tuple[str, str]]:
    """`["method=granet", "seed=0"]` -> [("method", "granet"), ("seed", "0")]; UserError for a bad item."""
    pairs = []
    for item in items or ():
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise UserError(f"--where: {item!r} is not key=value (e.g. method=granet)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _matches(value: Any, wanted: str) -> bool:
    if _missing(value):
        return wanted.lower() in ("", "none", "-", "nan")
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    if isinstance(value, int | float):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return str(value) == wanted


def _check_can_match(key: str, values: pd.Series, wanted: str) -> None:
    """UserError when `wanted` cannot equal any value of a numeric column (`seed=abc`, `sparsity=nan`):
    that is a typo to point at, not "0 runs". Missing values are asked for as none, - or nothing."""
    present = [value for value in map(_plain, values) if not _missing(value)]
    numeric = bool(present) and all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in present
    )
    if not numeric or wanted.lower() in ("", "none", "-"):
        return
    try:
        number = float(wanted)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UserError(
            f"--where: {key}={wanted!r} cannot match: {key} holds finite numbers (ask for a missing value "
            "with none)"
        )


def filter_runs(table: pd.DataFrame, runs: pd.DataFrame, where: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Rows of `table` matching every key=value: a table column (or its short name) or any `load_runs`
    column (`optim.epochs`, `sparsity.growth`, `pruning_rate`, ...)."""
    keep = pd.Series(True, index=table.index)
    by_key = runs.set_index("run_key") if not runs.empty else runs
    for key, wanted in where:
        column = ALIASES.get(key, key)
        if column in table.columns:
            values = table[column]
        elif column in runs.columns:
            values = table["run_key"].map(by_key[column])
        else:
            valid = sorted({*FIELDS, *ALIASES, "epochs_done", "epochs_total"})
            raise UserError(
                f"--where: unknown key {key!r}; use one of {', '.join(valid)} or a config column such as "
                "optim.epochs"
            )
        _check_can_match(key, values, wanted)
        keep &= values.map(lambda value, wanted=wanted: _matches(_plain(value), wanted))
    return table[keep].reset_index(drop=True)


def count_line(table: pd.DataFrame) -> str:
    """'12 runs: 10 completed, 1 running, 1 failed' (states in the order they first appear, sorted)."""
    counts = table["status"].value_counts()
    states = ", ".join(f"{counts[state]} {state}" for state in sorted(counts.index))
    noun = "run" if len(table) == 1 else "runs"
    return f"{len(table)} {noun}" + (f": {states}" if states else "")


def _duration(seconds: Any) -> str:
    if _missing(seconds):
        return "-"
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _cell(column: str, row: pd.Series) -> str:
    if column == "epochs":
        done, total = row["epochs_done"], row["epochs_total"]
        return f"{'-' if _missing(done) else int(done)}/{'-' if _missing(total) else int(total)}"
    value = row[column]
    if column == "wall_time_s":
        return _duration(value)
    if _missing(value):
        return "-"
    if column in ("test_acc", "test_acc_at_best_val"):
        return f"{float(value):.4f}"
    if column in ("sparsity", "init_sparsity"):
        return f"{float(value):g}"
    if column == "seed":
        return str(int(value))
    return str(value)


def format_table(table: pd.DataFrame) -> str:
    """Fixed-width text: one line per run, a heading, and the count line last."""
    if table.empty:
        return count_line(table)
    cells = [[heading for heading, _ in SHOWN]]
    cells += [[_cell(column, row) for _, column in SHOWN] for _, row in table.iterrows()]
    widths = [max(len(line[index]) for line in cells) for index in range(len(SHOWN))]
    numeric = {
        "sparsity",
        "init_sparsity",
        "seed",
        "epochs",
        "test_acc",
        "test_acc_at_best_val",
        "wall_time_s",
    }
    lines = []
    for line in cells:
        parts = [
            text.rjust(width) if column in numeric else text.ljust(width)
            for text, width, (_, column) in zip(line, widths, SHOWN, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join([*lines, count_line(table)])


def to_json(table: pd.DataFrame) -> str:
    """{"runs": [one object per run, missing values null], "count": n, "statuses": {state: n}}."""
    records = [
        {key: (None if _missing(value) else _plain(value)) for key, value in row.items()}
        for row in table.to_dict(orient="records")
    ]
    statuses = {str(state): int(count) for state, count in sorted(table["status"].value_counts().items())}
    return json.dumps({"runs": records, "count": len(records), "statuses": statuses}, indent=1)


def list_runs(roots: Iterable[Path], where: Sequence[str] | None = None) -> pd.DataFrame:
    """The table `harness runs` prints: every run under the roots, filtered by `where` (key=value items)."""
    conditions = parse_where(where)
    runs = load_runs(list(roots), status=None)
    if runs.empty:
        return run_table(runs)
    return filter_runs(run_table(runs), runs, conditions)
