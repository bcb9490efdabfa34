"""Exported sparse inference against dense PyTorch, side by side in one process (`harness bench inference`):
speed-up per batch size with its noise, the plan each batch size runs, what shrinking removed, file sizes and
the largest logit difference, with the hardware and versions (`harness.engine.bench.environment`).

Two kinds of masks: random ERK masks on randomly initialised networks with calibrated BatchNorm statistics
(speed does not depend on trained values, but which filters die does), and the masks of trained runs
(`runs`: completed run directories, e.g. GraNet, RigL and GMP on the CPU recipe).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.engine.bench import environment
from harness.errors import UserError

log = logging.getLogger(__name__)

RANDOM_MASK = "ERK random"


@dataclass(frozen=True)
class InferenceRow:
    """Median seconds of one forward pass, dense vs exported, for one network, mask and batch size."""

    arch: str
    dataset: str
    input_shape: tuple[int, ...]
    mask: str  # RANDOM_MASK, or the trained run's method
    sparsity: float  # the masked fraction of the weights the masks cover
    batch_size: int
    repetitions: int
    threads: int
    dense_format: str  # the faster of NCHW ("contiguous") and channels_last for the dense baseline
    dense_s: float
    exported_s: float
    speedup_noise: float  # half the interquartile range of the per-repetition ratios dense / exported
    dense_bytes: int  # the dense model's state_dict, as torch.save writes it
    exported_bytes: int
    filters: int  # output channels of all weight layers
    filters_removed: int  # by structured shrinking
    macs_dense: int  # multiply-adds per sample of the dense network
    macs_shrunk: int  # ... of the shrunk network run dense
    macs_nonzero: int  # ... of the shrunk network's nonzero weights (what a perfect sparse kernel does)
    sparse_layers: int  # in the plan this batch size runs
    weight_layers: int
    plan: str  # "kept" (the plan beat dense whole), "fallback" (it did not: all dense), "dense" (no sparse layer)
    max_logit_diff: float  # exported vs masked model, absolute
    max_logit_scale: float  # the masked model's largest |logit| on the same inputs
    run_dir: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_s / self.exported_s

    @property
    def size_ratio(self) -> float:
        return self.dense_bytes / self.exported_bytes

    @property
    def slower_than_dense(self) -> bool:
        """Slower than dense by more than the measurement's noise."""
        return self.speedup < 1.0 - self.speedup_noise

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "speedup": self.speedup,
            "size_ratio": self.size_ratio,
            "slower_than_dense": self.slower_than_dense,
        }


INFERENCE_DATASETS = ("cifar10", "mnist1d")


@dataclass(frozen=True)
class _Entry:
    """One masked network to export and time."""

    mask: str
    model: nn.Module
    masks: dict[str, Tensor]
    source: dict[str, Any]


