"""The collapse ablation's analysis: variants read from configs, regrowth into dead filters, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from analysis import collapse, load_runs
from analysis.figures import write_figures
from harness.config import resolve, run_id
from harness.store.rundir import snapshot_name
from harness.store.snapshots import save_masks

SHAPE = (4, 2, 3)  # a conv layer of 4 filters


def write_ablation_run(
    root: Path, method: str, seed: int, overrides: dict, test_acc: float, best: float, masks=()
) -> Path:
    config = resolve(
        method,
        dataset="mnist1d",
        overrides={
            **overrides,
            "sparsity": {
                "sparsity": 0.98,
                **collapse.ABLATION_BASE["sparsity"],
                **overrides.get("sparsity", {}),
            },
            "run": {"seed": seed},
            "tracking": {"job_type": "ablation", "group": "collapse"},
        },
    )
    run_dir = root / "collapse" / run_id(config)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    (run_dir / "status").write_text("completed\n")
    summary = {
        "run_id": run_dir.name, "method": method, "arch": "resnet20", "dataset": "mnist1d", "seed": seed, "sparsity": 0.98,
        "init_sparsity": 0.0, "epochs": 30, "test_acc": test_acc, "test_acc_at_best_val": best,
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for step, mask in masks:
        save_masks(run_dir / "masks" / snapshot_name(step), {"layer.weight": torch.from_numpy(mask)})
    return run_dir


def conv_mask(active_filters: dict[int, list[int]]) -> np.ndarray:
    """filter -> flat positions (of its 6 weights) that are active."""
    mask = np.zeros(SHAPE, dtype=bool)
    for index, positions in active_filters.items():
        mask[index].reshape(-1)[positions] = True
    return mask


def test_regrowth_into_dead_filters_is_counted_from_consecutive_snapshots(tmp_path):
    first = conv_mask({1: [0, 1], 2: [0], 3: [5]})  # filter 0 dead
    # Filter 1 loses a weight, filter 0 gains two, filter 2 gains one; then filter 3 dies and gains back.
    second = conv_mask({0: [2, 3], 1: [0], 2: [0, 4], 3: [5]})
    third = conv_mask({0: [2, 3], 1: [0], 2: [0, 4], 3: []})
    run_dir = write_ablation_run(
        tmp_path, "rigl", 0, {}, 0.5, 0.6, masks=[(0, first), (38, second), (76, third)]
    )
    share, dead = collapse.regrowth_targets(run_dir)
    assert share == pytest.approx(2 / 3)  # 2 of the 3 grown weights landed in the dead filter 0
    assert dead == pytest.approx(1 / 4)  # filter 3 is dead at the end


def test_variants_are_read_from_the_config_against_the_methods_recipe(tmp_path):
    for seed, (test_acc, best) in enumerate([(0.40, 0.70), (0.50, 0.74), (0.45, 0.72)]):
        write_ablation_run(tmp_path, "granet", seed, {}, test_acc, best)
        write_ablation_run(tmp_path, "granet", seed, {"sparsity": {"regen_until": "prune_end"}}, 0.7, 0.72)
        write_ablation_run(tmp_path, "granet", seed, {"model": {"width": 1.0}}, 0.8, 0.8)
        write_ablation_run(tmp_path, "rigl", seed, {"sparsity": {"growth": "random"}}, 0.6, 0.6)
        # GMP does not read regen_until: the value is reset, and the run is GMP's baseline.
        write_ablation_run(tmp_path, "gmp", seed, {"sparsity": {"update_frequency": 150}}, 0.9, 0.9)
    runs = load_runs(tmp_path)
    table = collapse.ablation_table(runs).set_index(["method", "variant"])
    assert sorted(table.index) == [
        ("gmp", "dT=150"),
        ("granet", "baseline"),
        ("granet", "regen_until=prune_end"),
        ("granet", "width=1"),
        ("rigl", "growth=random"),
    ]
    baseline = table.loc[("granet", "baseline")]
    assert baseline["n"] == 3
    assert baseline["test_acc_mean"] == pytest.approx(0.45)
    assert baseline["test_acc_std"] == pytest.approx(0.05)
    assert baseline["late_drop_mean"] == pytest.approx((0.30 + 0.24 + 0.27) / 3)
    assert np.isnan(baseline["dead_regrowth_mean"])  # no snapshots written

    markdown = collapse.to_markdown(collapse.ablation_table(runs))
    assert "| granet | 0.98 | baseline | 45.0 ± 5.0 | 72.0 ± 2.0 | 27.0 ± 3.0 | – | – | 3 |" in markdown

    report = write_figures(runs, tmp_path / "figures")
    assert "collapse_ablation" in report.written
    assert (tmp_path / "figures" / "collapse_table.md").read_text() == markdown


def test_figures_skip_the_ablation_without_its_runs(tmp_path):
    write_ablation_run(tmp_path, "granet", 0, {}, 0.4, 0.7)
    runs = load_runs(tmp_path)
    runs = runs.assign(job_type="train")
    assert collapse.ablation_table(runs).empty
    report = write_figures(runs, tmp_path / "figures")
    assert report.skipped["collapse_ablation"].startswith("no collapse-ablation runs")


def test_a_field_missing_from_an_older_run_is_its_default_not_a_variant():
    """Runs written before a field existed (drop_rounding here) lack its column: they ran with the
    default, so they are the baseline; a run that sets the field is its variant."""
    base = {"method": "granet", "dataset": "mnist1d", "arch": "resnet20", "sparsity": 0.98}
    base.update(
        {column: value for column, value in collapse._baseline("granet", "mnist1d", "resnet20", 0.98).items()}
    )
    older = pd.Series({**base, "sparsity.drop_rounding": np.nan})
    assert collapse.variant_of(older) == "baseline"
    newer = pd.Series({**base, "sparsity.drop_rounding": "nearest"})
    assert collapse.variant_of(newer) == "drop_rounding=nearest"
