"""Exported sparse inference against dense PyTorch, side by side in one process (`harness bench inference`):
speed-up per batch size, file sizes and the largest logit difference, with the hardware and versions
(`harness.engine.bench.environment`).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.engine.bench import environment
from harness.errors import UserError

log = logging.getLogger(__name__)


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
