"""The new methods in the comparison table and figure: their runs meet the paper's SNIP / GraSP / SynFlow
rows, and each has its own colour."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from analysis import style
from analysis.figures import accuracy_vs_sparsity
from analysis.tables import comparison_with_paper, to_markdown

matplotlib.use("Agg")

NEW_METHODS = ("snip", "grasp", "synflow", "mest", "acdc")


def new_method_runs() -> pd.DataFrame:
    """VGG-19 / CIFAR-10 at 90%, three seeds per method, as load_runs gives them (a pruning-at-init run's
    init_sparsity is its final sparsity: it starts training at it)."""
    rows = []
    for seed, jitter in zip((0, 1, 2), (-0.001, 0.0, 0.001), strict=True):
        for index, method in enumerate(("dense", *NEW_METHODS)):
            sparsity = 0.0 if method == "dense" else 0.9
            rows.append(
                {
                    "run_key": f"g/vgg19-{method}-{seed}",
                    "job_type": "train",
                    "arch": "vgg19",
                    "dataset": "cifar10",
                    "method": method,
                    "init_sparsity": 0.9 if method in ("snip", "grasp", "synflow") else 0.0,
                    "sparsity": sparsity,
                    "epochs": 160,
                    "seed": seed,
                    "test_acc": 0.93 - 0.001 * index + jitter,
                    "test_acc_at_best_val": 0.93,
                }
            )
    return pd.DataFrame(rows)


def test_new_methods_meet_the_papers_rows_in_the_comparison_table() -> None:
    table = comparison_with_paper(new_method_runs())
    ours = table[table["n"] == 3]
    assert sorted(ours["method"]) == sorted(("dense", *NEW_METHODS))
    published = {"snip": 93.63, "grasp": 93.30, "synflow": 93.35}
    for method, paper in published.items():
        row = ours[ours["method"] == method].iloc[0]
        assert row["paper_mean"] == paper and row["sparsity"] == 0.9
    snip = ours[ours["method"] == "snip"].iloc[0]
    assert snip["ours_mean"] == pytest.approx(92.9) and snip["ours_std"] == pytest.approx(0.1)
    assert ours[ours["method"].isin(["mest", "acdc"])]["paper_mean"].isna().all()
    # SNIP has no s_i of its own (—); the best-validation column carries its own n.
    row = "| vgg19 | cifar10 | snip | — | 0.9 | 160 | 92.90 ± 0.10 | 3 | 93.00 ± 0.00 | 3 | 93.63† |"
    assert row in to_markdown(table)


def test_every_method_has_its_own_colour_in_the_comparison_figure() -> None:
    colours = [style.method_colour(method) for method in ("dense", *NEW_METHODS)]
    assert len(set(colours)) == len(colours)
    assert all(method in style.METHOD_ORDER for method in NEW_METHODS)
    figure = accuracy_vs_sparsity(new_method_runs())
    axis = figure.axes[0]
    drawn = {container.get_label(): container.lines[0].get_color() for container in axis.containers}
    for method in NEW_METHODS:
        assert drawn[method] == style.method_colour(method)
