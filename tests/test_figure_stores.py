"""`harness figures` on the small stores a user really has: a dense run alone, one probe, one seed.

Every figure is either written or skipped with its reason; none ends in a traceback, and each report line is
printed once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import runstore_factory as factory

FIGURE_NAMES = (
    "plasticity_vs_epoch",
    "plasticity_regeneration",
    "damage_recovery",
    "structured_plasticity",
    "accuracy_vs_sparsity",
    "training_dynamics",
    "accuracy_vs_train_flops",
    "collapse_ablation",
)
NO_PROBES = "no plasticity probe runs (job_type probe) among the runs"
NO_TRAINING = "no training runs (job_type train) to compare methods"
NO_DYNAMICS = "no local sparse training run with mask snapshots (masks/) to show training dynamics"
NO_ABLATION = "no collapse-ablation runs (job_type ablation, sweeps/collapse-mnist1d.yaml)"

DENSE_ONLY = factory.StoreSpec(archs=("resnet20",), seeds=(0,), methods=(), incomplete_runs=False)
ONE_PROBE = factory.one_probe_spec()
ONE_SEED = factory.StoreSpec(
    archs=("resnet20",),
    seeds=(0,),
    methods=("granet",),
    sparsities=(0.9,),
    probe_epochs=(0, 8),
    rates=(0.5,),
    layerwise_archs=(),
    pretrained_sparsities=(0.0,),
    incomplete_runs=False,
)


def _figures(tmp_path: Path, spec: factory.StoreSpec, **parts: bool) -> tuple[dict[str, str], list[str]]:
    """`harness figures` as a user runs it: {figure: "wrote" or the skip reason}, and stdout's lines."""
    store = factory.build_store(tmp_path / "runs", spec, **parts)
    out = tmp_path / "figures"
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "figures", str(store.root), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(set(lines)), lines  # each "wrote X" once
    outcome = {}
    for line in lines:
        verb, _, rest = line.partition(" ")
        name, _, detail = rest.partition(": ")
        if name in FIGURE_NAMES:
            outcome[name] = "wrote" if verb == "wrote" else detail
            if verb == "wrote":
                assert (out / f"{name}.png").stat().st_size > 0
            else:
                assert not (out / f"{name}.png").exists()
    assert set(outcome) == set(FIGURE_NAMES)
    # Nothing was logged beside the report: the "wrote" lines were once printed twice (log and stdout).
    assert "wrote" not in result.stderr
    return outcome, lines


def test_a_dense_run_alone(tmp_path):
    outcome, _ = _figures(tmp_path, DENSE_ONLY, plasticity=False)
    assert outcome == {
        "plasticity_vs_epoch": NO_PROBES,
        "plasticity_regeneration": NO_PROBES,
        "damage_recovery": NO_PROBES,
        "structured_plasticity": NO_PROBES,
        "accuracy_vs_sparsity": "wrote",
        "training_dynamics": NO_DYNAMICS,  # a dense run's masks never change
        "accuracy_vs_train_flops": "wrote",
        "collapse_ablation": NO_ABLATION,
    }


def test_one_probe(tmp_path):
    outcome, _ = _figures(tmp_path, ONE_PROBE, compare=False)
    assert outcome == {
        "plasticity_vs_epoch": "wrote",
        "plasticity_regeneration": "wrote",
        "damage_recovery": "wrote",
        "structured_plasticity": "no filter-pruning probes (criterion filter)",
        "accuracy_vs_sparsity": NO_TRAINING,
        "training_dynamics": NO_DYNAMICS,
        "accuracy_vs_train_flops": NO_TRAINING,
        "collapse_ablation": NO_ABLATION,
    }


def test_one_seed(tmp_path):
    outcome, _ = _figures(tmp_path, ONE_SEED)
    assert outcome == {name: "wrote" for name in FIGURE_NAMES[:-1]} | {"collapse_ablation": NO_ABLATION}


@pytest.mark.parametrize("method", ["dense"])
def test_the_turnover_panel_of_a_run_with_one_snapshot_says_so(tmp_path, method):
    """A dense run chosen by hand (--dynamics-run) draws, with the turnover panel saying why it is empty."""
    from analysis.figures import dynamics_figure
    from analysis.runs import load_runs

    factory.build_store(tmp_path / "runs", DENSE_ONLY, plasticity=False)
    runs = load_runs(tmp_path / "runs")
    key = runs.loc[runs["method"] == method, "run_key"].iloc[0]
    figure = dynamics_figure(runs, run_key=key)
    texts = [text.get_text() for axis in figure.axes for text in axis.texts]
    assert any("no turnover to show" in text for text in texts), texts


