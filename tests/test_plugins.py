"""A researcher's own model, dataset and method plug in without editing the package, and are first-class.

The plug-ins are the files of examples/plugins (the guide's example), copied by each test into a temporary
folder that only the child processes' PYTHONPATH names, so nothing here can lean on the checkout's layout.
They train through `harness run`, resume after SIGTERM to the bit, sweep, show in `harness runs` and
`harness figures`; an installed package's entry points name them too; and a plug-in that does not follow
the contract is refused with one line naming what is missing, before anything is created.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"
METHOD_EXAMPLE = ROOT / "examples" / "methods" / "sensitive_gmp.py"  # docs/methods.md, "Adding a method"
MODEL = "my_models:tiny_cnn"
DATASET = "my_data:waveforms"
METHOD = "sensitive_gmp:SensitiveGMP"
WAIT_LIMIT_S = 240  # a guard against a hung child, not a timing assertion


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(METHOD_EXAMPLE, folder)
    return folder


def harness(plugins: Path, *argv: str, cwd: Path) -> subprocess.Popen:
    env = {**_environment(), "PYTHONPATH": f"{plugins}:{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(plugins: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    process = harness(plugins, *argv, cwd=cwd)
    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def training_options(runs_dir: Path, *, epochs: int = 2) -> list[str]:
    return [
        "--arch", MODEL,
        "--dataset", DATASET,
        "--epochs", str(epochs),
        "--runs-dir", str(runs_dir),
        "--wandb", "disabled",
        "--update-frequency", "5",
        "--set", "data.num_samples=400",
        "--set", "data.val_size=80",
        "--set", "optim.batch_size=32",
    ]  # fmt: skip


def test_a_plugin_model_and_dataset_train_through_harness_run(plugins: Path, tmp_path: Path) -> None:
    result = run(plugins, "run", "granet", *training_options(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    # The stem is readable and filesystem-safe; the hash covers the full import paths.
    assert run_dir.name.startswith("granet-my_models-tiny_cnn-my_data-waveforms-s0-")
    assert (run_dir / "status").read_text() == "completed\n"
    config = (run_dir / "config.yaml").read_text()
    assert f"arch: {MODEL}" in config and f"dataset: {DATASET}" in config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["density"] == pytest.approx(0.1, abs=0.002)
    # The harness held out data.val_size samples of the plug-in's training set (it returned val=None):
    # 320 training samples in batches of 32 are 10 steps per epoch.
    assert summary["steps"] == 20
    assert 0.0 <= summary["test_acc_at_best_val"] <= 1.0
    # Export translates the structures it knows; a plug-in network is refused in one line, nothing written.
    exported = run(plugins, "export", str(run_dir), "--out", str(tmp_path / "model.pt"), cwd=tmp_path)
    assert exported.returncode == 2
    assert exported.stderr.startswith("error: export: Sequential is not supported;")
    assert exported.stderr.count("\n") == 1 and not (tmp_path / "model.pt").exists()


def test_a_plugin_run_resumes_after_sigterm_bit_identically(plugins: Path, tmp_path: Path) -> None:
    reference = run(plugins, "run", "set", *training_options(tmp_path / "reference", epochs=4), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    reference_dir = Path(reference.stdout.strip().splitlines()[-1])

    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "default" / reference_dir.name
    argv = ["run", "set", *training_options(runs_dir, epochs=4)]
    process = harness(plugins, *argv, cwd=tmp_path)
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT_LIMIT_S)
    assert process.returncode in (0, 3), stderr  # 0: the signal came after the last step
    rerun = run(plugins, *argv, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr

    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    expected = torch.load(reference_dir / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for name, mask in expected["sparsifier"]["masks"].items():
        assert torch.equal(resumed["sparsifier"]["masks"][name], mask), name
    for key in ("test_acc", "test_acc_at_best_val", "density", "steps", "train_loss"):
        assert (
            json.loads((run_dir / "summary.json").read_text())[key]
            == json.loads((reference_dir / "summary.json").read_text())[key]
        )


def test_plugins_sweep_and_appear_in_runs_and_figures(plugins: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "plugins.yaml"
    sweep.write_text(
        "program: harness\n"
        "method: grid\n"
        'command: ["${program}", run, "${args}", --set, data.num_samples=400, --set, data.val_size=80, '
        "--set, optim.batch_size=32]\n"
        "parameters:\n"
        f"  method: {{values: [granet, '{METHOD}']}}\n"
        f"  arch: {{value: '{MODEL}'}}\n"
        f"  dataset: {{value: '{DATASET}'}}\n"
        "  epochs: {value: 2}\n"
        "  update_frequency: {value: 5}\n"
        "  wandb: {value: disabled}\n"
        "  seed: {values: [0, 1]}\n"
    )
    swept = run(
        plugins,
        "sweep",
        "run",
        str(sweep),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--workers",
        "1",
        cwd=tmp_path,
    )
    assert swept.returncode == 0, swept.stderr
    run_dirs = sorted(
        path
        for path in (tmp_path / "runs" / "default").glob("*-my_models-tiny_cnn-my_data-waveforms-s*")
        if path.is_dir()
    )
    assert [path.name.split("-my_models")[0] for path in run_dirs] == ["granet"] * 2 + [
        "sensitive_gmp-SensitiveGMP"
    ] * 2
    assert all((path / "status").read_text() == "completed\n" for path in run_dirs)

    listed = run(plugins, "runs", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["runs"]
    assert sorted((row["method"], row["arch"], row["dataset"], row["seed"]) for row in rows) == [
        ("granet", MODEL, DATASET, 0),
        ("granet", MODEL, DATASET, 1),
        (METHOD, MODEL, DATASET, 0),
        (METHOD, MODEL, DATASET, 1),
    ]

    figures = run(
        plugins, "figures", str(tmp_path / "runs"), "--out", str(tmp_path / "figures"), cwd=tmp_path
    )
    assert figures.returncode == 0, figures.stderr
    assert (tmp_path / "figures" / "accuracy_vs_sparsity.png").is_file()
    table = (tmp_path / "figures" / "comparison_table.md").read_text()
    assert "tiny_cnn" in table and METHOD in table


def test_an_installed_package_registers_names_through_entry_points(plugins: Path, tmp_path: Path) -> None:
    # What `pip install` leaves on the path: a dist-info folder whose entry_points.txt names the plug-ins.
    dist_info = plugins / "my_harness_plugins-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-harness-plugins\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[harness.models]\ntiny = {MODEL}\n\n[harness.datasets]\nwaves = {DATASET}\n"
    )
    options = training_options(tmp_path / "runs")
    options[options.index(MODEL)] = "tiny"
    options[options.index(DATASET)] = "waves"
    result = run(plugins, "run", "rigl", *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir.name.startswith("rigl-tiny-waves-s0-")
    assert (run_dir / "status").read_text() == "completed\n"


BROKEN = {
    "my_models_missing:tiny_cnn": "model.arch: cannot import module 'my_models_missing' for plug-in",
    "my_models:no_such_builder": "model.arch: module 'my_models' has no attribute 'no_such_builder'",
    "my_models:LENGTH_OF_NOTHING": "model.arch: plug-in 'my_models:LENGTH_OF_NOTHING' is int, not a callable",
    "my_models:needs_depth": "model.arch: plug-in 'my_models:needs_depth' does not accept input_shape, width",
}


@pytest.mark.parametrize(("arch", "message"), sorted(BROKEN.items()))
def test_a_plugin_that_breaks_the_contract_is_one_line_exit_2_and_creates_nothing(
    plugins: Path, tmp_path: Path, arch: str, message: str
) -> None:
    with (plugins / "my_models.py").open("a") as module:
        module.write(
            "\n\nLENGTH_OF_NOTHING = 3\n\n\ndef needs_depth(*, num_classes, depth):\n    return None\n"
        )
    options = training_options(tmp_path / "runs")
    options[options.index(MODEL)] = arch
    result = run(plugins, "run", "granet", *options, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()


def test_a_dataset_plugin_that_returns_the_wrong_type_is_refused_before_a_run_directory_exists(
    plugins: Path, tmp_path: Path
) -> None:
    with (plugins / "my_data.py").open("a") as module:
        module.write("\n\ndef not_datasets(data):\n    return [1, 2, 3]\n")
    options = training_options(tmp_path / "runs")
    options[options.index(DATASET)] = "my_data:not_datasets"
    result = run(plugins, "run", "granet", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: data.dataset: plug-in 'my_data:not_datasets' returned list, not "
        "harness.data.datasets.Datasets(train, val, test, spec)"
    ]
    assert not list((tmp_path / "runs").rglob("config.yaml"))
