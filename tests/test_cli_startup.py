"""The CLI answers at once and stops cleanly while it starts: which commands import torch, how stop
signals during start-up end a command, the typed requests a command line parses into, and the start-up
benchmark's arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HarnessCli, catches_sigterm
from typer.testing import CliRunner

from harness.cli.commands import app
from harness.engine import signals
from harness.launch import startup
from harness.launch.command_line import (
    SHARED_OPTIONS,
    Launch,
    ProbeRequest,
    RunRequest,
    Training,
    parse_training_argv,
    training_parser,
)
from harness.studies.plan import Study

REPO = Path(__file__).resolve().parents[1]

# Runs `harness <argv>` through the console script's entry point in a fresh interpreter, then reports the
# exit code and which heavy modules the command imported.
DRIVER = """
import json, sys
sys.argv = ["harness", *sys.argv[1:]]
from harness.cli import main
try:
    main()
    code = 0
except SystemExit as finished:
    code = finished.code
heavy = [name for name in ("torch", "harness.config", "numpy") if name in sys.modules]
sys.__stderr__.write("\\n" + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


def run_entry_point(*argv: str, cwd: Path) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stderr without the report line) of `harness <argv>`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    *rest, report = completed.stderr.rstrip("\n").split("\n")
    found = json.loads(report)
    return found["code"], found["heavy"], "\n".join(rest).strip()


# ---------------------------------------------------------------------------------------------------------
# What a command imports


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["plasticity", "--help"],
        ["sweep", "run", "--help"],
        ["bench", "--help"],
    ],
)
def test_help_imports_neither_torch_nor_the_config(tmp_path: Path, argv: list[str]) -> None:
    code, heavy, _ = run_entry_point(*argv, cwd=tmp_path)
    assert code == 0
    assert heavy == []


def test_a_mistyped_option_is_one_line_without_torch(tmp_path: Path) -> None:
    code, heavy, stderr = run_entry_point("run", "granet", "--lrr", "1", cwd=tmp_path)
    assert (code, heavy) == (2, [])
    assert stderr == "error: harness run: no such option --lrr (did you mean --lr?)"


@pytest.mark.parametrize("command", ["runs", "claims"])
def test_listing_an_empty_store_imports_no_torch(tmp_path: Path, command: str) -> None:
    (tmp_path / "runs").mkdir()
    code, heavy, stderr = run_entry_point(command, cwd=tmp_path)
    assert code == 2
    assert "torch" not in heavy
    assert stderr == "error: runs: no run directories (with config.yaml) found"  # the loader's own words


def test_a_bad_config_value_is_refused_without_torch(tmp_path: Path) -> None:
    code, heavy, stderr = run_entry_point("run", "granet", "--sparsity", "1.5", "--dry-run", cwd=tmp_path)
    assert code == 2 and stderr.startswith("error: sparsity")
    assert "torch" not in heavy


def test_planning_a_sweep_dry_run_imports_no_torch(tmp_path: Path) -> None:
    code, heavy, stderr = run_entry_point(
        "sweep",
        "run",
        str(REPO / "sweeps" / "granet-mnist1d.yaml"),
        "--dry-run",
        "--runs-dir",
        "r",
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert "torch" not in heavy


# ---------------------------------------------------------------------------------------------------------
# Stop signals during start-up


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.6, 1.5])
def test_sigterm_while_a_run_starts_exits_3_or_143_never_by_the_signal(
    harness_cli: HarnessCli, delay: float
) -> None:
    """Sent once the entry point holds the signal (its first line), then `delay` seconds later: while typer,
    the config and torch are imported and the session is built. Exit 3 leaves a resumable run at step 0;
    143 leaves nothing."""
    argv = ["run", "dense", "--dataset", "synthetic", "--runs-dir", str(harness_cli.runs_dir)]
    process = harness_cli.spawn(*argv, "--wandb", "disabled")
    try:
        while process.poll() is None and not catches_sigterm(process.pid):
            time.sleep(0.002)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode in (3, 143), stderr
    assert "Traceback" not in stderr
    if process.returncode == 143:
        assert not harness_cli.runs_dir.exists() or list(harness_cli.runs_dir.iterdir()) == []
    else:
        run_dir = Path(harness_cli.invoke(*argv, "--wandb", "disabled", "--dry-run").last_line)
        assert harness_cli.files(run_dir).checkpoint()["step"] == 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3])
def test_sigterm_while_a_sweep_is_planned_exits_143_having_written_nothing(
    harness_cli: HarnessCli, delay: float
) -> None:
    """A command that does not train: the signal is noted until the command starts (then 143 at once) or,
    later, ends it with 143 instead of killing it."""
    sweep = REPO / "sweeps" / "granet-mnist1d.yaml"
    process = harness_cli.spawn(
        "sweep", "run", str(sweep), "--dry-run", "--runs-dir", str(harness_cli.runs_dir)
    )
    try:
        while process.poll() is None and not catches_sigterm(process.pid):
            time.sleep(0.002)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert not harness_cli.runs_dir.exists()
    assert "Traceback" not in stderr
    if process.returncode == 0 and delay > 0:  # planning finished first (once it needs no torch): the plan
        assert stdout.startswith("sweep granet-mnist1d: ")
        return
    assert process.returncode == 143, stderr
    assert stdout == ""


