"""The sparse inference export: exact layouts, the compact file, logits against the masked model, the
replayable per-layer choice, damaged files, and the `harness export` / `harness bench --inference` commands.

No test asserts on a timing: the per-layer choice is exercised with one repetition and checked only for
consistency with the timings it stored.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sparse_helpers import one_thread
from torch import nn

from harness.errors import UserError
from harness.inference import export as exporter
from harness.inference import plan as plan_rules
from harness.inference.runtime import COLUMN_TILE, SPARSE_KINDS, im2col

# The relative tolerance of the issue: max |exported - masked| <= 1e-4 * max |masked logit|.
RELATIVE_TOLERANCE = 1e-4

# Widths keep the 2-D VGG-19 and ResNet-50 cases to a fraction of a second; ResNet-20 runs at full width.
WIDTHS = {"resnet20": 1.0, "resnet32": 0.5, "resnet56": 0.25, "vgg19": 0.25, "resnet50": 0.25}
DATASET_OF_DIMS = {1: "mnist1d", 2: "cifar10"}


@pytest.fixture(autouse=True)
def on_one_thread():
    with one_thread():
        yield


def random_batchnorm_model(arch: str, dims: int, sparsity: float, *, width: float, shift: float):
    """A random ERK model (seed 3) whose BatchNorm scales are drawn from [0.5, 1.5) and shifts from
    N(0, shift**2), so that folding them is not the identity (seed 5)."""
    model, masks, shape = exporter.random_masked_model(
        arch, DATASET_OF_DIMS[dims], sparsity, seed=3, width=width
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(shift * torch.randn(module.bias.shape, generator=generator))
    return model, masks, shape


def perturbed_model(arch: str, dims: int, sparsity: float):
    """A random ERK model with random BatchNorm affine parameters, one fully pruned filter in the second
    weight layer and a fully dense third weight layer."""
    model, masks, shape = random_batchnorm_model(arch, dims, sparsity, width=WIDTHS[arch], shift=0.2)
    names = list(masks)
    pruned, dense = names[1], names[2]
    masks[pruned] = masks[pruned].clone()
    masks[pruned][0] = False
    masks[dense] = torch.ones_like(masks[dense])
    return model, masks, shape, pruned, dense


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("arch", list(WIDTHS))
def test_exported_logits_match_the_masked_model(arch, dims, sparsity, tmp_path):
    model, masks, shape, pruned, dense = perturbed_model(arch, dims, sparsity)
    # Dense layers in channels_last as well as contiguous (2-D only), to cover both layout transitions.
    dense_format = "channels_last" if dims == 2 and sparsity == 0.98 else None
    payload = exporter.export_model(
        model,
        masks,
        arch=arch,
        dataset=DATASET_OF_DIMS[dims],
        input_shape=shape,
        layers="sparse",
        dense_format=dense_format,
    )
    assert [plan["dense_format"] for plan in payload["plans"]] == [dense_format or "contiguous"] * 2
    path = tmp_path / "model.pt"
    exporter.save_export(path, payload)
    loaded, stored = exporter.load_export(path)
    assert set(loaded.kinds(1).values()) == {"sparse"}
    choices = {record["name"]: record for record in stored["plans"][0]["layers"]}
    # The pruned filter is gone (shrinking), or kept as a zero row where a residual add still carries it.
    pruned_name = pruned.removesuffix(".weight")
    shrunk = {record["name"]: record for record in stored["shrinking"]["layers"]}[pruned_name]
    assert choices[pruned_name]["density"] < 1.0 or shrunk["filters_kept"] < shrunk["filters"]
    assert choices[dense.removesuffix(".weight")]["density"] == 1.0
    reference = exporter.masked_reference(model, masks)
    # 2-D: more samples than one im2col block holds at 32x32 (the blocked path); 1-D: both paths too.
    batch = 3 if dims == 2 else COLUMN_TILE // shape[-1] + 2
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7))
    names = [record["name"] for record in stored["plans"][0]["layers"]]
    mixed = {name: ("sparse" if index % 2 else "dense") for index, name in enumerate(names)}
    with torch.inference_mode():
        expected = reference(x)
        for kinds in (None, dict.fromkeys(names, "dense"), mixed):
            network = loaded if kinds is None else exporter.model_from_payload(stored, kinds)
            got = network(x)
            assert got.shape == expected.shape
            assert relative_error(got, expected) <= RELATIVE_TOLERANCE, kinds
    # The fully pruned filter's channel is exactly its folded bias everywhere.
    assert bool((masks[pruned][0] == 0).all())


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [((2, 3, 7, 6), 3, 1, 1), ((2, 3, 8, 8), 3, 2, 1), ((2, 3, 8, 8), 1, 2, 0), ((2, 3, 5, 5), 1, 1, 0)],
)
def test_im2col_from_shifted_views_equals_unfold(shape, kernel, stride, padding):
    x = torch.randn(*shape)
    expected = F.unfold(x, kernel, padding=padding, stride=stride)  # [N, C*k*k, positions]
    columns, out_space = im2col(x.transpose(0, 1).contiguous(), kernel, stride, padding)
    positions = expected.shape[-1]
    assert out_space[0] * out_space[1] == positions
    # im2col's columns run over (sample, position); unfold's are per sample.
    assert torch.equal(columns.view(-1, shape[0], positions).transpose(0, 1), expected)


def test_im2col_1d_matches_conv1d():
    x, weight = torch.randn(3, 4, 11), torch.randn(5, 4, 3)
    columns, out_space = im2col(x.transpose(0, 1).contiguous(), 3, 2, 1)
    out = (weight.reshape(5, -1) @ columns).view(5, 3, *out_space).transpose(0, 1)
    torch.testing.assert_close(out, F.conv1d(x, weight, stride=2, padding=1), rtol=1e-5, atol=1e-5)


def test_weights_are_stored_as_csr_with_the_smallest_index_dtypes():
    weight = torch.arange(1.0, 25.0).view(2, 3, 2, 2)
    mask = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 1] = mask[0, 2, 1, 1] = mask[1, 1, 0, 0] = True
    entry = exporter.encode_weight(weight, mask)
    assert entry["storage"] == "csr"
    assert entry["values"].tolist() == [2.0, 12.0, 17.0]
    assert entry["crow"].tolist() == [0, 2, 3] and entry["crow"].dtype == torch.uint8
    assert entry["col"].tolist() == [1, 11, 4] and entry["col"].dtype == torch.uint8
    decoded = exporter.decode_weight(entry, weight.shape)
    assert torch.equal(decoded.to_dense().view_as(weight), weight * mask)
    assert exporter.index_dtype(255) == torch.uint8 and exporter.index_dtype(256) == torch.int16
    assert exporter.index_dtype(40_000) == torch.int32 and exporter.index_dtype(2**31) == torch.int64
    # A dense mask is cheaper stored dense.
    assert exporter.encode_weight(weight, torch.ones_like(mask))["storage"] == "dense"


def test_file_loads_with_weights_only_and_is_five_times_smaller_at_95_percent(tmp_path):
    model, masks, shape = exporter.random_masked_model("resnet20", "cifar10", 0.95)
    payload = exporter.export_model(
        model, masks, arch="resnet20", dataset="cifar10", input_shape=shape, layers="dense"
    )
    path = tmp_path / "model.pt"
    size = exporter.save_export(path, payload)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == exporter.FORMAT and raw["version"] == 2
    assert raw["plans"][0]["kinds"] == payload["plans"][0]["kinds"]
    storages = {spec["weight"]["storage"] for spec in raw["layers"] if "weight" in spec}
    assert storages == {"csr", "dense"}  # the dense stem and classifier of ERK at 95%
    dense_path = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense_path)
    assert size == path.stat().st_size
    assert dense_path.stat().st_size >= 5 * size


def test_the_per_layer_choice_is_stored_and_replays_from_its_timings():
    model, masks, shape = exporter.random_masked_model("resnet20", "mnist1d", 0.95, width=0.5)
    payload = exporter.export_model(
        model,
        masks,
        arch="resnet20",
        dataset="mnist1d",
        input_shape=shape,
        batch_sizes=[1, 4],
        repetitions=1,
        warmup=0,
    )
    assert [plan["batch_size"] for plan in payload["plans"]] == [1, 4]
    assert exporter.replay(payload["plans"]) == {
        plan["batch_size"]: plan["kinds"] for plan in payload["plans"]
    }
    for plan in payload["plans"]:
        for record in plan["layers"]:
            assert record["kind"] == plan_rules.decide_layer(record)
            assert record["reason"].startswith(record["kind"])
            if record["density"] > exporter.DENSE_ABOVE:
                assert "timings" not in record and plan["kinds"][record["name"]] == "dense"
            else:
                assert len(record["timings"]["dense"]) == 1  # one repetition per kernel
                assert set(record["timings"]) | set(record["skipped"]) == {"dense", *SPARSE_KINDS}
    text = exporter.describe_choices(payload)
    assert all(name in text for name in payload["plans"][0]["kinds"])
    kinds = payload["plans"][-1]["kinds"]
    assert text.splitlines()[-1] == (
        f"  {sum(k != 'dense' for k in kinds.values())} of {len(kinds)} layers sparse at batch 4"
    )


def test_exported_fold_of_the_dense_baseline_matches_the_model():
    model, masks, shape = exporter.random_masked_model("vgg19", "cifar10", 0.9, width=0.25)
    reference = exporter.masked_reference(model, masks)
    folded = exporter.fold_batchnorm(reference, shape)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(2, *shape)
    with torch.inference_mode():
        assert relative_error(folded(x), reference(x)) <= RELATIVE_TOLERANCE


# ---------------------------------------------------------------------------------------------------------
# Damaged files and the commands


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    model, masks, shape = exporter.random_masked_model("resnet20", "mnist1d", 0.9, width=0.25)
    payload = exporter.export_model(
        model, masks, arch="resnet20", dataset="mnist1d", input_shape=shape, layers="sparse"
    )
    path = tmp_path_factory.mktemp("export") / "model.pt"
    exporter.save_export(path, payload)
    return path


def damaged(export_file: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(export_file.read_bytes())
    path = tmp_path / f"{how}.pt"
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":  # one byte inside the largest tensor (torch pads records, so not just anywhere)
        with zipfile.ZipFile(export_file) as archive:
            member = max(archive.infolist(), key=lambda info: info.file_size)
        start = member.header_offset
        name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
        data[start + 30 + name_length + extra_length + member.file_size // 2] ^= 0xFF
    elif how == "garbage":
        data = bytearray(b"not a zip file at all" * 10)
    elif how == "foreign":
        torch.save({"model": torch.zeros(3)}, path)
        return path
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage", "foreign", "missing"])
def test_a_damaged_export_file_is_one_line_and_exit_2(export_file, tmp_path, how, harness_cli):
    path = tmp_path / "missing.pt" if how == "missing" else damaged(export_file, tmp_path, how)
    with pytest.raises(UserError, match=str(path)):
        exporter.load_export(path)
    result = harness_cli.invoke("export", "--show", str(path))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_show_prints_the_stored_choice(export_file, harness_cli):
    result = harness_cli.invoke("export", "--show", str(export_file))
    assert result.exit_code == 0, result.stderr
    assert result.last_line == str(export_file)
    assert "stages.0.0.conv1" in result.stdout
    assert re.search(r"stages\.0\.0\.conv1 +sparse +density", result.stdout)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "resnet20"], "give RUN_DIR, or --arch and --sparsity"),
        (["--arch", "nope", "--sparsity", "0.9"], "--arch: unknown architecture 'nope'"),
        (["--arch", "resnet20", "--sparsity", "1.5"], "--sparsity: must be in [0, 1)"),
        (["--arch", "resnet20", "--sparsity", "0.9", "--layers", "fast"], "--layers: 'fast'"),
        (["--arch", "resnet20", "--sparsity", "0.9", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["--arch", "resnet20", "--sparsity", "0.9", "--dataset", "imagenet"], "--dataset: 'imagenet'"),
    ],
)
def test_bad_export_arguments_are_one_line_and_create_nothing(argv, message, harness_cli, tmp_path):
    out = tmp_path / "out" / "model.pt"
    result = harness_cli.invoke("export", *argv, "--out", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.parent.exists()


def test_export_of_a_trained_run_keeps_every_test_prediction(harness_cli):
    from harness import config as configuration
    from harness.data.datasets import build_datasets

    trained = harness_cli.invoke("run", "gmp", *harness_cli.mnist1d(epochs=2), "--sparsity", "0.9")
    assert trained.exit_code == 0, trained.stderr
    run_dir = Path(trained.last_line)
    result = harness_cli.invoke(
        "export", str(run_dir), "--batch-sizes", "1,8", "--repetitions", "1", "--layers", "auto"
    )
    assert result.exit_code == 0, result.stderr
    assert result.last_line == str(run_dir / exporter.EXPORT_NAME)
    network, payload = exporter.load_export(run_dir / exporter.EXPORT_NAME)
    assert payload["source"]["run_dir"] == str(run_dir) and payload["source"]["method"] == "gmp"
    model, masks, _ = exporter.run_model(run_dir)
    assert 0.05 < sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) < 0.2
    reference = exporter.masked_reference(model, masks)
    test_set = build_datasets(configuration.load_config_file(run_dir / "config.yaml").data).test
    inputs = test_set.inputs
    with torch.inference_mode():
        expected = reference(inputs)
        # Every layer sparse too, whatever the timing chose: both must keep every prediction.
        all_sparse = exporter.model_from_payload(
            payload, dict.fromkeys(payload["plans"][0]["kinds"], "sparse")
        )
        for candidate in (network, all_sparse):
            got = candidate(inputs)
            assert relative_error(got, expected) <= RELATIVE_TOLERANCE
            assert torch.equal(got.argmax(1), expected.argmax(1))
    assert len(inputs) == 80


def test_export_refuses_an_unfinished_run(harness_cli, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / "status").write_text("running")
    result = harness_cli.invoke("export", str(run_dir))
    assert result.exit_code == 2
    assert "run status is 'running'" in result.stderr
    assert not (run_dir / exporter.EXPORT_NAME).exists()


def test_bench_inference_reports_speedup_plans_shrinking_size_and_logit_difference(harness_cli, tmp_path):
    trained = harness_cli.invoke("run", "gmp", *harness_cli.mnist1d(epochs=1), "--sparsity", "0.95")
    assert trained.exit_code == 0, trained.stderr
    run_dir = Path(trained.last_line)
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    result = harness_cli.invoke(
        "bench", "inference", "--arch", "resnet20", "--dataset", "mnist1d", "--sparsity", "0.9",
        "--run", str(run_dir), "--batch-sizes", "1,3", "--repetitions", "2", "--width", "0.25",
        "--json", str(json_path), "--markdown", str(markdown_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(json_path.read_text())
    assert report["environment"]["torch_threads"] == [1]
    rows = report["rows"]
    # One network (the run is ResNet-20 at width 0.25 on MNIST-1D too): one dense baseline for both masks.
    assert [(row["mask"], row["batch_size"]) for row in rows] == [
        ("ERK random", 1), ("gmp (trained)", 1), ("ERK random", 3), ("gmp (trained)", 3),
    ]  # fmt: skip
    assert rows[0]["sparsity"] == pytest.approx(0.9, abs=0.005)
    assert rows[1]["sparsity"] == pytest.approx(0.95, abs=0.005)
    assert rows[1]["run_dir"] == str(run_dir) and rows[0]["run_dir"] == ""
    assert rows[0]["dense_s"] == rows[1]["dense_s"]
    for row in rows:
        assert row["threads"] == 1 and row["repetitions"] == 2
        assert row["speedup"] == pytest.approx(row["dense_s"] / row["exported_s"])
        assert row["slower_than_dense"] == (row["speedup"] < 1 - row["speedup_noise"])
        assert row["size_ratio"] == pytest.approx(row["dense_bytes"] / row["exported_bytes"])
        assert row["exported_bytes"] < row["dense_bytes"]
        assert row["max_logit_diff"] <= RELATIVE_TOLERANCE * row["max_logit_scale"]
        assert 0 <= row["filters_removed"] < row["filters"]
        assert row["macs_nonzero"] <= row["macs_shrunk"] <= row["macs_dense"]
        assert row["weight_layers"] == 22 and row["plan"] in ("kept", "fallback", "dense")
        assert (row["sparse_layers"] > 0) == (row["plan"] == "kept")
    table = markdown_path.read_text()
    assert "1 intra-op thread(s)" in table and "n = 2" in table
    assert table.count("| resnet20 | 1x40 | ERK random | 0.9 |") == 2
    assert table.count("| resnet20 | 1x40 | gmp (trained) | 0.95 |") == 2
    assert table.splitlines()[-1].startswith("Slower than dense beyond noise: ")
    assert "speed-up" in result.stdout


def test_make_bench_inference_trains_the_runs_the_readme_names(tmp_path):
    """The make target's two sweep invocations plan 8 runs into RUNS_DIR/inference-mnist1d: GraNet, RigL and
    GMP on ResNet-20 and GraNet on VGG-19, each at 95% and 98%, on MNIST-1D (its bench globs that group)."""
    from harness.launch import sweep_file, sweep_plan

    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text()
    selections = re.findall(r"^\t\$\(INFERENCE_SWEEP\)((?: --only \S+)+)$", makefile, flags=re.MULTILINE)
    assert len(selections) == 2
    sweep = sweep_file.load_sweep(repo / "sweeps" / "inference-mnist1d.yaml")
    planned = []
    for selection in selections:
        only = selection.split()[1::2]
        planned += sweep_plan.plan_jobs(sweep_file.restrict(sweep, only), runs_dir=tmp_path)
    assert {job.run_dir.parent for job in planned} == {tmp_path / "inference-mnist1d"}
    assert "$(RUNS_DIR)/inference-mnist1d/*/config.yaml" in makefile
    names = sorted(job.run_dir.name.rsplit("-", 1)[0] for job in planned)
    assert names == sorted(
        [f"{method}-resnet20-mnist1d-s0" for method in ("granet", "rigl", "gmp") for _ in range(2)]
        + ["granet-vgg19-mnist1d-s0"] * 2
    )
    sparsities = sorted(float(dict(arg.split("=", 1) for arg in job.argv if "=" in arg)["--final_sparsity"])
                        for job in planned)  # fmt: skip
    assert sparsities == [0.95] * 4 + [0.98] * 4
