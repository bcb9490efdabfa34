"""`harness bench training`: its report has every row and field, its ratios are those of the medians it
reports, repetitions are interleaved, and bad options are one-line errors raised before torch is imported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from sparse_helpers import one_thread
from test_cli_startup import run_entry_point
from typer.testing import CliRunner

from harness.cli.commands import app

STEP_FIELDS = {
    "arch",
    "variant",
    "memory_format",
    "compile",
    "batch_size",
    "median_step_s",
    "samples_per_s",
    "first_step_s",
    "step_times_s",
    "speedup_vs_eager",
}
PIPELINE_FIELDS = {
    "pipeline",
    "resolved",
    "samples",
    "batches",
    "median_s",
    "samples_per_s",
    "times_s",
    "speedup_vs_torchvision",
}


@pytest.mark.slow  # compiles a (tiny) VGG-19: ~45 s with an empty inductor cache, ~10 s with a warm one
def test_the_report_has_every_row_and_its_ratios_are_those_of_its_medians(tmp_path: Path) -> None:
    json_out, markdown_out = tmp_path / "out" / "training.json", tmp_path / "training.md"
    options = [
        "--arch", "vgg19", "--width", "0.0625", "--samples", "64", "--batch-size", "16", "--repetitions", "3",
        "--warmup", "0", "--steps", "1", "--threads", "1", "--workers", "1",
        "--json", str(json_out), "--markdown", str(markdown_out),
    ]  # fmt: skip
    with one_thread():  # --threads 1 sets torch's count for this process: restored afterwards
        result = CliRunner().invoke(app, ["bench", "training", *options])
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    assert set(report) == {"environment", "settings", "pipelines", "steps"}
    assert {"cpu", "cpu_count", "torch", "torchvision", "python", "device", "torch_threads"} <= set(
        report["environment"]
    )
    assert report["environment"]["torch_threads"] == report["settings"]["threads"] == 1
    assert report["settings"]["device"] == "cpu"  # the machine the tests run on

    pipelines = report["pipelines"]
    assert [row["pipeline"] for row in pipelines] == ["torchvision", "device"]
    assert [row["resolved"] for row in pipelines] == ["torchvision", "device"]
    for row in pipelines:
        assert set(row) == PIPELINE_FIELDS
        assert (row["samples"], row["batches"], len(row["times_s"])) == (64, 4, 3)
        assert row["median_s"] == statistics.median(row["times_s"])
        assert row["samples_per_s"] == pytest.approx(64 / row["median_s"])
        assert row["speedup_vs_torchvision"] == pytest.approx(pipelines[0]["median_s"] / row["median_s"])

    steps = report["steps"]
    assert [(row["arch"], row["variant"]) for row in steps] == [
        ("vgg19", "eager"),
        ("vgg19", "channels_last"),
        ("vgg19", "compiled"),
    ]
    # On a CPU the compiled step keeps the default layout, which is contiguous there.
    assert [(row["memory_format"], row["compile"]) for row in steps] == [
        ("contiguous", False),
        ("channels_last", False),
        ("contiguous", True),
    ]
    for row in steps:
        assert set(row) == STEP_FIELDS
        assert row["batch_size"] == 16 and len(row["step_times_s"]) == 3
        assert row["median_step_s"] == statistics.median(row["step_times_s"])
        assert row["samples_per_s"] == pytest.approx(16 / row["median_step_s"])
        assert row["speedup_vs_eager"] == pytest.approx(steps[0]["median_step_s"] / row["median_step_s"])
        assert row["first_step_s"] > 0

    markdown = markdown_out.read_text()
    assert markdown == result.stdout  # the file is what the command printed
    assert f"| device | {pipelines[1]['samples_per_s']:,.0f} |" in markdown
    assert f"| vgg19 | compiled | contiguous | {steps[2]['median_step_s']:.4f} |" in markdown


def test_repetitions_are_interleaved_in_rotating_order_and_warmups_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.engine import training_bench

    clock = iter(range(100))
    monkeypatch.setattr(training_bench.time, "perf_counter", lambda: float(next(clock)))
    calls: list[tuple[str, int]] = []
    times = training_bench.interleaved(
        {name: (lambda repetition, name=name: calls.append((name, repetition))) for name in ("a", "b", "c")},
        repetitions=3,
        warmup=1,
    )
    assert calls == [
        ("a", 0), ("b", 0), ("c", 0),
        ("b", 1), ("c", 1), ("a", 1),
        ("c", 2), ("a", 2), ("b", 2),
        ("a", 3), ("b", 3), ("c", 3),
    ]  # fmt: skip
    assert times == {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0], "c": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--repetitions", "0"], "--repetitions: must be >= 1, got 0"),
        (["--steps", "0"], "--steps: must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
        (["--threads", "0"], "--threads: must be >= 1, got 0"),
        (["--workers", "-1"], "--workers: must be >= 0, got -1"),
        (
            ["--samples", "100", "--batch-size", "128"],
            "--samples: 100 training images are fewer than one batch (--batch-size 128); give at least 128",
        ),
        (["--arch", "resnet18"], "--arch: unknown architecture 'resnet18'; valid: "),
        (["--width", "0.001"], "--width: "),
    ],
)
def test_bad_options_are_one_line_errors_before_torch(
    tmp_path: Path, options: list[str], message: str
) -> None:
    code, heavy, stderr = run_entry_point("bench", "training", *options, cwd=tmp_path)
    assert code == 2
    assert "torch" not in heavy
    assert "\n" not in stderr and stderr.startswith(f"error: {message}")


def test_an_output_that_cannot_be_written_is_refused_before_anything_runs(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, heavy, stderr = run_entry_point("bench", "training", "--json", str(folder), cwd=tmp_path)
    assert (code, stderr) == (2, f"error: --json: {folder} is a directory; give a file path")
    assert "torch" not in heavy
