"""A realistic fake run store, written to the run-store contract (notes/runstore.md), for analysis tests.

`build_store(root, spec)` writes, under `root`:

- `compare/`: ordinary training runs (job_type `train`) of dense, static, gmp, rigl, set, granet (s_i = 0)
  and granet (s_i = 0.5) at several sparsities and seeds, with epoch, train and mask_update lines and mask
  snapshots simulated on small tensors named like the real models' (global magnitude pruning on a cubic
  schedule, layer-wise drop-and-grow with a cosine regeneration rate), plus one failed and one running run;
- `plasticity/`: base runs (job_type `base`, dense or a fixed ERK mask at a pre-trained sparsity), probes
  (job_type `probe`) over probe epochs, pruning rates, regeneration on/off and criteria, and controls
  (job_type `control`).

Every number comes from the small closed-form functions below (`compare_test_acc`, `probe_values`,
`base_accuracy`), so tests can compute expected aggregates by hand. Accuracies are rounded to the
0.0005 grid of a 2,000-image test set. `FakeWandbApi` mirrors a generated store as the public W&B API
would show it (the tracker's mirror rules in the contract, plus W&B's own habits: internal `_` keys,
last history values copied into the summary).
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from harness.config import deep_merge, resolve, run_id, validate
from harness.store.rundir import snapshot_name
from harness.store.snapshots import save_masks

DATASET = "mnist1d"
STEPS_PER_EPOCH = 55  # 7,000 MNIST-1D training samples after the validation split, batch 128
BATCH = 128
BASE_ACC = {"resnet20": 0.90, "vgg19": 0.92}  # dense final test accuracy on MNIST-1D (fake)
# Accuracy cost of each method at 90% sparsity; it grows linearly to x1.8 at 98%.
METHOD_COST = {
    "static": 0.030,
    "gmp": 0.012,
    "rigl": 0.015,
    "set": 0.022,
    "granet": 0.008,
    "granet-0.5": 0.010,
}
SEED_STEP = 0.004  # seeds 0, 1, 2 sit at -1, 0, +1 steps: mean = the formula, std = SEED_STEP exactly
INFERENCE_FLOPS_DENSE = {"resnet20": 4_100_000, "vgg19": 6_000_000}
CHANCE = 0.1
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _resnet20_layers() -> list[tuple[str, tuple[int, ...]]]:
    layers = [("conv1.weight", (16, 1, 3))]
    in_channels = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range(3):
            layers.append((f"layer{stage}.{block}.conv1.weight", (width, in_channels, 3)))
            layers.append((f"layer{stage}.{block}.conv2.weight", (width, width, 3)))
            if in_channels != width:
                layers.append((f"layer{stage}.{block}.shortcut.0.weight", (width, in_channels, 1)))
            in_channels = width
    return [*layers, ("fc.weight", (10, 64))]


def _vgg19_layers() -> list[tuple[str, tuple[int, ...]]]:
    widths = [8, 8, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64, 64, 64, 64, 64]  # VGG-19 at width 0.125
    layers, in_channels, index = [], 1, 0
    for position, width in enumerate(widths):
        layers.append((f"features.{index}.weight", (width, in_channels, 3)))
        in_channels = width
        index += 3 + (1 if position in (1, 3, 7, 11) else 0)  # conv, BN, ReLU (+ pool)
    return [*layers, ("classifier.weight", (10, 64))]


LAYERS = {"resnet20": _resnet20_layers(), "vgg19": _vgg19_layers()}
MASKED_WEIGHTS = {arch: sum(math.prod(shape) for _, shape in layers) for arch, layers in LAYERS.items()}


@dataclass(frozen=True)
class StoreSpec:
    archs: tuple[str, ...] = ("resnet20", "vgg19")
    seeds: tuple[int, ...] = (0, 1, 2)
    # Comparison runs
    methods: tuple[str, ...] = ("static", "gmp", "rigl", "set", "granet", "granet-0.5")
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98)
    compare_epochs: int = 10
    incomplete_runs: bool = True
    # Plasticity study
    plasticity_epochs: int = 20
    probe_epochs: tuple[int, ...] = (0, 4, 8, 12, 16)
    continue_epochs: int = 4
    rates: tuple[float, ...] = (0.2, 0.5, 0.8, 0.95)
    layerwise_archs: tuple[str, ...] = ("resnet20",)
    layerwise_rates: tuple[float, ...] = (0.5, 0.8)
    filter_rates: tuple[float, ...] = (0.5,)
    pretrained_sparsities: tuple[float, ...] = (0.0, 0.5, 0.8)
    # Mask snapshots are written for these seeds only: analysis reads one run's, and files cost time.
    snapshot_seeds: tuple[int, ...] = (0,)


def one_probe_spec() -> StoreSpec:
    """The smallest plasticity store: one seed, one network, one probe epoch (8) and one rate (0.5)."""
    return StoreSpec(
        archs=("resnet20",),
        seeds=(0,),
        methods=(),
        probe_epochs=(8,),
        rates=(0.5,),
        layerwise_archs=(),
        filter_rates=(),
        pretrained_sparsities=(0.0,),
        incomplete_runs=False,
    )


def small_spec() -> StoreSpec:
    """A few dozen runs: enough for every figure, fast enough for the notebook tests."""
    return StoreSpec(
        archs=("resnet20",),
        seeds=(0, 1),
        methods=("gmp", "granet"),
        sparsities=(0.9, 0.98),
        probe_epochs=(0, 8, 16),
        rates=(0.5, 0.95),
        layerwise_archs=(),
        filter_rates=(0.5,),
        pretrained_sparsities=(0.0, 0.8),
        incomplete_runs=False,
    )


def jitter(seed: int) -> int:
    """-1, 0, +1 for seeds 0, 1, 2 (and so on, cyclically)."""
    return seed % 3 - 1


def grid(value: float) -> float:
    """Round an accuracy to the 0.0005 grid of a 2,000-image test set."""
    return round(value * 2000) / 2000


# ---------------------------------------------------------------------------------------------------------
# Closed-form values


def compare_test_acc(arch: str, method: str, sparsity: float, seed: int) -> float:
    """Final test accuracy of a comparison run; `method` is a METHOD_COST key or "dense"."""
    cost = 0.0 if method == "dense" else METHOD_COST[method] * (1 + 10 * (sparsity - 0.9))
    return grid(BASE_ACC[arch] - cost + SEED_STEP * jitter(seed))


def base_accuracy(arch: str, pretrained_sparsity: float, epoch: float, epochs: int) -> float:
    """Test accuracy of a plasticity base run after `epoch` epochs (chance at 0, a step at each LR decay)."""
    final = BASE_ACC[arch] - 0.03 * pretrained_sparsity
    first_decay, second_decay = 0.5 * epochs, 0.75 * epochs
    smooth = (final - CHANCE - 0.04) * (1 - math.exp(-epoch / 3))
    return CHANCE + smooth + 0.03 * (epoch >= first_decay) + 0.01 * (epoch >= second_decay)


@dataclass(frozen=True)
class Probe:
    arch: str
    probe_epoch: int
    pruning_rate: float
    regeneration: bool
    criterion: str
    pretrained_sparsity: float
    seed: int


def probe_values(probe: Probe, epochs: int, continue_epochs: int) -> dict[str, float]:
    """acc_pre, acc_post, acc_continue, acc_control and plasticity (= acc_continue - acc_pre) of a probe."""
    t, rate, regen = probe.probe_epoch, probe.pruning_rate, probe.regeneration
    acc_pre = grid(
        base_accuracy(probe.arch, probe.pretrained_sparsity, t, epochs) + 0.002 * jitter(probe.seed)
    )
    control_epoch = min(t + continue_epochs, epochs)
    acc_control = grid(
        base_accuracy(probe.arch, probe.pretrained_sparsity, control_epoch, epochs)
        + 0.001 * jitter(probe.seed)
    )
    criterion_factor = {"global": 1.0, "layerwise": 1.2, "filter": 2.0}[probe.criterion]
    damage = min(1.0, 1.2 * rate**2 * (1 - 0.6 * regen) * (1.5 if probe.criterion == "filter" else 1.0))
    acc_post = grid(acc_pre - damage * (acc_pre - CHANCE))
    decays = (t >= 0.5 * epochs) + (t >= 0.75 * epochs)
    shortfall = 0.12 * rate**3 * (0.4 + t / epochs) * (1 + 0.6 * decays) * criterion_factor
    shortfall *= (1 - 0.5 * rate) if regen else 1.0
    shortfall *= 1 + 1.5 * probe.pretrained_sparsity
    acc_continue = grid(acc_control - shortfall + 0.003 * jitter(probe.seed + 1))
    return {
        "acc_pre": acc_pre,
        "acc_post": acc_post,
        "acc_continue": acc_continue,
        "acc_control": acc_control,
        "plasticity": acc_continue - acc_pre,
    }


# ---------------------------------------------------------------------------------------------------------
# Mask simulation (numpy on small tensors; the same rules as SPEC sections 3-5, not the harness's code)


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    sizes = np.array([math.prod(shape) for shape in shapes], dtype=float)
    raw = np.array([sum(shape) / math.prod(shape) for shape in shapes])
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        epsilon = budget / (raw[~dense] * sizes[~dense]).sum()
        densities = np.where(dense, 1.0, epsilon * raw)
        if (densities <= 1.0).all():
            return densities.tolist()
        dense |= densities > 1.0


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the `count` largest scores (ties broken arbitrarily)."""
    chosen = np.zeros(scores.size, dtype=bool)
    if count >= scores.size:
        chosen[:] = True
    elif count > 0:
        chosen[np.argpartition(-scores, count - 1)[:count]] = True
    return chosen


