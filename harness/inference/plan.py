"""The kernel of every layer, chosen per batch size from interleaved repeated timings with a margin, and the
whole-model check that makes a batch size's plan fall back to dense where it is not faster.

For each batch size asked for, one plan:

1. The dense layers' memory format (2-D): the all-dense network timed contiguous and channels_last,
   interleaved; the lower median of the per-repetition ratio wins (both are dense, so no margin).
2. Per convolution and linear layer, in program order: dense (in that format) and every sparse kernel the
   layer can use (`harness.inference.runtime.KINDS`) are timed alone on random input of the layer's real
   shape, in the layout the layer would receive given the choices before it (so a layout change is charged
   to the layer that causes it), interleaved repetition by repetition. A kernel torch cannot run on this
   build is skipped, its error recorded; `sparse_wide` is skipped where its products are the same as
   `sparse`'s; `bsr` is offered only where square blocks hold the mask's nonzeros with little fill
   (`BSR_MAX_FILL`). A layer denser than `DENSE_ABOVE` stays dense untimed: there the CSR product still does
   half the dense multiply-adds at a small fraction of oneDNN's rate (layers at 25-35% density lost by
   1.3-10x in the timings taken here).
3. The rule (`beats`): per repetition, the ratio kernel time / dense time (both measured in the same
   repetition); a kernel wins when the median ratio is below 1 - max(margin, noise), where noise is half
   the interquartile range of those ratios: under load the ratios spread and the layer stays dense. Among
   the winners the lowest median ratio is taken (`LAYER_MARGIN` = 5%).
4. The chosen plan and the same network all dense are timed whole, interleaved; the plan is kept only if it
   beats dense by the same rule with `MODEL_MARGIN` (0: the noise alone); otherwise every layer runs dense
   at this batch size. Other batch sizes keep their own plans.

Every timing (per repetition), margin, skip reason and verdict is stored in the plan records, and
`decide_layer` / `decide_plan` re-derive each choice from them (`replay`). The timer is a parameter
(`Timer`): tests hand in a double that scripts the outcome.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.inference.runtime import (
    BATCH_FIRST,
    CHANNELS_FIRST,
    COLUMN_TILE,
    DENSE_FORMATS,
    POOLS,
    SPARSE_KINDS,
    TILES,
    WEIGHT_LAYERS,
    Layer,
    Program,
    samples_per_product,
)

LAYER_MARGIN = 0.05
MODEL_MARGIN = 0.0
DENSE_ABOVE = 0.5  # layers denser than this stay dense without timing
BSR_BLOCKS = (2, 4, 8, 16)  # MKL's BSR product takes square blocks only (non-square ones raise here)
BSR_MAX_FILL = 1.5  # stored values / nonzeros: above it a BSR product does too many useless multiply-adds


@dataclass(frozen=True)
class Probe:
    """What one timed operation is: a layer alone (`scope` "layer", its name, its kernel) or the whole model
    (`scope` "model", name "model", variant "contiguous" | "channels_last" | "plan" | "dense")."""

    scope: str
    name: str
    variant: str
    batch_size: int


# Seconds of every operation at every repetition: result[i][r] is operation i's time at repetition r.
Timer = Callable[[Sequence[Probe], Sequence[Callable[[], object]]], list[list[float]]]


class InterleavedTimer:
    """Times the operations in turn within every repetition, rotating the order each repetition so that none
    always runs right after another (caches, frequency, neighbours' load), after `warmup` untimed rounds."""

    def __init__(self, repetitions: int = 7, warmup: int = 2) -> None:
        if repetitions < 1 or warmup < 0:
            raise ValueError(f"repetitions must be >= 1 and warmup >= 0, got {repetitions}, {warmup}")
        self.repetitions = repetitions
        self.warmup = warmup

    def __call__(
        self, probes: Sequence[Probe], operations: Sequence[Callable[[], object]]
    ) -> list[list[float]]:
        times: list[list[float]] = [[] for _ in operations]
        count = len(operations)
        with torch.inference_mode():
            for repetition in range(self.warmup + self.repetitions):
                for offset in range(count):
                    index = (repetition + offset) % count
                    start = time.perf_counter()
                    operations[index]()
                    elapsed = time.perf_counter() - start
                    if repetition >= self.warmup:
                        times[index].append(elapsed)
        return times


# ---------------------------------------------------------------------------------------------------------
# The rule, as pure functions of stored timings


def paired_ratio(candidate: Sequence[float], baseline: Sequence[float]) -> tuple[float, float]:
    """(median, noise) of the per-repetition ratios candidate / baseline; noise is half their interquartile
    range (0 with fewer than 2 repetitions)."""
    ratios = [c / b for c, b in zip(candidate, baseline, strict=True)]
    if len(ratios) < 2:
        return ratios[0], 0.0
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), (high - low) / 2


