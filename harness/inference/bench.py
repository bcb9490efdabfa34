"""Side-by-side timings of the sparse core (DESIGN sections 4.11 and 8): the cost of masking per step
and of one mask-update event, each as a ratio to a dense training step measured in the same process.

Timed, per architecture, on CIFAR-shaped random input:

- a dense training step (zero_grad, forward, backward, optimizer.step) and a masked one (the same plus
  `SparsityMethod.step()` of a static ERK mask at the given sparsity), interleaved repetition by
  repetition so that drift in machine load hits both alike; and, inside the masked step, the sparse
  core's own share: `SparsityMethod.step()` alone (mask and optimizer-state multiplies);
- one GraNet event (global magnitude prune + regeneration, mid-schedule, from an ERK start at s_i = 0.5)
  and one RigL event (drop + gradient growth), each restored to the same weights and masks before every
  repetition so that every repetition does the same work.

Medians over `repetitions` after `warmup` untimed repetitions. Masking zeroes weights but runs dense
kernels, so the masked/dense ratio measures the per-step overhead of the sparse core, not a speed-up.

Over 450 lines on purpose: both benchmarks (training step and exported inference) share the timing,
environment and report code here, and splitting them would duplicate it.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.errors import UserError
from harness.sparse import MaskSet, SparsityMethod, build_method

log = logging.getLogger(__name__)

# The GraNet event is timed mid-schedule (t = 20 dT of a 50 dT pruning window), where the global prune
# removes weights and regeneration runs at a rate well above its minimum.
_UPDATE_FREQUENCY = 1000
_EVENT_STEP = 20 * _UPDATE_FREQUENCY
_TOTAL_STEPS = 100 * _UPDATE_FREQUENCY


@dataclass(frozen=True)
class BenchmarkRow:
    """Median seconds of each timed operation for one architecture, and the ratios that matter."""

    arch: str
    batch_size: int
    repetitions: int
    sparsity: float
    dense_step: float
    masked_step: float
    sparse_step: float  # SparsityMethod.step() alone, inside the masked step
    granet_update: float
    rigl_update: float

    @property
    def masked_over_dense(self) -> float:
        return self.masked_step / self.dense_step

    @property
    def sparse_over_dense(self) -> float:
        return self.sparse_step / self.dense_step

    @property
    def granet_update_over_step(self) -> float:
        return self.granet_update / self.dense_step

    @property
    def rigl_update_over_step(self) -> float:
        return self.rigl_update / self.dense_step

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "masked_over_dense": self.masked_over_dense,
            "sparse_over_dense": self.sparse_over_dense,
            "granet_update_over_step": self.granet_update_over_step,
            "rigl_update_over_step": self.rigl_update_over_step,
        }


def environment() -> dict[str, Any]:
    """What a timing depends on: hardware, versions and threads (reported with every benchmark)."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_benchmarks(
    archs: Sequence[str] = ("resnet20", "vgg19"),
    *,
    batch_size: int = 128,
    repetitions: int = 5,
    warmup: int = 1,
    sparsity: float = 0.9,
    seed: int = 0,
) -> list[BenchmarkRow]:
    """One row per architecture; see the module docstring for what is timed."""
    for field, value, minimum in (
        ("repetitions", repetitions, 1),
        ("warmup", warmup, 0),
        ("batch_size", batch_size, 1),
    ):
        if value < minimum:
            raise UserError(f"bench.{field}: must be >= {minimum}, got {value}")
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"bench.sparsity: must be in [0, 1), got {sparsity}")
    return [_benchmark_arch(arch, batch_size, repetitions, warmup, sparsity, seed) for arch in archs]