@dataclass
class MaskEvent:
    step: int
    masks: dict[str, np.ndarray]
    target_density: float
    regen_rate: float | None
    pruned: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    grown: dict[str, int] = field(default_factory=dict)


def _event_steps(method: str, total: int, update_frequency: int, prune_end: int) -> list[int]:
    steps = list(range(update_frequency, total + 1, update_frequency))
    if method == "gmp":
        steps = [step for step in steps if step <= prune_end]
    if method in ("gmp", "granet") and prune_end % update_frequency:
        steps = sorted({*steps, prune_end})
    return steps


@functools.cache
def simulate_masks(
    arch: str, method: str, sparsity: float, init_sparsity: float, total: int, update_frequency: int
) -> tuple[dict[str, np.ndarray], list[MaskEvent]]:
    """Initial masks (flat) and one MaskEvent per mask update of a comparison run.

    Cached and shared by the seeds of a setting (the simulation is the slow part of building a store);
    callers must not modify the result.
    """
    rng = np.random.default_rng(zlib.crc32(f"{arch}-{method}-{sparsity}-{init_sparsity}".encode()))
    names = [name for name, _ in LAYERS[arch]]
    shapes = [shape for _, shape in LAYERS[arch]]
    scale = {name: 1 / math.sqrt(math.prod(shape[1:])) for name, shape in LAYERS[arch]}
    weights = {name: rng.normal(0, scale[name], math.prod(shape)) for name, shape in LAYERS[arch]}
    start_density = {
        "static": 1 - sparsity,
        "rigl": 1 - sparsity,
        "set": 1 - sparsity,
        "granet": 1 - init_sparsity,
    }
    masks = {}
    for name, layer_density in zip(names, erk_densities(shapes, start_density.get(method, 1.0)), strict=True):
        size = weights[name].size
        chosen = np.zeros(size, dtype=bool)
        chosen[rng.choice(size, round(layer_density * size), replace=False)] = True
        masks[name] = chosen
    initial = {name: mask.copy() for name, mask in masks.items()}
    if method in ("dense", "static"):
        return initial, []
    prune_end = total // 2
    events = []
    for step in _event_steps(method, total, update_frequency, prune_end):
        for name in names:
            weights[name] = (weights[name] + rng.normal(0, 0.3 * scale[name], weights[name].size)) * masks[
                name
            ]
        before = {name: int(masks[name].sum()) for name in names}
        target = 1 - sparsity
        event = MaskEvent(step, {}, target, None)
        if method in ("gmp", "granet") and step <= prune_end:
            start = init_sparsity if method == "granet" else 0.0
            current = sparsity + (start - sparsity) * (1 - step / prune_end) ** 3
            event.target_density = 1 - current
            flat = np.concatenate([np.where(masks[n], np.abs(weights[n]), -1.0) for n in names])
            keep = _top(flat, round((1 - current) * flat.size))
            offset = 0
            for name in names:
                masks[name] = keep[offset : offset + masks[name].size].copy()
                offset += masks[name].size
                event.pruned[name] = before[name] - int(masks[name].sum())
        if method in ("granet", "rigl", "set"):
            rate = 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * step / total)) / 2
            event.regen_rate = rate
            for name in names:
                active = int(masks[name].sum())
                count = math.ceil(rate * active)
                drop = _top(np.where(masks[name], -np.abs(weights[name]), -np.inf), count)
                masks[name] &= ~drop
                gradient = np.abs(rng.normal(0, 1, masks[name].size))
                grow = _top(np.where(masks[name], -np.inf, gradient), count)
                masks[name] |= grow
                weights[name][grow] = 0.0
                event.dropped[name], event.grown[name] = count, count
        event.masks = {name: mask.copy() for name, mask in masks.items()}
        events.append(event)
    return initial, events