def beats(candidate: Sequence[float], baseline: Sequence[float], margin: float) -> bool:
    median, noise = paired_ratio(candidate, baseline)
    return median < 1.0 - max(margin, noise)


def decide_layer(record: Mapping[str, Any]) -> str:
    """The kernel a layer record stands for: forced, or the fastest kernel that beats dense by the rule."""
    if record.get("forced"):
        return str(record["forced"])
    timings = record.get("timings") or {}
    if "dense" not in timings:
        return "dense"
    winners = [
        (paired_ratio(series, timings["dense"])[0], kind)
        for kind, series in timings.items()
        if kind != "dense" and beats(series, timings["dense"], record["margin"])
    ]
    return min(winners)[1] if winners else "dense"


def plan_kept(plan: Mapping[str, Any]) -> bool:
    """Whether a plan's mix is kept at its batch size (True where nothing was timed whole)."""
    whole = plan.get("end_to_end") or {}
    if not whole.get("plan"):
        return True
    return beats(whole["plan"], whole["dense"], whole["margin"])


def decide_plan(plan: Mapping[str, Any]) -> dict[str, str]:
    """A plan's kernel per layer: each layer's decision, or all dense where the whole plan lost."""
    kinds = {record["name"]: decide_layer(record) for record in plan["layers"]}
    if not plan_kept(plan):
        return dict.fromkeys(kinds, "dense")
    return kinds


def decide_format(plan: Mapping[str, Any]) -> str:
    timings = plan.get("format_timings")
    if not timings:
        return str(plan["dense_format"])
    ratio, _ = paired_ratio(timings["channels_last"], timings["contiguous"])
    return "channels_last" if ratio < 1.0 else "contiguous"


def replay(plans: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, str]]:
    """The kernels the stored timings of an export's plans stand for, per batch size."""
    return {int(plan["batch_size"]): decide_plan(plan) for plan in plans}


def explain_layer(record: Mapping[str, Any]) -> str:
    """Why a layer runs as it does, from its record."""
    kind = decide_layer(record)
    if record.get("forced"):
        return f"{kind}: forced"
    if record.get("untimed"):
        return f"{kind}: {record['untimed']}"
    timings = record["timings"]
    parts = []
    for variant, series in timings.items():
        if variant == "dense":
            continue
        median, noise = paired_ratio(series, timings["dense"])
        parts.append(f"{variant} {median:.2f}x dense (noise {noise:.2f})")
    parts += [f"{variant} skipped: {reason}" for variant, reason in record.get("skipped", {}).items()]
    verdict = "fastest that beats" if kind != "dense" else "nothing beats"
    return f"{kind}: {verdict} dense by max(margin {record['margin']:g}, noise); " + "; ".join(parts)


def explain_plan(plan: Mapping[str, Any]) -> str:
    whole = plan.get("end_to_end") or {}
    if not whole.get("plan"):
        return "whole model not timed (no layer chose a sparse kernel)"
    median, noise = paired_ratio(whole["plan"], whole["dense"])
    verdict = "kept" if plan_kept(plan) else "not faster by the rule, so every layer dense at this batch size"
    return (
        f"whole model vs all-dense: {median:.2f}x the time (noise {noise:.2f}, margin {whole['margin']:g}): "
        f"{verdict}"
    )


# ---------------------------------------------------------------------------------------------------------
# Measuring


def density(spec: Mapping[str, Any]) -> float:
    mask = spec["mask"]
    return float(mask.sum()) / mask.numel() if mask.numel() else 0.0


