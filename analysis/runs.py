"""Load runs into pandas: one row per run, and long-form curves and mask-update events.

Two sources give the same frame for the same runs:

- local run directories (`<runs_dir>/<group>/<run_id>/`, the run-store contract), from one or many roots;
- a W&B project, through `wandb.Api()` (the tracker's mirror: same config, same summary keys, the same
  metrics lines in the history).

Columns of `load_runs`:

- meta: `run_key` (`<group>/<run_id>`, the form plasticity summaries use in `base_run` / `control_run`),
  `run_id`, `group`, `job_type`, `status` (`completed` | `running` | `failed` | `damaged`), `source` (`local` |
  `wandb`), `run_dir` (local only, else None) and `run_path` (W&B `entity/project/id`, else None);
- the resolved config flattened with dots (`sparsity.method`, `optim.epochs`, lists as tuples);
- the summary keys as they are (`test_acc`, `method`, `plasticity`, ...), NaN where a run lacks one.

Local configs are read as raw YAML rather than validated with `harness.config.load_config_file`: analysis
must still read run stores written by older or newer harness versions, and the W&B config is raw too.

A local run with a file that cannot be read (`harness.store.rundir.DamagedFile`: invalid YAML, a summary that is
not a JSON object, a binary status, a damaged metrics line or mask snapshot) is reported by one warning
naming the run and the file; `load_runs` lists it with status `damaged` (no config or summary columns),
so status filters leave it out, and `load_curves` leaves its lines out. Non-finite summary values are
missing values (NaN).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.store import rundir

logger = logging.getLogger(__name__)

META_COLUMNS = ("run_key", "run_id", "group", "job_type", "status", "source", "run_dir", "run_path")
# Columns that say where a run was read from; everything else is identical across sources.
LOCATION_COLUMNS = ("source", "run_dir", "run_path")
STATUSES = (*rundir.STATUSES, rundir.DAMAGED)
KINDS = ("epoch", "train", "mask_update", "probe")

# summary.json keys of the run-store contract, ordinary runs then plasticity probes.
SUMMARY_ORDER = (
    "method", "arch", "dataset", "seed", "epochs", "steps", "world_size", "sparsity", "init_sparsity",
    "density", "test_acc", "test_loss", "val_acc", "best_val_epoch", "best_val_acc", "test_acc_at_best_val",
    "train_loss", "inference_flops", "inference_flops_dense", "inference_flops_rel", "train_flops",
    "train_flops_dense", "train_flops_rel", "wall_time_s", "device", "torch_version",
    "probe_epoch", "pruning_rate", "criterion", "regeneration", "continue_epochs", "pretrained_sparsity",
    "acc_pre", "acc_post", "acc_continue", "acc_control", "plasticity", "base_run", "control_run",
)  # fmt: skip
_SUMMARY_RANK = frozenset(SUMMARY_ORDER)

# W&B run states -> the run store's status words.
_WANDB_STATES = {
    "finished": "completed",
    "running": "running",
    "pending": "running",
    "preempting": "running",
    "crashed": "failed",
    "failed": "failed",
    "killed": "failed",
    "preempted": "failed",
}

# W&B copies the last logged value of every history key into the run summary. summary.json never has
# these keys: every metrics key holds a '/', and these are the metrics-line keys without one.
_HISTORY_ONLY_KEYS = frozenset({"kind", "step", "epoch", "lr", "target_density"})


# ---------------------------------------------------------------------------------------------------------
# One row per run


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim": {"epochs": 30}}` -> `{"optim.epochs": 30}`; lists become tuples so cells stay hashable."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def run_row(config: Mapping[str, Any], summary: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The one place a run becomes a row, whichever the source: meta, then config, then summary columns."""
    row: dict[str, Any] = {column: meta.get(column) for column in META_COLUMNS}
    # Only the config's sections (mappings) are columns: W&B adds `_wandb`, a W&B sweep adds its parameters
    # as top-level scalars, and a section set to None (`plasticity` of ordinary runs) is absent.
    sections = {
        key: value
        for key, value in config.items()
        if not str(key).startswith("_") and isinstance(value, Mapping)
    }
    # Sorted so that both sources give the same column order (W&B does not keep the YAML's key order).
    row.update(sorted(flatten(sections).items()))
    # The contract's keys in the contract's order, then any others sorted: both sources give one order.
    known = [key for key in SUMMARY_ORDER if key in summary]
    others = sorted(key for key in summary if key not in _SUMMARY_RANK)
    for key in known + others:
        if key not in META_COLUMNS:
            value = summary[key]
            row[key] = tuple(value) if isinstance(value, list) else value
    return row