def checksum(masks: dict[str, np.ndarray]) -> int:
    value = 0
    for name, mask in masks.items():
        value = zlib.crc32(np.packbits(mask).tobytes(), zlib.crc32(name.encode(), value))
    return value


# ---------------------------------------------------------------------------------------------------------
# Writing runs


def write_run(
    runs_dir: Path,
    group: str,
    identifier: str,
    config: dict[str, Any],
    lines: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    status: str = "completed",
) -> Path:
    """One run directory: status, config.yaml, metrics.jsonl and (when given) summary.json."""
    run_dir = runs_dir / group / identifier
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status").write_text(status + "\n")
    (run_dir / "config.yaml").write_text(yaml.dump(config, Dumper=_YAML_DUMPER, sort_keys=False))
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir


def make_config(
    method: str,
    arch: str,
    seed: int,
    sparsity: float,
    init_sparsity: float,
    epochs: int,
    group: str,
    job_type: str,
    keep_checkpoints: tuple[int, ...] = (),
) -> dict[str, Any]:
    overrides = {
        "optim": {"epochs": epochs},
        "sparsity": {"sparsity": sparsity, "init_sparsity": init_sparsity},
        "tracking": {"group": group, "job_type": job_type},
        "run": {"seed": seed, "device": "cpu", "keep_checkpoints": list(keep_checkpoints)},
    }
    return resolve(method, dataset=DATASET, arch=arch, overrides=overrides).to_dict()


