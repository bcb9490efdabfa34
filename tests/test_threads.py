"""A run id means the same numbers whatever the machine's threads: `run.threads` is pinned and hashed.

CPU kernels split reductions by thread, so the thread count is part of what a run computes. These tests
show both halves of the promise: the thread count given to a run is part of its id, and nothing outside
the config (OMP_NUM_THREADS, the number of sweep workers) changes the numbers behind an id.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import THREAD_VARIABLES, HarnessCli

from harness.config import resolve, run_id
from harness.launch import sweep


def test_the_thread_count_is_part_of_the_run_id():
    one = resolve("granet", dataset="mnist1d")
    two = resolve("granet", dataset="mnist1d", overrides={"run": {"threads": 2}})
    assert one.run.threads == 1  # the default is the same on every machine
    assert run_id(one) != run_id(two)


@pytest.mark.parametrize("threads", [0, -1, 257, 1.5])
def test_thread_counts_outside_the_range_are_refused(harness_cli: HarnessCli, threads):
    result = harness_cli.invoke("run", "dense", *harness_cli.mnist1d(), "--set", f"run.threads={threads}")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: run.threads: ")
    assert not harness_cli.runs_dir.exists()


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return {**checkpoint["model"], **{f"mask/{k}": v for k, v in checkpoint["sparsifier"]["masks"].items()}}


@pytest.mark.slow
def test_the_environments_thread_setting_changes_neither_the_run_id_nor_its_numbers(harness_cli, tmp_path):
    """One command under OMP_NUM_THREADS=1 and =2: one run id, bit-identical weights and masks. The
    --threads flag, by contrast, addresses another run."""
    argv = ["run", "rigl", *harness_cli.mnist1d(epochs=2), "--sparsity", "0.9", "--update-frequency", "3"]
    run_dirs = []
    for omp in ("1", "2"):
        runs = tmp_path / f"omp{omp}"
        env = {name: omp for name in THREAD_VARIABLES}
        result = harness_cli.run(*argv, "--runs-dir", str(runs), env=env)
        assert result.exit_code == 0, result.stderr
        run_dirs.append(Path(result.last_line))
    first, second = run_dirs
    assert first.name == second.name
    a, b = final_state(first), final_state(second)
    assert set(a) == set(b) and any(name.startswith("mask/") for name in a)
    assert all(torch.equal(a[name], b[name]) for name in a), [n for n in a if not torch.equal(a[n], b[n])]

    dry = harness_cli.invoke(*argv, "--threads", "2", "--dry-run")
    assert dry.exit_code == 0 and Path(dry.last_line).name != first.name


@pytest.mark.slow
def test_a_sweep_with_one_or_two_workers_produces_identical_summaries(harness_cli, tmp_path, monkeypatch):
    """The sweep gives each worker's environment its share of the cores (here 2 threads and 1 of a
    2-core machine); the runs' numbers must not follow."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    parameters = {
        "dataset": {"value": "mnist1d"},
        "method": {"value": "set"},
        "final_sparsity": {"value": 0.9},
        "update_frequency": {"value": 3},
        "seed": {"values": [0, 1]},
    }
    fixed = harness_cli.mnist1d(epochs=2)
    command = ["${env}", "${program}", "run", *fixed, "${args_no_boolean_flags}"]
    summaries = []
    for workers in (1, 2):
        path = tmp_path / f"workers{workers}.yaml"
        sweep_file = {"program": "harness", "method": "grid", "command": command, "parameters": parameters}
        path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
        runs = tmp_path / f"runs{workers}"
        assert sweep.run_sweep(path, workers=workers, runs_dir=runs, out=io.StringIO()) == 0
        found = sorted(runs.glob("*/*/summary.json"))
        assert len(found) == 2
        summaries.append({p.parent.name: json.loads(p.read_text()) for p in found})
    for summary in (*summaries[0].values(), *summaries[1].values()):
        assert summary.pop("wall_time_s") > 0
    assert summaries[0] == summaries[1]
