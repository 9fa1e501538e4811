"""The quickstart notebook, executed for real against the session's cluster."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_clean(local_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("MLSCALE_RAY_ADDRESS", local_cluster.gcs_address)
    monkeypatch.setenv("MLSCALE_STORAGE", str(tmp_path))
    monkeypatch.setenv("MLSCALE_SERVE_PORT", str(local_cluster.serve_port))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the training curve was not plotted"
    assert any("422 origin" in o.get("text", "") for o in outputs)