def _identifier(config: dict[str, Any]) -> str:
    return run_id(validate(config))


def _summary(
    config: dict[str, Any],
    identifier: str,
    group: str,
    test_acc: float,
    density: float,
    train_density: float,
    epochs: int,
) -> dict[str, Any]:
    arch = config["model"]["arch"]
    steps = epochs * STEPS_PER_EPOCH
    dense_inference = INFERENCE_FLOPS_DENSE[arch]
    dense_train = 3 * BATCH * steps * dense_inference
    return {
        "run_id": identifier,
        "group": group,
        "job_type": config["tracking"]["job_type"],
        "method": config["sparsity"]["method"],
        "arch": arch,
        "dataset": DATASET,
        "seed": config["run"]["seed"],
        "epochs": epochs,
        "steps": steps,
        "world_size": 1,
        "sparsity": 0.0 if config["sparsity"]["method"] == "dense" else config["sparsity"]["sparsity"],
        "init_sparsity": config["sparsity"]["init_sparsity"],
        "density": density,
        "test_acc": test_acc,
        "test_loss": round(2.5 * (1 - test_acc), 4),
        "val_acc": grid(test_acc + 0.002),
        "best_val_epoch": epochs,
        "best_val_acc": grid(test_acc + 0.002),
        "test_acc_at_best_val": test_acc,
        "train_loss": round(2.0 * (1 - test_acc), 4),
        "masked_weights": MASKED_WEIGHTS[arch],
        "active_weights": round(density * MASKED_WEIGHTS[arch]),
        "inference_flops": round(density * dense_inference),
        "inference_flops_dense": dense_inference,
        "inference_flops_rel": round(density * dense_inference) / dense_inference,
        "train_flops": round(train_density * dense_train),
        "train_flops_dense": dense_train,
        "train_flops_rel": round(train_density * dense_train) / dense_train,
        "wall_time_s": round(0.8 * steps, 1),
        "device": "cpu",
        "torch_version": torch.__version__,
    }


