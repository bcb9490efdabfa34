"""`harness bench training` as a library call: a typed request in, the Markdown report on `out`, the JSON and
Markdown files where asked, an exit code back.

Every option is checked here, before torch is imported (a usage error is one line and costs no torch
import); the measurement itself is `harness.engine.training_bench` (what it times and how is said there).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness.errors import UserError
from harness.inference.commands import check_arch, check_at_least, check_model_options, check_output


@dataclass(frozen=True)
class TrainingBenchRequest:
    archs: tuple[str, ...] = ("resnet20", "vgg19")
    samples: int = 5000  # training images written, and read by each pipeline pass
    batch_size: int = 128
    repetitions: int = 5
    warmup: int = 1
    steps: int = 2  # training steps per timed repetition
    width: float = 1.0
    threads: int | None = None  # None: torch's default (one per core)
    num_workers: int = 2  # the torchvision pipeline's DataLoader workers (the harness's default)
    json_out: Path | None = None
    markdown_out: Path | None = None


def bench_training(request: TrainingBenchRequest, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if not request.archs:
        raise UserError("--arch: give at least one architecture")
    for arch in request.archs:
        check_arch(arch)
        check_model_options(arch, request.width, 0)
    check_at_least("--repetitions", request.repetitions, 1)
    check_at_least("--warmup", request.warmup, 0)
    check_at_least("--steps", request.steps, 1)
    check_at_least("--batch-size", request.batch_size, 1)
    check_at_least("--workers", request.num_workers, 0)
    if request.threads is not None:
        check_at_least("--threads", request.threads, 1)
    if request.samples < request.batch_size:
        raise UserError(
            f"--samples: {request.samples} training images are fewer than one batch "
            f"(--batch-size {request.batch_size}); give at least {request.batch_size}"
        )
    for field, path in (("--json", request.json_out), ("--markdown", request.markdown_out)):
        if path is not None:
            check_output(path, field)
    # Every usage check is above this line.
    from harness.engine.training_bench import measure
    from harness.store.rundir import atomic_write_text

    report = measure(request)
    markdown = format_markdown(report)
    out.write(markdown)
    if request.json_out is not None:
        atomic_write_text(request.json_out, json.dumps(report, indent=2) + "\n")
    if request.markdown_out is not None:
        atomic_write_text(request.markdown_out, markdown)
    return 0


def format_markdown(report: dict[str, Any]) -> str:
    env, settings = report["environment"], report["settings"]
    device = env.get("gpu") or env["cpu"]
    lines = [
        "# Training: input pipelines and training steps (`harness bench training`)",
        "",
        f"{settings['device']}: {device}; {env['cpu_count']} CPU cores, torch {env['torch']}, torchvision "
        f"{env['torchvision']}, Python {env['python']}, {settings['threads']} intra-op threads; load average "
        f"{_number(env['load_average_1min'])} at the start, {_number(env['load_average_1min_end'])} at the end. "
        f"Medians of n = {settings['repetitions']} interleaved repetitions after {settings['warmup']} untimed.",
        "",
        f"Input pipelines alone: one pass over {settings['samples']:,} CIFAR-format training images "
        f"(written by the benchmark), batch {settings['batch_size']}, batches delivered on the {settings['device']}; "
        f"torchvision with {settings['num_workers']} DataLoader workers.",
        "",
        "| pipeline | samples/s | s per pass | vs torchvision |",
        "|---|---|---|---|",
    ]
    for row in report["pipelines"]:
        lines.append(
            f"| {row['pipeline']} | {row['samples_per_s']:,.0f} | {row['median_s']:.3f} | "
            f"{row['speedup_vs_torchvision']:.2f}x |"
        )
    lines += [
        "",
        f"Training step (`train_step`: forward, backward, finiteness guard, optimizer, masking) of "
        f"{settings['method']} at sparsity {settings['sparsity']:g} (s_i = {settings['init_sparsity']:g}), "
        f"batch {settings['batch_size']}, width {settings['width']:g}, {settings['steps_per_repetition']} "
        f"steps per repetition; the first step (compilation included) timed apart.",
        "",
        "| arch | variant | layout | s per step | samples/s | vs eager | first step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["steps"]:
        lines.append(
            f"| {row['arch']} | {row['variant']} | {row['memory_format']} | {row['median_step_s']:.4f} | "
            f"{row['samples_per_s']:,.0f} | {row['speedup_vs_eager']:.2f}x | {row['first_step_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def arch_list(positional: Sequence[str] | None, options: Sequence[str] | None) -> tuple[str, ...]:
    """Architectures given as arguments and as --arch, in order; the default pair when none is given."""
    return tuple([*(positional or []), *(options or [])]) or TrainingBenchRequest.archs
