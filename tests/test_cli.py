"""The `harness` command's contract: one-line user errors with exit code 2 and nothing created, --dry-run,
re-running a completed run, and a real offline W&B mirror of a CLI run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HarnessCli

from harness import config as configuration
from harness.engine import loop as train
from harness.store import wandb_offline
from harness.store.rundir import read_metrics, snapshot_name

try:
    import wandb
except ImportError:  # the W&B test skips; everything else runs without it
    wandb = None


def assert_user_error(result, message: str) -> None:
    """Exit code 2 and exactly one line on stderr: `error: <message>`."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr == f"error: {message}\n"
    assert result.stdout == ""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# User errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sparsity", "1.0"], "sparsity.sparsity: Input should be less than 1 (got 1.0)"),
        (["--sparsity", "-0.1"], "sparsity.sparsity: Input should be greater than or equal to 0 (got -0.1)"),
        (
            ["--sparsity", "0.5", "--init-sparsity", "0.8"],
            "sparsity: init_sparsity (0.8) must not exceed the final sparsity (0.5)",
        ),
        (
            ["--arch", "resnet99"],
            "model.arch: unknown architecture 'resnet99' (did you mean 'resnet56'?); valid: resnet20, "
            "resnet32, resnet56, vgg19, resnet50, or a plug-in as MODULE:NAME",
        ),  # fmt: skip
        (
            ["--dataset", "mnist2d"],
            "data.dataset: unknown dataset 'mnist2d' (did you mean 'mnist1d'?); valid: cifar10, cifar100, imagenet, "
            "mnist1d, synthetic, or a plug-in as MODULE:NAME",
        ),  # fmt: skip
        (["--set", "optim.lr"], "--set 'optim.lr': expected section.key=value, e.g. optim.lr=0.05"),
        (["--set", "lr=0.1"], "--set 'lr=0.1': expected section.key=value, e.g. optim.lr=0.05"),
        (
            ["--set", "optim.lr=[1"],
            "--set 'optim.lr=[1': value is not valid YAML (expected ',' or ']', but got '<stream end>')",
        ),  # fmt: skip
        (["--set", "optim.learning_rate=0.1"], "optim.learning_rate: unknown field (did you mean optim.lr?)"),
        (["--set", "optimizer.lr=0.1"], "optimizer: unknown field (did you mean optim?)"),
        (["--set", "data.datadir=x"], "data.datadir: unknown field (did you mean data.data_dir?)"),
        (["--set", "optim.zzz=1"], "optim.zzz: unknown field"),
        (
            ["--set", "optim.lr", "0.05"],
            "--set optim.lr 0.05: a setting is one argument, section.key=value; write --set optim.lr=0.05",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_exit_code_2_and_creates_nothing(
    harness_cli: HarnessCli, argv: list[str], message: str
) -> None:
    result = harness_cli.invoke("run", "granet", *harness_cli.mnist1d(), *argv)
    assert_user_error(result, message)
    assert not harness_cli.runs_dir.exists()


def test_unknown_method_is_a_user_error(harness_cli: HarnessCli) -> None:
    result = harness_cli.invoke("run", "lottery", *harness_cli.mnist1d())
    valid = "dense, static, gmp, gmp-layerwise, granet, rigl, set, snip, grasp, synflow, mest, acdc"
    assert_user_error(
        result, f"sparsity.method: unknown method 'lottery'; valid: {valid}, or a plug-in as MODULE:NAME"
    )
    assert not harness_cli.runs_dir.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "method: missing; give it as the first argument or with --method (e.g. granet)"),
        (["granet", "--method", "gmp"], "method: given twice with different values ('granet' and 'gmp')"),
        (
            ["granet", "--device", "cuda"],
            "run.device: 'cuda' was requested but no GPU is available; use 'cpu' or 'auto'",
        ),
        (["granet", "--epochs", "0"], "optim.epochs: Input should be greater than or equal to 1 (got 0)"),
        (
            ["granet", "--nnodes", "2"],
            "--rdzv-endpoint: required with --nnodes > 1 (host:port of the rendezvous)",
        ),
    ],
)
def test_method_device_and_launcher_mistakes_are_user_errors(
    harness_cli: HarnessCli, argv: list[str], message: str
) -> None:
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_user_error(harness_cli.invoke("run", *argv, *harness_cli.mnist1d(epochs=None)), message)
    assert not harness_cli.runs_dir.exists()