def epoch_lines(
    first_epoch: int, last_epoch: int, accuracy: Any, density: float, lr_at: Any
) -> list[dict[str, Any]]:
    """Train lines every 50 steps and one epoch line per epoch in (first_epoch, last_epoch]."""
    lines = []
    for epoch in range(first_epoch + 1, last_epoch + 1):
        for step in range((epoch - 1) * STEPS_PER_EPOCH + 1, epoch * STEPS_PER_EPOCH + 1):
            if step % 50 == 0:
                loss = round(2.0 * (1 - accuracy(step / STEPS_PER_EPOCH)), 4)
                lines.append(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": step / STEPS_PER_EPOCH,
                        "train/loss": loss,
                        "lr": lr_at(epoch),
                    }
                )
        test = accuracy(epoch)
        lines.append(
            {
                "kind": "epoch",
                "step": epoch * STEPS_PER_EPOCH,
                "epoch": epoch,
                "train/loss": round(2.0 * (1 - test), 4),
                "train/acc": grid(min(1.0, test + 0.03)),
                "val/acc": grid(test + 0.002),
                "test/acc": test,
                "test/loss": round(2.5 * (1 - test), 4),
                "lr": lr_at(epoch),
                "density": density,
                "time/epoch_s": 40.0,
            }
        )
    return lines


def _lr_schedule(config: dict[str, Any]) -> Any:
    optim = config["optim"]
    decays = [fraction * optim["epochs"] for fraction in optim["lr_decay_at"]]
    return lambda epoch: optim["lr"] * optim["lr_decay_factor"] ** sum(epoch > decay for decay in decays)


