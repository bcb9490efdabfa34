"""Hostile sweep files and SLURM options (issue 25, items 5 and 6): each is refused in seconds with one line
on stderr naming the file (and the key, line or point count) or the flag, exit code 2, no traceback, and
nothing created. And the batch script submitit writes for an accepted submission, header line by line.

Every hostile input is written by the test itself.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import commands as cli
from harness.launch import sweep_file

REPO = Path(__file__).resolve().parents[1]
HEADER = 'program: harness\nmethod: grid\ncommand: ["${program}", "run", "${args}"]\n'
SECONDS = 10  # every refusal answers well within this, however hostile the file


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def refused(tmp_path: Path, argv: list[str], expected: str) -> None:
    """`harness <argv>` exits 2 in seconds with exactly `expected` as its one stderr line, creating nothing."""
    before = files_under(tmp_path)
    started = time.monotonic()
    result = CliRunner().invoke(cli.app, argv)
    assert time.monotonic() - started < SECONDS
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.splitlines() == [expected]
    assert "Traceback" not in result.output and result.stdout == ""
    assert files_under(tmp_path) == before


def write(tmp_path: Path, text: str, name: str = "hostile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def dry_run(path: Path, tmp_path: Path, *more: str) -> list[str]:
    return ["sweep", "run", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs"), *more]


# ---------------------------------------------------------------------------------------------------------
# Sweep files


def billion_laughs() -> str:
    """Ten aliases of ten aliases, nine levels deep: 10^9 values once expanded, 1 KB as written."""
    lines = ["  seed:", "    values: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    for level in range(1, 10):
        lines.append(f"  lr{level}:")
        lines.append(f"    values: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    return HEADER + "parameters:\n" + "\n".join(lines) + "\n"


HOSTILE_FILES = {
    "billion laughs": (
        billion_laughs(),
        "line 14: expands to over 100000 values (aliases counted each time used)",
    ),
    "20,000 nested [": (HEADER + "parameters: " + "[" * 20_000 + "\n", "line 4: nested more than 64 levels deep"),
    "recursive anchor": (
        HEADER + "parameters:\n  seed:\n    values: &r [1, *r]\n",
        "line 6: *r refers to its own anchor (a recursive structure)",
    ),
    "a second parameters key": (
        HEADER + "parameters:\n  seed: {values: [0, 1]}\nparameters:\n  seed: {values: [2]}\n",
        "line 6: parameters: given twice (first on line 4); keep one",
    ),
    "a duplicate key in a flow mapping": (
        HEADER + "parameters: {seed: {value: 0}, seed: {value: 1}}\n",
        "line 4: seed: given twice (first on line 4); keep one",
    ),
    "an option smuggled in a parameter name": (
        HEADER + "parameters:\n  method: {value: dense}\n  runs-dir=/x --seed: {value: 3}\n",
        "parameters.runs-dir=/x --seed: not an option of harness run (did you mean runs-dir?); a parameter is an option's name "
        "without its dashes, as `harness run --help` lists them",
    ),
    "a grid of 10^8 points": (
        HEADER
        + "parameters:\n"
        + "".join(
            f"  {name}: {{values: [{', '.join(str(value) for value in range(1, 11))}]}}\n"
            for name in ("seed", "epochs", "batch_size", "lr", "threads", "update_frequency", "sparsity", "group")
        ),
        "the grid has 100000000 points, over the maximum of 10000; cut it with --only or raise the maximum "
        "with --max-points",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_a_hostile_sweep_file_is_one_line_naming_it_in_seconds(tmp_path, case):
    text, problem = HOSTILE_FILES[case]
    path = write(tmp_path, text)
    refused(tmp_path, dry_run(path, tmp_path), f"error: {path}: {problem}")


@pytest.mark.parametrize("command", ["submit", "status"])
def test_submit_and_status_refuse_the_same_files(tmp_path, command):
    text, problem = HOSTILE_FILES["a grid of 10^8 points"]
    path = write(tmp_path, text)
    argv = ["sweep", command, str(path), "--runs-dir", str(tmp_path / "runs")]
    refused(tmp_path, argv, f"error: {path}: {problem}")


def test_a_file_over_a_megabyte_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path, HEADER + "#" * sweep_file.MAX_FILE_BYTES + "\n")
    refused(
        tmp_path,
        dry_run(path, tmp_path),
        f"error: {path}: over 1048576 bytes; a sweep file is a short YAML text",
    )


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_sweep_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "pipe.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    else:
        path.mkdir()
    refused(
        tmp_path, dry_run(path, tmp_path), f"error: {path}: not a regular file; a sweep file is YAML text"
    )


def test_a_file_name_with_a_line_break_is_refused_in_one_line(tmp_path):
    # The stem names the SLURM job and the log folder.
    path = write(tmp_path, HEADER + "parameters:\n  seed: {value: 0}\n", name="a\n#SBATCH --x.yaml")
    expected = f"error: {str(path)!r}: the file name must not contain spaces or control characters"
    refused(tmp_path, dry_run(path, tmp_path), expected)


def small_grid(tmp_path: Path) -> Path:
    """Six points on synthetic data: plans in well under a second."""
    return write(
        tmp_path,
        HEADER
        + "parameters:\n  method: {value: dense}\n  dataset: {value: synthetic}\n  wandb: {value: disabled}\n"
        + "  seed: {values: [0, 1, 2]}\n  epochs: {values: [1, 2]}\n",
        name="small.yaml",
    )


def test_max_points_moves_the_bound_for_run_submit_and_status(tmp_path):
    path = small_grid(tmp_path)
    over = "the grid has 6 points, over the maximum of 5; cut it with --only or raise the maximum with --max-points"
    for command in (["run", "--dry-run"], ["submit", "--dry-run"], ["status"]):
        argv = ["sweep", command[0], str(path), *command[1:], "--runs-dir", str(tmp_path / "runs")]
        refused(tmp_path, [*argv, "--max-points", "5"], f"error: {path}: {over}")
    refused(
        tmp_path,
        dry_run(path, tmp_path, "--max-points", "0"),
        "error: --max-points: must be at least 1 (got 0)",
    )
    result = CliRunner().invoke(cli.app, dry_run(path, tmp_path, "--max-points", "6"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "sweep small: 6 grid points -> 6 runs (0 already complete)"
    # --only cuts the grid before the bound is applied.
    result = CliRunner().invoke(cli.app, dry_run(path, tmp_path, "--max-points", "3", "--only", "epochs=1"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "sweep small: 3 grid points -> 3 runs (0 already complete)"
    assert not (tmp_path / "runs").exists()


def test_the_shipped_sweeps_are_within_every_bound():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        loaded = sweep_file.load_sweep(path)
        assert sweep_file.grid_size(loaded) <= sweep_file.MAX_POINTS, path


def test_deep_nesting_in_a_real_process_is_one_line_not_a_recursion_traceback(tmp_path):
    path = write(tmp_path, HEADER + "parameters: " + "[" * 20_000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", *dry_run(path, tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}: line 4: nested more than 64 levels deep"]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------
# SLURM options: nothing unchecked reaches the batch script


def tiny_plasticity(tmp_path: Path) -> Path:
    """1 base run, 1 control and 2 probes on synthetic data: three levels, so three batch scripts."""
    data = {
        "program": "harness",
        "method": "grid",
        "command": ["${env}", "${program}", "plasticity", "${args_no_boolean_flags}"],
        "parameters": {
            "dataset": {"value": "synthetic"},
            "wandb": {"value": "disabled"},
            "probe_epoch": {"value": 1},
            "pruning_rate": {"values": [0.5, 0.9]},
        },
    }
    return write(tmp_path, yaml.safe_dump(data, sort_keys=False), name="tiny.yaml")


FOUND_LF = "must not contain control characters or line breaks (found U+000A)"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--partition", "gpu\n#SBATCH --wrap=id"], f"--partition: {FOUND_LF} (got 'gpu\\n#SBATCH --wrap=id')"),
        (["--partition", ""], "--partition: must not be empty (got '')"),
        (["--partition", "gpu debug"], "--partition: a partition name (or a comma-separated list) has no spaces (got 'gpu debug')"),
        (["--slurm-arg", "comment=x\n#SBATCH --uid=0"], f"--slurm-arg: comment: {FOUND_LF} (got {{'comment': 'x\\n#SBATCH --uid=0'}})"),
        (["--slurm-arg", "comment=a\tb"], "--slurm-arg: comment: must not contain control characters or line breaks (found U+0009) (got {'comment': 'a\\tb'})"),
        (["--slurm-arg", "comment=a\u2028b"], "--slurm-arg: comment: must not contain control characters or line breaks (found U+2028) (got {'comment': 'a\\u2028b'})"),
        (["--slurm-arg", "account="], "--slurm-arg: account: must not be empty (got {'account': ''})"),
        (["--slurm-arg", "signal=USR1@1"], "--slurm-arg: signal is set by the harness; use nothing: submitit's time-limit warning needs its own"),
        (["--slurm-arg", "job-name=x"], "--slurm-arg: job-name is set by the harness; use nothing: the sweep names its arrays"),
        (["--time", "99999999999999999999"], "--time: must be between 1 minute and 365 days (525600 minutes) (got '99999999999999999999')"),
        (["--time", "366-0"], "--time: must be between 1 minute and 365 days (525600 minutes) (got '366-0')"),
        (["--time", "1:99:99"], "--time: minutes and seconds must be below 60, and hours below 24 after days (got '1:99:99')"),
        (["--time", "60\n#SBATCH --x"], "--time: expected SLURM's time syntax: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (got '60\\n#SBATCH --x')"),
        (["--time", "9" * 5000], "--time: expected SLURM's time syntax: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (got '" + "9" * 5000 + "')"),
        (["--cpus-per-task", "0"], "--cpus-per-task: Input should be greater than or equal to 1 (got 0)"),
        (["--cpus-per-task", "99999999999999999999"], "--cpus-per-task: Input should be less than or equal to 65535 (got 99999999999999999999)"),
        (["--gpus-per-task", "-1"], "--gpus-per-task: Input should be greater than or equal to 0 (got -1)"),
        (["--gpus-per-task", "65536"], "--gpus-per-task: Input should be less than or equal to 65535 (got 65536)"),
        (["--array-parallelism", "0"], "--array-parallelism: Input should be greater than or equal to 1 (got 0)"),
    ],
)  # fmt: skip
def test_a_value_that_would_reach_the_batch_script_unchecked_is_refused(tmp_path, flags, expected):
    path = tiny_plasticity(tmp_path)
    argv = ["sweep", "submit", str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs"), *flags]
    refused(tmp_path, argv, f"error: {expected}")


def test_a_runs_dir_with_a_line_break_never_reaches_the_batch_script(tmp_path):
    path = tiny_plasticity(tmp_path)
    runs = tmp_path / "r\n#SBATCH --x"
    argv = ["sweep", "submit", str(path), "--dry-run", "--runs-dir", str(runs)]
    sweeps = str(runs / ".sweeps" / "tiny")
    refused(tmp_path, argv, f"error: --runs-dir: {sweeps!r} contains control characters or line breaks")


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """`sbatch` that keeps a copy of each script and answers as SLURM does; `srun` only has to exist."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\nn=$(ls "$FAKE_SBATCH_SCRIPTS" | wc -l)\ncp "$1" "$FAKE_SBATCH_SCRIPTS/$n.sh"\n'
        'echo "Submitted batch job $((700 + n))"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_SCRIPTS", str(scripts))
    return scripts


