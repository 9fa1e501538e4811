"""The registry against a real `mlflow server` on loopback with a SQL backend and proxied artifacts."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from mlscale.registry.store import RegisteredBundle, load_bundle, log_and_register, promote, use_tracking
from tests.conftest import free_port
from tests.unit.test_bundle import make_bundle
from tests.unit.test_featureset import sample_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("mlflow server did not come up within 120 s")
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield url, root
    process.terminate()
    process.wait(30)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; later tests must not inherit a stopped server.
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    mlflow.set_tracking_uri(previous or "")


def test_register_alias_load_predict_through_the_server(mlflow_server):
    import mlflow

    url, root = mlflow_server
    use_tracking(url, "server-roundtrip")
    bundle = make_bundle()
    with mlflow.start_run():
        first = log_and_register(bundle, "server-model", "champion")
        promote(first)
        second = log_and_register(bundle, "server-model", "challenger")
        promote(second)
    assert (first.version, second.version) == ("1", "2")
    table = sample_table(30, seed=11)
    expected = bundle.predict_columns(table)
    for uri in (first.uri, second.uri, RegisteredBundle("server-model", "2", "x", "").version_uri):
        np.testing.assert_array_equal(load_bundle(uri, url).predict_columns(table), expected)
    assert any((root / "artifacts").rglob("weights.pt")), "artifacts were not proxied to the server's store"
    client = mlflow.MlflowClient(url)
    assert client.get_model_version_by_alias("server-model", "champion").version in (1, "1")
    assert client.get_model_version("server-model", "1").tags["config_hash"] == "abc"