def _mask_lines(events: list[MaskEvent], initial: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The step-0 record of the initial masks (every run logs one), then one line per mask update."""
    start = MaskEvent(0, initial, float(np.mean(np.concatenate(list(initial.values())))), None)
    lines = []
    for event in [start, *events]:
        total = sum(mask.size for mask in event.masks.values())
        line: dict[str, Any] = {
            "kind": "mask_update",
            "step": event.step,
            "epoch": event.step / STEPS_PER_EPOCH,
            "density": sum(int(mask.sum()) for mask in event.masks.values()) / total,
            "target_density": event.target_density,
        }
        if event.regen_rate is not None:
            line["regen/rate"] = event.regen_rate
        line["mask/checksum"] = checksum(event.masks)
        for name, mask in event.masks.items():
            line[f"layers/{name}/density"] = int(mask.sum()) / mask.size
            line[f"layers/{name}/pruned"] = event.pruned.get(name, 0)
            line[f"layers/{name}/dropped"] = event.dropped.get(name, 0)
            line[f"layers/{name}/grown"] = event.grown.get(name, 0)
        lines.append(line)
    return lines


def _time_averaged_density(initial: dict[str, np.ndarray], events: list[MaskEvent], total: int) -> float:
    """Mean global density over the run's steps: what training FLOPs scale with (the fake's stand-in)."""
    size = sum(mask.size for mask in initial.values())
    points = [(0, sum(int(mask.sum()) for mask in initial.values()) / size)]
    points += [(event.step, sum(int(mask.sum()) for mask in event.masks.values()) / size) for event in events]
    ends = [step for step, _ in points[1:]] + [total]
    return sum(density * (end - start) for (start, density), end in zip(points, ends, strict=True)) / total


def write_compare_run(
    runs_dir: Path,
    arch: str,
    method_key: str,
    sparsity: float,
    seed: int,
    spec: StoreSpec,
    status: str = "completed",
) -> Path:
    method = "granet" if method_key.startswith("granet") else method_key
    init_sparsity = 0.5 if method_key == "granet-0.5" else 0.0
    config = make_config(method, arch, seed, sparsity, init_sparsity, spec.compare_epochs, "compare", "train")
    identifier = _identifier(config)
    total = spec.compare_epochs * STEPS_PER_EPOCH
    initial, events = simulate_masks(
        arch, method, sparsity, init_sparsity, total, config["sparsity"]["update_frequency"]
    )
    final_masks = events[-1].masks if events else initial
    size = sum(mask.size for mask in initial.values())
    density = 1.0 if method == "dense" else sum(int(mask.sum()) for mask in final_masks.values()) / size
    test_acc = compare_test_acc(arch, method_key, sparsity, seed)

    def accuracy(epoch: float) -> float:
        if epoch >= spec.compare_epochs:
            return test_acc
        return grid(test_acc - (test_acc - CHANCE) * math.exp(-epoch / (spec.compare_epochs / 5)))

    lines = epoch_lines(0, spec.compare_epochs, accuracy, density, _lr_schedule(config))
    lines = sorted(
        lines + _mask_lines(events, initial), key=lambda line: (line["step"], line["kind"] == "epoch")
    )
    if status != "completed":
        lines = lines[: len(lines) // 2]
    train_density = 1.0 if method == "dense" else _time_averaged_density(initial, events, total)
    summary = _summary(config, identifier, "compare", test_acc, density, train_density, spec.compare_epochs)
    run_dir = write_run(
        runs_dir, "compare", identifier, config, lines, summary if status == "completed" else None, status
    )
    if seed in spec.snapshot_seeds:
        snapshots = [(0, initial)] + [(event.step, event.masks) for event in events]
        for step, masks in snapshots:
            shaped = {name: torch.from_numpy(masks[name].reshape(shape)) for name, shape in LAYERS[arch]}
            save_masks(run_dir / "masks" / snapshot_name(step), shaped)
    return run_dir


def write_plasticity_runs(runs_dir: Path, spec: StoreSpec) -> list[Path]:
    written = []
    epochs, k = spec.plasticity_epochs, spec.continue_epochs
    for arch in spec.archs:
        for pretrained in spec.pretrained_sparsities:
            method = "dense" if pretrained == 0 else "static"
            for seed in spec.seeds:
                base_config = make_config(
                    method,
                    arch,
                    seed,
                    pretrained,
                    0.0,
                    epochs,
                    "plasticity",
                    "base",
                    spec.probe_epochs,
                )
                base_id = _identifier(base_config)
                accuracy = lambda e, a=arch, p=pretrained, s=seed: grid(  # noqa: E731
                    base_accuracy(a, p, e, epochs) + 0.002 * jitter(s)
                )
                density = 1 - pretrained
                lines = epoch_lines(0, epochs, accuracy, density, _lr_schedule(base_config))
                base_summary = _summary(
                    base_config, base_id, "plasticity", accuracy(epochs), density, density, epochs
                )
                written.append(write_run(runs_dir, "plasticity", base_id, base_config, lines, base_summary))
                for probe_epoch in spec.probe_epochs:
                    control = Probe(arch, probe_epoch, 0.0, False, "global", pretrained, seed)
                    control_id, control_dir = _probe_run(runs_dir, base_config, base_id, control, k, None)
                    written.append(control_dir)
                    for probe in _probes(spec, arch, pretrained, seed, probe_epoch):
                        written.append(_probe_run(runs_dir, base_config, base_id, probe, k, control_id)[1])
    return written


def _probes(spec: StoreSpec, arch: str, pretrained: float, seed: int, probe_epoch: int) -> Iterator[Probe]:
    settings: list[tuple[str, float]] = [("filter", rate) for rate in spec.filter_rates]
    if pretrained == 0:
        settings += [("global", rate) for rate in spec.rates]
        if arch in spec.layerwise_archs:
            settings += [("layerwise", rate) for rate in spec.layerwise_rates]
    for criterion, rate in settings:
        for regeneration in (False, True):
            yield Probe(arch, probe_epoch, rate, regeneration, criterion, pretrained, seed)


def _probe_config(base_config: dict[str, Any], job_type: str, plasticity: dict[str, Any]) -> dict[str, Any]:
    """A probe's or control's config as harness.studies.plan builds it: the base's plus a plasticity section."""
    until = plasticity["probe_epoch"] + plasticity["continue_epochs"]
    overrides = {
        "tracking": {"job_type": job_type},
        "run": {"keep_checkpoints": [], "stop_after_epochs": until},
        "plasticity": plasticity,
    }
    return validate(deep_merge(base_config, overrides)).to_dict()