def format_rows(rows: Sequence[BenchmarkRow], env: dict[str, Any] | None = None) -> str:
    """A plain-text table of the rows with the environment above it."""
    env = environment() if env is None else env
    lines = [f"{key}: {value}" for key, value in env.items()]
    header = (
        f"{'arch':<10}{'batch':>6}{'reps':>5}{'dense step s':>14}{'masked step s':>15}{'masked/dense':>14}"
        f"{'method.step s':>15}{'/step':>9}{'GraNet event s':>16}{'/step':>8}{'RigL event s':>14}{'/step':>8}"
    )
    lines += ["", header]
    for row in rows:
        lines.append(
            f"{row.arch:<10}{row.batch_size:>6}{row.repetitions:>5}{row.dense_step:>14.4f}{row.masked_step:>15.4f}"
            f"{row.masked_over_dense:>14.3f}{row.sparse_step:>15.6f}{row.sparse_over_dense:>9.5f}"
            f"{row.granet_update:>16.4f}{row.granet_update_over_step:>8.3f}"
            f"{row.rigl_update:>14.4f}{row.rigl_update_over_step:>8.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def _benchmark_arch(
    arch: str, batch_size: int, repetitions: int, warmup: int, sparsity: float, seed: int
) -> BenchmarkRow:
    log.info("benchmarking %s at batch %d (%d repetitions)", arch, batch_size, repetitions)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)

    dense_step, masked_step, sparse_step = _step_seconds(
        arch, inputs, labels, repetitions, warmup, seed, sparsity
    )
    schedule = {"sparsity": sparsity, "update_frequency": _UPDATE_FREQUENCY}
    granet = _update_seconds(
        arch,
        "granet",
        inputs,
        labels,
        repetitions,
        warmup,
        seed,
        **schedule,
        init_sparsity=0.5,
        prune_end=0.5,
    )
    rigl = _update_seconds(arch, "rigl", inputs, labels, repetitions, warmup, seed, **schedule)
    return BenchmarkRow(
        arch=arch,
        batch_size=batch_size,
        repetitions=repetitions,
        sparsity=sparsity,
        dense_step=dense_step,
        masked_step=masked_step,
        sparse_step=sparse_step,
        granet_update=granet,
        rigl_update=rigl,
    )


def _step_seconds(
    arch: str, inputs: Tensor, labels: Tensor, repetitions: int, warmup: int, seed: int, sparsity: float
) -> tuple[float, float, float]:
    """Median seconds of a dense step, a masked step and the masked step's `method.step()`, interleaved."""
    dense_model, dense_optimizer = _model_and_optimizer(arch, seed)
    masked_model, masked_optimizer = _model_and_optimizer(arch, seed)
    static = _method("static", masked_model, masked_optimizer, sparsity=sparsity)
    dense_times, masked_times, sparse_times = [], [], []

    def dense() -> None:
        start = time.perf_counter()
        _training_step(dense_model, dense_optimizer, None, inputs, labels)
        dense_times.append(time.perf_counter() - start)

    def masked() -> None:
        start = time.perf_counter()
        sparse_times.append(_training_step(masked_model, masked_optimizer, static, inputs, labels))
        masked_times.append(time.perf_counter() - start)

    for repetition in range(warmup + repetitions):
        if repetition == warmup:  # drop the warm-up timings
            for times in (dense_times, masked_times, sparse_times):
                times.clear()
        # Alternate which runs first, so that neither always follows the other.
        for operation in (dense, masked) if repetition % 2 == 0 else (masked, dense):
            operation()
    return statistics.median(dense_times), statistics.median(masked_times), statistics.median(sparse_times)


def _model_and_optimizer(arch: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from harness.models.build import build_model  # the models are the heavy part; import only when timing

    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, input_shape=(3, 32, 32))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer


def _method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, **settings: Any) -> SparsityMethod:
    return build_method(name, MaskSet.for_model(model), optimizer, settings, total_steps=_TOTAL_STEPS)


def _training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: SparsityMethod | None,
    inputs: Tensor,
    labels: Tensor,
) -> float:
    """One training step; returns the seconds spent in `method.step()` (0 without a method)."""
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    if method is None:
        return 0.0
    start = time.perf_counter()
    method.step()
    return time.perf_counter() - start


def _update_seconds(
    arch: str,
    name: str,
    inputs: Tensor,
    labels: Tensor,
    repetitions: int,
    warmup: int,
    seed: int,
    **settings: Any,
) -> float:
    """Median seconds of one mask-update event at `_EVENT_STEP`, from the same weights and masks every time."""
    model, optimizer = _model_and_optimizer(arch, seed)
    method = _method(name, model, optimizer, **settings)
    _training_step(model, optimizer, method, inputs, labels)  # dense gradients and optimizer state exist
    weights = [weight.detach().clone() for weight in method.masks.weights]
    masks = method.masks.bool_masks()
    times = []
    for repetition in range(warmup + repetitions):
        with torch.no_grad():
            for weight, saved in zip(method.masks.weights, weights, strict=True):
                weight.copy_(saved)
        method.masks.set(masks)
        seconds = _seconds(lambda: _timed_update(method))
        if repetition >= warmup:
            times.append(seconds)
    return statistics.median(times)


def _timed_update(method: SparsityMethod) -> None:
    with torch.no_grad():  # as in SparsityMethod.step()
        method.update(_EVENT_STEP)


def _seconds(operation: Callable[[], None]) -> float:
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform.processor() is the best cheap answer
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------------
# Inference: the exported sparse model against dense PyTorch, side by side


