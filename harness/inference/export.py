"""Export a trained sparse network to a compressed inference model, choosing dense or sparse per layer.

Building: BatchNorm is folded into the convolution before it (w' = w * gamma / sqrt(var + eps),
b' = beta - mean * gamma / sqrt(var + eps), in float64), the mask is applied, and each network is written
as a short program of layers over numbered registers (`harness.inference.runtime` runs it). Folding scales whole
filters, so the folded weight has exactly the mask's zeros.

Choosing: every convolution and linear layer is timed both ways on random input of its real shape, at
each batch size asked for, interleaved repetition by repetition (medians), in the activation layout the
layer would receive given the choices before it (so a layout change is charged to the layer that causes
it). A layer goes sparse when the geometric mean over batch sizes of sparse/dense time is below 1; a
layer denser than `DENSE_ABOVE` stays dense untimed, to save export time: there the CSR product still
does half the dense multiply-adds at a small fraction of oneDNN's rate (in the timings taken here,
layers at 25-35% density already lost by 1.3-10x). Then the whole chosen model is timed against the same program run all dense;
if it is not faster, every layer falls back to dense. Every timing is stored, and `decide` re-derives
each choice from them. On 2-D networks the dense layers' memory format (contiguous or channels_last) is
picked first, by timing the all-dense program both ways.

The file (`torch.save`, loadable with `torch.load(..., weights_only=True)`: dicts, lists, strings,
numbers and tensors only) holds, per weight layer, the folded values and CSR indices in the smallest
integer dtype that fits (or the dense tensor where that is smaller), whatever the layer runs as: the
loader rebuilds dense layers from them. Keys: `format`, `version`, `arch`, `dataset`, `input_shape`,
`num_classes`, `dense_format`, `layers` (the program), `num_registers`, `output`, `kinds`, `choices`,
`end_to_end`, `threads`, `batch_sizes`, `source`, `torch`.

Over 450 lines on purpose: the writer, the per-layer timed choice and the loader of one versioned file
format (with the bounds it checks before allocating) stay together, beside the reading of the run it
exports (through the run-store readers and the resume's identity check); the runtime kernels are in
`harness.inference.runtime`.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import DataConfig
from harness.errors import UserError
from harness.inference.checks import EXPORT_NAME, LAYER_CHOICES, completed_run_config, default_out  # noqa: F401
from harness.inference.runtime import (
    BATCH_FIRST,
    CHANNELS_FIRST,
    DENSE_FORMATS,
    KINDS,
    POOLS,
    WEIGHT_LAYERS,
    InferenceModel,
    Layer,
    build_layer,
    csr_from_parts,
)
from harness.store import rundir

log = logging.getLogger(__name__)

FORMAT = "harness-sparse-export"
VERSION = 1
DENSE_ABOVE = 0.5  # layers denser than this stay dense without timing
# ImageNet runs train torchvision's ResNet-50, whose layers the program builder does not translate.
UNSUPPORTED_DATASETS = ("imagenet",)


def _input_spec(data: DataConfig, where: str) -> tuple[int, tuple[int, ...]]:
    """(classes, one sample's shape) of the dataset a model is exported for."""
    from harness.data.datasets import input_spec

    if data.dataset in UNSUPPORTED_DATASETS:
        raise UserError(
            f"{where}: {data.dataset!r}: export handles the CIFAR-style networks, not torchvision's ResNet-50"
        )
    return input_spec(data)


# ---------------------------------------------------------------------------------------------------------
# From a model to a program


def _fold(conv: nn.Module, batchnorm: nn.Module | None, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    weight = conv.weight.detach().to(torch.float64)
    if mask is not None:
        weight = weight * mask.to(torch.float64)
    bias = (
        conv.bias.detach().to(torch.float64)
        if conv.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64)
    )
    if batchnorm is not None:
        scale = batchnorm.weight.detach().double() / torch.sqrt(
            batchnorm.running_var.detach().double() + batchnorm.eps
        )
        weight = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        bias = (bias - batchnorm.running_mean.detach().double()) * scale + batchnorm.bias.detach().double()
    return weight.to(torch.float32), bias.to(torch.float32)


class _ProgramBuilder:
    def __init__(self, masks: dict[str, Tensor], module_names: dict[int, str]) -> None:
        self.masks = masks
        self.names = module_names
        self.layers: list[dict[str, Any]] = []
        self.registers = 1
        self.used: set[str] = set()

    def _new(self) -> int:
        self.registers += 1
        return self.registers - 1

    def weight(
        self, module: nn.Module, batchnorm: nn.Module | None, source: int, *, relu: bool, residual: int = -1
    ) -> int:
        name = self.names[id(module)]
        key = f"{name}.weight"
        mask = self.masks.get(key)
        self.used.add(key)
        weight, bias = _fold(module, batchnorm, mask)
        spec: dict[str, Any] = {
            "name": name,
            "op": "linear" if isinstance(module, nn.Linear) else "conv",
            "input": source,
            "output": self._new(),
            "residual": residual,
            "relu": relu,
            "weight_shape": list(weight.shape),
            "bias": bias,
            "folded": weight,  # replaced by the encoded weight when stored
            "mask": mask.bool() if mask is not None else torch.ones(weight.shape, dtype=torch.bool),
        }
        if spec["op"] == "conv":
            kernel, stride, padding = module.kernel_size, module.stride, module.padding
            if len(set(kernel)) != 1 or len(set(stride)) != 1 or len(set(padding)) != 1:
                raise UserError(f"export: layer {name} has a non-square kernel, stride or padding")
            if module.groups != 1 or any(d != 1 for d in module.dilation):
                raise UserError(
                    f"export: layer {name} is grouped or dilated, which the exporter does not handle"
                )
            spec.update(kernel=kernel[0], stride=stride[0], padding=padding[0])
        self.layers.append(spec)
        return spec["output"]

    def simple(self, op: str, source: int, **extra: Any) -> int:
        output = self._new()
        self.layers.append(
            {"name": f"{op}{len(self.layers)}", "op": op, "input": source, "output": output, **extra}
        )
        return output


def _pool_kernel(module: nn.Module) -> int:
    size = module.kernel_size
    size = size[0] if isinstance(size, tuple) else size
    stride = module.stride[0] if isinstance(module.stride, tuple) else module.stride
    if stride != size or getattr(module, "padding", 0) not in (0, (0,), (0, 0)):
        raise UserError("export: pooling must have stride == kernel and no padding")
    return int(size)


def build_program(model: nn.Module, masks: dict[str, Tensor]) -> tuple[list[dict[str, Any]], int, int]:
    """(layers, number of registers, output register) of the paper's CIFAR / MNIST-1D architectures."""
    from harness.models.resnet50 import Bottleneck, CifarResNet50
    from harness.models.resnet_cifar import BasicBlock, CifarResNet
    from harness.models.vgg import VGG

    names = {id(module): name for name, module in model.named_modules()}
    builder = _ProgramBuilder(masks, names)
    x = 0
    if isinstance(model, VGG):
        modules = list(model.features)
        index = 0
        while index < len(modules):
            module = modules[index]
            if isinstance(module, nn.Conv1d | nn.Conv2d):
                batchnorm = modules[index + 1]
                relu = index + 2 < len(modules) and isinstance(modules[index + 2], nn.ReLU)
                x = builder.weight(module, batchnorm, x, relu=relu)
                index += 3 if relu else 2
                continue
            if isinstance(module, nn.MaxPool1d | nn.MaxPool2d):
                x = builder.simple("maxpool", x, kernel=_pool_kernel(module))
            elif isinstance(module, nn.AvgPool1d | nn.AvgPool2d):
                x = builder.simple("avgpool", x, kernel=_pool_kernel(module))
            else:
                raise UserError(f"export: unexpected VGG module {type(module).__name__}")
            index += 1
        x = builder.simple("flatten", x)
        x = builder.weight(model.classifier, None, x, relu=False)
    elif isinstance(model, CifarResNet | CifarResNet50):
        stem_conv, stem_bn = model.stem[0], model.stem[1]
        x = builder.weight(stem_conv, stem_bn, x, relu=True)
        for stage in model.stages:
            for block in stage:
                if isinstance(block.shortcut, nn.Identity):
                    shortcut = x
                else:
                    shortcut = builder.weight(block.shortcut[0], block.shortcut[1], x, relu=False)
                if isinstance(block, BasicBlock):
                    out = builder.weight(block.conv1, block.bn1, x, relu=True)
                    x = builder.weight(block.conv2, block.bn2, out, relu=True, residual=shortcut)
                elif isinstance(block, Bottleneck):
                    out = builder.weight(block.conv1, block.bn1, x, relu=True)
                    out = builder.weight(block.conv2, block.bn2, out, relu=True)
                    x = builder.weight(block.conv3, block.bn3, out, relu=True, residual=shortcut)
                else:
                    raise UserError(f"export: unexpected block {type(block).__name__}")
        x = builder.simple("global_avgpool", x)
        x = builder.simple("flatten", x)
        x = builder.weight(model.fc, None, x, relu=False)
    else:
        raise UserError(
            f"export: {type(model).__name__} is not supported; the exporter handles the CIFAR / MNIST-1D "
            "ResNet-20/32/56, VGG-19 and ResNet-50 (not torchvision's ImageNet ResNet-50)"
        )
    unknown = sorted(set(masks) - builder.used)
    if unknown:
        raise UserError(f"export: masks name tensors the network does not have: {', '.join(unknown)}")
    return builder.layers, builder.registers, x


# ---------------------------------------------------------------------------------------------------------
# Weight storage


def index_dtype(largest: int) -> torch.dtype:
    """The smallest integer dtype holding 0..largest."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if largest <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def encode_weight(weight: Tensor, mask: Tensor) -> dict[str, Any]:
    """CSR over `[out, in * kernel]` (values at the mask's positions) or dense, whichever takes fewer bytes."""
    rows = weight.shape[0]
    matrix, keep = weight.reshape(rows, -1), mask.reshape(rows, -1).bool()
    nnz = int(keep.sum())
    column_dtype, row_dtype = index_dtype(max(matrix.shape[1] - 1, 0)), index_dtype(nnz)
    csr_bytes = nnz * (4 + column_dtype.itemsize) + (rows + 1) * row_dtype.itemsize
    if csr_bytes >= weight.numel() * 4:
        return {"storage": "dense", "values": (weight * mask.to(weight.dtype)).contiguous()}
    row_index, column_index = keep.nonzero(as_tuple=True)
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(row_index, minlength=rows), 0)
    return {
        "storage": "csr",
        "values": matrix[row_index, column_index].contiguous(),
        "crow": crow.to(row_dtype),
        "col": column_index.to(column_dtype),
    }


def decode_weight(entry: dict[str, Any], shape: Sequence[int]) -> Tensor:
    """A 2-D CSR tensor (`[out, in * kernel]`) or the dense tensor of `shape`."""
    if entry["storage"] == "dense":
        values = entry["values"].to(torch.float32)
        if list(values.shape) != list(shape):
            raise ValueError(f"dense weight has shape {list(values.shape)}, expected {list(shape)}")
        return values
    if entry["storage"] != "csr":
        raise ValueError(f"unknown weight storage {entry['storage']!r}")
    rows, columns = int(shape[0]), math.prod(int(size) for size in shape[1:])
    crow, col, values = entry["crow"].long(), entry["col"].long(), entry["values"]
    # Checked here because torch's sparse kernels do not check (a bad index reads out of bounds).
    if (
        crow.shape != (rows + 1,)
        or int(crow[0]) != 0
        or int(crow[-1]) != values.numel()
        or col.shape != values.shape
        or bool((crow[1:] < crow[:-1]).any())
        or (col.numel() and (int(col.min()) < 0 or int(col.max()) >= columns))
    ):
        raise ValueError("CSR indices are inconsistent with the weight's shape")
    return csr_from_parts(crow, col, values, (rows, columns))


def _density(spec: dict[str, Any]) -> float:
    mask = spec["mask"]
    return float(mask.sum()) / mask.numel()


# ---------------------------------------------------------------------------------------------------------
# Building the callable model


def _model(
    layers: Sequence[dict[str, Any]],
    weights: Sequence[Tensor | None],
    kinds: dict[str, str],
    dense_format: str,
    num_registers: int,
    output: int,
) -> InferenceModel:
    built = [
        build_layer(spec, weight, kinds.get(spec["name"], "dense"), dense_format)
        for spec, weight in zip(layers, weights, strict=True)
    ]
    return InferenceModel(built, num_registers, output)


def model_from_payload(payload: dict[str, Any], kinds: dict[str, str] | None = None) -> InferenceModel:
    """The callable network of an export (its stored per-layer kinds, or `kinds` to override them)."""
    weights = [
        decode_weight(spec["weight"], spec["weight_shape"]) if spec["op"] in WEIGHT_LAYERS else None
        for spec in payload["layers"]
    ]
    chosen = dict(payload["kinds"]) if kinds is None else kinds
    return _model(
        payload["layers"],
        weights,
        chosen,
        payload["dense_format"],
        payload["num_registers"],
        payload["output"],
    )


# ---------------------------------------------------------------------------------------------------------
# Timing and the per-layer choice


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    if threads < 1:
        raise UserError(f"--threads: must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved_medians(
    operations: Sequence[Callable[[], Any]], repetitions: int, warmup: int
) -> list[float]:
    """Median seconds of each operation, timed in turn within every repetition; the order rotates each
    repetition so that none always runs right after another (caches, frequency, neighbours' load)."""
    times: list[list[float]] = [[] for _ in operations]
    count = len(operations)
    for repetition in range(warmup + repetitions):
        for offset in range(count):
            index = (repetition + offset) % count
            start = time.perf_counter()
            operations[index]()
            elapsed = time.perf_counter() - start
            if repetition >= warmup:
                times[index].append(elapsed)
    return [statistics.median(series) for series in times]


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(value) for value in values) / len(values))