def _probe_run(
    runs_dir: Path,
    base_config: dict[str, Any],
    base_id: str,
    probe: Probe,
    k: int,
    control_id: str | None,
) -> tuple[str, Path]:
    """A probe (or, with pruning rate 0, the control) with the summary and lines harness.studies.probe writes."""
    epochs = base_config["optim"]["epochs"]
    until = min(probe.probe_epoch + k, epochs)
    section = {
        "base_run": f"plasticity/{base_id}",
        "probe_epoch": probe.probe_epoch,
        "pruning_rate": probe.pruning_rate,
        "criterion": probe.criterion,
        "regeneration": probe.regeneration,
        "continue_epochs": until - probe.probe_epoch,
    }
    is_control = probe.pruning_rate == 0
    config = _probe_config(base_config, "control" if is_control else "probe", section)
    identifier = run_id(validate(config))
    values = probe_values(probe, epochs, k)
    if is_control:
        values["acc_post"] = values["acc_pre"]
        values["acc_continue"] = values["acc_control"]
        values["plasticity"] = values["acc_continue"] - values["acc_pre"]
    density_before = 1 - probe.pretrained_sparsity
    density = density_before if probe.regeneration else density_before * (1 - probe.pruning_rate)
    measured = {
        **{key: value for key, value in section.items() if key != "base_run"},
        "pretrained_sparsity": probe.pretrained_sparsity,
        "acc_pre": values["acc_pre"],
        "acc_post": values["acc_post"],
        "base_run": section["base_run"],
    }
    if not is_control:
        measured.update({"acc_control": values["acc_control"], "control_run": f"plasticity/{control_id}"})
    lines = [
        {"kind": "probe", "step": probe.probe_epoch * STEPS_PER_EPOCH, "epoch": probe.probe_epoch, **measured}
    ]

    def accuracy(epoch: float) -> float:
        if epoch >= until:
            return values["acc_continue"]
        progress = (epoch - probe.probe_epoch) / (until - probe.probe_epoch)
        return grid(values["acc_post"] + (values["acc_continue"] - values["acc_post"]) * progress)

    lines += epoch_lines(probe.probe_epoch, until, accuracy, density, _lr_schedule(config))
    summary = _summary(config, identifier, "plasticity", values["acc_continue"], density, density, until)
    summary["steps"] = until * STEPS_PER_EPOCH
    summary.update(measured)
    summary["acc_continue"] = summary["test_acc"]
    summary["plasticity"] = summary["acc_continue"] - summary["acc_pre"]
    if is_control:
        summary["acc_control"] = summary["acc_continue"]
    return identifier, write_run(runs_dir, "plasticity", identifier, config, lines, summary)


