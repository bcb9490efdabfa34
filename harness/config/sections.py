"""The config sections: one pydantic model per concern, and `Config` that holds them.

Every section forbids unknown keys, is immutable, refuses non-finite numbers and never reads a boolean as a
number. Points in time that depend on the run length (LR decays, the end of pruning) are fractions of the run,
so `--epochs` rescales them consistently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.config.base import Fraction, NonEmptyPath, Section
from harness.config.sparsity import SparsityConfig
from harness.registry.datasets import DATASETS, INPUT_SPECS, RESIDENT_DATASETS
from harness.registry.models import MODELS, check_width

# The trainer seeds torch with `seed * 1_000_003 + 7919 * (rank + 1)`, which must stay below 2**64; 2**32 - 1
# keeps that true for any world size and is the range every common RNG accepts.
MAX_SEED = 2**32 - 1


class DataConfig(Section):
    # A built-in dataset, an installed one (entry point `harness.datasets`) or a plug-in `MODULE:FUNCTION`.
    dataset: str = "cifar10"
    data_dir: NonEmptyPath = Path("data")
    # Held out from the training set for every selection (best epoch); the test set is never used to select.
    val_size: int = Field(5000, ge=0)
    augment: bool = True
    # Size of generated datasets (MNIST-1D, synthetic); None means the generator's default.
    num_samples: int | None = Field(None, ge=20)
    num_workers: int = Field(2, ge=0)
    download: bool = True
    # Where batches are assembled: "device" holds the data on the training device (CIFAR as uint8 images,
    # cropped, flipped and normalised there in batched tensor operations), "torchvision" is the host pipeline
    # (per-image transforms in DataLoader workers), "auto" picks "device" when the dataset has it and fits
    # in the device's memory. Both give the same batches bit for bit, so this is not part of the run id.
    pipeline: Literal["auto", "device", "torchvision"] = "auto"

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, dataset: str) -> str:
        # A dataset builder takes the data section positionally: only that it is callable can be checked here.
        return DATASETS.check_callable(dataset, ())

    @field_validator("pipeline")
    @classmethod
    def _device_pipeline_exists(cls, pipeline: str, info: ValidationInfo) -> str:
        dataset = info.data.get("dataset")
        if pipeline == "device" and dataset is not None and dataset not in RESIDENT_DATASETS:
            raise ValueError(
                f"'device' is not available for dataset {dataset!r}: only {', '.join(RESIDENT_DATASETS)} can "
                "be held on the device; use 'auto' or 'torchvision'"
            )
        return pipeline


class ModelConfig(Section):
    # A built-in architecture, an installed one (entry point `harness.models`) or a plug-in `MODULE:FUNCTION`.
    arch: str = "resnet20"
    # Multiplies every layer's channel count; the CPU recipes use it to size models for MNIST-1D.
    width: float = Field(1.0, gt=0)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return MODELS.check_callable(arch, ("num_classes", "input_shape", "width"))

    @field_validator("width")
    @classmethod
    def _every_layer_keeps_a_channel(cls, width: float, info: ValidationInfo) -> float:
        # Layers are clamped to one channel, so a tiny width would silently build a network of 1-channel layers.
        if "arch" in info.data:
            check_width(info.data["arch"], width)
        return width


class OptimConfig(Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: int = Field(160, ge=1)
    batch_size: int = Field(128, ge=1)  # global batch; divided among ranks
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    # ImageNet recipe: no weight decay on BatchNorm parameters (and biases).
    decay_norm_and_bias: bool = True
    lr_decay_at: tuple[Fraction, ...] = (0.5, 0.75)
    lr_decay_factor: float = Field(0.1, gt=0, le=1)
    warmup: Fraction = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @field_validator("lr_decay_at")
    @classmethod
    def _decays_are_fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < point < 1.0 for point in value) or list(value) != sorted(value):
            raise ValueError("must be increasing fractions of the run, each in (0, 1)")
        return value


class TrackingConfig(Section):
    runs_dir: NonEmptyPath = Path("runs")
    group: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "granet-harness"
    wandb_entity: str | None = None
    job_type: str = "train"
    log_every: int = Field(50, ge=1)  # steps between train-loss lines in metrics.jsonl
    mask_snapshots: bool = True


class RunConfig(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op CPU threads of each process. Part of what a run is, not how fast it goes: CPU kernels split
    # their reductions by thread, so the same run with 1 and 2 threads diverges (107 of 128 tensors differ
    # after 30 steps of ResNet-20-1D). Pinned here, it enters the run id, and neither `--workers`, the
    # machine's core count, OMP_NUM_THREADS nor a resume on another machine can change the numbers.
    threads: int = Field(1, ge=1, le=256)
    # Epochs whose end-of-epoch checkpoints are kept for good (the plasticity study probes them).
    keep_checkpoints: tuple[int, ...] = ()
    # Hard stop after this many epochs even though the schedule is longer (probes' continuation).
    stop_after_epochs: int | None = Field(None, ge=0)
    # Optimizer steps between cross-rank mask checksum comparisons (besides every mask update and checkpoint);
    # 0 turns the periodic check off. Not part of the run id: it only detects, never changes, a result.
    mask_check_every: int = Field(100, ge=0)
    # torch.compile of the training forward (its backward comes with it through AOTAutograd). The fused
    # kernels round differently from eager ones, so a compiled run is another run id (False is left out of
    # the hash: harness.config.identity). The optimizer step and the sparsity method stay eager.
    compile: bool = False
    # The layout of the model's weights and of each input batch. `auto`: channels_last for 2-D networks on
    # CUDA, contiguous otherwise (1-D networks have no channels_last; on a CPU it changes the convolution
    # kernels and so the numbers CPU runs promise bit for bit). Why `auto` keeps run ids' meaning although
    # it depends on the device: harness.config.identity.
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"


class PlasticityConfig(Section):
    """One probe of the pruning-plasticity study (SPEC section 7); absent for ordinary runs."""

    base_run: str  # `<group>/<run-id>` of the base run, relative to the runs directory
    probe_epoch: int = Field(ge=0)  # completed epochs of the base run when pruning happens
    # Fraction of the remaining weights, in [0, 1): 0 is the unpruned control; 1 would leave nothing to train.
    pruning_rate: float = Field(ge=0, lt=1)
    criterion: Literal["global", "layerwise", "filter"] = "global"
    regeneration: bool = False
    continue_epochs: int | None = Field(None, ge=0)  # None = to the end of the base schedule
    # Measure every accuracy of the probe (acc_pre, acc_post, acc_continue) with BatchNorm statistics
    # recomputed over the training set (harness/engine/batchnorm.py, recomputed_statistics). Off: the paper's
    # measurement, with the running averages.
    recalibrate_bn: bool = False
    # acc_continue (the probe's and its control's) is the mean test accuracy over the last `average_last`
    # epochs of the continuation, each measured as the others are; 1 = the final epoch's, as the paper.
    # Averaging reads a network's accuracy instead of one point of the swing it has at a high LR.
    average_last: int = Field(1, ge=1)


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    sparsity: SparsityConfig = SparsityConfig()
    tracking: TrackingConfig = TrackingConfig()
    run: RunConfig = RunConfig()
    plasticity: PlasticityConfig | None = None

    @model_validator(mode="after")
    def _channels_last_needs_images(self) -> Config:
        # Known here for the built-in datasets; a plug-in's dimensionality is checked when the session is built.
        spec = INPUT_SPECS.get(self.data.dataset)
        if self.run.memory_format == "channels_last" and spec is not None and len(spec[1]) != 3:
            raise ValidationError.from_exception_data(
                "Config",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "value_error",
                            "{message}",
                            {"message": channels_last_error(self.data.dataset, len(spec[1]) - 1)},
                        ),
                        loc=("run", "memory_format"),
                        input=self.run.memory_format,
                    )
                ],
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML- and JSON-safe nested dict (paths as strings, tuples as lists)."""
        return json.loads(self.model_dump_json())


def channels_last_error(dataset: str, spatial_dims: int) -> str:
    """Why `run.memory_format: channels_last` cannot apply to a dataset's inputs (without the field name)."""
    return (
        f"channels_last is a layout of 2-D images, and {dataset} gives {spatial_dims}-D inputs; "
        "use auto or contiguous"
    )
