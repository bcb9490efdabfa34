"""`harness bench training`: the input pipelines alone and a full training step, side by side in one process.

On whatever device is there (CUDA when available, else the CPU), on CIFAR-format files it writes itself
(random images: `harness.data.cifar_files`, so no download):

- the input pipelines alone: one pass over the training images per repetition, batches delivered on the
  training device (for the host pipeline that includes the copy; on CUDA the clock stops after a
  synchronisation), as samples/s. `torchvision` is the DataLoader with its worker processes and per-image
  PIL transforms (it starts its workers every epoch, as a run does), `device` the resident pipeline
  (uint8 images on the device, batched crop, flip and normalisation). Both are built as a run builds them
  (`build_datasets`, `build_loaders`), each repetition a new epoch;
- a full training step for each architecture: `harness.engine.loop.train_step` (forward and backward under
  the run's autocast, the finiteness guard, optimizer.step, the LR schedule and GraNet's per-step masking)
  on sessions built by `build_session` from the paper's CIFAR-10 recipe at 90% sparsity (s_i = 0.5, ERK),
  in three variants: `eager` (contiguous), `channels_last`, and `compiled` (run.compile with the default
  layout, i.e. contiguous on a CPU and channels_last on CUDA). One batch of the training data is reused, so
  the step alone is timed; no mask-update event falls inside the timed steps (`harness bench step` times
  those).

Repetitions are interleaved (the order rotates every repetition, so drift in machine load hits every
variant alike) after `warmup` untimed ones; each row reports the median and every time, and ratios are
computed from the medians of the same process. The first step of every variant is timed on its own
(`first_step_s`: the compilation, for the compiled one). `harness.launch.training_bench` checks the
options before this module (and torch) is imported.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from harness.config import Config, DataConfig, resolve
from harness.data.cifar_files import accept_unofficial_cifar, write_cifar_files
from harness.data.datasets import build_datasets
from harness.data.loaders import build_loaders
from harness.engine.bench import environment
from harness.engine.distributed import dist_info_from_env
from harness.engine.loop import build_session, train_step
from harness.engine.session import Session

log = logging.getLogger(__name__)

PIPELINES = ("torchvision", "device")
# variant -> the run section's fields that make it
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {"memory_format": "contiguous", "compile": False},
    "channels_last": {"memory_format": "channels_last", "compile": False},
    "compiled": {"memory_format": "auto", "compile": True},
}
SPARSITY = {"sparsity": 0.9, "init_sparsity": 0.5}  # GraNet sparse-to-sparse: masks exist from step 0


class BenchSettings(Protocol):
    """What `measure` reads: `harness.launch.training_bench.TrainingBenchRequest`, checked there before torch
    is imported (a Protocol, so the engine does not import the launch layer above it)."""

    archs: Sequence[str]
    samples: int  # training images written, and read by each pipeline pass
    batch_size: int
    repetitions: int
    warmup: int
    steps: int  # training steps per timed repetition
    width: float
    threads: int | None  # None keeps torch's default intra-op thread count
    num_workers: int  # the torchvision pipeline's DataLoader workers


def measure(request: BenchSettings) -> dict[str, Any]:
    """Every measurement as one JSON-ready dict: `environment`, `settings`, `pipelines` and `steps` rows."""
    archs, samples, batch_size = request.archs, request.samples, request.batch_size
    repetitions, warmup, steps, width = request.repetitions, request.warmup, request.steps, request.width
    threads, num_workers = request.threads, request.num_workers
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {
        "device": device.type,
        "samples": samples,
        "batch_size": batch_size,
        "repetitions": repetitions,
        "warmup": warmup,
        "steps_per_repetition": steps,
        "width": width,
        "threads": threads,
        "num_workers": num_workers,
        "method": "granet",
        **SPARSITY,
    }
    env = {**environment(), **accelerator(device)}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as root, accept_unofficial_cifar():
        log.info("writing %d CIFAR-format training images to %s", samples, root)
        # Test images are loaded with the training ones by a session; a few batches' worth is enough.
        write_cifar_files(root, "cifar10", train=samples, test=batch_size, seed=0)
        data = {"data_dir": root, "val_size": 0, "download": False, "num_workers": num_workers}
        pipelines = pipeline_rows(data, device, batch_size, repetitions, warmup)
        step_rows = [row for arch in archs for row in step_rows_for(arch, data, device, settings)]
    env["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"environment": env, "settings": settings, "pipelines": pipelines, "steps": step_rows}


def accelerator(device: torch.device) -> dict[str, Any]:
    import torchvision

    facts: dict[str, Any] = {"torchvision": torchvision.__version__, "device": device.type}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


# ---------------------------------------------------------------------------------------------------------
# The input pipelines alone


def pipeline_rows(
    data: dict[str, Any], device: torch.device, batch_size: int, repetitions: int, warmup: int
) -> list[dict[str, Any]]:
    loaders = {}
    for pipeline in PIPELINES:
        datasets = build_datasets(DataConfig(dataset="cifar10", pipeline=pipeline, **data))
        loaders[pipeline] = build_loaders(
            datasets,
            global_batch_size=batch_size,
            seed=0,
            num_workers=data["num_workers"],
            pin_memory=device.type == "cuda",
            device=device,
        )

    def one_pass(pipeline: str) -> Callable[[int], None]:
        def run(epoch: int) -> None:  # each repetition a new epoch: a new order, new augmentation draws
            for inputs, targets in loaders[pipeline].train.iterate(epoch):
                inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            synchronize(device)

        return run

    times = interleaved({pipeline: one_pass(pipeline) for pipeline in PIPELINES}, repetitions, warmup)
    rows = []
    for pipeline in PIPELINES:
        train = loaders[pipeline].train
        median = statistics.median(times[pipeline])
        rows.append(
            {
                "pipeline": pipeline,
                "resolved": loaders[pipeline].pipeline,
                "samples": train.num_samples,
                "batches": len(train),
                "median_s": median,
                "samples_per_s": train.num_samples / median,
                "times_s": times[pipeline],
            }
        )
    baseline = rows[0]["median_s"]
    for row in rows:
        row["speedup_vs_torchvision"] = baseline / row["median_s"]
    return rows


# ---------------------------------------------------------------------------------------------------------
# The training step


def step_rows_for(
    arch: str, data: dict[str, Any], device: torch.device, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    log.info("timing a %s training step: %s", arch, ", ".join(VARIANTS))
    steps = settings["steps_per_repetition"]
    timed_steps = (settings["warmup"] + settings["repetitions"]) * steps + 1
    sessions = {
        variant: build_session(
            step_config(arch, data, device, settings, timed_steps, run), dist_info_from_env(device.type)
        )
        for variant, run in VARIANTS.items()
    }
    batches = {variant: first_batch(session) for variant, session in sessions.items()}
    first_step = {}
    for variant, session in sessions.items():  # the first step compiles, the others warm their caches
        stepper = stepping(session, batches[variant], 1)
        start = time.perf_counter()
        stepper(0)
        first_step[variant] = time.perf_counter() - start
    times = interleaved(
        {variant: stepping(session, batches[variant], steps) for variant, session in sessions.items()},
        settings["repetitions"],
        settings["warmup"],
    )
    rows = []
    for variant, session in sessions.items():
        per_step = [seconds / steps for seconds in times[variant]]
        median = statistics.median(per_step)
        rows.append(
            {
                "arch": arch,
                "variant": variant,
                "memory_format": "channels_last"
                if session.input_format is torch.channels_last
                else "contiguous",
                "compile": session.config.run.compile,
                "batch_size": settings["batch_size"],
                "median_step_s": median,
                "samples_per_s": settings["batch_size"] / median,
                "first_step_s": first_step[variant],
                "step_times_s": per_step,
            }
        )
    eager = rows[0]["median_step_s"]
    for row in rows:
        row["speedup_vs_eager"] = eager / row["median_step_s"]
    return rows


def step_config(
    arch: str,
    data: dict[str, Any],
    device: torch.device,
    settings: dict[str, Any],
    timed_steps: int,
    run: dict[str, Any],
) -> Config:
    """The paper's CIFAR-10 recipe for `arch` with GraNet at 90%, the variant's run fields, and the first
    mask-update event after the last timed step."""
    overrides = {
        "data": {**data, "pipeline": "device"},
        "model": {"width": settings["width"]},
        "optim": {"batch_size": settings["batch_size"]},
        "sparsity": {**SPARSITY, "update_frequency": timed_steps},
        "tracking": {"wandb": "disabled"},
        "run": {"device": device.type, "threads": settings["threads"], **run},
    }
    return resolve("granet", dataset="cifar10", arch=arch, overrides=overrides)


def first_batch(session: Session) -> tuple[Tensor, Tensor]:
    inputs, targets = next(iter(session.loaders.train.iterate(0)))
    return inputs.to(session.device, memory_format=session.input_format), targets.to(session.device)


def stepping(session: Session, batch: tuple[Tensor, Tensor], count: int) -> Callable[[int], None]:
    """`count` training steps of `session` on `batch`, ending when the device has finished them."""
    criterion = nn.CrossEntropyLoss(label_smoothing=session.config.optim.label_smoothing)
    parameters = [parameter for parameter in session.model.parameters() if parameter.requires_grad]
    session.network.train()

    def run(repetition: int) -> None:
        for _ in range(count):
            train_step(session, criterion, parameters, *batch)
        synchronize(session.device)

    return run


# ---------------------------------------------------------------------------------------------------------
# Shared


def interleaved(
    operations: dict[str, Callable[[int], None]], repetitions: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each operation per timed repetition. Every repetition runs each operation once, in an
    order rotated by one every repetition; the first `warmup` repetitions are not kept."""
    names = list(operations)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(warmup + repetitions):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            operations[name](repetition)
            if repetition >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
