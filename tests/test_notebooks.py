"""The notebooks: committed without outputs, and executed headless against a generated run store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import runstore_factory as factory
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("plasticity_curves.ipynb", "granet_vs_baselines.ipynb")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factory.build_store(tmp_path_factory.mktemp("runs"), factory.small_spec()).root


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    text = (NOTEBOOKS / name).read_text()
    assert '"output_type"' not in text
    cells = json.loads(text)["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(cell["execution_count"] is None and cell["outputs"] == [] for cell in code)


@pytest.fixture(scope="module")
def one_probe_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `harness plasticity --regeneration` leaves: a base run, its control and one probe."""
    spec = factory.StoreSpec(
        archs=("resnet20",), seeds=(0,), probe_epochs=(8,), rates=(0.5,), layerwise_archs=(),
        filter_rates=(), pretrained_sparsities=(0.0,), incomplete_runs=False,
    )  # fmt: skip
    store = factory.build_store(tmp_path_factory.mktemp("runs"), spec, compare=False)
    probes = [
        path
        for path in store.run_dirs
        if json.loads((path / "summary.json").read_text())["job_type"] == "probe"
    ]
    kept = [path for path in probes if json.loads((path / "summary.json").read_text())["regeneration"]]
    assert len(probes) == 2 and len(kept) == 1
    for path in probes:
        if path not in kept:
            shutil.rmtree(path)
    return store.root


def _execute(name: str, runs: Path | None, tmp_path: Path, monkeypatch) -> list:
    """Run every cell with the kernel started in `tmp_path`; `runs` is HARNESS_RUNS (None: unset)."""
    if runs is None:
        monkeypatch.delenv("HARNESS_RUNS", raising=False)
    else:
        monkeypatch.setenv("HARNESS_RUNS", str(runs))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # Any attempt to reach the network goes to a closed local port and fails.
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs


def _notes(outputs: list) -> list[str]:
    """The 'not shown' notes of cells whose data is missing."""
    return [
        output["data"]["text/markdown"]
        for output in outputs
        if "not shown" in output.get("data", {}).get("text/markdown", "")
    ]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_against_a_generated_store(name, small_store, tmp_path, monkeypatch):
    outputs = _execute(name, small_store, tmp_path, monkeypatch)
    assert _notes(outputs) == []
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    expected_figures = 5 if name == "plasticity_curves.ipynb" else 3  # figures 1-4 and the continuation
    assert len(images) == expected_figures
    assert not (tmp_path / "runs").exists()  # read from HARNESS_RUNS, not the default location


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_to_the_end_on_a_one_probe_store(name, one_probe_store, tmp_path, monkeypatch):
    outputs = _execute(name, one_probe_store, tmp_path, monkeypatch)
    notes = _notes(outputs)
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    if name == "plasticity_curves.ipynb":
        # Only the damage figure has data (one probe, no without-regeneration partner, no filter probes).
        assert notes == [
            "**regeneration_gain: not shown** (no runs with this data)",
            "**plasticity_vs_epoch: not shown** (no unstructured probes without regeneration)",
            "**plasticity_regeneration: not shown** (the global probes lack regeneration on/off pairs)",
            "**structured_plasticity: not shown** (no filter-pruning probes (criterion filter))",
        ]
        # The damage figure and, last, the continuation curves of the probe, its control and its base run.
        assert len(images) == 2 and "image/png" in outputs[-1]["data"]
    else:
        assert len(images) == 0
        assert notes == [
            "**comparison_table: not shown** (no runs with this data)",
            "**comparison_with_paper: not shown** (no runs with this data)",
            "**accuracy_vs_sparsity: not shown** (no training runs (job_type train) to compare methods)",
            "**accuracy_vs_train_flops: not shown** (no training runs (job_type train) to compare methods)",
            "**pick_dynamics_run: not shown** (no local sparse training run with mask snapshots (masks/) to show "
            "training dynamics)",
        ]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_to_the_end_on_an_empty_store(name, tmp_path, monkeypatch):
    empty = tmp_path / "runs"
    empty.mkdir()
    (tmp_path / "work").mkdir()
    outputs = _execute(name, empty, tmp_path / "work", monkeypatch)
    # One message, from the first cell, says which store and why nothing follows; the other cells are silent.
    texts = [output.get("data", {}).get("text/markdown", "") for output in outputs]
    shown = [text for text in texts if text]
    assert len(shown) == 1 and shown[0] == texts[0]
    assert shown[0].startswith(
        f"**Run store: `{empty}`** (HARNESS_RUNS is set).\n\n**No runs to show:** {empty}: "
    )
    assert "set `HARNESS_RUNS=/path/to/runs` before starting Jupyter" in shown[0]
    assert not [output for output in outputs if "image/png" in output.get("data", {})]
    assert not [
        output for output in outputs if output.get("output_type") == "stream" and "lack" in output["text"]
    ]


def test_started_in_notebooks_it_reads_the_projects_runs(one_probe_store, tmp_path, monkeypatch):
    """`jupyter lab notebooks/` starts the kernel in notebooks/: without HARNESS_RUNS it finds ../runs."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    shutil.copytree(one_probe_store, project / "runs")
    outputs = _execute("plasticity_curves.ipynb", None, project / "notebooks", monkeypatch)
    first = outputs[0]["data"]["text/markdown"]
    assert first.startswith(
        f"**Run store: `{project / 'runs'}`** (HARNESS_RUNS is not set; the runs/ folder of {project}, above "
        "this folder). 3 completed runs:"
    )
    assert "image/png" in outputs[-1]["data"]  # the continuation curves of the one probe
    assert not (project / "notebooks" / "runs").exists()


def test_find_store_stops_at_the_project_root(tmp_path, monkeypatch):
    from analysis.notebook import find_store

    monkeypatch.delenv("HARNESS_RUNS", raising=False)
    (tmp_path / "runs").mkdir()  # outside the project: never read by accident
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    assert find_store(project / "notebooks") == (
        project / "runs",
        "HARNESS_RUNS is not set; the project's runs/ folder (none yet)",
    )
    (project / "notebooks" / "runs").mkdir()
    assert find_store(project / "notebooks") == (
        project / "notebooks" / "runs",
        "HARNESS_RUNS is not set; the runs/ folder of this folder",
    )
    monkeypatch.setenv("HARNESS_RUNS", str(tmp_path / "elsewhere"))
    assert find_store(project / "notebooks") == (tmp_path / "elsewhere", "HARNESS_RUNS is set")


def notebook_text(output) -> str:
    return output.get("data", {}).get("text/plain", "") + output.get("data", {}).get("text/html", "")