def decide(choice: dict[str, Any]) -> str:
    """The kind a stored choice record stands for: a pure function of its timings."""
    if choice.get("forced"):
        return choice["forced"]
    if not choice.get("sparse_s"):
        return "dense"
    ratios = [sparse / dense for sparse, dense in zip(choice["sparse_s"], choice["dense_s"], strict=True)]
    return "sparse" if geometric_mean(ratios) < 1.0 else "dense"


def decide_end_to_end(record: dict[str, Any]) -> bool:
    """Whether the chosen mix is kept (True) or every layer falls back to dense (False)."""
    if not record.get("chosen_s"):
        return True
    ratios = [chosen / dense for chosen, dense in zip(record["chosen_s"], record["dense_s"], strict=True)]
    return geometric_mean(ratios) < 1.0


def _trace_inputs(model: InferenceModel, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The batch-first shape (without the batch) of every layer's input, from one batch-1 pass."""
    registers: list[Any] = [None] * model.num_registers
    registers[0] = (torch.zeros(1, *input_shape), BATCH_FIRST)
    shapes = []
    with torch.inference_mode():
        for layer in model.layers:
            tensor, layout = registers[layer.input]
            shape = list(tensor.shape)
            if layout == CHANNELS_FIRST:
                shape[0], shape[1] = shape[1], shape[0]
            shapes.append(tuple(shape[1:]))
            layer.run(registers)
    return shapes


def _layer_inputs(
    layers: Sequence[dict[str, Any]], kinds: dict[str, str], shapes: Sequence[tuple[int, ...]]
) -> list[str]:
    """The layout each layer receives, given the kinds of the layers before it."""
    register_layout = {0: BATCH_FIRST}
    received = []
    for spec, shape in zip(layers, shapes, strict=True):
        layout = register_layout[spec["input"]]
        received.append(layout)
        if spec["op"] in WEIGHT_LAYERS:
            out = CHANNELS_FIRST if kinds.get(spec["name"]) == "sparse" else BATCH_FIRST
        elif spec["op"] in POOLS:
            out = layout
        else:  # flatten
            out = CHANNELS_FIRST if layout == CHANNELS_FIRST and math.prod(shape[1:]) == 1 else BATCH_FIRST
        register_layout[spec["output"]] = out
    return received


def _time_layer(
    spec: dict[str, Any],
    weight: Tensor,
    layout: str,
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    dense_format: str,
    repetitions: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    alone = {**spec, "input": 0, "output": 1, "residual": -1}
    candidates = [build_layer(alone, weight, kind, dense_format) for kind in KINDS]
    dense_s, sparse_s = [], []
    generator = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        x = torch.randn(batch, *shape, generator=generator)
        if layout == CHANNELS_FIRST:
            x = x.transpose(0, 1).contiguous()
        elif dense_format == "channels_last" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)

        def runner(layer: Layer, x: Tensor = x) -> Callable[[], None]:
            return lambda: layer.run([(x, layout), None])

        with torch.inference_mode():
            dense, sparse = interleaved_medians([runner(layer) for layer in candidates], repetitions, warmup)
        dense_s.append(dense)
        sparse_s.append(sparse)
    return dense_s, sparse_s


def _time_models(
    models: Sequence[InferenceModel],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    repetitions: int,
    warmup: int,
) -> list[list[float]]:
    """Per model, the median seconds of a forward pass at each batch size."""
    generator = torch.Generator().manual_seed(1)
    result: list[list[float]] = [[] for _ in models]
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape, generator=generator)
        with torch.inference_mode():
            medians = interleaved_medians([(lambda m=m, x=x: m(x)) for m in models], repetitions, warmup)
        for series, median in zip(result, medians, strict=True):
            series.append(median)
    return result


