"""The sparsity section: the method and the settings of sparse training."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Fraction, Section


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
