"""The real-drift notebook, executed for real against the session's cluster on a shortened replay: a model trained on
winter serves five later months through HTTP; the monitor retrains, canaries and releases by itself."""

import pytest

from tests.e2e.test_notebook import execute

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(1500)
def test_the_replay_notebook_retrains_on_real_drift_and_releases_with_no_failed_request(local_cluster, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("MLSCALE_RAY_ADDRESS", local_cluster.gcs_address)
    monkeypatch.setenv("MLSCALE_STORAGE", str(tmp_path))
    monkeypatch.setenv("MLSCALE_SERVE_PORT", str(local_cluster.serve_port))
    monkeypatch.setenv("MLSCALE_REPLAY_SHORT", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = execute("drift_replay.ipynb")
    text = "\n".join(o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the drift and AUC plots were not drawn"
    assert "retrains started: 1 | failed requests: 0" in text, text[-3000:]
    assert "RETRAIN started" in text and "retrain v2:" in text
    assert "retrain after month" in text
    print(text[-3000:])
