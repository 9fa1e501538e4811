"""The MLflow user the cluster's pods sign in as, made by the server's admin: a Kubernetes Job runs this after the
server starts (`python -m mlscale.registry.users`), so no person has to create it by hand. Run again, it sets the
password to the secret's current value (a rotated secret takes effect)."""

from __future__ import annotations

import os
import sys
import time

import requests
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from mlscale.cluster.definition import MLFLOW_USER_ENV

# what the Job's container reads: the admin signs in through MLflow's own variables; the user comes from the
# definition's mlflow_username / mlflow_password secrets
USER_ENV, PASSWORD_ENV = MLFLOW_USER_ENV["mlflow_username"], MLFLOW_USER_ENV["mlflow_password"]


def wait_for_server(tracking_uri: str, timeout_s: float = 300) -> None:
    """The Job may start before the server answers: poll its /health."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the MLflow server at {tracking_uri} did not answer /health in {timeout_s:.0f} s")
        time.sleep(2)


def ensure_user(tracking_uri: str, username: str, password: str) -> str:
    """Create the user, or set its password when it exists; signed in as the admin (MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD). Returns "created" or "password set"."""
    users = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        users.get_user(username)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        users.create_user(username, password)
        return "created"
    users.update_user_password(username, password)
    return "password set"


def main() -> int:
    missing = [name for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                 USER_ENV, PASSWORD_ENV) if not os.environ.get(name)]
    if missing:
        print(f"mlflow user: missing environment: {', '.join(missing)}", file=sys.stderr)
        return 2
    tracking_uri, username = os.environ["MLFLOW_TRACKING_URI"], os.environ[USER_ENV]
    wait_for_server(tracking_uri)
    outcome = ensure_user(tracking_uri, username, os.environ[PASSWORD_ENV])
    print(f"mlflow user {username!r}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
