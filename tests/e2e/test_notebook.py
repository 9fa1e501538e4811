"""The quickstart notebook, executed for real against the session's cluster."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


@pytest.mark.timeout(1000)  # each cell allowed 900 s
def test_quickstart_notebook_runs_clean(local_cluster, tmp_path, monkeypatch):
    """Top to bottom against the session's cluster. (A second pipeline run on the same storage, whose equal model
    is not promoted over the champion, is tests/integration/test_generality.py's promotion test.)"""
    monkeypatch.setenv("MLSCALE_RAY_ADDRESS", local_cluster.gcs_address)
    monkeypatch.setenv("MLSCALE_STORAGE", str(tmp_path))
    monkeypatch.setenv("MLSCALE_SERVE_PORT", str(local_cluster.serve_port))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = execute()
    assert any("image/png" in o.get("data", {}) for o in first), "the training curve was not plotted"
    assert any("422 origin" in o.get("text", "") for o in first)
    assert any("v1: if_better: no champion yet" in o.get("text", "") and "champion is v1" in o.get("text", "")
               for o in first)


def cell_seconds(cell) -> float:
    """How long a cell ran, from the timestamps nbclient records: where a slow notebook spends its time."""
    from datetime import datetime

    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
            ).total_seconds()


def execute(name: str = NOTEBOOK.name) -> list:
    """Run a notebook top to bottom; its outputs, after checking that no cell failed."""
    notebook = nbformat.read(NOTEBOOK.with_name(name), as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=dict(os.environ))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    print(f"{name}: seconds per code cell", [round(cell_seconds(cell), 1) for cell in code])
    outputs = [o for cell in code for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    return outputs
