"""Issue 25: `harness export` reads a run through the run-store readers and checks the checkpoint's identity.

Each case damages a copy of a trained run (or writes a crafted export file) itself and asserts the exit
code, the one stderr line naming the file or option, that no export file appears and that the run
directory's bytes are unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from harness import config as configuration
from harness.inference import export as exporter
from tests.conftest import HarnessCli


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist1d_dir: Path) -> dict[int, Path]:
    """Two completed one-epoch runs that differ only in their seed (so in run id and config hash)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "cwd").mkdir()
    cli = HarnessCli(root / "runs", mnist1d_dir, root / "cwd")
    runs = {}
    for seed in (0, 1):
        result = cli.invoke("run", "gmp", *cli.mnist1d(epochs=1), "--sparsity", "0.9", "--seed", str(seed))
        assert result.exit_code == 0, result.stderr
        runs[seed] = Path(result.last_line)
    return runs


@pytest.fixture
def run_copy(trained: dict[int, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / trained[0].name
    shutil.copytree(trained[0], copy)
    return copy


def _refused(harness_cli: HarnessCli, run_dir: Path, expected: str, *options: str) -> None:
    before = _snapshot(run_dir)
    result = harness_cli.invoke("export", str(run_dir), "--repetitions", "1", "--batch-sizes", "1", *options)
    assert result.exit_code == 2, result.stdout
    assert result.stderr == f"error: {expected}\n"
    assert "Traceback" not in result.stdout
    assert not (run_dir / exporter.EXPORT_NAME).exists()
    assert _snapshot(run_dir) == before


def test_another_runs_checkpoint_is_refused(trained, run_copy, harness_cli) -> None:
    checkpoints = run_copy / "checkpoints"
    for name in ("last.pt", "prev.pt"):
        (checkpoints / name).unlink(missing_ok=True)
    shutil.copyfile(trained[1] / "checkpoints" / "last.pt", checkpoints / "last.pt")
    theirs = configuration.load_config_file(trained[1] / "config.yaml")
    ours = configuration.load_config_file(run_copy / "config.yaml")
    _refused(
        harness_cli,
        run_copy,
        f"{checkpoints / 'last.pt'}: checkpoint of run {trained[1].name} (config hash "
        f"{configuration.config_hash(theirs)[:10]}), not of this run {trained[0].name} (config hash "
        f"{configuration.config_hash(ours)[:10]}); refusing to export it: move it out of the run directory",
    )


def test_a_binary_status_is_one_line(run_copy, harness_cli) -> None:
    (run_copy / "status").write_bytes(b"\xff\xfe\x00completed")
    _refused(harness_cli, run_copy, f"{run_copy / 'status'}: not UTF-8 text")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("model: [unclosed\n", "not valid YAML for the safe loader (while parsing a flow sequence)"),
        (
            "model: !!python/object/apply:os.system ['touch pwned']\n",
            "not valid YAML for the safe loader (could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system')",
        ),
        ("- a list\n", "holds a YAML list, expected a mapping"),
    ],
)
def test_a_damaged_or_hostile_config_is_one_line(run_copy, harness_cli, text, reason) -> None:
    (run_copy / "config.yaml").write_text(text)
    _refused(harness_cli, run_copy, f"{run_copy / 'config.yaml'}: {reason}")
    assert not (harness_cli.cwd / "pwned").exists()


def test_an_invalid_config_value_names_the_file_and_field(run_copy, harness_cli) -> None:
    path = run_copy / "config.yaml"
    path.write_text(path.read_text().replace("width: 0.25", "width: .nan"))
    _refused(harness_cli, run_copy, f"{path}: model.width: Input should be a finite number (got nan)")


