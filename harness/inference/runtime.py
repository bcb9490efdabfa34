"""CPU inference of an exported sparse network: a small program of layers, each run dense or sparse.

A sparse layer multiplies its folded weight, stored as CSR (MKL's sparse x dense product behind
`torch.addmm`), with an im2col matrix. The im2col matrix is built from k^d shifted, strided views of the
padded activation, stacked: one copy, 2-10x cheaper than `F.unfold` on this kind of machine. The product
comes out channel-major (`[C_out, N * positions]`), so sparse layers keep activations in that layout
("cn": channels first, then batch, then space) and hand it to the next sparse layer without a transpose;
dense layers take the usual batch-first layout ("nc"). Elementwise steps (bias, residual add, ReLU) and
pooling work on either layout, and a tensor is transposed only where consecutive layers disagree.

At large batches the product is taken over blocks of samples (`COLUMN_TILE`), so that the part of the
im2col matrix it reads stays in cache.

The program is plain data (`export.py` builds and stores it; see that module for the file format); this
module only rebuilds and runs it. Everything runs on the CPU.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH_FIRST = "nc"
CHANNELS_FIRST = "cn"
KINDS = ("dense", "sparse")
DENSE_FORMATS = ("contiguous", "channels_last")
WEIGHT_LAYERS = ("conv", "linear")
# Columns of the im2col matrix per sparse product: MKL's CSR x dense product streams one row of the dense
# matrix per nonzero, so the block of columns it works on must stay in L2 (256 columns of a 3x3x256
# layer: 2.4 MB, most of it reused across the weight's rows). Measured here on VGG-19's 8x8 and 16x16
# layers at batch 64: whole-batch products were 1.9-4.8x the dense time, 256-column blocks 0.75-1.2x.
COLUMN_TILE = 256

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
    out = [(size + 2 * padding - kernel) // stride + 1 for size in spatial]
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


def csr_matrix(dense_2d: Tensor) -> Tensor:
    """A 2-D CSR tensor with int32 indices (MKL's fastest path here) holding the nonzeros of `dense_2d`."""
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": known, and this module tests what it uses.
        warnings.simplefilter("ignore", UserWarning)
        csr = dense_2d.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            csr.shape,
        )


def csr_from_parts(crow: Tensor, col: Tensor, values: Tensor, shape: Sequence[int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow.to(torch.int32), col.to(torch.int32), values.to(torch.float32), tuple(shape)
        )


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
    """A convolution or linear layer with BatchNorm folded in: y = W x + b, then + residual, then ReLU."""

    def __init__(self, spec: dict[str, Any], weight: Tensor, kind: str, dense_format: str) -> None:
        super().__init__(spec)
        if kind not in KINDS:
            raise ValueError(f"layer {self.name}: kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.op: str = spec["op"]
        self.residual: int = int(spec.get("residual", -1))
        self.relu: bool = bool(spec.get("relu", False))
        self.kernel: int = int(spec.get("kernel", 1))
        self.stride: int = int(spec.get("stride", 1))
        self.padding: int = int(spec.get("padding", 0))
        self.out_channels = int(spec["weight_shape"][0])
        self.spatial_dims = len(spec["weight_shape"]) - 2
        self.bias = spec["bias"].to(torch.float32).contiguous()
        self.layout = CHANNELS_FIRST if kind == "sparse" else BATCH_FIRST
        self.channels_last = dense_format == "channels_last" and self.spatial_dims == 2
        if kind == "sparse":
            if weight.layout == torch.sparse_csr:
                self.csr = weight
            else:
                self.csr = csr_matrix(weight.reshape(self.out_channels, -1))
            self.column_bias = self.bias.unsqueeze(1)
        else:
            dense = weight.to_dense() if weight.layout == torch.sparse_csr else weight
            self.weight = dense.reshape([int(size) for size in spec["weight_shape"]]).contiguous()
            if self.channels_last:
                self.weight = self.weight.contiguous(memory_format=torch.channels_last)

    def run(self, registers: list[Value | None]) -> None:
        value = self.read(registers, self.input)
        if self.kind == "dense" and self.channels_last and value[1] == CHANNELS_FIRST:
            # One copy straight into channels_last instead of a transpose and then a second copy.
            x = value[0].transpose(0, 1).contiguous(memory_format=torch.channels_last)
        else:
            x = to_layout(value, self.layout)
        out = self.sparse(x) if self.kind == "sparse" else self.dense(x)
        if self.residual >= 0:
            out = out.add_(to_layout(self.read(registers, self.residual), self.layout))
        if self.relu:
            out = out.relu_()
        registers[self.output] = (out, self.layout)

    def dense(self, x: Tensor) -> Tensor:
        if self.op == "linear":
            return F.linear(x, self.weight, self.bias)
        if self.channels_last and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        convolution = F.conv2d if self.spatial_dims == 2 else F.conv1d
        return convolution(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def sparse(self, x: Tensor) -> Tensor:
        if self.op == "linear":  # x: [features, N]
            return torch.addmm(self.column_bias, self.csr, x)
        batch, positions = x.shape[1], math.prod(x.shape[2:]) // self.stride**self.spatial_dims
        group = max(1, COLUMN_TILE // max(positions, 1))
        if group >= batch:
            columns, out_space = im2col(x, self.kernel, self.stride, self.padding)
            out = torch.addmm(self.column_bias, self.csr, columns)
            return out.view(self.out_channels, batch, *out_space)
        pieces = []
        for start in range(0, batch, group):
            columns, out_space = im2col(x[:, start : start + group], self.kernel, self.stride, self.padding)
            pieces.append(torch.addmm(self.column_bias, self.csr, columns))
        return torch.cat(pieces, dim=1).view(self.out_channels, batch, *out_space)


class Pool(Layer):
    """Max or average pooling by `kernel` (stride = kernel), or global average pooling; any layout."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.op: str = spec["op"]
        self.kernel = int(spec.get("kernel", 1))

    def run(self, registers: list[Value | None]) -> None:
        x, layout = self.read(registers, self.input)
        dims = x.dim() - 2
        if self.op == "global_avgpool":
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


def build_layer(spec: dict[str, Any], weight: Tensor | None, kind: str, dense_format: str) -> Layer:
    op = spec["op"]
    if op in WEIGHT_LAYERS:
        assert weight is not None
        return WeightLayer(spec, weight, kind, dense_format)
    if op in POOLS:
        return Pool(spec)
    if op == "flatten":
        return Flatten(spec)
    raise ValueError(f"layer {spec.get('name')}: unknown op {op!r}")


class InferenceModel(nn.Module):
    """A callable network from a list of layers over numbered registers (register 0 is the input).

    Takes and returns batch-first tensors like the model it was exported from (logits `[N, classes]`).
    """

    def __init__(self, layers: Sequence[Layer], num_registers: int, output: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.num_registers = num_registers
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        registers: list[Value | None] = [None] * self.num_registers
        registers[0] = (x.to(torch.float32).contiguous(), BATCH_FIRST)
        for layer in self.layers:
            layer.run(registers)
        value = registers[self.output]
        assert value is not None
        return to_layout(value, BATCH_FIRST)

    @property
    def kinds(self) -> dict[str, str]:
        return {layer.name: layer.kind for layer in self.layers if isinstance(layer, WeightLayer)}
