"""Typed configuration: one pydantic model per concern, recipes from YAML, run ids from hashes.

A config is resolved once at the edge (CLI or a Python caller) from three layers, later ones winning:
the model defaults below, the recipe YAML picked by dataset and arch, and explicit overrides
(`--set section.key=value` and the CLI's named flags). Each component later receives only its own
section. Points in time that depend on the run length (LR decays, the end of pruning) are stored as
fractions of the run, so `--epochs` rescales them consistently.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.errors import UserError
from harness.names import ARCHS, DATASETS

# The registries' names (harness.names): the config accepts exactly what the registries hold.
Dataset = Literal[DATASETS]  # type: ignore[valid-type]
Arch = Literal[ARCHS]  # type: ignore[valid-type]
Fraction = float  # a point in time as a fraction of the whole run, in [0, 1]
# Channels of each architecture's narrowest layer at width 1 (harness/models; a test checks the table).
NARROWEST_LAYER = {"resnet20": 16, "resnet32": 16, "resnet56": 16, "vgg19": 64, "resnet50": 64}
# The trainer seeds torch with `seed * 1_000_003 + 7919 * (rank + 1)`, which must stay below 2**64; 2**32 - 1
# keeps that true for any world size and is the range every common RNG accepts.
MAX_SEED = 2**32 - 1


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, numbers are finite
    (`--lr 1e309` parses as inf), and a boolean is never read as a number (`epochs=true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode coerces True to 1 and 1.0; strict mode would also refuse "5" and paths as strings.
        field = cls.model_fields[info.field_name]
        if not _accepts_bool(field.annotation) and _holds_bool(value):
            raise ValueError(f"expected a number, not a boolean (got {value!r})")
        return value


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(argument) for argument in get_args(annotation))


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(item, bool) for item in value)


def _non_empty_path(value: Any) -> Any:
    """`Path("")` is the working directory: an empty or missing path must not silently mean "here"."""
    if value is None or (isinstance(value, str | Path) and str(value).strip() == ""):
        raise ValueError(f"expected a non-empty path (got {value!r}); use '.' for the working directory")
    return value


NonEmptyPath = Annotated[Path, BeforeValidator(_non_empty_path)]


class DataConfig(Section):
    dataset: Dataset = "cifar10"
    data_dir: NonEmptyPath = Path("data")
    # Held out from the training set for every selection (best epoch); the test set is never used to select.
    val_size: int = Field(5000, ge=0)
    augment: bool = True
    # Size of generated datasets (MNIST-1D, synthetic); None means the generator's default.
    num_samples: int | None = Field(None, ge=20)
    num_workers: int = Field(2, ge=0)
    download: bool = True


class ModelConfig(Section):
    arch: Arch = "resnet20"
    # Multiplies every layer's channel count; the CPU recipes use it to size models for MNIST-1D.
    width: float = Field(1.0, gt=0)

    @field_validator("width")
    @classmethod
    def _every_layer_keeps_a_channel(cls, width: float, info: ValidationInfo) -> float:
        arch = info.data.get("arch")
        narrowest = NARROWEST_LAYER.get(arch, 1)
        # Layers are clamped to one channel, so a tiny width would silently build a network of 1-channel layers.
        if width * narrowest < 1:
            raise ValueError(
                f"{width:g} leaves {arch}'s narrowest layer ({narrowest} channels at width 1) with less "
                f"than one channel; use a width >= {1 / narrowest:g}"
            )
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


class SparsityConfig(Section):
    method: str = "dense"
    sparsity: float = Field(0.9, ge=0, lt=1)  # final sparsity s_f
    init_sparsity: float = Field(0.0, ge=0, lt=1)  # GraNet's s_i
    distribution: Literal["erk", "er", "uniform"] = "erk"
    erk_power: float = Field(1.0, gt=0)
    update_frequency: int = Field(1000, ge=1)  # dT, in optimizer steps
    prune_start: Fraction = Field(0.0, ge=0, le=1)  # t_0
    prune_end: Fraction = Field(0.5, ge=0, le=1)  # t_e
    regen_rate: float = Field(0.5, ge=0, le=1)  # r_0
    regen_rate_min: float = Field(0.005, ge=0, le=1)
    regen_until: Literal["end", "prune_end"] = "end"
    # Regrowth score; None takes the method's own (gradient for GraNet and RigL, random for SET).
    growth: Literal["gradient", "momentum", "random"] | None = None
    # RigL / SET stop updating the topology after this fraction of training.
    update_until: Fraction = Field(1.0, gt=0, le=1)
    # Drop count of a regeneration event per layer: ceil(r * n) (the authors' code) or r * n rounded.
    drop_rounding: Literal["ceil", "nearest"] = "ceil"
    # SNIP / GraSP: mini-batches of the scoring pass at initialisation.
    scoring_batches: int = Field(1, ge=1)
    synflow_rounds: int = Field(100, ge=1)  # SynFlow: pruning rounds (exponential density schedule)
    mest_lambda: float = Field(1.0, ge=0)  # MEST: drop score |w| + lambda * |g|
    # AC/DC: dense warm-up, each compressed / decompressed phase, and the final compressed phase.
    acdc_warmup: Fraction = Field(0.1, gt=0, lt=1)
    acdc_phase: Fraction = Field(0.05, gt=0, le=1)
    acdc_final: Fraction = Field(0.15, ge=0, lt=1)
    dense_first_layer: bool = False
    dense_classifier: bool = False

    # Not sparse-core hyperparameters: which tensors are masked (the mask set), and the method itself.
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"method", "dense_first_layer", "dense_classifier"})

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from harness.sparse.methods import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; valid: {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SparsityConfig:
        if self.init_sparsity > self.sparsity:
            raise ValueError(
                f"init_sparsity ({self.init_sparsity}) must not exceed the final sparsity ({self.sparsity})"
            )
        if self.prune_end < self.prune_start:
            raise ValueError(
                f"prune_end ({self.prune_end}) must not precede prune_start ({self.prune_start})"
            )
        if self.regen_rate_min > self.regen_rate:
            raise ValueError(
                f"regen_rate_min ({self.regen_rate_min}) must not exceed regen_rate ({self.regen_rate})"
            )
        if self.acdc_warmup + self.acdc_final > 1:
            raise ValueError(
                f"acdc_warmup + acdc_final ({self.acdc_warmup} + {self.acdc_final}) must not exceed the run (1)"
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _reset_unread(cls, data: Any, handler: Any) -> Any:
        """Fields the method does not read go back to their defaults (sparsity to 0 for dense), so two
        runs that differ only in ignored values have one config and one run id. Every value given is
        validated first, ignored or not."""
        from harness.sparse.methods import METHODS

        validated = handler(data)
        reads = METHODS[validated.method].reads
        # Every field but the method itself; the mask-set options matter to every method but dense.
        fields = set(cls.model_fields) - {"method"}
        unread = fields - reads - ({"dense_first_layer", "dense_classifier"} if reads else set())
        defaults = {name: cls.model_fields[name].default for name in unread}
        if "sparsity" in unread:
            defaults["sparsity"] = 0.0
        changed = {name: value for name, value in defaults.items() if getattr(validated, name) != value}
        if not changed:
            return validated
        # Validated again from the reset values (not copied), so that construction through __init__ works too.
        return handler({**validated.model_dump(), **changed})


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
    # recomputed over the training set (harness/models/batchnorm.py, recomputed_statistics). Off: the paper's
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

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML- and JSON-safe nested dict (paths as strings, tuples as lists)."""
        return json.loads(self.model_dump_json())


