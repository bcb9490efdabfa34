"""What `harness export` checks before torch is imported (`harness.inference.export` imports it at its top,
and importing it can print, e.g. libgomp's warning about OMP_NUM_THREADS): the export's names and the run
it reads, through the run-store readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.store import rundir

EXPORT_NAME = "export.pt"
LAYER_CHOICES = ("auto", "dense", "sparse")


def default_out(run_dir: Path | None, arch: str, dataset: str, sparsity: float | None) -> Path:
    if run_dir is not None:
        return Path(run_dir) / EXPORT_NAME
    return Path(f"{arch}-{dataset}-s{sparsity}.export.pt")


def completed_run_config(run_dir: Path) -> Any:
    """The validated config of a completed run. Status and config.yaml are read through the run-store
    readers (a binary status, garbage YAML or a `!!python/` tag is one UserError naming the file) and the
    config is validated by the rules of `harness run`."""
    from harness import config as configuration

    run_dir = Path(run_dir)
    path = rundir.config_path(run_dir)
    if not path.exists():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    status = rundir.read_status(run_dir) or "missing"
    if status != "completed":
        raise UserError(
            f"{run_dir}: run status is {status!r}; export needs a completed run's final checkpoint"
        )
    data = rundir.read_config(run_dir)
    try:
        return configuration.validate(data)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
