"""Run ids never change meaning: command lines and sweep files map to the run directories they mapped to
when these ids were pinned (`tests/data/pinned_run_ids.json`, computed before the package was reorganised
into concept folders and before each method came to own its settings).

A finished run is found again only through its id, so a refactor that moves a field, renames a default or
changes how a method's settings are hashed would silently orphan every store that exists. Every method,
the CPU and the paper recipes, the late fields that enter the id only when set, probes of every criterion,
controls, a 2-process run and every shipped sweep file are covered.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.launch.planning import plan_invocation
from harness.launch.sweep_file import load_sweep
from harness.launch.sweep_plan import plan_jobs

ROOT = Path(__file__).resolve().parent.parent
PINNED = json.loads((ROOT / "tests" / "data" / "pinned_run_ids.json").read_text())


def key(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


@pytest.mark.parametrize("command", sorted(PINNED["commands"]))
def test_command_lines_keep_their_run_ids(command: str) -> None:
    planned = [key(run.run_dir) for run in plan_invocation(command.split())]
    assert planned == PINNED["commands"][command]


@pytest.mark.parametrize("sweep_file", sorted(PINNED["sweeps"]))
def test_sweep_files_keep_their_run_ids(sweep_file: str) -> None:
    jobs = plan_jobs(load_sweep(ROOT / "sweeps" / sweep_file), runs_dir=Path("runs"))
    names = sorted(key(job.run_dir) for job in jobs)
    pinned = PINNED["sweeps"][sweep_file]
    assert len(names) == pinned["count"]
    assert names[:3] == pinned["first"]
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == pinned["sha256"]