def _frame(rows: list[dict[str, Any]], status: str | None) -> pd.DataFrame:
    if status is not None:
        kept = [row for row in rows if row["status"] == status]
        if len(kept) < len(rows):
            logger.info("kept %d %s runs, left out %d others", len(kept), status, len(rows) - len(kept))
        rows = kept
    if not rows:
        return pd.DataFrame(columns=list(META_COLUMNS))
    # Sorting rows first fixes the column order too (columns appear in first-seen order), whichever source.
    return pd.DataFrame.from_records(sorted(rows, key=lambda row: row["run_key"]))


def load_runs(
    roots: Path | str | Iterable[Path | str] | None = None,
    *,
    wandb_project: str | None = None,
    api: Any = None,
    filters: dict[str, Any] | None = None,
    status: str | None = "completed",
) -> pd.DataFrame:
    """One row per run from local run directories (`roots`) or from a W&B project (`"entity/project"`).

    A root may be a runs directory, a group directory or a single run directory. `status` keeps only runs
    in that state (`None` keeps all). `api` is a `wandb.Api()`-like object (built when None);
    `filters` is passed to `api.runs` (W&B's MongoDB-style run filters).
    """
    if status is not None and status not in STATUSES:
        raise UserError(f"status: unknown status {status!r}; valid: {', '.join(STATUSES)} or None")
    if (roots is None) == (wandb_project is None):
        raise UserError("load_runs: give either run roots or wandb_project, not both or neither")
    if wandb_project is not None:
        return _frame(list(_wandb_rows(wandb_project, api, filters)), status)
    return _frame([_local_row(run_dir) for run_dir in find_run_dirs(roots)], status)


# ---------------------------------------------------------------------------------------------------------
# Local run store


def _as_paths(roots: Path | str | Iterable[Path | str]) -> list[Path]:
    if isinstance(roots, str | Path):
        return [Path(roots)]
    return [Path(root) for root in roots]


def find_run_dirs(roots: Path | str | Iterable[Path | str]) -> list[Path]:
    """Every run directory (one holding `config.yaml`) under the roots, without descending into runs."""
    found: list[Path] = []
    for root in _as_paths(roots):
        if not root.is_dir():
            raise UserError(f"{root}: not a directory (expected a runs directory, a group or a run)")
        before = len(found)
        for directory, subdirectories, files in os.walk(root):
            if rundir.CONFIG_FILE in files:
                found.append(Path(directory))
                subdirectories.clear()  # masks/ and checkpoints/ hold no runs
            else:
                subdirectories.sort()
        if len(found) == before:
            raise UserError(f"{root}: no run directories (with {rundir.CONFIG_FILE}) found")
    return found


def warn_damaged(run_key: str, damage: rundir.DamagedFile, consequence: str) -> None:
    logger.warning("run %s is damaged: %s; %s", run_key, damage, consequence)


def _local_row(run_dir: Path) -> dict[str, Any]:
    group = run_dir.parent.name
    run_key = f"{group}/{run_dir.name}"
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    try:
        config = rundir.read_config(run_dir)
        # A run writes its status file first; without one it has not got far.
        status = rundir.read_status(run_dir) or "running"
        summary = rundir.read_summary(run_dir)
    except rundir.DamagedFile as damage:
        warn_damaged(run_key, damage, "listed as damaged, left out of analysis")
        status, summary = rundir.DAMAGED, {}
    meta = {
        "run_key": run_key,
        "run_id": run_dir.name,
        "group": group,
        "job_type": (config.get("tracking") or {}).get("job_type"),
        "status": status,
        "source": "local",
        "run_dir": str(run_dir.resolve()),
        "run_path": None,
    }
    return run_row(config, summary, meta)


# ---------------------------------------------------------------------------------------------------------
# W&B


def _wandb_api(api: Any) -> Any:
    if api is not None:
        return api
    import wandb  # lazily: analysis of local runs must not need W&B set up

    return wandb.Api()


def _plain(mapping: Any) -> dict[str, Any]:
    """A dict from W&B's dict-likes (HTTPSummary is not a dict), without W&B's internal `_` keys."""
    return {key: mapping[key] for key in mapping.keys() if not str(key).startswith("_")}


def _wandb_summary(summary: Any) -> dict[str, Any]:
    return {
        key: value
        for key, value in _plain(summary).items()
        if "/" not in key and key not in _HISTORY_ONLY_KEYS
    }


