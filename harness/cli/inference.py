"""`harness export` and `harness bench step | training | inference | startup`: each command builds its request
and calls one function of `harness.inference.commands` (or `harness.launch.training_bench`,
`harness.launch.startup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import call, setup_logging
from harness.inference.commands import ExportRequest, InferenceBenchRequest
from harness.launch.command_line import Verbose, option

bench_app = typer.Typer(
    no_args_is_help=True,
    help="Timings: the training step, training throughput, exported inference, start-up.",
)

Archs = Annotated[list[str] | None, typer.Argument(help="architectures (default: resnet20 vgg19)")]


@bench_app.command("step")
def bench_step(
    archs: Archs = None,
    batch_size: Annotated[int, option("--batch-size", help="CIFAR-shaped batch")] = 128,
    repetitions: Annotated[int, option("--repetitions", help="timed repetitions, medians reported")] = 5,
) -> None:
    """Time a masked vs a dense training step and one mask update vs one step, side by side."""
    from harness.inference import commands

    setup_logging(False)
    call(lambda: commands.bench_step(list(archs or ("resnet20", "vgg19")), batch_size, repetitions))


@bench_app.command("inference")
def bench_inference(
    archs: Annotated[list[str] | None, typer.Argument(help="architectures (default: vgg19 resnet20)")] = None,
    arch_options: Annotated[list[str] | None, option("--arch", help="architecture (repeatable)")] = None,
    datasets: Annotated[
        list[str] | None, option("--dataset", help="input shape cifar10 | mnist1d (repeatable)")
    ] = None,
    sparsities: Annotated[
        list[float] | None, option("--sparsity", help="sparsity of the random ERK mask (repeatable)")
    ] = None,
    runs: Annotated[
        list[Path] | None,
        option("--run", help="a completed run directory: its trained masks too (repeatable)"),
    ] = None,
    batch_sizes: Annotated[str, option("--batch-sizes", help="comma-separated batch sizes")] = "1,64",
    repetitions: Annotated[int, option("--repetitions", help="timed repetitions, medians reported")] = 20,
    threads: Annotated[int, option("--threads", help="intra-op threads")] = 1,
    json_out: Annotated[Path | None, option("--json", help="write the results as JSON here")] = None,
    markdown_out: Annotated[Path | None, option("--markdown", help="write the markdown table here")] = None,
    width: Annotated[float, option("--width", help="channel width factor of the models")] = 1.0,
) -> None:
    """Time exported sparse models (random ERK masks, and trained runs with --run) against dense PyTorch:
    speed-up, plan per batch size, filters removed, file sizes, logit difference."""
    from harness.inference import commands

    setup_logging(False)
    chosen = [*(archs or []), *(arch_options or [])]
    request = InferenceBenchRequest(
        # Random ERK models of the default architectures unless only trained runs are asked for.
        archs=tuple(chosen or ([] if runs else ["vgg19", "resnet20"])),
        datasets=tuple(datasets or ["cifar10"]),
        sparsities=tuple(sparsities or [0.95]),
        runs=tuple(runs or ()),
        batch_sizes=batch_sizes,
        repetitions=repetitions,
        threads=threads,
        width=width,
        json_out=json_out,
        markdown_out=markdown_out,
    )
    call(lambda: commands.bench_inference(request))


@bench_app.command("training")
def bench_training(
    archs: Annotated[list[str] | None, typer.Argument(help="architectures (default: resnet20 vgg19)")] = None,
    arch_options: Annotated[list[str] | None, option("--arch", help="architecture (repeatable)")] = None,
    samples: Annotated[int, option("--samples", help="CIFAR-format training images written and read")] = 5000,
    batch_size: Annotated[int, option("--batch-size", help="batch of the pipelines and the steps")] = 128,
    repetitions: Annotated[int, option("--repetitions", help="timed repetitions, medians reported")] = 5,
    warmup: Annotated[int, option("--warmup", help="untimed repetitions first")] = 1,
    steps: Annotated[int, option("--steps", help="training steps per timed repetition")] = 2,
    width: Annotated[float, option("--width", help="channel width factor of the models")] = 1.0,
    threads: Annotated[int | None, option("--threads", help="intra-op threads (default: torch's)")] = None,
    workers: Annotated[int, option("--workers", help="DataLoader workers of the torchvision pipeline")] = 2,
    json_out: Annotated[Path | None, option("--json", help="write the results as JSON here")] = None,
    markdown_out: Annotated[Path | None, option("--markdown", help="write the Markdown report here")] = None,
) -> None:
    """Time the torchvision vs the device-resident input pipeline, and an eager vs channels_last vs compiled
    training step, side by side on this machine's device."""
    from harness.launch.training_bench import TrainingBenchRequest, arch_list, bench_training

    setup_logging(False)
    request = TrainingBenchRequest(
        archs=arch_list(archs, arch_options),
        samples=samples,
        batch_size=batch_size,
        repetitions=repetitions,
        warmup=warmup,
        steps=steps,
        width=width,
        threads=threads,
        num_workers=workers,
        json_out=json_out,
        markdown_out=markdown_out,
    )
    call(lambda: bench_training(request))


@bench_app.command("startup")
def bench_startup(
    repetitions: Annotated[int, option("--repetitions", help="runs of each command, medians reported")] = 5,
    json_out: Annotated[Path | None, option("--json", help="write the results as JSON here")] = None,
) -> None:
    """Time `harness --help`, `harness run --help` and a usage error against `python -c "import torch"`."""
    from harness.launch import startup

    call(lambda: startup.bench_startup(repetitions, json_out))


def export(
    run_dir: Annotated[Path | None, typer.Argument(help="a completed run directory")] = None,
    out: Annotated[
        Path | None,
        option("--out", help="the export file (default RUN_DIR/export.pt, or ARCH-DATASET-sS.export.pt)"),
    ] = None,
    arch: Annotated[
        str | None, option("--arch", help="without RUN_DIR: architecture of a random ERK model")
    ] = None,
    sparsity: Annotated[
        float | None, option("--sparsity", help="without RUN_DIR: sparsity of the random ERK mask")
    ] = None,
    dataset: Annotated[
        str, option("--dataset", help="without RUN_DIR: input shape cifar10 | cifar100 | mnist1d | synthetic")
    ] = "cifar10",
    width: Annotated[float, option("--width", help="without RUN_DIR: channel width factor")] = 1.0,
    seed: Annotated[int, option("--seed", help="without RUN_DIR: seed of the weights and the mask")] = 0,
    batch_sizes: Annotated[
        str, option("--batch-sizes", help="batch sizes to plan for (one plan each; a call runs the nearest)")
    ] = "1,64",
    layers: Annotated[str, option("--layers", help="auto (timed per layer) | dense | sparse")] = "auto",
    repetitions: Annotated[
        int, option("--repetitions", help="timed repetitions per kernel, layer and batch size")
    ] = 7,
    threads: Annotated[int, option("--threads", help="intra-op threads while timing")] = 1,
    show: Annotated[
        Path | None,
        option("--show", help="instead: load an export file, run it once, print its shrinking and plans"),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Export a run (or a random ERK model) to a compressed CPU inference file; prints the per-layer choice
    and the file's path last."""
    from harness.inference import commands

    setup_logging(verbose)
    if show is not None:
        call(lambda: commands.show(show))
    request = ExportRequest(
        run_dir, out, arch, sparsity, dataset, width, seed, batch_sizes, layers, repetitions, threads
    )
    call(lambda: commands.export(request))
