"""Structured shrinking of an export's program: channels that do not depend on the input are not computed.

A filter with no nonzero weight on its input's live channels (after BatchNorm folding and masking) outputs
a fixed map: its bias, plus what the fixed channels it reads contribute; after ReLU still fixed. Such a
channel is dropped from its register, and every layer reading it absorbs its contribution into a bias:
the consumer's output from the dropped channels alone, computed once here in float64, is input-independent.
Where the consumer has zero padding, that contribution differs at the borders (border positions see fewer
taps of a constant channel), so the absorbed bias is a map over positions: a per-channel value plus a
correction that is nonzero only where it differs (`bias_correction`, stored sparse). A channel whose ReLU
output is 0 everywhere absorbs to nothing. So logits change only by float rounding.

Residual adds tie registers together: the block's output, its shortcut's register and, through identity
shortcuts, the whole stage must carry the same channels, or the add would misalign. Registers tied by an add
form a group; a group keeps a channel that any of its producers computes from live input (a filter that is
dead on the main path but live on the shortcut stays, as a zero row whose bias supplies its fixed value),
and drops it only where it is fixed in every producer. Whether a filter is live depends on which input
channels are live, so the sets are found by iterating from "everything live" until nothing changes (each
round can only drop channels, so it ends).

The network's input and its logits keep every channel. The counts (filters removed, input channels
removed, multiply-adds before and after, dense and nonzero) are returned beside the shrunk program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.inference.runtime import POOLS, WEIGHT_LAYERS

# A bias correction below this fraction of the layer's largest bias value is float64 rounding of a map
# that is uniform in exact arithmetic (a convolution without padding of a constant channel), not a border.
ROUNDING = 1e-9


def affine(spec: dict[str, Any], x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The layer's product plus bias on batch-first `x` (no residual, no ReLU)."""
    if spec["op"] == "linear":
        return F.linear(x, weight, bias)
    convolution = F.conv2d if weight.dim() == 4 else F.conv1d
    geometry = {"stride": int(spec["stride"]), "padding": int(spec["padding"])}
    if weight.shape[0] == 0:  # torch refuses a convolution without filters: take one, keep none
        return convolution(x, weight.new_zeros(1, *weight.shape[1:]), None, **geometry)[:, :0]
    return convolution(x, weight, bias, **geometry)


def run_reference(layers: Sequence[dict[str, Any]], num_registers: int, x: Tensor) -> list[Tensor]:
    """Every register's value (batch-first, float64) for input `x`, from the specs' folded weights."""
    registers: list[Tensor | None] = [None] * num_registers
    registers[0] = x.to(torch.float64)
    for spec in layers:
        value = registers[spec["input"]]
        assert value is not None
        op = spec["op"]
        if op in WEIGHT_LAYERS:
            out = affine(spec, value, spec["folded"].double(), spec["bias"].double())
            if spec.get("residual", -1) >= 0:
                out = out + registers[spec["residual"]]
            if spec.get("relu"):
                out = out.relu()
        elif op == "global_avgpool":
            out = value.mean(dim=tuple(range(2, value.dim())), keepdim=True)
        elif op == "maxpool":
            out = (F.max_pool2d if value.dim() == 4 else F.max_pool1d)(value, int(spec["kernel"]))
        elif op == "avgpool":
            out = (F.avg_pool2d if value.dim() == 4 else F.avg_pool1d)(value, int(spec["kernel"]))
        else:  # flatten
            out = value.flatten(1)
        registers[spec["output"]] = out
    assert all(value is not None for value in registers), "the builder writes every register"
    return registers  # type: ignore[return-value]


def _groups(layers: Sequence[dict[str, Any]], num_registers: int) -> list[list[int]]:
    """Registers that a residual add ties together, as lists (every register is in exactly one)."""
    parent = list(range(num_registers))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for spec in layers:
        if spec["op"] in WEIGHT_LAYERS and spec.get("residual", -1) >= 0:
            parent[root(spec["output"])] = root(spec["residual"])
    members: dict[int, list[int]] = {}
    for register in range(num_registers):
        members.setdefault(root(register), []).append(register)
    tied = {index for group in members.values() if len(group) > 1 for index in group}
    for spec in layers:
        if spec["op"] not in WEIGHT_LAYERS and spec["output"] in tied:
            raise ValueError(f"layer {spec['name']}: a {spec['op']} output is added to a residual")
    return list(members.values())


def live_filters(weight: Tensor, live_inputs: Tensor) -> Tensor:
    """Which filters (rows) have a nonzero weight on a live input channel."""
    nonzero = (weight != 0).flatten(2).any(-1) if weight.dim() > 2 else weight != 0
    return nonzero[:, live_inputs].any(1)


