"""`harness runs`: the run store as a researcher's table, with filters, a count line and JSON for scripts.

Every run is listed whatever its state. A run that has not finished has no summary yet, so what tells runs
apart (method, architecture, sparsity, seed, ...) is read from its resolved config, and the epochs it has
done from its metrics lines. Plasticity probes and their controls are not training runs of a method: they
show their job (probe, control) as the method and what they measured (criterion, pruning rate,
regeneration, probe epoch, the four accuracies and plasticity) instead of the dense base's sparsity 0.

The table prints as fixed-width text, Markdown, CSV or JSON (`FORMATS`), with the columns `--columns` names.
"""

from __future__ import annotations

import difflib
import io
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
    "criterion": ("criterion", "plasticity.criterion"),
    "pruning_rate": ("pruning_rate", "plasticity.pruning_rate"),
    "regeneration": ("regeneration", "plasticity.regeneration"),
    "probe_epoch": ("probe_epoch", "plasticity.probe_epoch"),
    "acc_pre": ("acc_pre", None),
    "acc_post": ("acc_post", None),
    "acc_continue": ("acc_continue", None),
    "acc_control": ("acc_control", None),
    "plasticity": ("plasticity", None),
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
    "rate": "pruning_rate",
    "regen": "regeneration",
}
PLASTICITY_JOBS = ("probe", "control")
# The text table: (heading, column); "epochs" is done/total.
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
# Shown after "seed" when the listed runs include probes or controls (empty cells for training runs).
PLASTICITY_SHOWN = (
    ("criterion", "criterion"),
    ("rate", "pruning_rate"),
    ("regen", "regeneration"),
    ("probe epoch", "probe_epoch"),
    ("acc_pre", "acc_pre"),
    ("acc_post", "acc_post"),
    ("acc_continue", "acc_continue"),
    ("acc_control", "acc_control"),
    ("plasticity", "plasticity"),
)
HEADINGS = {column: heading for heading, column in (*SHOWN, *PLASTICITY_SHOWN)}
ACCURACIES = {"test_acc", "test_acc_at_best_val", "acc_pre", "acc_post", "acc_continue", "acc_control"}
NUMERIC = {
    "sparsity",
    "init_sparsity",
    "seed",
    "epochs",
    "pruning_rate",
    "probe_epoch",
    "plasticity",
    "wall_time_s",
    *ACCURACIES,
}
FORMATS = ("table", "markdown", "csv", "json")


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
        if record["job_type"] in PLASTICITY_JOBS:
            # A probe prunes a copy of its base run: the base's method and sparsity would mislabel it.
            record["method"] = record["job_type"]
            record["sparsity"] = None
            record["init_sparsity"] = None
        elif record["method"] == "dense":
            record["sparsity"] = 0.0
        if record["job_type"] not in PLASTICITY_JOBS:
            for column in ("criterion", "pruning_rate", "regeneration", "probe_epoch"):
                record[column] = None  # config defaults of a section the run never used
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
        # The table shows regeneration as on/off: what it shows is what one types.
        return wanted.lower() in (("true", "on", "yes", "1") if value else ("false", "off", "no", "0"))
    if isinstance(value, int | float):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    # Names are typed as the paper writes them (GraNet, RigL, ResNet20): case does not tell runs apart.
    return str(value).casefold() == wanted.casefold()


