"""Issue 24, first contact: the mission command without CIFAR (one line, at once, nothing created), the sweep's
dataset check before any run, `make` SCALE=auto, and `harness run --config FILE` / `--from RUN_DIR`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.data import presence

REPO = Path(__file__).resolve().parents[1]
CPU_PATH = "without the data (or on a CPU) run the CPU recipe instead: harness run granet --arch resnet20 --dataset mnist1d"

# `harness <argv>` in a fresh interpreter whose DNS look-up of the download host fails (as on a laptop
# without network, whatever the machine running the tests has); prints its exit code, stderr's lines and
# which heavy modules were imported.
ENTRY = """
import json, sys
from harness.data import presence
presence.host_resolves = lambda host, timeout=presence.DNS_TIMEOUT_SECONDS: False
from harness.cli import main
sys.argv = ["harness", *sys.argv[1:]]
try:
    main()
except SystemExit as finished:
    code = finished.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules}))
"""


def offline_harness(cwd: Path, *argv: str) -> tuple[dict, list[str], float]:
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    return json.loads(done.stdout.splitlines()[-1]), done.stderr.splitlines(), elapsed


def test_the_mission_command_without_cifar_says_what_to_do_at_once_and_creates_nothing(tmp_path: Path):
    report, stderr, elapsed = offline_harness(tmp_path, "run", "granet", "--arch", "resnet20")
    assert report == {"code": 2, "torch": False, "torchvision": False}
    assert stderr == [
        "error: data.data_dir: cifar10 is absent: looked for data/cifar-10-batches-py; copy the extracted "
        "cifar-10-batches-py/ folder (from cifar-10-python.tar.gz) into data/ or give --data-dir FOLDER that "
        "holds it; a download (--set data.download=true, the default) needs network, and www.cs.toronto.edu "
        f"does not resolve within 2 s; {CPU_PATH}"
    ]
    assert list(tmp_path.iterdir()) == []  # no data/, no runs/
    assert (
        elapsed < 15
    )  # start-up of a bare interpreter and the CLI (~1 s on 2 quiet cores), no imports of torch


def test_a_mistyped_data_dir_is_not_created(tmp_path: Path):
    mistyped = tmp_path / "datasets" / "cifar"
    report, stderr, _ = offline_harness(tmp_path, "run", "granet", "--data-dir", str(mistyped))
    assert report["code"] == 2
    (line,) = stderr
    assert line.startswith(
        f"error: data.data_dir: cifar10 is absent: looked for {mistyped}/cifar-10-batches-py;"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_folder_is_named_damaged_with_the_files_it_lacks(tmp_path: Path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(b"")
    report, stderr, _ = offline_harness(
        tmp_path, "plasticity", "--probe-epoch", "0", "--pruning-rate", "0.5", "--dataset", "cifar100"
    )
    assert report == {"code": 2, "torch": False, "torchvision": False}
    assert stderr == [
        "error: data.data_dir: cifar100 is damaged (lacks meta, test): looked for data/cifar-100-python; copy "
        "the extracted cifar-100-python/ folder (from cifar-100-python.tar.gz) into data/ or give --data-dir "
        "FOLDER that holds it; a download (--set data.download=true, the default) needs network; without the "
        "data (or on a CPU) run the CPU recipe instead: harness plasticity --probe-epoch 0 --pruning-rate 0.5 "
        "--arch resnet20 --dataset mnist1d"
    ]
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["cifar-100-python", "data", "train"]


def test_a_resolvable_host_lets_the_download_be_tried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    data = presence.ARCHIVES  # the check reads names only: any object with the three fields will do
    section = type("Data", (), {"dataset": "cifar10", "data_dir": tmp_path, "download": True})()
    monkeypatch.setattr(presence, "host_resolves", lambda host, timeout=2.0: host == data["cifar10"].host)
    presence.require_data(section, "x")  # no error: the run goes on to download
    section.download = False
    with pytest.raises(presence.UserError, match="cifar10 is absent"):
        presence.require_data(section, "x")
    assert list(tmp_path.iterdir()) == []


def test_host_resolves_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(presence.socket, "getaddrinfo", lambda *args: time.sleep(5))
    started = time.monotonic()
    assert presence.host_resolves("example.invalid", timeout=0.2) is False
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------------------------------------------------
# Sweeps


def test_a_paper_sweep_without_cifar_starts_nothing_and_names_the_cpu_sweep(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from harness.errors import UserError
    from harness.launch import sweep

    monkeypatch.chdir(tmp_path)  # the sweep's runs read data/ here: absent
    monkeypatch.setattr(presence, "host_resolves", lambda host, timeout=2.0: False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    launched: list[object] = []
    with pytest.raises(UserError) as raised:
        sweep.run_sweep(
            REPO / "sweeps" / "granet-cifar10.yaml",
            runs_dir=tmp_path / "runs",
            only=["seed=0", "method=granet"],
            launch=lambda *args, **kwargs: launched.append(args),
        )
    message = str(raised.value)
    assert message.startswith(
        f"{REPO / 'sweeps' / 'granet-cifar10.yaml'}: nothing started: data.data_dir: cifar10 is absent: "
        "looked for data/cifar-10-batches-py;"
    )
    assert message.endswith(
        f"run the CPU recipe instead: harness sweep run {REPO / 'sweeps' / 'granet-mnist1d.yaml'}"
    )
    assert launched == []
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_dry_run_warns_once_per_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog):
    import io

    from harness.launch import sweep

    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    code = sweep.run_sweep(
        REPO / "sweeps" / "granet-cifar10.yaml",
        runs_dir=tmp_path / "runs",
        only=["seed=0"],
        dry_run=True,
        out=out,
    )
    assert code == 0
    warnings = [record.getMessage() for record in caplog.records if "is not in" in record.getMessage()]
    assert warnings == [
        "data.data_dir: cifar10 is not in data/cifar-10-batches-py; a run would download it (needs network)"
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("gpu", "cifar", "line", "sweep_file"),
    [
        (False, True, "SCALE=auto: cpu scale, no GPU found (nvidia-smi lists none)", "plasticity-mnist1d"),
        (
            True,
            False,
            "SCALE=auto: cpu scale, no CIFAR-10 in {data}/cifar-10-batches-py",
            "plasticity-mnist1d",
        ),
        (True, True, "SCALE=auto: paper scale, a GPU and CIFAR-10 in {data} found", "plasticity"),
    ],
)
def test_make_scale_auto_picks_paper_only_with_a_gpu_and_the_dataset(tmp_path, gpu, cifar, line, sweep_file):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    if gpu:  # a stand-in nvidia-smi that lists one GPU
        (stubs / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: stub'\n")
        (stubs / "nvidia-smi").chmod(0o755)
    data = tmp_path / "data"
    if cifar:
        (data / "cifar-10-batches-py").mkdir(parents=True)
    # Only the stub directory and the basic tools: a real nvidia-smi on the test machine must not answer.
    path = f"{stubs}:/usr/bin:/bin"
    done = subprocess.run(
        ["make", "-n", "sweep-plasticity", "STAMP=", f"DATA_DIR={data}"],
        cwd=REPO, env={"PATH": path}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == line.format(data=data) + "; choose with SCALE=paper or SCALE=cpu"
    assert lines[1] == f".venv/bin/harness sweep run sweeps/{sweep_file}.yaml \\"


# ---------------------------------------------------------------------------------------------------------
# --config FILE and --from RUN_DIR


def _dry_run(harness_cli, *argv: str) -> tuple[str, str]:
    """(the resolved config's YAML, the run directory) that `harness run ... --dry-run` prints."""
    result = harness_cli.invoke("run", *argv, "--dry-run")
    assert result.exit_code == 0, result.stderr
    yaml_text, run_dir = result.stdout.rsplit("\n", 2)[0], result.stdout.splitlines()[-1]
    return yaml_text + "\n", run_dir


def test_config_and_from_give_the_run_id_of_the_flags_they_encode(harness_cli, tmp_path: Path):
    flags = ["granet", *harness_cli.mnist1d(), "--sparsity", "0.8", "--seed", "3", "--set", "optim.lr=0.05"]
    written, run_dir = _dry_run(harness_cli, *flags)
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(written)
    finished = tmp_path / "finished-run"
    finished.mkdir()
    (finished / "config.yaml").write_text(written)

    assert _dry_run(harness_cli, "--config", str(config_file))[1] == run_dir
    assert _dry_run(harness_cli, "--from", str(finished))[1] == run_dir
    # Flags and --set sit on top of the file: varying a finished run is the same as the flags for it.
    varied = _dry_run(harness_cli, *flags, "--seed", "4", "--set", "optim.momentum=0.8")[1]
    assert (
        _dry_run(harness_cli, "--from", str(finished), "--seed", "4", "--set", "optim.momentum=0.8")[1]
        == varied
    )
    assert varied != run_dir
    # The method given on the command line wins over the file's.
    assert (
        _dry_run(harness_cli, "rigl", "--from", str(finished))[1]
        .split("/")[-1]
        .startswith("rigl-resnet20-mnist1d-s3-")
    )


def test_a_partial_config_file_sits_between_the_recipe_and_the_flags(harness_cli, tmp_path: Path):
    partial = tmp_path / "partial.yaml"
    partial.write_text(
        "data: {dataset: mnist1d, num_samples: 400, val_size: 50}\noptim: {epochs: 3, lr: 0.05}\n"
    )
    from_file = _dry_run(
        harness_cli,
        "granet",
        "--config",
        str(partial),
        "--runs-dir",
        str(harness_cli.runs_dir),
        "--seed",
        "2",
    )[1]
    from_flags = _dry_run(
        harness_cli, "granet", "--dataset", "mnist1d", "--set", "data.num_samples=400", "--set", "data.val_size=50",
        "--epochs", "3", "--lr", "0.05", "--runs-dir", str(harness_cli.runs_dir), "--seed", "2",
    )[1]  # fmt: skip
    assert from_file == from_flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "a.yaml", "--from", "b"], "--config and --from: give one of them (--from RUN_DIR reads RUN_DIR/config.yaml)"),
        (["--from", "{tmp}/nowhere"], "--from: {tmp}/nowhere/config.yaml is not a file; give a config YAML (a run's config.yaml)"),
        (["--config", "{tmp}/list.yaml"], "--config: {tmp}/list.yaml: holds a YAML list, expected a mapping"),
        (["--config", "{tmp}/probe.yaml"], "plasticity: the config file is a probe's (it has a plasticity section); `harness run` trains one model, `harness plasticity` runs probes"),
        (["--config", "{tmp}/typo.yaml"], "optim.learning_rate: unknown field (did you mean optim.lr?)"),
    ],
)  # fmt: skip
def test_bad_config_files_are_one_line_and_create_nothing(harness_cli, tmp_path: Path, argv, message):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "probe.yaml").write_text("sparsity: {method: dense}\nplasticity: {probe_epoch: 1}\n")
    (tmp_path / "typo.yaml").write_text("data: {dataset: mnist1d}\noptim: {learning_rate: 0.05}\n")
    result = harness_cli.invoke("run", "granet", *[arg.format(tmp=tmp_path) for arg in argv])
    assert (result.exit_code, result.stderr) == (2, f"error: {message.format(tmp=tmp_path)}\n")
    assert not harness_cli.runs_dir.exists()


