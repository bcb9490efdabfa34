"""Export a trained sparse network to a compressed inference model: shrunk, then a kernel per layer and
batch size.

Building: BatchNorm is folded into the convolution before it (w' = w * gamma / sqrt(var + eps),
b' = beta - mean * gamma / sqrt(var + eps), in float64), the mask is applied, and each network is written
as a short program of layers over numbered registers (`harness.inference.runtime` runs it). Folding scales
whole filters, so the folded weight has exactly the mask's zeros.

Shrinking (`harness.inference.shrink`): channels whose value does not depend on the input (filters without
live weights) are removed with the matching input channels of their consumers, which absorb them into their
bias; residual adds keep a channel any of their inputs carries. The export then runs the shrunk and the
unshrunk program all dense on a random batch and fails if they differ by more than `SHRINK_TOLERANCE`.

Choosing (`harness.inference.plan`): one plan per batch size asked for, from interleaved repeated timings with
a margin, each checked whole against dense; a call runs the plan of the nearest planned batch size
(`harness.inference.runtime.nearest_planned`).

The file (`torch.save`, loadable with `torch.load(..., weights_only=True)`: dicts, lists, strings,
numbers and tensors only) holds, per weight layer, the folded values and CSR indices in the smallest
integer dtype that fits (or the dense tensor where that is smaller), whatever the layer runs as: the
loader rebuilds dense and block-sparse layers from them. Keys (version 2): `format`, `version`, `arch`,
`dataset`, `input_shape`, `num_classes`, `layers` (the shrunk program; a layer whose bias varies over
positions carries `bias_correction`), `num_registers`, `output`, `shrinking` (filters and multiply-adds
before and after, per layer and in total), `plans` (per batch size: `batch_size`, `dense_format`, `kinds`,
`kept`, the per-layer records with every timing and the reason, `end_to_end`), `margins`, `threads`,
`batch_sizes`, `repetitions`, `source`, `torch`. Version 1 files (one plan, unshrunk) are refused.

Over 450 lines on purpose: the writer and the loader of one versioned file format (with the bounds it
checks before allocating) stay together, beside the reading of the run it exports (through the run-store
readers and the resume's identity check); the kernels are in `harness.inference.runtime`, the shrinking in
`harness.inference.shrink`, the choice in `harness.inference.plan`.
"""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import DataConfig
from harness.errors import UserError
from harness.inference.checks import EXPORT_NAME, LAYER_CHOICES, completed_run_config, default_out  # noqa: F401
from harness.inference.plan import (  # noqa: F401 - DENSE_ABOVE and replay are part of this module's API
    DENSE_ABOVE,
    LAYER_MARGIN,
    MODEL_MARGIN,
    InterleavedTimer,
    Timer,
    choose_plans,
    explain_plan,
    fit_blocks,
    replay,
)
from harness.inference.runtime import (
    DENSE_FORMATS,
    KINDS,
    WEIGHT_LAYERS,
    InferenceModel,
    Program,
    csr_from_parts,
)
from harness.inference.shrink import describe_shrinking, shrink_program
from harness.store import rundir

log = logging.getLogger(__name__)

FORMAT = "harness-sparse-export"
VERSION = 2
# Largest relative logit difference allowed between the shrunk and the unshrunk program (float32 rounding
# of the absorbed biases is ~1e-6 here).
SHRINK_TOLERANCE = 1e-4
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
    matrix, keep = weight.flatten(1), mask.flatten(1).bool()
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


def encode_correction(correction: Tensor) -> dict[str, Any]:
    """A bias correction `[C, *space]` (nonzero only where a shrunk-away channel meets zero padding) as CSR
    over `[C, positions]` or dense, whichever is smaller, with its shape."""
    return {**encode_weight(correction, correction != 0), "shape": list(correction.shape)}


def decode_correction(entry: dict[str, Any] | None) -> Tensor | None:
    if entry is None:
        return None
    shape = [int(size) for size in entry["shape"]]
    decoded = decode_weight(entry, shape)
    return (decoded.to_dense() if decoded.layout != torch.strided else decoded).reshape(shape).contiguous()


# ---------------------------------------------------------------------------------------------------------
# Building the callable model


