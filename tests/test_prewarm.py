"""Sweep jobs forked from a runner that has imported the harness (harness/launch/prewarm.py) behave as fresh
processes: the same numbers, exit codes, output, environment and signals."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from harness.launch import prewarm, supervisor, sweep, sweep_commands

pytestmark = pytest.mark.skipif(not prewarm.available(), reason="fork launcher is Linux-only")


@dataclass
class FakeJob:
    argv: tuple[str, ...]
    log_path: Path


def entry() -> None:
    """A stand-in CLI: `exit N`, `raise`, `echo NAME` (an environment variable), `sleep S`."""
    command, *rest = sys.argv[1:]
    if command == "exit":
        raise SystemExit(int(rest[0]))
    if command == "raise":
        raise RuntimeError("boom in the child")
    if command == "echo":
        print(f"{rest[0]}={os.environ.get(rest[0])}")
        print("to stderr", file=sys.stderr)
        return
    if command == "sleep":
        time.sleep(float(rest[0]))
        return
    raise AssertionError(command)


def launch(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> prewarm.ForkedProcess:
    launcher = prewarm.forking_launcher(entry, lambda job: env or {"PATH": os.environ.get("PATH", "")})
    return launcher(FakeJob(argv, tmp_path / "logs" / "job.log"))


def test_exit_codes_are_those_of_a_fresh_interpreter(tmp_path):
    assert launch(tmp_path, "exit", "0").wait() == 0
    assert launch(tmp_path, "exit", "3").wait() == 3  # a stopped, resumable run
    assert launch(tmp_path, "echo", "X").wait() == 0  # returning normally
    process = launch(tmp_path, "raise")
    assert process.wait() == 1
    log = (tmp_path / "logs" / "job.log").read_text()
    assert "RuntimeError: boom in the child" in log and "Traceback" in log


def test_the_child_writes_to_the_job_log_with_the_jobs_environment(tmp_path):
    process = launch(tmp_path, "echo", "HARNESS_PREWARM_TEST", env={"HARNESS_PREWARM_TEST": "forty-two"})
    assert process.wait() == 0
    lines = (tmp_path / "logs" / "job.log").read_text().splitlines()
    assert lines[0].startswith("=== start ") and lines[0].endswith(": harness echo HARNESS_PREWARM_TEST")
    # Block-buffered stdout, line-buffered stderr, as a fresh interpreter writing to a file: stderr first.
    assert lines[1:] == ["to stderr", "HARNESS_PREWARM_TEST=forty-two"]
    assert os.environ.get("HARNESS_PREWARM_TEST") is None  # the runner's own environment is untouched


def test_poll_wait_timeout_and_signals(tmp_path):
    process = launch(tmp_path, "sleep", "30")
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == -signal.SIGTERM  # as Popen reports a death by signal
    assert process.poll() == -signal.SIGTERM
    process.send_signal(signal.SIGTERM)  # reaped: never signals a pid that may have been reused


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return {**checkpoint["model"], **{f"mask/{k}": v for k, v in checkpoint["sparsifier"]["masks"].items()}}


def test_a_forked_run_is_bit_identical_to_a_fresh_process(harness_cli, tmp_path):
    """The same sweep point run by the CLI's forking launcher and by a new interpreter: same run id,
    identical weights, masks and summary (apart from the wall time)."""
    command = ["${env}", "${program}", "run", *harness_cli.mnist1d(epochs=2), "${args_no_boolean_flags}"]
    parameters = {
        "method": {"value": "rigl"},
        "final_sparsity": {"value": 0.9},
        "update_frequency": {"value": 3},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({"program": "harness", "method": "grid", "command": command, "parameters": parameters})
    )
    results = []
    for name, launcher in (
        ("forked", sweep_commands.forked_jobs(1)),
        ("fresh", supervisor.subprocess_launcher(1)),
    ):
        runs = tmp_path / name
        assert sweep.run_sweep(path, runs_dir=runs, out=io.StringIO(), launch=launcher) == 0
        (summary,) = runs.glob("*/*/summary.json")
        results.append((summary.parent, json.loads(summary.read_text())))
    (forked_dir, forked), (fresh_dir, fresh) = results
    assert forked_dir.name == fresh_dir.name
    assert forked.pop("wall_time_s") > 0 and fresh.pop("wall_time_s") > 0
    assert forked == fresh
    a, b = final_state(forked_dir), final_state(fresh_dir)
    assert set(a) == set(b) and all(torch.equal(a[name], b[name]) for name in a)