# Fields that say where things go or how fast they load, not what is computed: excluded from the run id
# so that moving the data or the runs directory does not orphan finished runs.
_NOT_IDENTITY = {
    "data": {"data_dir", "num_workers", "download"},
    "tracking": {"runs_dir", "wandb", "wandb_project", "wandb_entity", "log_every"},
    "run": {"mask_check_every"},
}


# Fields added after run stores existed: left out of the identity while at their default (which they
# always are for the methods that do not read them), so the run ids of earlier runs stay what they were.
_IDENTITY_WHEN_SET = {
    "sparsity": {
        "scoring_batches",
        "synflow_rounds",
        "mest_lambda",
        "acdc_warmup",
        "acdc_phase",
        "acdc_final",
        "drop_rounding",
    },
    "plasticity": {"recalibrate_bn", "average_last"},
}


def config_hash(config: Config, world_size: int = 1) -> str:
    """sha256 of every field that can change a run's results, seed and world size included (hex)."""
    identity = config.to_dict()
    for section, fields in _NOT_IDENTITY.items():
        for name in fields:
            identity[section].pop(name, None)
    for section, fields in _IDENTITY_WHEN_SET.items():
        if getattr(config, section) is None:  # an optional section (plasticity) that this run lacks
            continue
        defaults = type(getattr(config, section)).model_fields
        for name in fields:
            if identity[section].get(name) == defaults[name].default:
                identity[section].pop(name)
    identity["world_size"] = world_size
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_id(config: Config, world_size: int = 1) -> str:
    """Content address of a run: a readable stem and the start of `config_hash`."""
    digest = config_hash(config, world_size)[:10]
    stem = f"{config.model.arch}-{config.data.dataset}-s{config.run.seed}"
    probe = config.plasticity
    if probe is None:
        return f"{config.sparsity.method}-{stem}-{digest}"
    if probe.pruning_rate == 0:
        return f"control-{stem}-e{probe.probe_epoch}-{digest}"
    regrowth = "-regen" if probe.regeneration else ""
    return f"probe-{stem}-e{probe.probe_epoch}-p{probe.pruning_rate:g}-{probe.criterion}{regrowth}-{digest}"


