"""How long `harness` takes to answer, beside the cost of importing torch (`harness bench startup`).

Each command is a fresh subprocess, timed from spawn to exit and repeated `repetitions` times, the
commands interleaved repetition by repetition so that drift in machine load hits them alike; medians are
reported with each one's ratio to `python -c "import torch"`. This process imports no torch itself: the
numbers are those of a user typing the command.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from harness.errors import UserError

HARNESS = [sys.executable, "-m", "harness.cli"]
COMMANDS: dict[str, list[str]] = {
    "harness --help": [*HARNESS, "--help"],
    "harness run --help": [*HARNESS, "run", "--help"],
    "harness run --lrr 1 (usage error)": [*HARNESS, "run", "--lrr", "1"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}
REFERENCE = 'python -c "import torch"'
EXPECTED_CODES = {"harness run --lrr 1 (usage error)": 2}


@dataclass(frozen=True)
class StartupRow:
    command: str
    median_s: float
    over_torch_import: float
    repetitions: int


def environment() -> dict[str, Any]:
    """Hardware and versions, without importing torch (its version from the installed metadata)."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "typer": metadata.version("typer"),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_once(name: str, argv: list[str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - start
    if completed.returncode != EXPECTED_CODES.get(name, 0):
        raise RuntimeError(
            f"{name}: exit code {completed.returncode}, expected {EXPECTED_CODES.get(name, 0)}"
        )
    return seconds


def measure(repetitions: int = 5) -> list[StartupRow]:
    """One row per command, the torch import last (the reference of every ratio)."""
    if repetitions < 1:
        raise UserError(f"--repetitions: must be at least 1 (got {repetitions})")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repetitions):
        for name, argv in COMMANDS.items():
            times[name].append(time_once(name, argv))
    reference = statistics.median(times[REFERENCE])
    return [
        StartupRow(name, statistics.median(seconds), statistics.median(seconds) / reference, repetitions)
        for name, seconds in times.items()
    ]


def format_table(rows: list[StartupRow], env: dict[str, Any]) -> str:
    """A Markdown table with the environment and n above it."""
    lines = [
        f"{env['cpu']} ({env['cpu_count']} cores), Python {env['python']}, torch {env['torch']}, "
        f"typer {env['typer']}; medians of n = {rows[0].repetitions} interleaved runs; "
        f"load average at the end {env['load_average_1min']:.2f}",
        "",
        "| command | median (s) | / torch import |",
        "|---|---|---|",
    ]
    lines += [f"| `{row.command}` | {row.median_s:.3f} | {row.over_torch_import:.2f} |" for row in rows]
    return "\n".join(lines)


def bench_startup(repetitions: int = 5, json_out: Path | None = None, out: TextIO | None = None) -> int:
    """Measure, print the table, and write the JSON report where asked."""
    from harness.store.rundir import atomic_write_text

    out = sys.stdout if out is None else out
    if json_out is not None and json_out.parent.exists() and not json_out.parent.is_dir():
        raise UserError(f"--json: {json_out}: its parent is not a directory")
    rows = measure(repetitions)
    env = environment()
    out.write(format_table(rows, env) + "\n")
    if json_out is not None:
        report = {"environment": env, "rows": [asdict(row) for row in rows]}
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
        out.write(f"wrote {json_out}\n")
    return 0