def test_the_batch_scripts_submitit_writes_hold_exactly_the_accepted_options(tmp_path, fake_sbatch):
    path = tiny_plasticity(tmp_path)
    runs = tmp_path / "runs"
    argv = ["sweep", "submit", str(path), "--runs-dir", str(runs), "--cluster", "slurm"]
    argv += ["--partition", "gpu,debug", "--gpus-per-task", "2", "--cpus-per-task", "4"]
    argv += [
        "--time",
        "1-02:03:04",
        "--array-parallelism",
        "3",
        "--nproc-per-node",
        "2",
        "--wandb",
        "disabled",
    ]
    argv += ["--slurm-arg", "account=proj", "--slurm-arg", "comment=a b; c", "--slurm-arg", "qos=low"]
    argv += ["--max-points", "2"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, (result.output, result.exception)
    folder = runs / ".sweeps" / "tiny" / "submitit" / "%j"
    scripts = [(fake_sbatch / f"{number}.sh").read_text().split("\n") for number in range(3)]
    assert len(list(fake_sbatch.iterdir())) == 3  # base run, control, the two probes as one array
    # submitit sorts the options; `--comment` is quoted by it (one sbatch argument, no shell); --time is
    # 1 day 2 h 3 min 4 s rounded up to whole minutes; the probes' level is one array of 2 tasks, 2 at once.
    expected_headers = [
        [
            "#SBATCH --account=proj",
            "#SBATCH --comment='a b; c'",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --gpus-per-node=2",
            "#SBATCH --job-name=tiny-0",
            "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=1",
            "#SBATCH --open-mode=append",
            f"#SBATCH --output={folder}/%j_0_log.out",
            "#SBATCH --partition=gpu,debug",
            "#SBATCH --qos=low",
            "#SBATCH --signal=USR2@90",
            "#SBATCH --time=1564",
            "#SBATCH --wckey=submitit",
        ],
        [
            "#SBATCH --account=proj",
            "#SBATCH --comment='a b; c'",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --dependency=afterany:700",
            "#SBATCH --gpus-per-node=2",
            "#SBATCH --job-name=tiny-1",
            "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=1",
            "#SBATCH --open-mode=append",
            f"#SBATCH --output={folder}/%j_0_log.out",
            "#SBATCH --partition=gpu,debug",
            "#SBATCH --qos=low",
            "#SBATCH --signal=USR2@90",
            "#SBATCH --time=1564",
            "#SBATCH --wckey=submitit",
        ],
        [
            "#SBATCH --account=proj",
            "#SBATCH --array=0-1%2",
            "#SBATCH --comment='a b; c'",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --dependency=afterany:701",
            "#SBATCH --gpus-per-node=2",
            "#SBATCH --job-name=tiny-2",
            "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=1",
            "#SBATCH --open-mode=append",
            f"#SBATCH --output={folder.parent}/%A_%a/%A_%a_0_log.out",
            "#SBATCH --partition=gpu,debug",
            "#SBATCH --qos=low",
            "#SBATCH --signal=USR2@90",
            "#SBATCH --time=1564",
            "#SBATCH --wckey=submitit",
        ],
    ]
    for lines, header in zip(scripts, expected_headers, strict=True):
        assert [line for line in lines if line.startswith("#SBATCH")] == header
        # Nothing but submitit's own lines around the header: no value became a line of its own.
        command = lines[3 + len(header) + 3]
        assert lines == [
            "#!/bin/bash",
            "",
            "# Parameters",
            *header,
            "",
            "# command",
            "export SUBMITIT_EXECUTOR=slurm",
            command,
            "",
        ]
        assert command.startswith("srun --unbuffered --output ") and command.endswith(
            f"-u -m submitit.core._submit {shlex.quote(str(folder))}"
        )
