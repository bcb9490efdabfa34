"""Shared fixtures of the end-to-end tests: the `harness` CLI run in-process and as a real subprocess.

Everything a run touches is isolated: runs and data in tmp, every W&B directory in tmp, one compute
thread per process (the machine is shared, and oversubscribed threads make tiny runs ten times slower).

- `harness_cli` (function scope): a `HarnessCli` with `invoke(*argv)` (typer's CliRunner, in this process: no
  torch import per call), `run(*argv)` / `spawn(*argv)` (a real `python -m harness.cli` process, for exit
  codes, stdout and signals), its own `runs_dir`, and `mnist1d(...)`, the command-line options of a
  CPU-sized MNIST-1D run (9 optimizer steps per epoch by default).
- `mnist1d_dir` (session scope): a data directory holding the generated MNIST-1D caches those runs read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WANDB_DIR_VARIABLES = (
    "WANDB_DIR",
    "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR",
    "WANDB_DATA_DIR",
    "WANDB_ARTIFACT_DIR",
)
# Variables of the developer's own W&B setup that must not reach a test run.
WANDB_USER_VARIABLES = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_PROJECT")

# MNIST-1D sizes the tests use; `num_samples` N gives 0.8 N training and 0.2 N test sequences.
MNIST1D_SIZES = (400, 1000)
SUBPROCESS_TIMEOUT_S = 300


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


@dataclass(frozen=True)
class RunFiles:
    """Readers of one run directory's contract files."""

    path: Path

    @property
    def status(self) -> str:
        return (self.path / "status").read_text()

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())

    @property
    def metrics(self) -> list[dict[str, Any]]:
        from harness.store.rundir import read_metrics

        return read_metrics(self.path / "metrics.jsonl")

    def lines(self, kind: str) -> list[dict[str, Any]]:
        return [record for record in self.metrics if record["kind"] == kind]

    def checkpoint(self, name: str = "last.pt") -> dict[str, Any]:
        import torch

        return torch.load(self.path / "checkpoints" / name, map_location="cpu", weights_only=True)

    def snapshots(self) -> dict[int, dict[str, np.ndarray]]:
        """step -> masks of every mask snapshot, in step order."""
        from harness.store.rundir import snapshot_step as step_of
        from harness.store.snapshots import load_masks

        paths = sorted((self.path / "masks").glob("step_*.npz"), key=step_of)
        return {step_of(path): load_masks(path) for path in paths}


@pytest.fixture(scope="session")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with MNIST-1D generated once per session for every size in MNIST1D_SIZES."""
    from harness.data.datasets import load_mnist1d

    data_dir = tmp_path_factory.mktemp("data")
    for size in MNIST1D_SIZES:
        load_mnist1d(data_dir / "mnist1d" / f"mnist1d-{size}.npz", size)
    return data_dir


def catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


class HarnessCli:
    """The `harness` command against an isolated runs directory."""

    def __init__(self, runs_dir: Path, data_dir: Path, cwd: Path) -> None:
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.cwd = cwd

    def mnist1d(
        self,
        *,
        samples: int = 400,
        val_size: int = 50,
        batch_size: int = 32,
        epochs: int | None = 2,
        runs_dir: Path | None = None,
    ) -> list[str]:
        """Options of a CPU-sized ResNet-20 / MNIST-1D run (400 samples: 270 train, 50 val, 80 test)."""
        options = [
            "--arch", "resnet20",
            "--dataset", "mnist1d",
            "--data-dir", str(self.data_dir),
            "--runs-dir", str(runs_dir or self.runs_dir),
            "--batch-size", str(batch_size),
            "--wandb", "disabled",
            "--set", f"data.num_samples={samples}",
            "--set", f"data.val_size={val_size}",
            "--set", "model.width=0.25",
        ]  # fmt: skip
        if epochs is not None:
            options += ["--epochs", str(epochs)]
        return options

    def invoke(self, *argv: str) -> CliResult:
        """`harness <argv>` in this process. Unexpected exceptions propagate with their traceback."""
        import torch
        from typer.testing import CliRunner

        from harness.cli import commands as cli

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = CliRunner().invoke(cli.app, list(argv))
        finally:
            torch.set_num_threads(threads)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    @staticmethod
    def files(run_dir: Path | str) -> RunFiles:
        return RunFiles(Path(run_dir))

    def command(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "harness.cli", *argv]

    def spawn(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`harness <argv>` as a new process (stdout and stderr piped, as text)."""
        return subprocess.Popen(
            self.command(*argv),
            cwd=self.cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *argv: str, env: dict[str, str] | None = None) -> CliResult:
        """`harness <argv>` as a new process, waited for."""
        process = self.spawn(*argv, env=env)
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        return CliResult(process.returncode, stdout, stderr)


@pytest.fixture
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment of this test and its subprocesses: one thread, W&B confined to tmp. Returns W&B's home."""
    for variable in THREAD_VARIABLES:
        monkeypatch.setenv(variable, "1")
    home = tmp_path / "wandb-home"
    for variable in WANDB_DIR_VARIABLES:
        directory = home / variable.lower()
        directory.mkdir(parents=True)
        monkeypatch.setenv(variable, str(directory))
    for variable in WANDB_USER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    # The harness must never need a terminal: no progress bars, no prompts.
    monkeypatch.setenv("TERM", "dumb")
    return home


@pytest.fixture
def harness_cli(tmp_path: Path, mnist1d_dir: Path, isolated_environment: Path) -> HarnessCli:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    return HarnessCli(tmp_path / "runs", mnist1d_dir, workdir)