# ---------------------------------------------------------------------------------------------------------
# The long-run warning


def test_a_long_cpu_run_is_warned_in_one_line_and_computes_the_same(
    harness_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    import logging

    from harness.engine import estimate
    from harness.store import rundir

    caplog.set_level(logging.WARNING, logger="harness")
    argv = ["granet", *harness_cli.mnist1d(epochs=1, runs_dir=tmp_path / "quiet")]
    assert harness_cli.invoke("run", *argv).exit_code == 0
    assert [r.getMessage() for r in caplog.records if "would take" in r.getMessage()] == []

    # Any run counts as long once the thresholds are zero: the step is measured and the line written.
    monkeypatch.setattr(estimate, "MEASURE_ABOVE_FLOPS", 0.0)
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)
    warned = ["granet", *harness_cli.mnist1d(epochs=1, runs_dir=tmp_path / "warned")]
    result = harness_cli.invoke("run", *warned)
    assert result.exit_code == 0, result.stderr
    (line,) = [r.getMessage() for r in caplog.records if "would take" in r.getMessage()]
    assert line.startswith("this run would take about ")
    assert " h on this CPU: " in line and " training FLOPs (9 steps of 32) at " in line
    assert line.endswith(
        " FLOP/s measured on one step; the CPU recipe takes minutes: harness run granet --arch resnet20 --dataset mnist1d"
    )
    # The measurement runs on a copy with zero inputs: the run's results are those of the quiet run.
    (quiet_dir,) = [path for path in (tmp_path / "quiet" / "default").iterdir() if rundir.is_run_dir(path)]
    (warned_dir,) = [path for path in (tmp_path / "warned" / "default").iterdir() if rundir.is_run_dir(path)]
    quiet, loud = rundir.read_summary(quiet_dir), rundir.read_summary(warned_dir)
    assert {k: v for k, v in loud.items() if "time" not in k and "second" not in k} == {
        k: v for k, v in quiet.items() if "time" not in k and "second" not in k
    }