@dataclass(frozen=True)
class InferenceRow:
    """Median seconds of one forward pass, dense vs exported, for one network, sparsity and batch size."""

    arch: str
    dataset: str
    input_shape: tuple[int, ...]
    sparsity: float
    batch_size: int
    repetitions: int
    threads: int
    dense_format: str  # the faster of NCHW ("contiguous") and channels_last for the dense baseline
    dense_s: float
    exported_s: float
    dense_bytes: int  # the dense model's state_dict, as torch.save writes it
    exported_bytes: int
    sparse_layers: int
    weight_layers: int
    max_logit_diff: float  # exported vs masked model, absolute
    max_logit_scale: float  # the masked model's largest |logit| on the same inputs

    @property
    def speedup(self) -> float:
        return self.dense_s / self.exported_s

    @property
    def size_ratio(self) -> float:
        return self.dense_bytes / self.exported_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "size_ratio": self.size_ratio}


INFERENCE_DATASETS = ("cifar10", "mnist1d")


def run_inference_benchmarks(
    archs: Sequence[str] = ("vgg19", "resnet20"),
    datasets: Sequence[str] = ("cifar10",),
    sparsities: Sequence[float] = (0.95,),
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repetitions: int = 20,
    warmup: int = 3,
    threads: int = 1,
    export_repetitions: int = 3,
    width: float = 1.0,
    seed: int = 0,
    work_dir: Path | None = None,
) -> list[InferenceRow]:
    """Per network (arch x input shape): export a random-ERK-masked model at every sparsity, then time the
    dense baseline and every export interleaved, repetition by repetition, at each batch size.

    The dense baseline is the masked model with BatchNorm folded, under `torch.inference_mode`, in the
    faster of NCHW and channels_last (2-D only; chosen by a shorter interleaved timing of both first, and
    passed to the exports as their dense layers' format). Dense speed does not depend on the weights'
    values, so one dense model serves every sparsity of a network.
    """
    import tempfile

    from harness.inference.export import intra_op_threads

    for field, value, minimum in (
        ("repetitions", repetitions, 1),
        ("warmup", warmup, 0),
        ("threads", threads, 1),
    ):
        if value < minimum:
            raise UserError(f"bench.{field}: must be >= {minimum}, got {value}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError(f"--batch-sizes: need positive batch sizes, got {list(batch_sizes)}")
    for sparsity in sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"--sparsity: must be in [0, 1), got {sparsity}")
    for dataset in datasets:
        if dataset not in INFERENCE_DATASETS:
            raise UserError(f"--dataset: {dataset!r} is not one of {', '.join(INFERENCE_DATASETS)}")
    rows: list[InferenceRow] = []
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch, intra_op_threads(threads):
        for arch in archs:
            for dataset in datasets:
                rows += _benchmark_network(
                    arch, dataset, sparsities, batch_sizes, repetitions, warmup, threads,
                    export_repetitions, width, seed, Path(scratch),
                )  # fmt: skip
    return rows