def program_of(payload: dict[str, Any]) -> Program:
    """The decoded program of an export (weights and bias corrections rebuilt from their stored form)."""
    layers = payload["layers"]
    weights = [
        decode_weight(spec["weight"], spec["weight_shape"]) if spec["op"] in WEIGHT_LAYERS else None
        for spec in layers
    ]
    corrections = [decode_correction(spec.get("bias_correction")) for spec in layers]
    return Program(layers, weights, corrections, payload["num_registers"], payload["output"])


def model_from_payload(payload: dict[str, Any], kinds: dict[str, str] | None = None) -> InferenceModel:
    """The callable network of an export: each batch size's stored plan, or `kinds` at every batch size."""
    program = program_of(payload)
    plans = {}
    for plan in payload["plans"]:
        if plan["dense_format"] not in DENSE_FORMATS:
            raise ValueError(
                f"dense format {plan['dense_format']!r} is not one of {', '.join(DENSE_FORMATS)}"
            )
        plans[int(plan["batch_size"])] = (plan["kinds"] if kinds is None else kinds, plan["dense_format"])
    return program.model(plans)


# ---------------------------------------------------------------------------------------------------------
# Export, save, load


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


def _dense_program(layers: Sequence[dict[str, Any]], num_registers: int, output: int) -> Program:
    weights = [spec.get("folded") for spec in layers]
    corrections = [spec.get("bias_correction") for spec in layers]
    return Program(layers, weights, corrections, num_registers, output)


