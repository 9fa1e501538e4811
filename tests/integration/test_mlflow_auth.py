"""The definition's MLflow server, for real: the command and auth config `mlscale cluster render` writes, started
on loopback with the admin and the CSRF key in the environment as the Deployment passes them from its secrets.
Registry writes need a signed-in user; a signed-in user writes what they created, and only reads the rest."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from mlscale.cluster.definition import load_definition
from mlscale.cluster.mlflow_server import mlflow_auth_ini, mlflow_server_command
from mlscale.registry.store import load_bundle, register_bundle, set_alias
from mlscale.tracking import tracking_client, use_tracking
from tests.conftest import free_port, restore_env, start_server
from tests.unit.test_bundle import make_bundle
from tests.unit.test_featureset import sample_table

pytestmark = pytest.mark.integration
DEFINITION = Path(__file__).resolve().parents[2] / "cluster" / "definition.yaml"
ADMIN = ("admin", uuid.uuid4().hex)
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    definition = load_definition(DEFINITION)
    (root / "basic_auth.ini").write_text(mlflow_auth_ini(definition, f"sqlite:///{root / 'auth.db'}"))
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex}
    # the rendered command, as Kubernetes runs it: $(VAR) expanded from the container's environment, the port
    # this test's, the artifacts proxied to a folder instead of the definition's bucket
    command = [env["MLFLOW_BACKEND_STORE_URI"] if word == "$(MLFLOW_BACKEND_STORE_URI)" else word
               for word in mlflow_server_command(definition, host="127.0.0.1")]
    command[command.index("--port") + 1] = str(port)
    command[command.index("--artifacts-destination") + 1] = str(root / "artifacts")
    command[0] = str(Path(sys.executable).parent / "mlflow")
    url = f"http://127.0.0.1:{port}"
    process = start_server([*command, "--workers", "1"], f"{url}/health", "mlflow server with basic auth", env)
    previous = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *CREDENTIALS)}
    yield url
    process.terminate()
    process.wait(30)
    mlflow.set_tracking_uri(previous["MLFLOW_TRACKING_URI"] or "")
    mlflow.set_registry_uri(previous["MLFLOW_REGISTRY_URI"] or "")
    restore_env(previous)


def run_user_job(url: str, user: tuple[str, str]) -> str:
    """The definition's mlflow-user Job as Kubernetes runs it: its command, its environment with each secret
    reference replaced by the secret's value (and the server's address this test's). Returns what it printed."""
    from mlscale.cluster.mlflow_server import mlflow_user_job

    container = mlflow_user_job(load_definition(DEFINITION))["spec"]["template"]["spec"]["containers"][0]
    secrets = {"admin_username": ADMIN[0], "admin_password": ADMIN[1], "username": user[0], "password": user[1]}
    env = {item["name"]: item.get("value") or secrets[item["valueFrom"]["secretKeyRef"]["key"]]
           for item in container["env"]}
    env["MLFLOW_TRACKING_URI"] = url
    command = [sys.executable if word == "python" else word for word in container["command"]]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def signed_in(user: tuple[str, str] | None) -> None:
    """Sign MLflow's client in as user (None: no credentials), the way the Ray pods are: MLflow's variables."""
    restore_env(dict(zip(CREDENTIALS, user or (None, None), strict=True)))


def test_registry_writes_need_a_signed_in_user_and_a_grant(auth_server):
    url = auth_server
    api = f"{url}/api/2.0/mlflow/registered-models"
    assert requests.post(f"{api}/create", json={"name": "anonymous"}, timeout=30).status_code == 401
    assert requests.post(f"{api}/create", json={"name": "guessed"}, auth=(ADMIN[0], "wrong"),
                         timeout=30).status_code == 401
    assert requests.get(f"{api}/search", timeout=30).status_code == 401  # reading needs a sign-in too

    # the rendered Job makes the user the pods sign in as (its secrets given as the Job's environment); run again
    # after the secret rotates, it sets the new password
    trainer, viewer = ("ray-pods", uuid.uuid4().hex), ("analyst", uuid.uuid4().hex)
    assert run_user_job(url, (trainer[0], "first-password")) == f"mlflow user {trainer[0]!r}: created"
    assert run_user_job(url, trainer) == f"mlflow user {trainer[0]!r}: password set"
    assert requests.get(f"{api}/search", auth=(trainer[0], "first-password"), timeout=30).status_code == 401
    assert requests.get(f"{api}/search", auth=trainer, timeout=30).status_code == 200
    signed_in(ADMIN)  # the admin (from the server's secret) creates the users people sign in as
    get_app_client("basic-auth", tracking_uri=url).create_user(*viewer)

    signed_in(trainer)  # what MLFLOW_TRACKING_USERNAME/PASSWORD from the definition's secrets do in a Ray pod
    use_tracking(url, "auth")
    bundle = make_bundle()
    with mlflow.start_run():
        registered = register_bundle(bundle, "auth-model")
    set_alias("auth-model", "champion", registered.version, url)
    table = sample_table(20, seed=3)
    expected = bundle.predict_columns(table)

    signed_in(viewer)  # default_permission READ: reads what it did not create, cannot move it
    np.testing.assert_array_equal(load_bundle("models:/auth-model@champion", url).predict_columns(table), expected)
    client = tracking_client(url)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied|403"):
        client.set_registered_model_alias("auth-model", "champion", "1")
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied|403"):
        client.delete_registered_model("auth-model")

    signed_in(None)
    with pytest.raises(MlflowException, match="401|UNAUTHENTICATED|credentials"):
        tracking_client(url).get_registered_model("auth-model")
    signed_in(trainer)
    assert tracking_client(url).get_model_version_by_alias("auth-model", "champion").version in (1, "1")
