"""The notebooks: committed without outputs, and executed headless against a generated run store."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_against_a_generated_store(name, small_store, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RUNS", str(small_store))
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
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    expected_figures = 4 if name == "plasticity_curves.ipynb" else 3
    assert len(images) == expected_figures
    assert not (tmp_path / "runs").exists()  # read from HARNESS_RUNS, not the default location