def _verify_shrinking(
    before: Program, after: Program, input_shape: Sequence[int], names: Sequence[str]
) -> None:
    """Both programs all dense on one random batch: a shrinking bug fails the export, not a user's model."""
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = before.single(dict.fromkeys(names, "dense"), "contiguous")(x)
        got = after.single(dict.fromkeys(names, "dense"), "contiguous")(x)
    error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    if not error <= SHRINK_TOLERANCE:
        raise RuntimeError(f"export: structured shrinking changed the logits by {error:.1e} (relative)")


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
    dense_format: str | Mapping[int, str] | None = None,
    timer: Timer | None = None,
) -> dict[str, Any]:
    """The export payload of an eval-mode `model` with `masks` (weight name -> 0/1 tensor; absent = dense).

    `dense_format` fixes the dense layers' memory format (one for all batch sizes, or one per batch size)
    instead of timing both (the benchmark measures it once per network for all sparsities: dense speed
    does not depend on the mask). `timer` replaces the interleaved wall-clock timer (tests script it).
    """
    if layers not in LAYER_CHOICES:
        raise UserError(f"--layers: {layers!r} is not one of {', '.join(LAYER_CHOICES)}")
    if not batch_sizes or any(batch < 1 for batch in batch_sizes):
        raise UserError(f"--batch-sizes: need positive batch sizes, got {list(batch_sizes)}")
    if repetitions < 1 or warmup < 0:
        raise UserError(f"export: repetitions must be >= 1 and warmup >= 0, got {repetitions}, {warmup}")
    batch_sizes = sorted(set(int(batch) for batch in batch_sizes))
    if isinstance(dense_format, str):
        dense_format = dict.fromkeys(batch_sizes, dense_format)
    for fmt in (dense_format or {}).values():
        if fmt not in DENSE_FORMATS:
            raise UserError(f"dense format: {fmt!r} is not one of {', '.join(DENSE_FORMATS)}")
    model = model.eval()
    program, num_registers, output = build_program(model, masks)
    shrunk, shrinking = shrink_program(program, num_registers, output, input_shape)
    fit_blocks(shrunk)
    weights: list[Tensor | None] = []
    corrections: list[Tensor | None] = []
    for spec in shrunk:
        correction = spec.pop("bias_correction", None)
        corrections.append(correction)
        if correction is not None:
            spec["bias_correction"] = encode_correction(correction)
        if spec["op"] in WEIGHT_LAYERS:
            spec["weight"] = encode_weight(spec.pop("folded"), spec["mask"])
            weights.append(decode_weight(spec["weight"], spec["weight_shape"]))
        else:
            weights.append(None)
    exported = Program(shrunk, weights, corrections, num_registers, output)
    with intra_op_threads(threads):
        _verify_shrinking(
            _dense_program(program, num_registers, output), exported, input_shape, exported.weight_names
        )
        plans = choose_plans(
            exported,
            input_shape,
            batch_sizes=batch_sizes,
            timer=timer or InterleavedTimer(repetitions, warmup),
            mode=layers,
            dense_formats=dense_format,
        )
    for spec in shrunk:
        spec.pop("mask", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "dataset": dataset,
        "input_shape": list(input_shape),
        "num_classes": int(shrunk[-1]["weight_shape"][0]),
        "layers": shrunk,
        "num_registers": num_registers,
        "output": output,
        "shrinking": shrinking,
        "plans": plans,
        "threads": threads,
        "batch_sizes": list(batch_sizes),
        "repetitions": repetitions,
        "margins": {"layer": LAYER_MARGIN, "model": MODEL_MARGIN},
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


REQUIRED_KEYS = ("format", "version", "layers", "num_registers", "output", "plans")


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
# A layer's weight as the loader rebuilds it dense (ResNet-50's largest, its classifier, holds ~2.0e6 values;
# VGG-19's largest convolution ~2.4e6): a crafted `weight_shape` must not make it allocate more.
MAX_WEIGHT_VALUES = 2**26


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
        fields += [(f"{where}.bsr_block", spec.get("bsr_block", 1), 1, MAX_GEOMETRY)]
        if spec.get("op") in WEIGHT_LAYERS:
            sizes = spec.get("weight_shape")
            if (
                not isinstance(sizes, list)
                or not 2 <= len(sizes) <= 5
                or not all(_whole(size, 0, MAX_WEIGHT_VALUES) for size in sizes)
                or math.prod(sizes) > MAX_WEIGHT_VALUES
            ):
                raise UserError(
                    f"{path}: {where}.weight_shape {sizes!r} is out of range: 2 to 5 sizes holding at most "
                    f"{MAX_WEIGHT_VALUES} values"
                )
        correction = spec.get("bias_correction")
        if correction is not None:
            sizes = correction.get("shape") if isinstance(correction, dict) else None
            if (
                not isinstance(sizes, list)
                or not all(_whole(size, 0, MAX_SAMPLE_VALUES) for size in sizes)
                or math.prod(sizes) > MAX_SAMPLE_VALUES
            ):
                raise UserError(f"{path}: {where}.bias_correction's shape {sizes!r} is out of range")
    plans = payload["plans"]
    if not isinstance(plans, list) or not plans or not all(isinstance(plan, dict) for plan in plans):
        raise UserError(f"{path}: export file's plans are not a non-empty list of plan records")
    for index, plan in enumerate(plans):
        fields += [(f"plans[{index}].batch_size", plan.get("batch_size"), 1, MAX_SAMPLE_VALUES)]
        if not isinstance(plan.get("kinds"), dict) or not set(plan["kinds"].values()) <= set(KINDS):
            raise UserError(
                f"{path}: plans[{index}].kinds is not a mapping of layer names to {', '.join(KINDS)}"
            )
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
    """The shrinking, then per batch size: the dense format, one line per weight layer (kernel, density,
    why) and the whole-model verdict."""
    lines = [
        describe_shrinking(payload["shrinking"]),
        f"timed with {payload['threads']} thread(s), n = {payload['repetitions']} interleaved repetitions, "
        f"margins: layer {payload['margins']['layer']:g}, whole model {payload['margins']['model']:g}",
    ]
    for plan in payload["plans"]:
        lines.append(f"batch {plan['batch_size']}: dense layers run as {plan['dense_format']}")
        width = max((len(record["name"]) for record in plan["layers"]), default=4)
        for record in plan["layers"]:
            lines.append(
                f"  {record['name']:<{width}}  {plan['kinds'][record['name']]:<11}  "
                f"density {record['density']:.3f}  {record['reason']}"
            )
        lines.append(f"  {explain_plan(plan)}")
        sparse = sum(kind != "dense" for kind in plan["kinds"].values())
        lines.append(f"  {sparse} of {len(plan['kinds'])} layers sparse at batch {plan['batch_size']}")
    return "\n".join(lines)