def test_sweep_spellings_resolve_to_the_same_run(harness_cli: HarnessCli) -> None:
    """W&B agents pass `--method granet` and underscored names; they must address the same run directory."""
    dashed = harness_cli.invoke(
        "run",
        "granet",
        *harness_cli.mnist1d(),
        "--init-sparsity",
        "0.5",
        "--update-frequency",
        "7",
        "--dry-run",
    )
    underscored = harness_cli.invoke(
        "run", "--method", "granet", *[arg.replace("--batch-size", "--batch_size") for arg in harness_cli.mnist1d()],
        "--init_sparsity", "0.5", "--update_frequency", "7", "--dry-run",
    )  # fmt: skip
    assert dashed.exit_code == underscored.exit_code == 0
    assert dashed.stdout == underscored.stdout
    assert "init_sparsity: 0.5\n" in dashed.stdout and "update_frequency: 7\n" in dashed.stdout


def test_missing_cifar10_behind_a_dead_proxy_is_a_user_error_in_a_real_process(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    """No CIFAR-10 under --data-dir and no way out (every proxy points at a closed port): the download is tried
    (with a proxy the host need not resolve here), fails at once, and leaves nothing behind: exit 2, one line."""
    closed = f"http://127.0.0.1:{closed_port()}"
    no_network = {name: closed for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    no_network |= {"no_proxy": "", "NO_PROXY": ""}
    empty = tmp_path / "empty-data" / "cifar"
    result = harness_cli.run(
        "run", "dense", "--arch", "resnet20", "--dataset", "cifar10", "--data-dir", str(empty),
        "--runs-dir", str(harness_cli.runs_dir), "--wandb", "disabled", env=no_network,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        f"error: data.data_dir: cifar10 is absent: looked for {empty}/cifar-10-batches-py; copy the extracted "
        f"cifar-10-batches-py/ folder (from cifar-10-python.tar.gz) into {empty}/ or give --data-dir FOLDER "
        "that holds it; a download (--set data.download=true, the default) needs network, and the attempt "
        "failed: "
    )
    assert line.endswith(
        "; without the data (or on a CPU) run the CPU recipe instead: "
        "harness run granet --arch resnet20 --dataset mnist1d"
    )
    assert result.stdout == ""
    assert not harness_cli.runs_dir.exists()
    assert not (tmp_path / "empty-data").exists()  # torchvision created it to download into; removed


def test_missing_cifar10_with_downloads_off_is_a_user_error(harness_cli: HarnessCli, tmp_path: Path) -> None:
    empty = tmp_path / "empty-data"
    result = harness_cli.invoke(
        "run", "dense", "--dataset", "cifar10", "--data-dir", str(empty), "--runs-dir", str(harness_cli.runs_dir),
        "--wandb", "disabled", "--set", "data.download=false",
    )  # fmt: skip
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line == (
        f"error: data.data_dir: cifar10 is absent: looked for {empty}/cifar-10-batches-py; copy the extracted "
        f"cifar-10-batches-py/ folder (from cifar-10-python.tar.gz) into {empty}/ or give --data-dir FOLDER "
        "that holds it; a download (--set data.download=true, the default) needs network; "
        "without the data (or on a CPU) run the CPU recipe instead: harness run dense --arch resnet20 --dataset mnist1d"
    )
    assert not harness_cli.runs_dir.exists()
    assert not empty.exists()


def test_user_errors_in_a_real_process_have_no_traceback(harness_cli: HarnessCli) -> None:
    result = harness_cli.run("run", "granet", *harness_cli.mnist1d(), "--sparsity", "1.5")
    assert result.exit_code == 2
    assert result.stderr == "error: sparsity.sparsity: Input should be less than 1 (got 1.5)\n"
    assert result.stdout == ""
    assert not harness_cli.runs_dir.exists()


def test_a_runs_directory_that_cannot_be_created_is_a_user_error(
    harness_cli: HarnessCli, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    argv = harness_cli.mnist1d(epochs=1, runs_dir=blocker / "runs")
    result = harness_cli.invoke("run", "dense", *argv)
    run_dir = harness_cli.invoke("run", "dense", *argv, "--dry-run").last_line
    assert_user_error(result, f"{run_dir}: cannot create the run directory (Not a directory)")


# ---------------------------------------------------------------------------------------------------------
# --dry-run


def test_dry_run_prints_the_resolved_config_and_the_run_dir_and_creates_nothing(
    harness_cli: HarnessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(harness_cli.cwd)
    result = harness_cli.invoke(
        "run", "granet", "--dataset", "mnist1d", "--epochs", "4", "--lr", "0.05", "--seed", "3",
        "--set", "model.width=0.5", "--set", "optim.lr=0.2", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    *config_lines, run_dir = result.stdout.splitlines()
    printed = yaml.safe_load("\n".join(config_lines))
    expected = configuration.resolve(
        "granet",
        dataset="mnist1d",
        arch="resnet20",
        overrides={"optim": {"epochs": 4, "lr": 0.05}, "run": {"seed": 3}, "model": {"width": 0.5}},
    )
    assert printed == expected.to_dict()
    assert printed["optim"]["lr"] == 0.05  # a named flag wins over --set
    assert run_dir == f"runs/default/{configuration.run_id(expected)}"
    assert run_dir.startswith("runs/default/granet-resnet20-mnist1d-s3-")
    # Nothing on disk: no runs directory, no data directory, nothing at all in the working directory.
    assert list(harness_cli.cwd.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Re-running a completed run


def test_rerunning_a_completed_run_does_nothing_and_prints_the_same_run_dir(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["run", "set", *harness_cli.mnist1d(epochs=1), "--update-frequency", "4"]
    first = harness_cli.invoke(*argv)
    assert first.exit_code == 0, first.stderr
    run_dir = Path(first.last_line)
    before = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()
    }

    # In this process: no session is built at all (no data loading, no model).
    def refuse(*args, **kwargs):
        raise AssertionError("a completed run must not be rebuilt")

    monkeypatch.setattr(train, "build_session", refuse)
    again = harness_cli.invoke(*argv)
    assert again.exit_code == 0
    assert again.stdout == f"{run_dir}\n"

    # As a real process: exit 0, the same directory as the last stdout line, every file untouched.
    process = harness_cli.run(*argv)
    assert process.exit_code == 0, process.stderr
    assert process.stdout == f"{run_dir}\n"
    assert "already completed" in process.stderr
    after = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()
    }
    assert after == before


# ---------------------------------------------------------------------------------------------------------
# W&B


@pytest.mark.skipif(wandb is None, reason="wandb is not installed")
def test_offline_wandb_mirror_of_a_cli_run(harness_cli: HarnessCli, isolated_environment: Path) -> None:
    argv = [*harness_cli.mnist1d(epochs=1), "--update-frequency", "4", "--group", "mirror-test"]
    argv[argv.index("--wandb") + 1] = "offline"
    try:
        result = harness_cli.invoke("run", "granet", *argv)
        # run.finish() returns before W&B's service has flushed the .wandb file; closing the service does.
        wandb.teardown()
    finally:
        wandb.teardown()
    assert result.exit_code == 0, result.stderr
    run_dir = Path(result.last_line)
    run_id = run_dir.name

    # WANDB_DIR is set: W&B's files are there, none in the run directory.
    assert not (run_dir / "wandb").exists()
    wandb_dir = isolated_environment / "wandb_dir"
    (offline_run,) = wandb_dir.glob(f"wandb/offline-run-*-{run_id}")
    (binary,) = offline_run.glob(f"run-{run_id}.wandb")
    # W&B 0.31 keeps config, history and summary only in this binary log, with strings stored verbatim
    # (see tests/test_tracking.py); a one-epoch run is far below its 32 KiB block size.
    content = binary.read_bytes()
    snapshots = sorted((run_dir / "masks").iterdir())
    expected = [
        run_id,
        "mirror-test",  # group
        "train",  # job_type
        "granet", "resnet20", "mnist1d",  # tags
        '"method":"granet"',  # the config's sparsity section, as JSON
        '"num_samples":400',
        "train/loss", "test/acc", "regen/rate", "layers/fc.weight/grown", "mask/checksum",  # metrics keys
        "inference_flops_rel", "train_flops_rel", "best_val_acc",  # summary keys
        f"masks-{run_id}",  # the mask artifact
        *[path.name for path in snapshots],
    ]  # fmt: skip
    for text in expected:
        assert text.encode() in content, text

    # Every mask snapshot is an artifact payload read in place from masks/ by `wandb sync`; nothing is
    # copied into W&B's global staging folder (it would not travel with the run directory).
    staging = isolated_environment / "wandb_data_dir" / "artifacts" / "staging"
    assert not staging.exists() or not any(staging.iterdir())
    payloads = wandb_offline.read_offline_run(offline_run).payloads
    assert sorted(payload.local_path for payload in payloads if payload.artifact) == [
        path.resolve() for path in snapshots
    ]
    steps = [
        record["step"]
        for record in read_metrics(run_dir / "metrics.jsonl")
        if record["kind"] == "mask_update"
    ]
    assert [path.name for path in snapshots] == [snapshot_name(step) for step in steps]
    assert (run_dir / "status").read_text() == "completed\n"