def choose(
    layers: Sequence[dict[str, Any]],
    weights: Sequence[Tensor | None],
    num_registers: int,
    output: int,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int],
    mode: str = "auto",
    repetitions: int = 7,
    warmup: int = 2,
    dense_format: str | None = None,
) -> tuple[str, dict[str, str], list[dict[str, Any]], dict[str, Any]]:
    """(dense memory format, kind per layer, choice records, end-to-end record); see the module docstring."""
    spatial_dims = len(input_shape) - 1
    all_dense = {spec["name"]: "dense" for spec in layers if spec["op"] in WEIGHT_LAYERS}
    end_to_end: dict[str, Any] = {"batch_sizes": list(batch_sizes)}
    if dense_format is not None:
        if dense_format not in DENSE_FORMATS:
            raise UserError(f"dense format: {dense_format!r} is not one of {', '.join(DENSE_FORMATS)}")
        end_to_end["dense_format_given"] = True
    elif spatial_dims == 2 and mode == "auto":
        contiguous_s, channels_last_s = _time_models(
            [_model(layers, weights, all_dense, fmt, num_registers, output) for fmt in DENSE_FORMATS],
            input_shape,
            batch_sizes,
            repetitions,
            warmup,
        )
        end_to_end.update(contiguous_s=contiguous_s, channels_last_s=channels_last_s)
        ratio = geometric_mean([cl / c for cl, c in zip(channels_last_s, contiguous_s, strict=True)])
        dense_format = "channels_last" if ratio < 1.0 else "contiguous"
    else:
        dense_format = "contiguous"
    end_to_end["dense_format"] = dense_format
    shapes = _trace_inputs(
        _model(layers, weights, all_dense, dense_format, num_registers, output), input_shape
    )
    kinds = dict(all_dense)
    choices: list[dict[str, Any]] = []
    for index, (spec, weight) in enumerate(zip(layers, weights, strict=True)):
        if spec["op"] not in WEIGHT_LAYERS:
            continue
        assert weight is not None
        density = _density(spec)
        record: dict[str, Any] = {"name": spec["name"], "density": density, "batch_sizes": list(batch_sizes)}
        if mode != "auto":
            record["forced"] = mode
            record["reason"] = f"{mode}: forced"
        elif density > DENSE_ABOVE:
            record["reason"] = f"dense: density {density:.3f} > {DENSE_ABOVE}, sparse kernel not timed"
        else:
            layout = _layer_inputs(layers, kinds, shapes)[index]
            record["input_layout"] = layout
            record["dense_s"], record["sparse_s"] = _time_layer(
                spec, weight, layout, shapes[index], batch_sizes, dense_format, repetitions, warmup
            )
        kind = decide(record)
        if "sparse_s" in record:
            ratios = [s / d for s, d in zip(record["sparse_s"], record["dense_s"], strict=True)]
            parts = ", ".join(f"batch {b}: {r:.2f}x" for b, r in zip(batch_sizes, ratios, strict=True))
            record["reason"] = f"{kind}: sparse/dense time {geometric_mean(ratios):.2f} ({parts})"
        record["kind"] = kind
        kinds[spec["name"]] = kind
        choices.append(record)
    if mode == "auto" and any(kind == "sparse" for kind in kinds.values()):
        chosen_s, dense_s = _time_models(
            [
                _model(layers, weights, kinds, dense_format, num_registers, output),
                _model(layers, weights, all_dense, dense_format, num_registers, output),
            ],
            input_shape,
            batch_sizes,
            repetitions,
            warmup,
        )
        end_to_end.update(chosen_s=chosen_s, dense_s=dense_s)
        end_to_end["kept"] = decide_end_to_end(end_to_end)
        if not end_to_end["kept"]:
            kinds = dict(all_dense)
            for record in choices:
                record["reason"] += "; whole model not faster than all-dense, so dense"
    return dense_format, kinds, choices, end_to_end