def test_both_checkpoints_truncated_is_one_line_without_the_training_warning(run_copy, harness_cli) -> None:
    checkpoints = run_copy / "checkpoints"
    shutil.copyfile(checkpoints / "last.pt", checkpoints / "prev.pt")
    for name in ("last.pt", "prev.pt"):
        data = (checkpoints / name).read_bytes()
        (checkpoints / name).write_bytes(data[: len(data) // 2])
    _refused(
        harness_cli,
        run_copy,
        f"{checkpoints}: last.pt and prev.pt are incomplete or corrupt (zip integrity check failed); "
        "nothing to export",
    )


def test_out_below_a_file_is_refused_before_anything(run_copy, harness_cli, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "sub" / "model.pt"
    _refused(
        harness_cli,
        run_copy,
        f"--out: {out} lies below {blocker}, which is a file, not a directory",
        "--out",
        str(out),
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--width", "1e-9", "1e-09 leaves resnet20's narrowest layer (16 channels at width 1) with less than one "
         "channel; use a width >= 0.0625"),
        ("--width", "inf", "Input should be a finite number (got inf)"),
        ("--seed", "-1", "Input should be greater than or equal to 0 (got -1)"),
        ("--seed", "99999999999999999999", "Input should be less than or equal to 4294967295 (got 99999999999999999999)"),
        ("--repetitions", "0", "must be >= 1, got 0"),
        ("--dataset", "nope", "unknown dataset 'nope'; valid: cifar10, cifar100, imagenet, mnist1d, synthetic, or "
         "a plug-in as MODULE:NAME"),
    ],
)  # fmt: skip
def test_random_model_options_follow_harness_runs_rules(
    harness_cli, tmp_path, option, value, message
) -> None:
    out = tmp_path / "out" / "model.pt"
    result = harness_cli.invoke(
        "export", "--arch", "resnet20", "--sparsity", "0.9", option, value, "--out", str(out)
    )
    assert result.exit_code == 2
    assert result.stderr == f"error: {option}: {message}\n"
    assert not out.parent.exists()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> dict:
    model, masks, shape = exporter.random_masked_model("resnet20", "mnist1d", 0.9, width=0.25)
    return exporter.export_model(
        model, masks, arch="resnet20", dataset="mnist1d", input_shape=shape, layers="dense"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_registers", 10**12, "num_registers 1000000000000 is out of range: this program of {n} layers uses 1 to {r}"),
        ("num_registers", -3, "num_registers -3 is out of range: this program of {n} layers uses 1 to {r}"),
        ("output", 10**9, "output 1000000000 is out of range: an integer in [0, {last}]"),
        ("input_shape", [10**6, 10**6], "input_shape [1000000, 1000000] holds over 16777216 values per sample"),
        ("num_classes", 0, "num_classes 0 is out of range: an integer in [1, 16777216]"),
        ("version", 1, "export format version 1; this harness reads 2"),
        ("plans", [], "export file's plans are not a non-empty list of plan records"),
    ],
)  # fmt: skip
def test_show_of_a_crafted_export_is_one_line(
    small_export, harness_cli, tmp_path, field, value, message
) -> None:
    crafted = {**small_export, field: value}
    path = tmp_path / "crafted.pt"
    exporter.save_export(path, crafted)
    before = path.read_bytes()
    layers = len(small_export["layers"])
    result = harness_cli.invoke("export", "--show", str(path))
    assert result.exit_code == 2
    expected = message.format(n=layers, r=layers + 1, last=small_export["num_registers"] - 1)
    assert result.stderr == f"error: {path}: {expected}\n"
    assert path.read_bytes() == before


def test_show_of_a_crafted_layer_register_is_one_line(small_export, harness_cli, tmp_path) -> None:
    layers = [dict(spec) for spec in small_export["layers"]]
    layers[2]["input"] = 10**9
    path = tmp_path / "crafted.pt"
    exporter.save_export(path, {**small_export, "layers": layers})
    result = harness_cli.invoke("export", "--show", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path}: layers[2].input 1000000000 is out of range: an integer in "
        f"[0, {small_export['num_registers'] - 1}]\n"
    )


