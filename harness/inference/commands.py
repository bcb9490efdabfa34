"""`harness export`, `harness bench step` and `harness bench inference` as library calls: a typed request
in, the command's output written to `out`, an exit code back.

Checks of the request come first and raise UserError (one line, exit 2 in the CLI) before anything is
built or written. The modules doing the work (`export`, `bench`) import torch: only inside these functions,
so that the CLI's table imports none of it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from harness.errors import UserError
from harness.inference.checks import LAYER_CHOICES, completed_run_config, default_out
from harness.registry.models import MODELS


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes: {text!r} is not a comma-separated list of positive integers")
    return sizes


def check_arch(arch: str) -> None:
    if arch not in MODELS.builtins:  # export translates the built-in networks' structures only
        raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(MODELS.builtins)}")


def check_at_least(field: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise UserError(f"{field}: must be >= {minimum}, got {value}")


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:  # NaN fails this too
        raise UserError(f"--sparsity: must be in [0, 1), got {sparsity}")


def check_model_options(arch: str, width: float, seed: int, dataset: str = "cifar10") -> None:
    """--width, --seed and --dataset by the rules `harness run` applies (ModelConfig's width, RunConfig's
    seed range, DataConfig's dataset): finite, a width that leaves every layer a channel, a seed in
    [0, 2**32 - 1], a known dataset."""
    from pydantic import ValidationError

    from harness.config import DataConfig, ModelConfig, RunConfig, describe_validation_error

    for field, build in (
        ("--width", lambda: ModelConfig(arch=arch, width=width)),
        ("--seed", lambda: RunConfig(seed=seed)),
        ("--dataset", lambda: DataConfig(dataset=dataset)),
    ):
        try:
            build()
        except ValidationError as error:
            # describe_validation_error names the config field (`width: ...`); name the option instead.
            raise UserError(f"{field}: {describe_validation_error(error).split(': ', 1)[1]}") from None


def check_output(path: Path, field: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a directory, a path below a file,
    or one whose nearest existing folder is not writable (missing folders are created on write)."""
    if path.is_dir():
        raise UserError(f"{field}: {path} is a directory; give a file path")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{field}: {path} lies below {ancestor}, which is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{field}: {path}: the directory {ancestor} is not writable")


@dataclass(frozen=True)
class ExportRequest:
    """A run directory, or --arch with --sparsity for a random ERK model, to one export file."""

    run_dir: Path | None = None
    out: Path | None = None
    arch: str | None = None
    sparsity: float | None = None
    dataset: str = "cifar10"
    width: float = 1.0
    seed: int = 0
    batch_sizes: str = "1,64"
    layers: str = "auto"
    repetitions: int = 7
    threads: int = 1


def show(path: Path, out: TextIO | None = None) -> int:
    """Load an export file, run it once, print its per-layer choices and its path."""
    from harness.inference import export as exporter

    out = sys.stdout if out is None else out
    payload = exporter.check_export(path)
    out.write(f"{exporter.describe_choices(payload)}\n{path}\n")
    return 0


def export(request: ExportRequest, out: TextIO | None = None) -> int:
    """Write the export file; prints the per-layer choice, the size, and the file's path last."""
    out = sys.stdout if out is None else out
    sizes = parse_batch_sizes(request.batch_sizes)
    if request.layers not in LAYER_CHOICES:
        raise UserError(f"--layers: {request.layers!r} is not one of {', '.join(LAYER_CHOICES)}")
    from_run = request.run_dir is not None
    if from_run and (request.arch is not None or request.sparsity is not None):
        raise UserError("export: give RUN_DIR or --arch with --sparsity, not both")
    if not from_run and (request.arch is None or request.sparsity is None):
        raise UserError("export: give RUN_DIR, or --arch and --sparsity for a random ERK model")
    check_at_least("--repetitions", request.repetitions, 1)
    check_at_least("--threads", request.threads, 1)
    if not from_run:
        check_arch(request.arch or "")
        check_sparsity(request.sparsity or 0.0)
        check_model_options(request.arch or "", request.width, request.seed, request.dataset)
    target = request.out or default_out(
        request.run_dir, request.arch or "", request.dataset, request.sparsity
    )
    check_output(target, "--out")
    if request.run_dir is not None:
        completed_run_config(request.run_dir)  # a run that cannot be exported is refused before torch loads
    # Every usage check is above this line: an error is the only line on stderr (importing torch can print).
    from harness.inference import export as exporter

    if request.run_dir is not None:
        model, masks, facts = exporter.run_model(request.run_dir)
        arch_name, dataset_name, input_shape = facts["arch"], facts["dataset"], facts["input_shape"]
        source = {key: value for key, value in facts.items() if key != "input_shape"}
    else:
        assert request.arch is not None and request.sparsity is not None
        model, masks, input_shape = exporter.random_masked_model(
            request.arch, request.dataset, request.sparsity, seed=request.seed, width=request.width
        )
        arch_name, dataset_name = request.arch, request.dataset
        source = {
            "random_erk": True,
            "sparsity": request.sparsity,
            "seed": request.seed,
            "width": request.width,
        }
    payload = exporter.export_model(
        model,
        masks,
        arch=arch_name,
        dataset=dataset_name,
        input_shape=input_shape,
        batch_sizes=sizes,
        layers=request.layers,
        repetitions=request.repetitions,
        threads=request.threads,
        source=source,
    )
    size = exporter.save_export(target, payload)
    out.write(f"{exporter.describe_choices(payload)}\n{size} bytes\n{target}\n")
    return 0


def bench_step(archs: list[str], batch_size: int, repetitions: int, out: TextIO | None = None) -> int:
    """A masked vs a dense training step and one mask update vs one step, per architecture."""
    check_at_least("--repetitions", repetitions, 1)
    check_at_least("--batch-size", batch_size, 1)
    from harness.engine.bench import format_rows, run_benchmarks

    out = sys.stdout if out is None else out
    rows = run_benchmarks(tuple(archs), batch_size=batch_size, repetitions=repetitions)
    out.write(format_rows(rows) + "\n")
    return 0


@dataclass(frozen=True)
class InferenceBenchRequest:
    """Exported sparse models against dense PyTorch, every arch x dataset x sparsity x batch size."""

    archs: tuple[str, ...] = ("vgg19", "resnet20")
    datasets: tuple[str, ...] = ("cifar10",)
    sparsities: tuple[float, ...] = (0.95,)
    runs: tuple[Path, ...] = ()  # completed run directories, benchmarked with their trained masks
    batch_sizes: str = "1,64"
    repetitions: int = 20
    threads: int = 1
    width: float = 1.0
    json_out: Path | None = None
    markdown_out: Path | None = None


def bench_inference(request: InferenceBenchRequest, out: TextIO | None = None) -> int:
    """The markdown table on `out`, and the JSON and markdown files where asked."""
    out = sys.stdout if out is None else out
    batch_sizes = parse_batch_sizes(request.batch_sizes)
    for arch in request.archs:
        check_arch(arch)
        check_model_options(arch, request.width, 0)
    for sparsity in request.sparsities:
        check_sparsity(sparsity)
    check_at_least("--repetitions", request.repetitions, 1)
    check_at_least("--threads", request.threads, 1)
    for field, path in (("--json", request.json_out), ("--markdown", request.markdown_out)):
        if path is not None:
            check_output(path, field)
    for run_dir in request.runs:
        completed_run_config(run_dir)  # a run that cannot be exported is refused before torch loads

    from harness.inference.bench import format_inference_markdown, inference_report, run_inference_benchmarks
    from harness.store.rundir import atomic_write_text

    rows = run_inference_benchmarks(
        list(request.archs),
        list(request.datasets),
        list(request.sparsities),
        runs=list(request.runs),
        batch_sizes=batch_sizes,
        repetitions=request.repetitions,
        threads=request.threads,
        width=request.width,
    )
    table = format_inference_markdown(rows)
    out.write(table + "\n")
    if request.json_out is not None:
        atomic_write_text(request.json_out, json.dumps(inference_report(rows), indent=2) + "\n")
        out.write(f"wrote {request.json_out}\n")
    if request.markdown_out is not None:
        atomic_write_text(request.markdown_out, table + "\n")
        out.write(f"wrote {request.markdown_out}\n")
    return 0