def replay(payload: dict[str, Any]) -> dict[str, str]:
    """The per-layer kinds the stored timings of an export stand for (equal to its `kinds`)."""
    kinds = {record["name"]: decide(record) for record in payload["choices"]}
    if not decide_end_to_end(payload["end_to_end"]):
        kinds = {name: "dense" for name in kinds}
    return kinds


# ---------------------------------------------------------------------------------------------------------
# Export, save, load


def export_model(
    model: nn.Module,
    masks: dict[str, Tensor],
    *,
    arch: str,
    dataset: str,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    layers: str = "auto",
    repetitions: int = 7,
    warmup: int = 2,
    threads: int = 1,
    source: dict[str, Any] | None = None,
    dense_format: str | None = None,
) -> dict[str, Any]:
    """The export payload of an eval-mode `model` with `masks` (weight name -> 0/1 tensor; absent = dense).

    `dense_format` fixes the dense layers' memory format instead of timing both (the benchmark measures
    it once per network for all sparsities: dense speed does not depend on the mask).
    """
    if layers not in LAYER_CHOICES:
        raise UserError(f"--layers: {layers!r} is not one of {', '.join(LAYER_CHOICES)}")
    if not batch_sizes or any(batch < 1 for batch in batch_sizes):
        raise UserError(f"--batch-sizes: need positive batch sizes, got {list(batch_sizes)}")
    if repetitions < 1 or warmup < 0:
        raise UserError(f"export: repetitions must be >= 1 and warmup >= 0, got {repetitions}, {warmup}")
    model = model.eval()
    program, num_registers, output = build_program(model, masks)
    weights: list[Tensor | None] = []
    for spec in program:
        if spec["op"] in WEIGHT_LAYERS:
            spec["weight"] = encode_weight(spec.pop("folded"), spec["mask"])
            weights.append(decode_weight(spec["weight"], spec["weight_shape"]))
        else:
            weights.append(None)
    with intra_op_threads(threads):
        dense_format, kinds, choices, end_to_end = choose(
            program,
            weights,
            num_registers,
            output,
            input_shape,
            batch_sizes=batch_sizes,
            mode=layers,
            repetitions=repetitions,
            warmup=warmup,
            dense_format=dense_format,
        )
    for spec in program:
        spec.pop("mask", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "dataset": dataset,
        "input_shape": list(input_shape),
        "num_classes": int(program[-1]["weight_shape"][0]),
        "dense_format": dense_format,
        "layers": program,
        "num_registers": num_registers,
        "output": output,
        "kinds": kinds,
        "choices": choices,
        "end_to_end": end_to_end,
        "threads": threads,
        "batch_sizes": list(batch_sizes),
        "repetitions": repetitions,
        "source": source or {},
        "torch": str(torch.__version__),
    }


