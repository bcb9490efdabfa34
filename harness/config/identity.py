"""Run identity: the hash of every config value that can change a run's results, and the run id made from it.

A run id is a content address: re-running a config finds its finished run, and anything that changes what the
id covers orphans every existing store. So what is left out of it (where things go, how fast they load) and
the rule that keeps fields added later out of older ids live here, in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from harness.config.sections import Config, PlasticityConfig, RunConfig
from harness.config.sparsity import legacy_values
from harness.registry.plugins import is_import_path
from harness.sparse.methods.registry import REGISTRY

# Fields that say where things go or how fast they load, not what is computed: excluded from the run id
# so that moving the data or the runs directory does not orphan finished runs. `data.pipeline` is here
# because both pipelines give the same batches bit for bit (tests/test_resident_pipeline.py).
_NOT_IDENTITY = {
    "data": {"data_dir", "num_workers", "download", "pipeline"},
    "tracking": {"runs_dir", "wandb", "wandb_project", "wandb_entity", "log_every"},
    "run": {"mask_check_every"},
}


# Fields added after run stores existed, left out of the identity while at their default, so the run ids of
# runs that predate them stay what they were: the settings of the built-in methods added later (a built-in
# method's section shows every built-in setting, at its default where the method lacks it:
# harness.config.sparsity), two plasticity options and the fast-step options. A plug-in method's settings
# are all in its identity.
#
# `run.memory_format: auto` resolves by device (channels_last for 2-D networks on CUDA, contiguous
# otherwise) and still keeps ids' meaning: on a CPU it is exactly the computation every earlier run did,
# and on CUDA the convolution algorithms (cuDNN's choice, atomics in its backward kernels) were never
# bit-deterministic, so a CUDA run id never promised particular bits; the layout stays within that. An
# explicit `contiguous` or `channels_last` fixes the layout and is hashed.
_LATE_FIELDS = {
    "sparsity": (
        "scoring_batches",
        "synflow_rounds",
        "mest_lambda",
        "acdc_warmup",
        "acdc_phase",
        "acdc_final",
        "drop_rounding",
    ),
    "plasticity": ("recalibrate_bn", "average_last"),
    "run": ("compile", "memory_format"),
}


def _late_defaults(config: Config) -> dict[str, dict[str, Any]]:
    defaults: dict[str, dict[str, Any]] = {}
    if REGISTRY.is_builtin(config.sparsity.method):
        defaults["sparsity"] = {name: legacy_values()[name] for name in _LATE_FIELDS["sparsity"]}
    run_fields = RunConfig.model_fields
    defaults["run"] = {name: run_fields[name].default for name in _LATE_FIELDS["run"]}
    if config.plasticity is not None:  # an optional section that this run may lack
        fields = PlasticityConfig.model_fields
        defaults["plasticity"] = {name: fields[name].default for name in _LATE_FIELDS["plasticity"]}
    return defaults


def config_hash(config: Config, world_size: int = 1) -> str:
    """sha256 of every field that can change a run's results, seed and world size included (hex)."""
    identity = config.to_dict()
    for section, fields in _NOT_IDENTITY.items():
        for name in fields:
            identity[section].pop(name, None)
    for section, defaults in _late_defaults(config).items():
        for name, default in defaults.items():
            if identity[section][name] == default:
                identity[section].pop(name)
    method = config.sparsity.method
    if not REGISTRY.is_builtin(method) and not is_import_path(method):
        # A name an installed package registers: what it stands for is part of what the run computed.
        identity["sparsity"]["plugin"] = REGISTRY.target(method)
    identity["world_size"] = world_size
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def readable(name: str) -> str:
    """A name as it can stand in a directory name: a plug-in's `pkg.nets:tiny` becomes `pkg.nets-tiny`
    (built-in names are unchanged). The hash, not the stem, tells runs apart: it covers the full import path."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", name)


def run_id(config: Config, world_size: int = 1) -> str:
    """Content address of a run: a readable stem and the start of `config_hash`."""
    digest = config_hash(config, world_size)[:10]
    stem = f"{readable(config.model.arch)}-{readable(config.data.dataset)}-s{config.run.seed}"
    probe = config.plasticity
    if probe is None:
        return f"{method_stem(config.sparsity.method)}-{stem}-{digest}"
    if probe.pruning_rate == 0:
        return f"control-{stem}-e{probe.probe_epoch}-{digest}"
    regrowth = "-regen" if probe.regeneration else ""
    return f"probe-{stem}-e{probe.probe_epoch}-p{probe.pruning_rate:g}-{probe.criterion}{regrowth}-{digest}"


def method_stem(method: str) -> str:
    """The method as a run id shows it: a built-in's name, or a plug-in's import path made safe for a file
    name on any system (`mylab.methods:Pruner` -> `mylab.methods-Pruner`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", method).strip("-.") or "plugin"


def run_directory(config: Config, world_size: int = 1) -> Path:
    """`<runs_dir>/<group>/<run id>`: where the run that `config` addresses lives."""
    return Path(config.tracking.runs_dir) / config.tracking.group / run_id(config, world_size)
