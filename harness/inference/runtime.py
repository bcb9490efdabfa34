"""CPU inference of an exported sparse network: a small program of layers, each run by one of a few kernels,
with one plan (a kernel per layer) per batch size.

Kernels of a convolution or linear layer (`KINDS`):
- `dense`: oneDNN through `F.conv{1,2}d` / `F.linear`, in the plan's memory format (2-D: contiguous or
  channels_last).
- `sparse`: the folded weight as CSR (MKL's sparse x dense product behind `torch.addmm`) times an im2col
  matrix built from k^d shifted, strided views of the padded activation, stacked: one copy, 2-10x cheaper
  than `F.unfold` on this kind of machine. At large batches the product is taken over blocks of samples of
  about `COLUMN_TILE` columns, so that the part of the im2col matrix it reads stays in cache.
- `sparse_wide`: the same with blocks of about `WIDE_TILE` columns (fewer, longer products; wins on some
  large early layers, loses on most others).
- `bsr`: the weight as block-sparse rows (MKL's BSR product, square blocks only) times the same im2col
  matrix, with the block stored in the layer's record (`bsr_block`); only offered where the mask's nonzeros
  fill whole blocks well (see `harness.inference.plan`).

Sparse products come out channel-major (`[C_out, N * positions]`), so sparse layers keep activations in that
layout ("cn": channels first, then batch, then space) and hand it to the next sparse layer without a
transpose; dense layers take the usual batch-first layout ("nc"). Elementwise steps (bias, residual add,
ReLU) and pooling work on either layout, and a tensor is transposed only where consecutive layers disagree.

A layer's bias may vary over positions (`bias_correction`, added after the product): structured shrinking
(`harness.inference.shrink`) folds the input channels it removed, which are fixed maps, into it, and zero
padding makes such a map's contribution differ at the borders. A layer with no input or no output channel
left computes its (constant) output without a kernel.

The program is plain data (`export.py` builds and stores it; see that module for the file format); this
module only rebuilds and runs it. Everything runs on the CPU.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH_FIRST = "nc"
CHANNELS_FIRST = "cn"
SPARSE_KINDS = ("sparse", "sparse_wide", "bsr")
KINDS = ("dense", *SPARSE_KINDS)
DENSE_FORMATS = ("contiguous", "channels_last")
WEIGHT_LAYERS = ("conv", "linear")
# Columns of the im2col matrix per sparse product: MKL's CSR x dense product streams one row of the dense
# matrix per nonzero, so the block of columns it works on must stay in L2 (256 columns of a 3x3x256
# layer: 2.4 MB, most of it reused across the weight's rows). Measured here on VGG-19's 8x8 and 16x16
# layers at batch 64: whole-batch products were 1.9-4.8x the dense time, 256-column blocks 0.75-1.2x.
COLUMN_TILE = 256
# The `sparse_wide` kernel's block: on VGG-19's 64-channel 32x32 layers at batch 64, 1024-column blocks
# took 0.7-1.0x the time of 256-column ones, on its 8x8 layers 1.0-1.3x (one quick measurement each, load 1.5).
WIDE_TILE = 1024
TILES = {"sparse": COLUMN_TILE, "sparse_wide": WIDE_TILE, "bsr": COLUMN_TILE}

Value = tuple[Tensor, str]  # an activation and its layout


def to_layout(value: Value, layout: str) -> Tensor:
    tensor, current = value
    if current == layout:
        return tensor
    return tensor.transpose(0, 1).contiguous()


def im2col(x: Tensor, kernel: int, stride: int, padding: int) -> tuple[Tensor, list[int]]:
    """`x` channel-major `[C, N, *space]` -> (`[C * kernel^d, N * prod(out_space)]`, out_space).

    Row order (channel, then kernel offsets in row-major order) matches a weight `[C_out, C, *kernel]`
    flattened to two dimensions.
    """
    channels, spatial = x.shape[0], list(x.shape[2:])
    dims = len(spatial)
    if kernel == 1 and padding == 0:
        if stride > 1:
            x = x[(slice(None), slice(None), *[slice(None, None, stride)] * dims)]
        return x.reshape(channels, -1), list(x.shape[2:])
    padded = F.pad(x, (padding,) * (2 * dims)) if padding else x
    out = output_space(spatial, kernel, stride, padding)
    views = [
        padded[
            (
                slice(None),
                slice(None),
                *[
                    slice(offset, offset + stride * (n - 1) + 1, stride)
                    for offset, n in zip(offsets, out, strict=True)
                ],
            )
        ]
        for offsets in itertools.product(range(kernel), repeat=dims)
    ]
    return torch.stack(views, dim=1).reshape(channels * kernel**dims, -1), out


def output_space(spatial: Sequence[int], kernel: int, stride: int, padding: int) -> list[int]:
    return [(int(size) + 2 * padding - kernel) // stride + 1 for size in spatial]


def _quiet_sparse(build: Any) -> Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR/BSR tensor support is in beta state": known, and this module tests what it uses.
        warnings.simplefilter("ignore", UserWarning)
        return build()


def csr_matrix(dense_2d: Tensor) -> Tensor:
    """A 2-D CSR tensor with int32 indices (MKL's fastest path here) holding the nonzeros of `dense_2d`."""

    def build() -> Tensor:
        csr = dense_2d.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), csr.shape
        )

    return _quiet_sparse(build)


