"""The real-drift notebook, executed for real against the session's cluster on a shortened replay: a model trained on
winter serves later months through HTTP; the monitor retrains, canaries and releases by itself.

This is the suite's one run of the whole retraining loop that ends in a release (monitor -> retrain job through
the Jobs API -> judged against the champion -> canary under the replay's traffic -> promoted, no failed request);
tests/integration/test_retraining_loop.py runs the loop's failure path on a decayed model."""

import pytest

from mlscale.config import load_config
from tests.conftest import REPO
from tests.e2e.test_notebook import execute

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(1500)
def test_the_replay_notebook_retrains_on_real_drift_and_releases_with_no_failed_request(local_cluster, tmp_path,
                                                                                         monkeypatch):
    from mlscale.monitor.retrain import decision_log
    from mlscale.registry.store import version_of
    from mlscale.tracking import tracking_client

    monkeypatch.setenv("MLSCALE_RAY_ADDRESS", local_cluster.gcs_address)
    monkeypatch.setenv("MLSCALE_STORAGE", str(tmp_path))
    monkeypatch.setenv("MLSCALE_SERVE_PORT", str(local_cluster.serve_port))
    monkeypatch.setenv("MLSCALE_REPLAY_SHORT", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = execute("drift_replay.ipynb")
    text = "\n".join(o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the drift and AUC plots were not drawn"
    assert "retrains started: 1 | failed requests: 0" in text, text[-3000:]

    # what the notebook printed is what happened: read back from the decision log and the registry
    config = load_config(REPO / "jobs" / "configs" / "flights-replay.yaml")  # the notebook's name and storage
    model = config.tracking.registered_model
    entries = decision_log(config).read()
    started = [entry for entry in entries if entry["event"] == "monitor" and entry.get("job_id")]
    assert len(started) == 1 and started[0]["outcome"].endswith(" serves"), started
    retrain = next(entry for entry in entries if entry["event"] == "retrain")
    champion = version_of(model, config.tracking.alias, config.tracking_uri)
    assert retrain["release"] == "promote" and retrain["version"] == champion != "1", (retrain, champion)
    assert f"canary promote: v{champion} serves" in started[0]["outcome"]
    tags = tracking_client(config.tracking_uri).get_model_version(model, champion).tags
    assert tags["mlscale.release.action"] == "promote"
    # the monitor's passes after the release: held back by the cap, never a second retrain of the same drift
    later = [entry for entry in entries if entry["event"] == "monitor" and entry["time"] > started[0]["time"]]
    assert later and all(not entry.get("job_id") for entry in later)
    assert f"retrain after month {started[0]['window']}: v{champion}:" in text
    print(text[-3000:])