def run_inference_benchmarks(
    archs: Sequence[str] = ("vgg19", "resnet20"),
    datasets: Sequence[str] = ("cifar10",),
    sparsities: Sequence[float] = (0.95,),
    *,
    runs: Sequence[Path] = (),
    batch_sizes: Sequence[int] = (1, 64),
    repetitions: int = 20,
    warmup: int = 3,
    threads: int = 1,
    export_repetitions: int = 5,
    width: float = 1.0,
    seed: int = 0,
    work_dir: Path | None = None,
) -> list[InferenceRow]:
    """Per network (arch x input shape x width): export every masked model (random ERK at each sparsity, and
    every trained run of that network), then time the dense baseline and every export interleaved,
    repetition by repetition, at each batch size.

    The dense baseline is the masked model with BatchNorm folded, under `torch.inference_mode`, at each
    batch size in the faster of NCHW and channels_last (2-D only; chosen by a shorter interleaved timing of
    both first, and passed to the exports as their dense layers' format). Dense speed does not depend on
    the weights' values, so one dense model serves every mask of a network.
    """
    import tempfile

    from harness.inference.export import intra_op_threads

    for field, value, minimum in (
        ("repetitions", repetitions, 1),
        ("warmup", warmup, 0),
        ("threads", threads, 1),
        ("export_repetitions", export_repetitions, 1),
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
        for network, entries in _networks(archs, datasets, sparsities, runs, width, seed).items():
            rows += _benchmark_network(
                network, entries, batch_sizes, repetitions, warmup, threads, export_repetitions, seed,
                Path(scratch),
            )  # fmt: skip
    return rows


def _networks(
    archs: Sequence[str],
    datasets: Sequence[str],
    sparsities: Sequence[float],
    runs: Sequence[Path],
    width: float,
    seed: int,
) -> dict[tuple[str, str, float, tuple[int, ...]], list[_Entry]]:
    """The masked models, grouped by the network whose dense baseline they share."""
    from harness.inference.export import random_masked_model, run_model

    networks: dict[tuple[str, str, float, tuple[int, ...]], list[_Entry]] = {}
    for arch in archs:
        for dataset in datasets:
            for sparsity in sparsities:
                model, masks, shape = random_masked_model(arch, dataset, sparsity, seed=seed, width=width)
                source = {"random_erk": True, "sparsity": sparsity, "seed": seed, "width": width}
                networks.setdefault((arch, dataset, width, tuple(shape)), []).append(
                    _Entry(RANDOM_MASK, model, masks, source)
                )
    for run_dir in runs:
        model, masks, facts = run_model(run_dir)
        key = (facts["arch"], facts["dataset"], float(facts["width"]), tuple(facts["input_shape"]))
        source = {name: value for name, value in facts.items() if name != "input_shape"}
        networks.setdefault(key, []).append(_Entry(f"{facts['method']} (trained)", model, masks, source))
    return networks


def masked_fraction(masks: dict[str, Tensor]) -> float:
    total = sum(mask.numel() for mask in masks.values())
    return 1.0 - sum(int(mask.sum()) for mask in masks.values()) / max(total, 1)


def _benchmark_network(
    network: tuple[str, str, float, tuple[int, ...]],
    entries: Sequence[_Entry],
    batch_sizes: Sequence[int],
    repetitions: int,
    warmup: int,
    threads: int,
    export_repetitions: int,
    seed: int,
    scratch: Path,
) -> list[InferenceRow]:
    from harness.inference.export import (
        export_model,
        fold_batchnorm,
        load_export,
        masked_reference,
        save_export,
    )
    from harness.inference.plan import InterleavedTimer, paired_ratio

    arch, dataset, width, input_shape = network
    log.info(
        "inference benchmark: %s on %s-shaped input, width %g, %d masks", arch, dataset, width, len(entries)
    )
    first = entries[0]
    dense_bytes = _saved_bytes(first.model.state_dict(), scratch / "dense.pt")
    dense = fold_batchnorm(masked_reference(first.model, first.masks), input_shape)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = {batch: torch.randn(batch, *input_shape, generator=generator) for batch in batch_sizes}

    dense_formats = dict.fromkeys(batch_sizes, "contiguous")
    baselines = {"contiguous": dense}
    if len(input_shape) == 3:  # 2-D: the faster memory format of the dense baseline, per batch size
        channels_last = fold_batchnorm(masked_reference(first.model, first.masks), input_shape)
        baselines["channels_last"] = channels_last.to(memory_format=torch.channels_last)
        timer = InterleavedTimer(max(3, repetitions // 6), 1)
        for batch, x in inputs.items():
            x_cl = x.contiguous(memory_format=torch.channels_last)
            contiguous_s, channels_last_s = timer(
                [], [lambda x=x: dense(x), lambda x=x_cl: baselines["channels_last"](x)]
            )
            if paired_ratio(channels_last_s, contiguous_s)[0] < 1.0:
                dense_formats[batch] = "channels_last"
        log.info("dense baseline formats per batch size: %s", dense_formats)

    exported = []
    for index, entry in enumerate(entries):
        payload = export_model(
            entry.model,
            entry.masks,
            arch=arch,
            dataset=dataset,
            input_shape=input_shape,
            batch_sizes=batch_sizes,
            repetitions=export_repetitions,
            warmup=1,
            threads=threads,
            source=entry.source,
            dense_format=dense_formats,
        )
        path = scratch / f"{arch}-{dataset}-{index}.pt"
        size = save_export(path, payload)
        loaded, _ = load_export(path)  # time what the file gives back, not the in-memory build
        reference = masked_reference(entry.model, entry.masks)
        x = inputs[max(batch_sizes)]
        with torch.inference_mode():
            expected, got = reference(x), loaded(x)
        exported.append(
            (entry, loaded, size, payload, float((got - expected).abs().max()), float(expected.abs().max()))
        )

    rows = []
    timer = InterleavedTimer(repetitions, warmup)
    for batch, x in inputs.items():
        fmt = dense_formats[batch]
        x_dense = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
        baseline = baselines[fmt]
        operations = [lambda x_dense=x_dense, baseline=baseline: baseline(x_dense)] + [
            lambda m=item[1], x=x: m(x) for item in exported
        ]
        log.info("timing %s/%s at batch %d: dense and %d exports, %d repetitions", arch, dataset, batch,
                 len(exported), repetitions)  # fmt: skip
        times = timer([], operations)
        dense_times = times[0]
        for (entry, _, size, payload, diff, scale), series in zip(exported, times[1:], strict=True):
            plan = next(plan for plan in payload["plans"] if plan["batch_size"] == batch)
            shrinking = payload["shrinking"]
            sparse = sum(kind != "dense" for kind in plan["kinds"].values())
            rows.append(
                InferenceRow(
                    arch=arch,
                    dataset=dataset,
                    input_shape=tuple(input_shape),
                    mask=entry.mask,
                    sparsity=round(masked_fraction(entry.masks), 4),
                    batch_size=batch,
                    repetitions=repetitions,
                    threads=threads,
                    dense_format=fmt,
                    dense_s=statistics.median(dense_times),
                    exported_s=statistics.median(series),
                    speedup_noise=paired_ratio(dense_times, series)[1],
                    dense_bytes=dense_bytes,
                    exported_bytes=size,
                    filters=shrinking["filters"],
                    filters_removed=shrinking["filters_removed"],
                    macs_dense=shrinking["macs_dense"],
                    macs_shrunk=shrinking["macs_shrunk"],
                    macs_nonzero=shrinking["macs_nonzero_kept"],
                    sparse_layers=sparse,
                    weight_layers=len(plan["kinds"]),
                    plan="fallback" if not plan["kept"] else ("kept" if sparse else "dense"),
                    max_logit_diff=diff,
                    max_logit_scale=scale,
                    run_dir=str(entry.source.get("run_dir", "")),
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


def _plan_cell(row: InferenceRow) -> str:
    if row.plan == "fallback":
        return "dense (fallback)"
    return f"{row.sparse_layers}/{row.weight_layers} sparse"


def format_inference_markdown(rows: Sequence[InferenceRow], env: dict[str, Any] | None = None) -> str:
    """The README table: one line per network, mask and batch size, the environment above it and whether
    any row was slower than dense beyond noise below it."""
    env = environment() if env is None else env
    threads = sorted({row.threads for row in rows})
    repetitions = sorted({row.repetitions for row in rows})
    lines = [
        f"{env['cpu']} ({env['cpu_count']} cores), {', '.join(map(str, threads))} intra-op thread(s), "
        f"torch {env['torch']}, Python {env['python']}; medians of n = {', '.join(map(str, repetitions))} "
        f"interleaved repetitions; load average at the end {env['load_average_1min']:.2f}",
        "",
        "| arch | input | mask | sparsity | batch | dense (ms) | exported (ms) | speed-up (noise) | plan "
        "| filters removed | dense MACs left | nonzero MACs | export file (dense) | size ratio "
        "| max abs logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape = "x".join(map(str, row.input_shape))
        dense_macs = max(row.macs_dense, 1)
        lines.append(
            f"| {row.arch} | {shape} | {row.mask} | {row.sparsity:.3g} | {row.batch_size} | "
            f"{row.dense_s * 1e3:.2f} ({row.dense_format}) | {row.exported_s * 1e3:.2f} | "
            f"{row.speedup:.2f}x (±{row.speedup_noise:.2f}) | {_plan_cell(row)} | "
            f"{row.filters_removed}/{row.filters} | {row.macs_shrunk / dense_macs:.1%} | "
            f"{row.macs_nonzero / dense_macs:.1%} | {row.exported_bytes / 1e6:.2f} MB "
            f"({row.dense_bytes / 1e6:.2f} MB) | {row.size_ratio:.1f}x | {row.max_logit_diff:.1e} |"
        )
    slower = [row for row in rows if row.slower_than_dense]
    lines.append("")
    if slower:
        listed = "; ".join(
            f"{row.arch} {row.mask} {row.sparsity:.3g} batch {row.batch_size}: {row.speedup:.2f}x"
            for row in slower
        )
        lines.append(f"Slower than dense beyond noise: {listed}.")
    else:
        lines.append("Slower than dense beyond noise: none of the rows.")
    return "\n".join(lines)