def _wandb_rows(project: str, api: Any, filters: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    if project.count("/") != 1 or not all(project.split("/")):
        raise UserError(f"wandb project {project!r}: expected ENTITY/PROJECT")
    # lazy=False fetches config and summary with the run list instead of one request per run.
    for run in _wandb_api(api).runs(project, filters=filters, per_page=500, lazy=False):
        # A run started by a W&B sweep agent has the agent's id; the harness's run id is its name.
        run_id = run.name or run.id
        meta = {
            "run_key": f"{run.group}/{run_id}",
            "run_id": run_id,
            "group": run.group,
            "job_type": run.job_type,
            "status": _WANDB_STATES.get(run.state, run.state),
            "source": "wandb",
            "run_dir": None,
            "run_path": "/".join(run.path),
        }
        yield run_row(_plain(run.config), _wandb_summary(run.summary), meta)


def _wandb_history(api: Any, run_path: str) -> Iterator[dict[str, Any]]:
    # scan_history pages through every row; `history()` would sample 500 of them.
    for row in _wandb_api(api).run(run_path).scan_history():
        yield {key: value for key, value in row.items() if not key.startswith("_")}


# ---------------------------------------------------------------------------------------------------------
# Long form: curves and mask-update events


def _lines(row: Mapping[str, Any], api: Any) -> Iterable[dict[str, Any]]:
    if row.get("source") == "wandb":
        return _wandb_history(api, row["run_path"])
    return rundir.read_metrics(rundir.metrics_path(Path(row["run_dir"])))


def load_curves(runs: pd.DataFrame, kind: str = "epoch", *, api: Any = None) -> pd.DataFrame:
    """One row per metrics line of `kind` per run: `run_key`, `step`, `epoch` and that kind's metrics.

    Metrics that are null on every line (e.g. `val/acc` without a validation split) are left out, so both
    sources give the same columns. `api` serves runs loaded from W&B.
    """
    if kind not in KINDS:
        raise UserError(f"kind: unknown metrics kind {kind!r}; valid: {', '.join(KINDS)}")
    records: list[dict[str, Any]] = []
    for row in runs.to_dict("records"):
        try:
            lines = list(_lines(row, api))
        except rundir.DamagedFile as damage:
            warn_damaged(row["run_key"], damage, "its metrics lines are left out")
            continue
        for line in lines:
            if line.get("kind") == kind:
                record = {"run_key": row["run_key"]}
                record.update((key, value) for key, value in line.items() if key != "kind")
                records.append(record)
    if not records:
        return pd.DataFrame(columns=["run_key", "step", "epoch"])
    frame = pd.DataFrame.from_records(records).dropna(axis="columns", how="all")
    frame["step"] = frame["step"].astype("int64")
    frame["epoch"] = frame["epoch"].astype("float64")
    return frame.sort_values(["run_key", "step"], kind="stable").reset_index(drop=True)


def load_mask_events(runs: pd.DataFrame, *, api: Any = None) -> pd.DataFrame:
    """One row per mask-update event: `density`, `target_density`, `regen/rate`, `mask/checksum`,
    and the per-tensor `layers/<name>/<stat>` columns (see `layer_events` for the long form)."""
    return load_curves(runs, "mask_update", api=api)


def layer_events(events: pd.DataFrame) -> pd.DataFrame:
    """Mask-update events in long form: one row per (run, event, tensor) with `layer`, `density`,
    `pruned`, `dropped`, `grown` (NaN where the method did not log that count)."""
    layer_columns = [column for column in events.columns if column.startswith("layers/")]
    if not layer_columns:
        return pd.DataFrame(
            columns=["run_key", "step", "epoch", "layer", "density", "pruned", "dropped", "grown"]
        )
    long = events.melt(id_vars=["run_key", "step", "epoch"], value_vars=layer_columns, var_name="column")
    # "layers/<name>/<stat>": tensor names hold dots, never slashes.
    parts = long["column"].str.rsplit("/", n=1, expand=True)
    long["layer"] = parts[0].str.removeprefix("layers/")
    long["stat"] = parts[1]
    wide = long.pivot_table(
        index=["run_key", "step", "epoch", "layer"],
        columns="stat",
        values="value",
        aggfunc="first",
        sort=False,
    )
    wide = wide.reindex(columns=["density", "pruned", "dropped", "grown"]).reset_index()
    wide.columns.name = None
    order = {name: index for index, name in enumerate(dict.fromkeys(parts[0].str.removeprefix("layers/")))}
    wide["layer_index"] = wide["layer"].map(order)
    return wide.sort_values(["run_key", "step", "layer_index"], kind="stable").reset_index(drop=True)


CurvesLoader = Callable[[pd.DataFrame, str], pd.DataFrame]