def fit_block(mask: Tensor) -> tuple[int | None, str]:
    """(the square block size whose BSR form stores the fewest values, or None; why) for a 2-D mask."""
    rows, columns = mask.shape
    nonzero = int(mask.sum())
    best: tuple[float, int] | None = None
    for block in BSR_BLOCKS:
        if rows % block or columns % block:
            continue
        tiles = mask.reshape(rows // block, block, columns // block, block).any(3).any(1)
        fill = int(tiles.sum()) * block * block / max(nonzero, 1)
        if best is None or fill < best[0]:
            best = (fill, block)
    if best is None:
        return None, f"no square block of {list(BSR_BLOCKS)} divides the {rows}x{columns} weight"
    fill, block = best
    if fill > BSR_MAX_FILL:
        return None, f"the best block {block}x{block} would store {fill:.1f}x the nonzeros (> {BSR_MAX_FILL})"
    return block, f"{block}x{block} blocks store {fill:.2f}x the nonzeros"


def fit_blocks(layers: Sequence[dict[str, Any]]) -> None:
    """Give every weight spec `bsr_block` (or why not, `bsr_skipped`), from its mask."""
    for spec in layers:
        if spec["op"] not in WEIGHT_LAYERS:
            continue
        mask = spec["mask"].flatten(1)
        block, why = fit_block(mask) if mask.numel() else (None, "no weights")
        spec.pop("bsr_block", None)
        spec.pop("bsr_skipped", None)
        if block is None:
            spec["bsr_skipped"] = why
        else:
            spec["bsr_block"] = block


def trace_inputs(program: Program, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The batch-first shape (without the batch) of every layer's input, from one batch-1 all-dense pass."""
    registers: list[Any] = [None] * program.num_registers
    registers[0] = (torch.zeros(1, *input_shape), BATCH_FIRST)
    shapes = []
    with torch.inference_mode():
        for layer in program.plan_layers({}, "contiguous"):
            tensor, _ = registers[layer.input]
            shapes.append(tuple(tensor.shape[1:]))
            layer.run(registers)
    return shapes


def layer_inputs(
    layers: Sequence[Mapping[str, Any]], kinds: Mapping[str, str], shapes: Sequence[tuple[int, ...]]
) -> list[str]:
    """The layout each layer receives, given the kinds of the layers before it."""
    register_layout = {0: BATCH_FIRST}
    received = []
    for spec, shape in zip(layers, shapes, strict=True):
        layout = register_layout[spec["input"]]
        received.append(layout)
        if spec["op"] in WEIGHT_LAYERS:
            sparse = kinds.get(spec["name"], "dense") in SPARSE_KINDS and math.prod(spec["weight_shape"]) > 0
            out = CHANNELS_FIRST if sparse else BATCH_FIRST
        elif spec["op"] in POOLS:
            out = layout
        else:  # flatten
            out = CHANNELS_FIRST if layout == CHANNELS_FIRST and math.prod(shape[1:]) == 1 else BATCH_FIRST
        register_layout[spec["output"]] = out
    return received


def _candidates(
    spec: Mapping[str, Any], shape: tuple[int, ...], batch: int
) -> tuple[list[str], dict[str, str]]:
    """(the sparse kernels worth timing for this layer at `batch`, the others with why not)."""
    kinds, skipped = [], {}
    positions = math.prod(shape[1:]) // int(spec.get("stride", 1)) ** max(len(shape) - 1, 0)
    for kind in SPARSE_KINDS:
        if kind == "bsr" and "bsr_block" not in spec:
            skipped[kind] = spec.get("bsr_skipped", "no block fits")
        elif kind == "sparse_wide" and (
            spec["op"] == "linear"
            or min(samples_per_product(TILES[kind], positions), batch)
            == min(samples_per_product(COLUMN_TILE, positions), batch)
        ):
            skipped[kind] = f"same products as sparse at batch {batch}"
        else:
            kinds.append(kind)
    return kinds, skipped


def _runnable(
    program: Program, index: int, kind: str, dense_format: str, value: tuple[Tensor, str]
) -> Layer | str:
    """The layer alone, built and run once on `value`; or, where torch cannot build or run it on this
    build, why (its first error line)."""
    try:
        layer = program.alone(index, kind, dense_format)
        with torch.inference_mode():
            layer.run([value, None])
    except (RuntimeError, NotImplementedError, ValueError) as error:
        text = str(error).strip()
        return f"torch cannot run it here: {text.splitlines()[0] if text else type(error).__name__}"
    return layer


def _layer_record(
    program: Program,
    index: int,
    layout: str,
    shape: tuple[int, ...],
    batch: int,
    dense_format: str,
    timer: Timer,
    generator: torch.Generator,
) -> dict[str, Any]:
    spec = program.layers[index]
    record: dict[str, Any] = {"name": spec["name"], "density": density(spec), "margin": LAYER_MARGIN}
    if math.prod(spec["weight_shape"]) == 0:
        record["untimed"] = "no weights left after shrinking: its output is its bias"
        return record
    if record["density"] > DENSE_ABOVE:
        record["untimed"] = f"density {record['density']:.3f} > {DENSE_ABOVE}, sparse kernels not timed"
        return record
    x = torch.randn(batch, *shape, generator=generator)
    if layout == CHANNELS_FIRST:
        x = x.transpose(0, 1).contiguous()
    elif dense_format == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    kinds, skipped = _candidates(spec, shape, batch)
    layers = {"dense": program.alone(index, "dense", dense_format)}
    for kind in kinds:
        built = _runnable(program, index, kind, dense_format, (x, layout))
        if isinstance(built, str):
            skipped[kind] = built
        else:
            layers[kind] = built
    probes = [Probe("layer", spec["name"], kind, batch) for kind in layers]
    operations = [lambda layer=layer: layer.run([(x, layout), None]) for layer in layers.values()]
    times = timer(probes, operations)
    record.update(input_layout=layout, timings=dict(zip(layers, times, strict=True)), skipped=skipped)
    return record


def _time_models(
    models: Mapping[str, Any],
    input_shape: Sequence[int],
    batch: int,
    timer: Timer,
    generator: torch.Generator,
) -> dict[str, list[float]]:
    x = torch.randn(batch, *input_shape, generator=generator)
    probes = [Probe("model", "model", variant, batch) for variant in models]
    times = timer(probes, [lambda model=model: model(x) for model in models.values()])
    return dict(zip(models, times, strict=True))


def choose_plans(
    program: Program,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int],
    timer: Timer,
    mode: str = "auto",
    dense_formats: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """One plan record per batch size (see the module docstring); `mode` "dense" or "sparse" forces every
    layer's kernel without timing; `dense_formats` fixes the dense layers' memory format per batch size."""
    names = program.weight_names
    all_dense = dict.fromkeys(names, "dense")
    generator = torch.Generator().manual_seed(0)
    shapes = trace_inputs(program, input_shape)
    plans = []
    for batch in batch_sizes:
        plan: dict[str, Any] = {"batch_size": int(batch)}
        if dense_formats is not None and batch in dense_formats:
            plan["dense_format"] = dense_formats[batch]
        elif len(input_shape) == 3 and mode == "auto":
            plan["format_timings"] = _time_models(
                {fmt: program.single(all_dense, fmt) for fmt in DENSE_FORMATS},
                input_shape, batch, timer, generator,
            )  # fmt: skip
        else:
            plan["dense_format"] = "contiguous"
        plan["dense_format"] = decide_format(plan)
        dense_format = plan["dense_format"]
        kinds = dict(all_dense)
        records = []
        for index, spec in enumerate(program.layers):
            if spec["op"] not in WEIGHT_LAYERS:
                continue
            if mode != "auto":
                record = {"name": spec["name"], "density": density(spec), "forced": mode}
            else:
                layout = layer_inputs(program.layers, kinds, shapes)[index]
                record = _layer_record(
                    program, index, layout, shapes[index], batch, dense_format, timer, generator
                )
            record["kind"] = kinds[spec["name"]] = decide_layer(record)
            record["reason"] = explain_layer(record)
            records.append(record)
        plan["layers"] = records
        if mode == "auto" and any(kind != "dense" for kind in kinds.values()):
            whole = _time_models(
                {"plan": program.single(kinds, dense_format), "dense": program.single(all_dense, dense_format)},
                input_shape, batch, timer, generator,
            )  # fmt: skip
            plan["end_to_end"] = {**whole, "margin": MODEL_MARGIN}
        plan["kept"] = plan_kept(plan)
        plan["kinds"] = decide_plan(plan)
        plan["reason"] = explain_plan(plan)
        plans.append(plan)
    return plans


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(value) for value in values) / len(values))