def csr_from_parts(crow: Tensor, col: Tensor, values: Tensor, shape: Sequence[int]) -> Tensor:
    return _quiet_sparse(
        lambda: torch.sparse_csr_tensor(
            crow.to(torch.int32), col.to(torch.int32), values.to(torch.float32), tuple(shape)
        )
    )


def bsr_matrix(dense_2d: Tensor, block: int) -> Tensor:
    """A 2-D BSR tensor of `block` x `block` blocks holding `dense_2d` (a block with a nonzero is stored whole)."""
    return _quiet_sparse(lambda: dense_2d.to_sparse_bsr((block, block)))


# ---------------------------------------------------------------------------------------------------------
# Layers


class Layer:
    """One step of the program: reads registers, writes `output`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.input: int = int(spec["input"])
        self.output: int = int(spec["output"])

    def run(self, registers: list[Value | None]) -> None:
        raise NotImplementedError

    def read(self, registers: list[Value | None], index: int) -> Value:
        value = registers[index]
        if value is None:
            raise RuntimeError(f"layer {self.name}: register {index} is read before it is written")
        return value


class WeightLayer(Layer):
    """A convolution or linear layer with BatchNorm folded in: y = W x + b (+ the bias correction), then
    + residual, then ReLU."""

    def __init__(
        self,
        spec: dict[str, Any],
        weight: Tensor,
        kind: str,
        dense_format: str,
        bias_correction: Tensor | None = None,
    ) -> None:
        super().__init__(spec)
        if kind not in KINDS:
            raise ValueError(f"layer {self.name}: kind must be one of {KINDS}, got {kind!r}")
        self.op: str = spec["op"]
        self.residual: int = int(spec.get("residual", -1))
        self.relu: bool = bool(spec.get("relu", False))
        self.kernel: int = int(spec.get("kernel", 1))
        self.stride: int = int(spec.get("stride", 1))
        self.padding: int = int(spec.get("padding", 0))
        shape = [int(size) for size in spec["weight_shape"]]
        self.out_channels = shape[0]
        self.spatial_dims = len(shape) - 2
        self.bias = spec["bias"].to(torch.float32).contiguous()
        self.correction = bias_correction  # [C_out, *out_space] or None
        # Nothing to multiply: the output is the bias (map) alone, whatever kernel was asked for.
        self.constant = math.prod(shape) == 0
        self.kind = "dense" if self.constant else kind
        self.layout = CHANNELS_FIRST if self.kind in SPARSE_KINDS else BATCH_FIRST
        self.channels_last = dense_format == "channels_last" and self.spatial_dims == 2
        self.tile = TILES.get(self.kind, COLUMN_TILE)
        if self.kind in SPARSE_KINDS:
            matrix = weight if weight.layout != torch.strided else weight.flatten(1)
            if self.kind == "bsr":
                block = int(spec["bsr_block"])
                dense = matrix.to_dense() if matrix.layout != torch.strided else matrix
                self.matrix = bsr_matrix(dense, block)
            else:
                self.matrix = matrix if matrix.layout == torch.sparse_csr else csr_matrix(matrix)
            self.column_bias = self.bias.unsqueeze(1)
        else:
            dense = weight.to_dense() if weight.layout != torch.strided else weight
            self.weight = dense.reshape(shape).contiguous()
            if self.channels_last:
                self.weight = self.weight.contiguous(memory_format=torch.channels_last)

    def run(self, registers: list[Value | None]) -> None:
        value = self.read(registers, self.input)
        if self.kind == "dense" and self.channels_last and value[1] == CHANNELS_FIRST:
            # One copy straight into channels_last instead of a transpose and then a second copy.
            x = value[0].transpose(0, 1).contiguous(memory_format=torch.channels_last)
        else:
            x = to_layout(value, self.layout)
        if self.constant:
            out = self.constant_output(x)
        else:
            out = self.sparse(x) if self.kind in SPARSE_KINDS else self.dense(x)
            if self.correction is not None:
                out = out.add_(
                    self.correction.unsqueeze(1) if self.layout == CHANNELS_FIRST else self.correction
                )
        if self.residual >= 0:
            out = out.add_(to_layout(self.read(registers, self.residual), self.layout))
        if self.relu:
            out = out.relu_()
        registers[self.output] = (out, self.layout)

    def constant_output(self, x: Tensor) -> Tensor:
        """Batch-first `[N, C_out, *out_space]` of a layer without weights: the bias map everywhere."""
        space = (
            [] if self.op == "linear" else output_space(x.shape[2:], self.kernel, self.stride, self.padding)
        )
        out = self.bias.view(-1, *[1] * len(space)).expand(self.out_channels, *space)
        if self.correction is not None:
            out = out + self.correction
        return out.unsqueeze(0).expand(x.shape[0], *out.shape).contiguous()

    def dense(self, x: Tensor) -> Tensor:
        if self.op == "linear":
            return F.linear(x, self.weight, self.bias)
        if self.channels_last and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        convolution = F.conv2d if self.spatial_dims == 2 else F.conv1d
        return convolution(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def sparse(self, x: Tensor) -> Tensor:
        if self.op == "linear":  # x: [features, N]
            return torch.addmm(self.column_bias, self.matrix, x)
        batch, positions = x.shape[1], math.prod(x.shape[2:]) // self.stride**self.spatial_dims
        group = samples_per_product(self.tile, positions)
        if group >= batch:
            columns, out_space = im2col(x, self.kernel, self.stride, self.padding)
            out = torch.addmm(self.column_bias, self.matrix, columns)
            return out.view(self.out_channels, batch, *out_space)
        pieces = []
        for start in range(0, batch, group):
            columns, out_space = im2col(x[:, start : start + group], self.kernel, self.stride, self.padding)
            pieces.append(torch.addmm(self.column_bias, self.matrix, columns))
        return torch.cat(pieces, dim=1).view(self.out_channels, batch, *out_space)


def samples_per_product(tile: int, positions: int) -> int:
    """Samples per sparse product: as many as fit in `tile` columns, at least one."""
    return max(1, tile // max(positions, 1))


class Pool(Layer):
    """Max or average pooling by `kernel` (stride = kernel), or global average pooling; any layout."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.op: str = spec["op"]
        self.kernel = int(spec.get("kernel", 1))

    def run(self, registers: list[Value | None]) -> None:
        x, layout = self.read(registers, self.input)
        dims = x.dim() - 2
        if x.numel() == 0:  # no channel left (shrunk away): torch's pools refuse an empty input
            space = (
                [1] * dims if self.op == "global_avgpool" else [size // self.kernel for size in x.shape[2:]]
            )
            out = x.new_zeros(*x.shape[:2], *space)
        elif self.op == "global_avgpool":
            out = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        elif self.op == "maxpool":
            out = (F.max_pool2d if dims == 2 else F.max_pool1d)(x, self.kernel)
        else:
            out = (F.avg_pool2d if dims == 2 else F.avg_pool1d)(x, self.kernel)
        registers[self.output] = (out, layout)


class Flatten(Layer):
    """Batch-first `[N, C, *space]` -> `[N, features]`; channel-major with one position -> `[C, N]`
    (no copy: what a sparse classifier wants); channel-major with more positions is transposed first."""

    def run(self, registers: list[Value | None]) -> None:
        x, layout = self.read(registers, self.input)
        if layout == CHANNELS_FIRST and math.prod(x.shape[2:]) == 1:
            registers[self.output] = (x.reshape(x.shape[0], x.shape[1]), CHANNELS_FIRST)
            return
        registers[self.output] = (to_layout((x, layout), BATCH_FIRST).flatten(1), BATCH_FIRST)


POOLS = ("maxpool", "avgpool", "global_avgpool")


def build_layer(
    spec: dict[str, Any],
    weight: Tensor | None,
    kind: str,
    dense_format: str,
    bias_correction: Tensor | None = None,
) -> Layer:
    op = spec["op"]
    if op in WEIGHT_LAYERS:
        assert weight is not None
        return WeightLayer(spec, weight, kind, dense_format, bias_correction)
    if op in POOLS:
        return Pool(spec)
    if op == "flatten":
        return Flatten(spec)
    raise ValueError(f"layer {spec.get('name')}: unknown op {op!r}")


def nearest_planned(batch_sizes: Sequence[int], batch: int) -> int:
    """The planned batch size a call with `batch` samples runs with: the nearest on a log scale, ties to the
    larger one (dense gains on sparse as batches grow, so the larger size's plan is the cautious one)."""
    sizes = sorted(batch_sizes)
    index = bisect.bisect_left(sizes, batch)
    if index < len(sizes) and sizes[index] == batch:
        return batch
    if index == 0:
        return sizes[0]
    if index == len(sizes):
        return sizes[-1]
    below, above = sizes[index - 1], sizes[index]
    return above if math.log(above / batch) <= math.log(batch / below) else below


class InferenceModel(nn.Module):
    """A callable network from one list of layers over numbered registers per planned batch size (register 0
    is the input); a call runs the plan of the nearest planned batch size (`nearest_planned`).

    Takes and returns batch-first tensors like the model it was exported from (logits `[N, classes]`).
    """

    def __init__(
        self, plans: Mapping[int, Sequence[Layer]] | Sequence[Layer], num_registers: int, output: int
    ) -> None:
        super().__init__()
        if not isinstance(plans, Mapping):
            plans = {1: list(plans)}  # one plan serves every batch size
        self.plans = {int(batch): list(layers) for batch, layers in plans.items()}
        self.batch_sizes = sorted(self.plans)
        self.num_registers = num_registers
        self.output = output

    def plan_for(self, batch: int) -> list[Layer]:
        return self.plans[nearest_planned(self.batch_sizes, batch)]

    def forward(self, x: Tensor) -> Tensor:
        registers: list[Value | None] = [None] * self.num_registers
        registers[0] = (x.to(torch.float32).contiguous(), BATCH_FIRST)
        for layer in self.plan_for(x.shape[0]):
            layer.run(registers)
        value = registers[self.output]
        assert value is not None
        return to_layout(value, BATCH_FIRST)

    def kinds(self, batch: int) -> dict[str, str]:
        """The kernel of every weight layer in the plan a call with `batch` samples runs."""
        return {layer.name: layer.kind for layer in self.plan_for(batch) if isinstance(layer, WeightLayer)}


class Program:
    """A program's layer records with their decoded weights and bias corrections: builds its layers for any
    kernel choice, and the callable network of one plan per batch size."""

    def __init__(
        self,
        layers: Sequence[dict[str, Any]],
        weights: Sequence[Tensor | None],
        corrections: Sequence[Tensor | None],
        num_registers: int,
        output: int,
    ) -> None:
        self.layers = list(layers)
        self.weights = list(weights)
        self.corrections = list(corrections)
        self.num_registers = num_registers
        self.output = output
        self._built: dict[tuple[int, str, str], Layer] = {}

    @property
    def weight_names(self) -> list[str]:
        return [spec["name"] for spec in self.layers if spec["op"] in WEIGHT_LAYERS]

    def layer(self, index: int, kind: str, dense_format: str) -> Layer:
        """The program's `index`-th layer run by `kind` (built once per kind and format, then shared)."""
        spec = self.layers[index]
        if spec["op"] not in WEIGHT_LAYERS:
            kind = "dense"
        key = (index, kind, dense_format)
        if key not in self._built:
            self._built[key] = build_layer(
                spec, self.weights[index], kind, dense_format, self.corrections[index]
            )
        return self._built[key]

    def alone(self, index: int, kind: str, dense_format: str) -> Layer:
        """The layer reading register 0 and writing register 1, without its residual (to time it alone)."""
        spec = {**self.layers[index], "input": 0, "output": 1, "residual": -1}
        return build_layer(spec, self.weights[index], kind, dense_format, self.corrections[index])

    def plan_layers(self, kinds: Mapping[str, str], dense_format: str) -> list[Layer]:
        return [
            self.layer(index, kinds.get(spec["name"], "dense"), dense_format)
            for index, spec in enumerate(self.layers)
        ]

    def model(self, plans: Mapping[int, tuple[Mapping[str, str], str]]) -> InferenceModel:
        """The network running, at each planned batch size, its (kinds, dense format)."""
        return InferenceModel(
            {batch: self.plan_layers(kinds, fmt) for batch, (kinds, fmt) in plans.items()},
            self.num_registers,
            self.output,
        )

    def single(self, kinds: Mapping[str, str], dense_format: str) -> InferenceModel:
        """The network running one plan at every batch size."""
        return InferenceModel(self.plan_layers(kinds, dense_format), self.num_registers, self.output)