def live_channels(layers: Sequence[dict[str, Any]], values: Sequence[Tensor], output: int) -> list[Tensor]:
    """Per register, which channels (dim 1 of the batch-first value) are computed; the others are fixed."""
    widths = [value.shape[1] for value in values]
    groups = _groups(layers, len(values))
    live = [torch.ones(width, dtype=torch.bool) for width in widths]
    while True:
        own = [torch.ones(width, dtype=torch.bool) for width in widths]  # the input stays whole
        for spec in layers:
            source, target = spec["input"], spec["output"]
            if spec["op"] in WEIGHT_LAYERS:
                own[target] = live_filters(spec["folded"], live[source])
            elif spec["op"] in POOLS:
                own[target] = live[source].clone()
            else:  # flatten: a channel's positions become consecutive features
                own[target] = live[source].repeat_interleave(widths[target] // widths[source])
        own[output] = torch.ones(widths[output], dtype=torch.bool)  # every logit is an output
        updated = list(live)
        for group in groups:
            union = torch.stack([own[register] for register in group]).any(0)
            for register in group:
                updated[register] = union & live[register]
        if all(torch.equal(new, old) for new, old in zip(updated, live, strict=True)):
            return live
        live = updated


def split_bias(bias_map: Tensor) -> tuple[Tensor, Tensor | None]:
    """A per-channel bias (the value at the centre position) and the correction where the map differs from
    it (None where it does not): `bias_map` is `[C]` or `[C, *space]`, float64."""
    if bias_map.dim() == 1:
        return bias_map.float(), None
    centre = bias_map[(slice(None), *[size // 2 for size in bias_map.shape[1:]])]
    correction = bias_map - centre.view(-1, *[1] * (bias_map.dim() - 1))
    scale = float(bias_map.abs().max()) if bias_map.numel() else 0.0
    correction[correction.abs() <= ROUNDING * scale] = 0
    if not bool(correction.any()):
        return centre.float(), None
    return centre.float(), correction.float()


def shrink_program(
    layers: Sequence[dict[str, Any]], num_registers: int, output: int, input_shape: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the shrunk program, the counts). Weight specs carry `folded`, `bias` and `mask` (as built by
    `harness.inference.export.build_program`); the shrunk ones carry the same, of the shrunk shape, and
    `bias_correction` (a `[C_out, *out_space]` float32 tensor) where the absorbed bias varies over positions."""
    values = run_reference(layers, num_registers, torch.zeros(1, *input_shape))
    live = live_channels(layers, values, output)
    shrunk: list[dict[str, Any]] = []
    records = []
    for spec in layers:
        if spec["op"] not in WEIGHT_LAYERS:
            shrunk.append(dict(spec))
            continue
        source, target = spec["input"], spec["output"]
        rows, columns = live[target].nonzero().flatten(), live[source].nonzero().flatten()
        weight = spec["folded"]
        fixed_input = values[source].clone()
        fixed_input[:, live[source]] = 0
        bias_map = affine(spec, fixed_input, weight[rows].double(), spec["bias"][rows].double())[0]
        bias, correction = split_bias(bias_map)
        kept = weight[rows][:, columns].contiguous()
        new = {
            **spec,
            "folded": kept,
            "mask": spec["mask"][rows][:, columns],
            "bias": bias,
            "weight_shape": list(kept.shape),
        }
        if correction is not None:
            new["bias_correction"] = correction
        shrunk.append(new)
        positions = math.prod(values[target].shape[2:])
        records.append(
            {
                "name": spec["name"],
                "filters": int(weight.shape[0]),
                "filters_kept": len(rows),
                "inputs": int(weight.shape[1]),
                "inputs_kept": len(columns),
                "macs_dense": weight.numel() * positions,
                "macs_shrunk": kept.numel() * positions,
                "macs_nonzero": int((weight != 0).sum()) * positions,
                "macs_nonzero_kept": int((kept != 0).sum()) * positions,
                "bias_correction": correction is not None,
            }
        )
    totals = {
        key: sum(record[key] for record in records)
        for key in ("filters", "filters_kept", "inputs", "inputs_kept", "macs_dense", "macs_shrunk",
                    "macs_nonzero", "macs_nonzero_kept")
    }  # fmt: skip
    report = {
        **totals,
        "filters_removed": totals["filters"] - totals["filters_kept"],
        "inputs_removed": totals["inputs"] - totals["inputs_kept"],
        "layers": records,
    }
    return shrunk, report


def describe_shrinking(report: dict[str, Any]) -> str:
    """One line: filters removed and the multiply-adds left (per sample)."""
    dense = max(report["macs_dense"], 1)
    return (
        f"shrinking: {report['filters_removed']} of {report['filters']} filters removed "
        f"({report['inputs_removed']} input channels); dense multiply-adds per sample "
        f"{report['macs_dense'] / 1e6:.2f} M -> {report['macs_shrunk'] / 1e6:.2f} M "
        f"({report['macs_shrunk'] / dense:.1%}), nonzero {report['macs_nonzero_kept'] / 1e6:.2f} M "
        f"({report['macs_nonzero_kept'] / dense:.1%})"
    )