def _benchmark_network(
    arch: str,
    dataset: str,
    sparsities: Sequence[float],
    batch_sizes: Sequence[int],
    repetitions: int,
    warmup: int,
    threads: int,
    export_repetitions: int,
    width: float,
    seed: int,
    scratch: Path,
) -> list[InferenceRow]:
    from harness.inference.export import (
        export_model,
        fold_batchnorm,
        interleaved_medians,
        load_export,
        masked_reference,
        random_masked_model,
        save_export,
    )

    log.info("inference benchmark: %s on %s-shaped input, sparsities %s", arch, dataset, list(sparsities))
    networks = [
        random_masked_model(arch, dataset, sparsity, seed=seed, width=width) for sparsity in sparsities
    ]
    input_shape = networks[0][2]
    first_model, first_masks, _ = networks[0]
    dense_bytes = _saved_bytes(first_model.state_dict(), scratch / "dense.pt")
    dense = fold_batchnorm(masked_reference(first_model, first_masks), input_shape)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = {batch: torch.randn(batch, *input_shape, generator=generator) for batch in batch_sizes}

    dense_format, format_timings = "contiguous", {}
    if len(input_shape) == 3:  # 2-D: pick the faster memory format of the dense baseline
        channels_last = fold_batchnorm(masked_reference(first_model, first_masks), input_shape)
        channels_last = channels_last.to(memory_format=torch.channels_last)
        ratios = []
        for batch, x in inputs.items():
            x_cl = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                contiguous_s, channels_last_s = interleaved_medians(
                    [lambda x=x: dense(x), lambda x=x_cl: channels_last(x)], max(3, repetitions // 6), 1
                )
            format_timings[batch] = (contiguous_s, channels_last_s)
            ratios.append(channels_last_s / contiguous_s)
        if statistics.geometric_mean(ratios) < 1.0:
            dense_format, dense = "channels_last", channels_last
        log.info("dense baseline: %s (NCHW vs channels_last medians: %s)", dense_format, format_timings)

    exported = []
    for sparsity, (model, masks, _) in zip(sparsities, networks, strict=True):
        payload = export_model(
            model,
            masks,
            arch=arch,
            dataset=dataset,
            input_shape=input_shape,
            batch_sizes=batch_sizes,
            repetitions=export_repetitions,
            warmup=1,
            threads=threads,
            source={"random_erk": True, "sparsity": sparsity, "seed": seed, "width": width},
            dense_format=dense_format,
        )
        path = scratch / f"{arch}-{dataset}-{sparsity}.pt"
        size = save_export(path, payload)
        loaded, _ = load_export(path)  # time what the file gives back, not the in-memory build
        reference = masked_reference(model, masks)
        x = inputs[max(batch_sizes)]
        with torch.inference_mode():
            expected, got = reference(x), loaded(x)
        exported.append(
            (
                sparsity,
                loaded,
                size,
                payload,
                float((got - expected).abs().max()),
                float(expected.abs().max()),
            )
        )

    rows = []
    for batch, x in inputs.items():
        x_dense = x.contiguous(memory_format=torch.channels_last) if dense_format == "channels_last" else x
        operations = [lambda x_dense=x_dense: dense(x_dense)] + [
            lambda m=entry[1], x=x: m(x) for entry in exported
        ]
        log.info("timing %s/%s at batch %d: dense and %d exports, %d repetitions", arch, dataset, batch,
                 len(exported), repetitions)  # fmt: skip
        with torch.inference_mode():
            medians = interleaved_medians(operations, repetitions, warmup)
        for (sparsity, _, size, payload, diff, scale), seconds in zip(exported, medians[1:], strict=True):
            kinds = payload["kinds"]
            rows.append(
                InferenceRow(
                    arch=arch,
                    dataset=dataset,
                    input_shape=tuple(input_shape),
                    sparsity=sparsity,
                    batch_size=batch,
                    repetitions=repetitions,
                    threads=threads,
                    dense_format=dense_format,
                    dense_s=medians[0],
                    exported_s=seconds,
                    dense_bytes=dense_bytes,
                    exported_bytes=size,
                    sparse_layers=sum(kind == "sparse" for kind in kinds.values()),
                    weight_layers=len(kinds),
                    max_logit_diff=diff,
                    max_logit_scale=scale,
                )
            )
    return rows


def _saved_bytes(state: dict[str, Any], path: Path) -> int:
    torch.save(state, path)
    return path.stat().st_size


def inference_report(rows: Sequence[InferenceRow], env: dict[str, Any] | None = None) -> dict[str, Any]:
    """What goes to the JSON file: the environment and one record per row."""
    env = environment() if env is None else env
    # The benchmark sets its own thread count; the process default environment() sees is not it.
    env = {**env, "torch_threads": sorted({row.threads for row in rows})}
    return {"environment": env, "rows": [row.as_dict() for row in rows]}


def format_inference_markdown(rows: Sequence[InferenceRow], env: dict[str, Any] | None = None) -> str:
    """The README table: one line per network, sparsity and batch size, the environment above it."""
    env = environment() if env is None else env
    threads = sorted({row.threads for row in rows})
    repetitions = sorted({row.repetitions for row in rows})
    lines = [
        f"{env['cpu']} ({env['cpu_count']} cores), {', '.join(map(str, threads))} intra-op thread(s), "
        f"torch {env['torch']}, Python {env['python']}; medians of n = {', '.join(map(str, repetitions))} "
        f"interleaved repetitions; load average at the end {env['load_average_1min']:.2f}",
        "",
        "| arch | input | sparsity | batch | dense (ms) | exported (ms) | speed-up | dense file | export file "
        "| size ratio | sparse layers | max abs logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape = "x".join(map(str, row.input_shape))
        lines.append(
            f"| {row.arch} | {shape} | {row.sparsity:g} | {row.batch_size} | {row.dense_s * 1e3:.2f} "
            f"({row.dense_format}) | {row.exported_s * 1e3:.2f} | {row.speedup:.2f}x | "
            f"{row.dense_bytes / 1e6:.2f} MB | {row.exported_bytes / 1e6:.2f} MB | {row.size_ratio:.1f}x | "
            f"{row.sparse_layers}/{row.weight_layers} | {row.max_logit_diff:.1e} |"
        )
    return "\n".join(lines)
