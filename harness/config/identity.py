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

from harness.config.sections import Config

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
        return f"{config.sparsity.method}-{stem}-{digest}"
    if probe.pruning_rate == 0:
        return f"control-{stem}-e{probe.probe_epoch}-{digest}"
    regrowth = "-regen" if probe.regeneration else ""
    return f"probe-{stem}-e{probe.probe_epoch}-p{probe.pruning_rate:g}-{probe.criterion}{regrowth}-{digest}"


def run_directory(config: Config, world_size: int = 1) -> Path:
    """`<runs_dir>/<group>/<run id>`: where the run that `config` addresses lives."""
    return Path(config.tracking.runs_dir) / config.tracking.group / run_id(config, world_size)