def serialize(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_export(path: Path, payload: dict[str, Any]) -> int:
    """Write the export atomically; returns its size in bytes."""
    from harness.store.rundir import atomic_write

    data = serialize(payload)
    atomic_write(Path(path), lambda handle: handle.write(data))
    return len(data)


REQUIRED_KEYS = ("format", "version", "layers", "num_registers", "output", "kinds", "dense_format")


def read_export(path: Path) -> dict[str, Any]:
    """The payload of an export file. UserError (one line, naming the file) if missing, damaged or foreign."""
    from harness.store.checkpoint import is_complete

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: export file not found")
    # torch.load does not check the zip CRCs: a flipped byte inside a tensor would load silently.
    if not is_complete(path):
        raise UserError(f"{path}: export file is truncated or corrupt (zip integrity check failed)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure of a damaged file is the same answer
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: export file cannot be loaded with weights_only=True: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a harness export file (expected format {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise UserError(
            f"{path}: export format version {payload.get('version')!r}; this harness reads {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UserError(f"{path}: export file lacks {', '.join(missing)}")
    _check_program(path, payload)
    return payload


# Bounds of a readable export, so that a crafted file cannot make the loader allocate without limit: the
# builder numbers one register per layer, and no network exported here has a larger sample or layer geometry.
MAX_SAMPLE_VALUES = 2**24
MAX_GEOMETRY = 4096


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_program(path: Path, payload: dict[str, Any]) -> None:
    """UserError naming the file and the field when the program's numbers are out of range (checked
    before anything is allocated from them)."""
    layers = payload["layers"]
    if not isinstance(layers, list) or not all(isinstance(spec, dict) for spec in layers):
        raise UserError(f"{path}: export file's layers are not a list of layer records")
    registers = payload["num_registers"]
    if not _whole(registers, 1, len(layers) + 1):
        raise UserError(
            f"{path}: num_registers {registers!r} is out of range: this program of {len(layers)} layers "
            f"uses 1 to {len(layers) + 1}"
        )
    fields: list[tuple[str, Any, int, int]] = [("output", payload["output"], 0, registers - 1)]
    shape = payload.get("input_shape")
    if not isinstance(shape, list | tuple) or not all(_whole(size, 1, MAX_SAMPLE_VALUES) for size in shape):
        raise UserError(f"{path}: input_shape {shape!r} is not a list of positive integers")
    if math.prod(shape) > MAX_SAMPLE_VALUES:
        raise UserError(f"{path}: input_shape {list(shape)} holds over {MAX_SAMPLE_VALUES} values per sample")
    fields.append(("num_classes", payload.get("num_classes"), 1, MAX_SAMPLE_VALUES))
    for index, spec in enumerate(layers):
        where = f"layers[{index}]"
        fields += [(f"{where}.input", spec.get("input"), 0, registers - 1)]
        fields += [(f"{where}.output", spec.get("output"), 1, registers - 1)]
        fields += [(f"{where}.residual", spec.get("residual", -1), -1, registers - 1)]
        fields += [(f"{where}.{key}", spec.get(key, 1), 1, MAX_GEOMETRY) for key in ("kernel", "stride")]
        fields += [(f"{where}.padding", spec.get("padding", 0), 0, MAX_GEOMETRY)]
    for name, value, low, high in fields:
        if not _whole(value, low, high):
            raise UserError(f"{path}: {name} {value!r} is out of range: an integer in [{low}, {high}]")


def load_export(path: Path) -> tuple[InferenceModel, dict[str, Any]]:
    """The callable network stored at `path` and its payload (choices, timings, source)."""
    payload = read_export(path)
    try:
        model = model_from_payload(payload)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as error:
        raise UserError(f"{path}: export file is inconsistent: {error}") from None
    return model, payload


def check_export(path: Path) -> dict[str, Any]:
    """Load an export and run it once on random input (a damaged program fails here, not in a user's
    loop); returns its payload."""
    model, payload = load_export(path)
    shape = payload.get("input_shape")
    try:
        with torch.inference_mode():
            logits = model(torch.randn(2, *shape))
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: export file does not run: {reason}") from None
    if tuple(logits.shape) != (2, payload.get("num_classes")):
        raise UserError(f"{path}: export file gives logits of shape {tuple(logits.shape)}")
    return payload


# ---------------------------------------------------------------------------------------------------------
# Models to export: a finished run, or a random ERK mask


def calibrate_batchnorm(
    model: nn.Module, input_shape: Sequence[int], *, seed: int = 0, batches: int = 2
) -> None:
    """Give an untrained model's BatchNorm layers running statistics from random batches, so that folding
    them is not the identity (an untrained network has mean 0, variance 1 everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    saved = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved[module] = module.momentum
            module.momentum = None  # cumulative average over the calibration batches
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, *input_shape, generator=generator))
    for module, momentum in saved.items():
        module.momentum = momentum
    model.eval()


def random_masked_model(
    arch: str, dataset: str, sparsity: float, *, seed: int = 0, width: float = 1.0
) -> tuple[nn.Module, dict[str, Tensor], tuple[int, ...]]:
    """A randomly initialised model with a random ERK mask at `sparsity` applied, BatchNorm calibrated."""
    from harness.models.build import build_model
    from harness.sparse import MaskSet, build_method

    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity: must be in [0, 1), got {sparsity}")
    num_classes, input_shape = _input_spec(DataConfig(dataset=dataset), "--dataset")
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, input_shape=input_shape, width=width)
    masks = MaskSet.for_model(model)
    build_method("static", masks, None, {"sparsity": sparsity}, total_steps=1, seed=seed)
    masks.apply()  # static's initialisation applies too; explicit because export relies on it
    calibrate_batchnorm(model, input_shape, seed=seed)
    return model, masks.state_dict(), input_shape


# World sizes tried when matching a checkpoint's config hash to the run's config (the hash includes it).
MAX_WORLD_SIZE = 1024


def _final_checkpoint(run_dir: Path) -> Path:
    from harness.store.checkpoint import complete_checkpoint

    found, damaged = complete_checkpoint(run_dir)
    if found is None:
        if damaged:
            raise UserError(
                f"{rundir.checkpoint_dir(run_dir)}: {' and '.join(path.name for path in damaged)} "
                f"{'are' if len(damaged) > 1 else 'is'} incomplete or corrupt (zip integrity check failed); "
                "nothing to export"
            )
        raise UserError(f"{run_dir}: no complete checkpoint under checkpoints/")
    if damaged:
        log.warning(
            "%s is incomplete or corrupt; exporting %s instead (the checkpoint before the final one)",
            damaged[0],
            found,
        )
    return found


def _check_checkpoint_identity(path: Path, state: dict[str, Any], config: Any) -> None:
    """The identity check `harness run` makes on resume: the checkpoint must have been written by a run of
    this config (its run id and config hash, at the world size it ran with)."""
    from harness import config as configuration
    from harness.store.checkpoint import check_identity

    theirs = state.get("config_hash")
    world_size = next(
        (size for size in range(1, MAX_WORLD_SIZE + 1) if configuration.config_hash(config, size) == theirs),
        1,
    )
    check_identity(
        path,
        state,
        configuration.run_id(config, world_size),
        configuration.config_hash(config, world_size),
        use="export it",
    )


def run_model(run_dir: Path) -> tuple[nn.Module, dict[str, Tensor], dict[str, Any]]:
    """(eval-mode model with the final weights, masks, facts about the run) of a completed run.

    Read through the run-store readers: a damaged status or config, truncated checkpoints or another run's
    checkpoint are one UserError naming the file.
    """
    from harness.models.build import build_model
    from harness.store.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    config = completed_run_config(run_dir)
    num_classes, input_shape = _input_spec(config.data, str(run_dir))
    checkpoint_path = _final_checkpoint(run_dir)
    state = load_checkpoint(checkpoint_path)
    _check_checkpoint_identity(checkpoint_path, state, config)
    model = build_model(
        config.model.arch, num_classes=num_classes, input_shape=input_shape, width=config.model.width
    )
    try:
        model.load_state_dict(state["model"])
        masks = {name: mask.bool() for name, mask in state["sparsifier"]["masks"].items()}
    except (KeyError, RuntimeError, TypeError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{checkpoint_path}: checkpoint does not match the run's config: {reason}") from None
    model.eval()
    facts = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint_path),
        "epoch": int(state.get("epoch", -1)),
        "method": config.sparsity.method,
        "dataset": config.data.dataset,
        "arch": config.model.arch,
        "width": config.model.width,
        "input_shape": input_shape,
    }
    return model, masks, facts


def masked_reference(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A copy of `model` in eval mode with every masked weight zeroed: what the export must reproduce."""
    reference = copy.deepcopy(model).eval()
    parameters = dict(reference.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask.to(parameters[name].dtype))
    return reference


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of an eval-mode model with each BatchNorm folded into the layer before it (for a fair dense
    baseline: the export folds them too)."""
    from harness.engine.batchnorm import batchnorm_after

    folded = copy.deepcopy(model).eval()
    followers = batchnorm_after(folded, input_shape)
    modules = dict(folded.named_modules())
    names = {id(module): name for name, module in modules.items()}
    for weight_name, batchnorm in followers.items():
        layer = modules[weight_name.rsplit(".", 1)[0]]
        weight, bias = _fold(layer, batchnorm, None)
        with torch.no_grad():
            layer.weight.copy_(weight)
        layer.bias = nn.Parameter(bias)
        parent_name, _, child = names[id(batchnorm)].rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, child, nn.Identity())
    return folded


def describe_choices(payload: dict[str, Any]) -> str:
    """One line per weight layer: kind, density and why."""
    lines = [
        f"dense layers run as {payload['dense_format']}; timed with {payload['threads']} thread(s) "
        f"at batch sizes {', '.join(map(str, payload['batch_sizes']))}"
    ]
    width = max((len(record["name"]) for record in payload["choices"]), default=4)
    for record in payload["choices"]:
        lines.append(
            f"{record['name']:<{width}}  {payload['kinds'][record['name']]:<6}  "
            f"density {record['density']:.3f}  {record['reason']}"
        )
    end_to_end = payload["end_to_end"]
    if end_to_end.get("chosen_s"):
        ratios = [c / d for c, d in zip(end_to_end["chosen_s"], end_to_end["dense_s"], strict=True)]
        verdict = "kept" if end_to_end["kept"] else "rejected: all layers dense"
        lines.append(f"whole model vs all-dense: {geometric_mean(ratios):.2f}x the time ({verdict})")
    sparse = sum(kind == "sparse" for kind in payload["kinds"].values())
    lines.append(f"{sparse} of {len(payload['kinds'])} layers sparse")
    return "\n".join(lines)