def _did_you_mean(key: str, wanted: str, values: pd.Series) -> str | None:
    """A note for a name that matches no run at all, with the closest names the store has."""
    names = sorted({str(value) for value in values if isinstance(value, str)})
    if not names:
        return None  # a numeric or empty column: nothing to suggest by spelling
    close = difflib.get_close_matches(wanted.casefold(), [name.casefold() for name in names], n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"--where {key}={wanted}: no run has this {key}; {hint}({key} here: {shown})"


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
    column (`optim.epochs`, `sparsity.growth`, `pruning_rate`, ...). Names match whatever their case.

    A name that matches no run of the whole store (a typo, most likely) leaves a note in the result's
    `attrs["notes"]` with the closest names the store has.
    """
    keep = pd.Series(True, index=table.index)
    notes = []
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
        matched = values.map(lambda value, wanted=wanted: _matches(_plain(value), wanted))
        if not table.empty and not matched.any():
            note = _did_you_mean(key, wanted, values)
            if note is not None:
                notes.append(note)
        keep &= matched
    kept = table[keep].reset_index(drop=True)
    kept.attrs["notes"] = notes
    return kept


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
    if column in ACCURACIES:
        return f"{float(value):.4f}"
    if column == "plasticity":
        return f"{float(value):+.4f}"
    if column == "regeneration":
        return "on" if value else "off"
    if column in ("sparsity", "init_sparsity", "pruning_rate", "probe_epoch"):
        return f"{float(value):g}"
    if column == "seed":
        return str(int(value))
    return str(value)


def default_columns(table: pd.DataFrame) -> list[str]:
    """SHOWN's columns, with the probe columns after "seed" when any probe or control is listed."""
    columns = [column for _, column in SHOWN]
    if table["job_type"].isin(PLASTICITY_JOBS).any():
        at = columns.index("seed") + 1
        columns[at:at] = [column for _, column in PLASTICITY_SHOWN]
    return columns


def parse_columns(text: str | None) -> list[str] | None:
    """`"run,method,acc_pre"` -> the table's column names (short names resolved); UserError for others."""
    if text is None:
        return None
    valid = [*FIELDS, "epochs", "epochs_done", "epochs_total"]
    columns = []
    for name in (part.strip() for part in text.split(",")):
        column = ALIASES.get(name, name)
        if column not in valid:
            close = difflib.get_close_matches(name, [*valid, *ALIASES], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"--columns: unknown column {name!r}; {hint}use any of {', '.join(valid)}")
        columns.append(column)
    return columns


def format_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Fixed-width text: one line per run, a heading, and the count line last."""
    if table.empty:
        return count_line(table)
    columns = list(columns or default_columns(table))
    cells = [[HEADINGS.get(column, column) for column in columns]]
    cells += [[_cell(column, row) for column in columns] for _, row in table.iterrows()]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    lines = []
    for line in cells:
        parts = [
            text.rjust(width) if column in NUMERIC else text.ljust(width)
            for text, width, column in zip(line, widths, columns, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join([*lines, count_line(table)])


def to_markdown(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A Markdown table with the text table's cells (numbers right-aligned), for notes and reports."""
    if table.empty:
        return count_line(table)
    columns = list(columns or default_columns(table))
    lines = [
        "| " + " | ".join(HEADINGS.get(column, column) for column in columns) + " |",
        "|" + "|".join("---:" if column in NUMERIC else "---" for column in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(_cell(column, row) for column in columns) + " |" for _, row in table.iterrows()
    ]
    return "\n".join([*lines, "", count_line(table)])


def _raw_columns(columns: Sequence[str]) -> list[str]:
    """CSV and JSON keep the values: "epochs" is its two numbers."""
    raw: list[str] = []
    for column in columns:
        raw += ["epochs_done", "epochs_total"] if column == "epochs" else [column]
    return list(dict.fromkeys(raw))


def to_csv(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Comma-separated values with a header of column names; an empty cell where a run has no value."""
    chosen = _raw_columns(columns or [*FIELDS, "epochs_done", "epochs_total"])
    buffer = io.StringIO()
    table[chosen].to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().rstrip("\n")


def render(table: pd.DataFrame, output_format: str, columns: Sequence[str] | None = None) -> str:
    """The table in one of FORMATS."""
    if output_format == "table":
        return format_table(table, columns)
    if output_format == "markdown":
        return to_markdown(table, columns)
    if output_format == "csv":
        return to_csv(table, columns)
    if output_format == "json":
        return to_json(table, None if columns is None else _raw_columns(columns))
    raise UserError(f"--format: {output_format!r} is not a format; use one of {', '.join(FORMATS)}")


def to_json(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """{"runs": [one object per run, missing values null], "count": n, "statuses": {state: n}}; the runs
    carry every column, or `columns` only."""
    records = [
        {key: (None if _missing(value) else _plain(value)) for key, value in row.items()}
        for row in table[list(columns or table.columns)].to_dict(orient="records")
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