def test_show_of_a_crafted_block_size_is_one_line(small_export, harness_cli, tmp_path) -> None:
    layers = [dict(spec) for spec in small_export["layers"]]
    layers[1]["bsr_block"] = 0
    path = tmp_path / "crafted.pt"
    exporter.save_export(path, {**small_export, "layers": layers})
    result = harness_cli.invoke("export", "--show", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: layers[1].bsr_block 0 is out of range: an integer in [1, 4096]\n"


def test_show_of_a_crafted_weight_shape_is_one_line(small_export, harness_cli, tmp_path) -> None:
    # Without the bound the loader would rebuild a dense weight of 10**6 x 10**6 values from it.
    layers = [dict(spec) for spec in small_export["layers"]]
    index = next(i for i, spec in enumerate(layers) if spec["op"] in exporter.WEIGHT_LAYERS)
    layers[index]["weight_shape"] = [10**6, 10**6]
    path = tmp_path / "crafted.pt"
    exporter.save_export(path, {**small_export, "layers": layers})
    result = harness_cli.invoke("export", "--show", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path}: layers[{index}].weight_shape [1000000, 1000000] is out of range: 2 to 5 sizes "
        f"holding at most {2**26} values\n"
    )


def test_the_trained_run_still_exports(run_copy, harness_cli) -> None:
    result = harness_cli.invoke("export", str(run_copy), "--repetitions", "1", "--batch-sizes", "1")
    assert result.exit_code == 0, result.stderr
    assert result.last_line == str(run_copy / exporter.EXPORT_NAME)
    assert torch.load(run_copy / exporter.EXPORT_NAME, weights_only=True)["source"]["run_dir"] == str(
        run_copy
    )


# ---------------------------------------------------------------------------------------------------------
# Usage errors of export and bench: checked before torch is imported or any benchmark runs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--arch", "resnet20", "--sparsity", "0.9", "--threads", "0"], "--threads: must be >= 1, got 0"),
        (["export", "--arch", "resnet20", "--sparsity", "0.9", "--layers", "x"],
         "--layers: 'x' is not one of auto, dense, sparse"),
        (["bench", "step", "--repetitions", "0"], "--repetitions: must be >= 1, got 0"),
        (["export", "{dir}"], "{dir}: not a run directory (no config.yaml)"),
        (["bench", "inference", "--markdown", "{dir}"], "--markdown: {dir} is a directory; give a file path"),
        (["bench", "inference", "--json", "{file}/x.json"],
         "--json: {file}/x.json lies below {file}, which is a file, not a directory"),
        (["bench", "inference", "--sparsity", "1.5"], "--sparsity: must be in [0, 1), got 1.5"),
        (["bench", "inference", "--run", "{dir}"], "{dir}: not a run directory (no config.yaml)"),
    ],
)  # fmt: skip
def test_a_usage_error_is_the_first_and_only_stderr_line(harness_cli, tmp_path, argv, message) -> None:
    # A malformed OMP_NUM_THREADS makes libgomp print a line when torch loads: the check must come first.
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    names = {"dir": str(tmp_path / "a-dir"), "file": str(tmp_path / "a-file")}
    before = sorted(path.name for path in tmp_path.iterdir())
    result = harness_cli.run(*(part.format(**names) for part in argv), env={"OMP_NUM_THREADS": "abc"})
    assert result.exit_code == 2
    assert result.stdout == ""  # the benchmark did not run
    assert result.stderr == f"error: {message.format(**names)}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_an_unwritable_output_directory_is_refused_before_the_benchmark(harness_cli, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = harness_cli.invoke("bench", "inference", "--markdown", str(locked / "table.md"))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        result.stderr == f"error: --markdown: {locked / 'table.md'}: the directory {locked} is not writable\n"
    )


def test_a_truncated_last_checkpoint_exports_prev_with_one_warning(run_copy, caplog) -> None:
    checkpoints = run_copy / "checkpoints"
    shutil.copyfile(checkpoints / "last.pt", checkpoints / "prev.pt")
    data = (checkpoints / "last.pt").read_bytes()
    (checkpoints / "last.pt").write_bytes(data[: len(data) // 2])
    _, _, facts = exporter.run_model(run_copy)
    assert facts["checkpoint"] == str(checkpoints / "prev.pt")
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"{checkpoints / 'last.pt'} is incomplete or corrupt; exporting {checkpoints / 'prev.pt'} instead "
        "(the checkpoint before the final one)"
    ]
