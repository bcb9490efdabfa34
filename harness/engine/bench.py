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

`environment()` (hardware, versions, load) is shared with the inference benchmark (`harness.inference.bench`).
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
