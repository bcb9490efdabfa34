"""What the experiments that train a run store's probes again share: the probe's session from its run
directory, their command line, and writing the report. Imported by those scripts (run from the repository
root as `.venv/bin/python experiments/<script>.py`, which puts this directory on the path)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.config import PlasticityConfig, deep_merge, validate
from harness.engine.distributed import dist_info_from_env
from harness.engine.loop import build_session
from harness.engine.session import Session
from harness.store import rundir


def probe_session(run_dir: Path, runs_dir: Path, data_dir: str) -> tuple[Session, PlasticityConfig, Path]:
    """A fresh session of the probe (one intra-op thread, as the store's runs), its plasticity section and
    the base checkpoint it starts from; prune_and_measure(session, ..., checkpoint, probe, ...) goes on."""
    torch.set_num_threads(1)
    config = validate(deep_merge(rundir.read_config(run_dir), {"data": {"data_dir": data_dir}}))
    probe = config.plasticity
    assert probe is not None, run_dir
    session = build_session(config, dist_info_from_env("cpu"))
    base = runs_dir / probe.base_run
    return (
        session,
        probe,
        rundir.checkpoint_dir(base) / rundir.epoch_checkpoint_name(probe.probe_epoch),
    )


def store_arguments(description: str) -> argparse.ArgumentParser:
    """RUNS_DIR, --probe-epoch (repeatable; the script picks the default), --data-dir, --workers, --markdown."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--probe-epoch", type=int, action="append", help="default: 4 and 10")
    parser.add_argument("--data-dir", default="data", help="where the MNIST-1D cache is (default: data)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="write the report here (it is always printed)")
    return parser


def publish(text: str, markdown: Path | None) -> None:
    if markdown is not None:
        rundir.atomic_write(markdown, lambda handle: handle.write(text.encode()))
    print(text, end="")


def nothing_to_do(runs_dir: Path, what: str) -> int:
    print(f"{runs_dir}: no completed {what} at those epochs", file=sys.stderr)
    return 2