# ---------------------------------------------------------------------------------------------------------
# What a reader sees: spans, ticks, wording, regeneration told apart, steps


@pytest.fixture(scope="module")
def one_seed_runs(tmp_path_factory: pytest.TempPathFactory):
    from analysis.runs import load_runs

    return load_runs(factory.build_store(tmp_path_factory.mktemp("runs"), ONE_SEED).root)


def test_accuracy_axes_never_zoom_onto_noise_and_tick_every_sparsity(one_seed_runs):
    from analysis import figures

    axis = figures.accuracy_vs_sparsity(one_seed_runs).axes[0]
    low, high = axis.get_ylim()
    assert high - low >= figures.ACCURACY_SPAN
    assert list(axis.get_xticks()) == [90.0]  # the one sparsity of the store, no 90.5 or 91
    # The only sparse method is not dodged: its point sits at its true sparsity.
    (granet,) = [bars for bars in axis.containers if bars.get_label() == "granet"]
    assert list(granet.lines[0].get_xdata()) == [90.0]
    assert axis.get_xlabel() == "sparsity (% of weights removed)"


def test_flops_axis_has_plain_major_labels_and_no_minor_labels(one_seed_runs):
    from analysis import figures

    figure = figures.accuracy_vs_train_flops(one_seed_runs)
    axis = figure.axes[0]
    figure.canvas.draw()
    labels = [label.get_text() for label in axis.get_xticklabels() if label.get_text()]
    assert labels and all("10^" not in text and "$" not in text for text in labels), labels
    assert [label.get_text() for label in axis.get_xticklabels(minor=True) if label.get_text()] == []


def test_damage_recovery_tells_regeneration_apart_by_colour_and_marker(one_seed_runs):
    from analysis import figures

    figure = figures.damage_recovery(one_seed_runs)
    drawn = {
        (
            line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
            line.get_marker(),
        )
        for axis in figure.axes
        for line in axis.lines
        if line.get_marker() in ("o", "^")
    }
    without = figures._regeneration_line("acc_continue", False)
    regrown = figures._regeneration_line("acc_continue", True)
    assert without["color"] != regrown["color"] and (without["marker"], regrown["marker"]) == ("o", "^")
    assert (without["color"], "o") in drawn and (regrown["color"], "^") in drawn
    assert "k = 4 fine-tuning epochs" in figure.get_suptitle()


def test_the_wording_of_several_continuation_lengths_and_of_one_seed():
    import pandas as pd

    from analysis import figures

    assert (
        figures._continue_note(pd.DataFrame({"continue_epochs": [2, 3]})) == "k = 2 or 3 fine-tuning epochs"
    )
    assert figures._continue_note(pd.DataFrame({"continue_epochs": [2, 3, 4]})) == (
        "k = 2, 3 or 4 fine-tuning epochs"
    )
    assert figures._seeds_note(pd.DataFrame({"n": [1, 1]})) == "one seed: no spread shown"
    assert figures._seeds_note(pd.DataFrame({"n": [2, 3]})) == "mean ± std over 2, 3 seeds"


def test_probe_epochs_get_integer_ticks_and_densities_are_steps(one_seed_runs):
    from analysis import figures

    axis = figures.plasticity_vs_epoch(one_seed_runs).axes[0]
    ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    low, high = axis.get_ylim()
    assert high - low >= figures.PLASTICITY_SPAN

    figure = figures.dynamics_figure(one_seed_runs)
    layers = figure.axes[2]  # per-layer densities, below the global density panel
    assert layers.get_title().startswith("per-layer density")
    assert {line.get_drawstyle() for line in layers.lines} == {"steps-post"}


def test_plasticity_regeneration_panel_titles_do_not_run_into_each_other(one_seed_runs):
    from analysis import figures

    figure = figures.plasticity_regeneration(one_seed_runs)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [axis.title.get_window_extent(renderer) for axis in figure.axes[:3]]
    assert [axis.get_title().split("\n")[0] for axis in figure.axes[:3]] == [
        "without regeneration",
        "with regeneration",
        "gain = with − without",
    ]
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:], strict=False))