def run_directory(config: Config, world_size: int = 1) -> Path:
    """`<runs_dir>/<group>/<run id>`: where the run that `config` addresses lives."""
    return Path(config.tracking.runs_dir) / config.tracking.group / run_id(config, world_size)


# ---------------------------------------------------------------------------------------------------------
# Recipes and overrides


def recipe_dir() -> Path:
    return Path(str(resources.files("harness") / "recipes"))


def available_recipes() -> list[str]:
    return sorted(path.stem for path in recipe_dir().glob("*.yaml"))


def load_recipe(dataset: str, arch: str) -> dict[str, Any]:
    """The recipe for (dataset, arch): `<dataset>-<arch>.yaml` if it exists, else `<dataset>.yaml`."""
    if dataset not in DATASETS:
        raise UserError(f"data.dataset: unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    for stem in (f"{dataset}-{arch}", dataset):
        path = recipe_dir() / f"{stem}.yaml"
        if path.exists():
            return _read_recipe(path)
    raise UserError(f"no recipe for dataset {dataset!r}; available: {', '.join(available_recipes())}")


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise UserError(f"recipe {path.name}: circular 'extends'")
    data = copy.deepcopy(_parse_yaml(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return deep_merge(_read_recipe(path.with_name(f"{parent}.yaml"), (*seen, path)), data)


@functools.cache
def _parse_yaml(path: Path) -> dict[str, Any]:
    """Recipes are package files that do not change while a process runs; planning a sweep reads them
    once per grid point, so parse each only once (callers get deep copies)."""
    return yaml.safe_load(path.read_text()) or {}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["optim.lr=0.05", "run.keep_checkpoints=[10, 20]"]` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.05")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UserError(f"--set {item!r}: value is not valid YAML ({error.problem})") from None
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def resolve(
    method: str,
    *,
    dataset: str = "cifar10",
    arch: str = "resnet20",
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults < recipe(dataset, arch) < overrides; validated once. Raises UserError naming the field."""
    layered = deep_merge(load_recipe(dataset, arch), {"data": {"dataset": dataset}, "model": {"arch": arch}})
    layered = deep_merge(layered, {"sparsity": {"method": method}})
    layered = deep_merge(layered, overrides or {})
    return validate(layered)


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """The first problem as one line: `sparsity.sparsity: Input should be less than 1 (got 1.5)`."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    if first["type"] == "extra_forbidden":
        return f"{location}: unknown field"
    if isinstance(given, dict) or first["type"].startswith("value_error"):
        return f"{location}: {message}"
    return f"{location}: {message} (got {given!r})"


def load_config_file(path: Path | str) -> Config:
    """A resolved config written by a run (`config.yaml`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read config ({error.strerror})") from None
    return validate(data)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