@dataclass(frozen=True)
class Store:
    root: Path
    spec: StoreSpec
    run_dirs: tuple[Path, ...]


def build_store(
    root: Path, spec: StoreSpec | None = None, *, compare: bool = True, plasticity: bool = True
) -> Store:
    """Write the fake run store under `root` (the runs directory) and return where everything went."""
    spec = spec or StoreSpec()
    written: list[Path] = []
    if compare:
        for arch in spec.archs:
            for seed in spec.seeds:
                written.append(write_compare_run(root, arch, "dense", 0.9, seed, spec))
                for method_key in spec.methods:
                    for sparsity in spec.sparsities:
                        written.append(write_compare_run(root, arch, method_key, sparsity, seed, spec))
        if spec.incomplete_runs:
            arch = spec.archs[0]
            written.append(write_compare_run(root, arch, "gmp", 0.9, 7, spec, status="failed"))
            written.append(write_compare_run(root, arch, "gmp", 0.9, 8, spec, status="running"))
    if plasticity:
        written += write_plasticity_runs(root, spec)
    return Store(root, spec, tuple(written))


# ---------------------------------------------------------------------------------------------------------
# The same store as the public W&B API shows it


class FakeSummary:
    """Dict-like but not a dict, like wandb's HTTPSummary."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def keys(self) -> list[str]:
        return list(self._values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __contains__(self, key: str) -> bool:
        return key in self._values


class FakeRun:
    """The attributes of `wandb.apis.public.Run` that analysis reads."""

    def __init__(self, run_dir: Path, entity: str, project: str) -> None:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        status = (run_dir / "status").read_text().strip()
        self.id = run_dir.name
        self.name = run_dir.name
        self.group = config["tracking"]["group"]
        self.job_type = config["tracking"]["job_type"]
        self.state = {"completed": "finished", "failed": "crashed", "running": "running"}[status]
        self.path = [entity, project, self.id]
        self.config = {**config, "_wandb": {"cli_version": "0.31.0", "python_version": "3.11"}}
        self._lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary: dict[str, Any] = {}
        for line in self._lines:  # W&B keeps the last logged value of every key in the summary
            summary.update(line)
        if (run_dir / "summary.json").exists():
            summary.update(json.loads((run_dir / "summary.json").read_text()))
        summary.update(
            {"_step": len(self._lines) - 1, "_runtime": 12.5, "_timestamp": 1.7e9, "_wandb": {"runtime": 12}}
        )
        self.summary = FakeSummary(summary)
        self.tags = [summary.get("method", config["sparsity"]["method"]), config["model"]["arch"], DATASET]

    def scan_history(self) -> Iterator[dict[str, Any]]:
        for index, line in enumerate(self._lines):
            yield {**line, "_step": index, "_runtime": 0.5 * index, "_timestamp": 1.7e9 + index}


class FakeWandbApi:
    """`runs(path, filters, per_page, lazy)` and `run(path)` over a generated store."""

    def __init__(self, runs_dir: Path, entity: str = "lab", project: str = "granet") -> None:
        run_dirs = sorted(path.parent for path in runs_dir.glob("*/*/config.yaml"))
        self._runs = {f"{entity}/{project}/{path.name}": FakeRun(path, entity, project) for path in run_dirs}
        self.project = f"{entity}/{project}"
        self.calls: list[tuple[str, Any]] = []

    def runs(
        self, path: str, filters: dict[str, Any] | None = None, per_page: int = 50, lazy: bool = True
    ) -> list[FakeRun]:
        self.calls.append(("runs", {"path": path, "filters": filters, "lazy": lazy}))
        return [run for key, run in self._runs.items() if key.startswith(path + "/")]

    def run(self, path: str) -> FakeRun:
        self.calls.append(("run", path))
        return self._runs[path]