@pytest.fixture
def deferred_stop(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A stop signal noted by the entry point's deferral; the handlers of this process are restored after."""
    handlers = {number: signal.getsignal(number) for number in signals.STOP_SIGNALS}
    received: list[int] = []
    monkeypatch.setattr(signals, "_received", received)
    monkeypatch.setattr(signals, "_previous", {})
    monkeypatch.setattr(signals, "_handed_over", [])
    yield received
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.mark.parametrize(("number", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_before_a_listing_starts_exits_128_plus_the_signal_and_prints_nothing(
    tmp_path: Path, deferred_stop: list[int], number: int, code: int
) -> None:
    signals.defer_stop_signals()
    deferred_stop.append(number)
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == code
    assert result.stdout == "" and result.stderr == ""
    # Released: SIGINT is Python's again, SIGTERM now exits 143 instead of killing the process.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(SystemExit) as stopped:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert stopped.value.code == 143


def test_help_asked_while_a_stop_is_pending_exits_143(
    monkeypatch: pytest.MonkeyPatch, deferred_stop: list[int]
) -> None:
    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["harness", "run", "--help"])
    deferred_stop.append(signal.SIGTERM)
    with pytest.raises(SystemExit) as finished:
        main()
    assert finished.value.code == 143


def test_a_stop_handed_over_to_the_trainer_keeps_the_commands_own_code(deferred_stop: list[int]) -> None:
    deferred_stop.append(signal.SIGTERM)
    assert signals.stop_exit_code() == 143
    signals.hand_over_stop_signals()
    assert signals.stop_requested() and signals.stop_exit_code() is None


# ---------------------------------------------------------------------------------------------------------
# Typed requests


def test_a_run_command_line_parses_into_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    request = parse_training_argv(
        [
            "run",
            "granet",
            "--batch_size=64",
            "--set",
            "optim.lr=0.1",
            "--set",
            "run.seed=3",
            "--nproc-per-node=2",
        ]
    )
    assert request == RunRequest(
        method="granet",
        training=Training(
            batch_size=64, assignments=("optim.lr=0.1", "run.seed=3"), launch=Launch(nproc_per_node=2)
        ),
    )
    assert request.training.launch.world_size == 2


def test_a_plasticity_command_line_parses_into_its_request() -> None:
    request = parse_training_argv(
        ["plasticity", "--probe-epoch=4", "--pruning_rate=0.5", "--regeneration", "--dataset=synthetic"]
    )
    assert request == ProbeRequest(
        Study(probe_epoch=4, pruning_rate=0.5, regeneration=True), training=Training(dataset="synthetic")
    )


def test_run_and_plasticity_take_the_same_shared_options_from_one_declaration() -> None:
    group = training_parser()
    names = {
        command: {param.name for param in group.commands[command].params} for command in ("run", "plasticity")
    }
    assert set(SHARED_OPTIONS) <= names["run"] and set(SHARED_OPTIONS) <= names["plasticity"]
    assert names["run"] - set(SHARED_OPTIONS) == {
        "method",
        "method_option",
        "sparsity",
        "init_sparsity",
        "update_frequency",
    }
    shared = {
        command: [param.opts for param in group.commands[command].params if param.name in SHARED_OPTIONS]
        for command in ("run", "plasticity")
    }
    assert shared["run"] == shared["plasticity"]


# ---------------------------------------------------------------------------------------------------------
# harness bench startup


def test_startup_rows_are_medians_over_the_torch_import(monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = {
        "harness --help": iter([0.4, 0.2, 0.3]),
        "harness run --help": iter([0.5, 0.5, 0.9]),
        "harness run --lrr 1 (usage error)": iter([0.3, 0.3, 0.3]),
        'python -c "import torch"': iter([2.0, 4.0, 3.0]),
    }
    monkeypatch.setattr(startup, "time_once", lambda name, argv: next(seconds[name]))
    rows = startup.measure(repetitions=3)
    assert [(row.command, row.median_s, row.over_torch_import) for row in rows] == [
        ("harness --help", 0.3, pytest.approx(0.1)),
        ("harness run --help", 0.5, pytest.approx(0.5 / 3)),
        ("harness run --lrr 1 (usage error)", 0.3, pytest.approx(0.1)),
        ('python -c "import torch"', 3.0, 1.0),
    ]
    env = {
        "cpu": "CPU",
        "cpu_count": 2,
        "python": "3.11",
        "torch": "2",
        "typer": "0",
        "load_average_1min": 0.5,
    }
    table = startup.format_table(rows, env).splitlines()
    assert table[0].endswith("medians of n = 3 interleaved runs; load average at the end 0.50")
    assert table[4] == "| `harness --help` | 0.300 | 0.10 |"


def test_bench_startup_refuses_zero_repetitions() -> None:
    result = CliRunner().invoke(app, ["bench", "startup", "--repetitions", "0"])
    assert result.exit_code == 2
    assert result.stderr == "error: --repetitions: must be at least 1 (got 0)\n"
