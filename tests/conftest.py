"""Shared fixtures: one real local Ray cluster (`ray start --head`) for the whole session, joined by the test
process, the jobs and the notebook alike, and one small pipeline run that many tests inspect."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

os.environ.update(
    RAY_USAGE_STATS_ENABLED="0",
    RAY_AUTH_MODE="token",
    RAY_DATA_DISABLE_PROGRESS_BARS="1",
    MLFLOW_ALLOW_FILE_STORE="true",
    TQDM_DISABLE="1",
)
from mlscale.cluster.connect import PROCESS_ENV  # noqa: E402 - the session cluster gets what an embedded Ray gets

os.environ.update(PROCESS_ENV)
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


_TIER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's time (setup, call, teardown) to its tier: tests/unit, tests/integration, tests/e2e."""
    parts = report.nodeid.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """Where the suite's time went, by tier (fixtures count where they are first used); also written to the file
    MLSCALE_TIER_TIMES names, for .ci/run's phase table."""
    lines = [f"tests/{tier:<12} {seconds:8.0f} s" for tier, seconds in sorted(_TIER_SECONDS.items())]
    terminalreporter.write_sep("=", "time by test tier")
    for line in lines:
        terminalreporter.write_line(line)
    if target := os.environ.get("MLSCALE_TIER_TIMES"):
        Path(target).write_text("".join(f"{line}\n" for line in lines))


def restore_env(saved: dict[str, str | None]) -> None:
    """Put environment variables back as they were (None: it was not set)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this session: ports picked in a row for one raylet (which
    binds them only later) must differ, and the kernel may offer a just-closed port again."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_http(url: str, seconds: float, what: str) -> None:
    """Poll a server's URL until it answers 2xx; fail the test naming the server when it does not in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or routes not ready
            pass
        time.sleep(0.3)
    pytest.fail(f"{what} did not answer {url} within {seconds:.0f} s")


def start_server(command: list[str], health_url: str, what: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """A server process on loopback, returned once its health URL answers (killed if it never does)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(health_url, 120, what)
    except BaseException:
        process.kill()
        raise
    return process


@dataclass(frozen=True)
class LocalCluster:
    gcs_address: str
    dashboard_url: str
    serve_port: int
    metrics_port: int  # the node's Prometheus endpoint (Ray's and Serve's metrics, mlscale's among them)


def _ray(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real single-node cluster started with `ray start --head`, with the dashboard (Jobs API) on loopback."""
    env = {**os.environ}
    # Token auth is on (RAY_AUTH_MODE=token): a fresh machine has no ~/.ray/auth_token until something makes one.
    generated = _ray("get-auth-token", "--generate", env=env)
    if generated.returncode != 0:
        raise RuntimeError(f"ray get-auth-token failed:\n{generated.stderr}")
    for attempt in range(3):  # a port found free can be taken before ray binds it: pick new ones and retry
        port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
        started = _ray(
            "start", "--head", f"--port={port}", "--num-cpus=6", "--object-store-memory=2000000000",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--metrics-export-port={metrics_port}",
            "--disable-usage-stats", env=env,
        )
        if started.returncode == 0:
            break
        _ray("stop", "--force", env=env)
        if attempt == 2 or "address already in use" not in (started.stdout + started.stderr).lower():
            raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", free_port(), metrics_port)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _ray("stop", "--force", env=env)


@pytest.fixture(scope="session")
def ray_session(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The test process joined to the session's cluster (one Ray instance for all integration tests)."""
    import ray

    saved = {"MLSCALE_SERVE_PORT": os.environ.get("MLSCALE_SERVE_PORT")}
    os.environ["MLSCALE_SERVE_PORT"] = str(local_cluster.serve_port)
    ray.init(address=local_cluster.gcs_address, log_to_driver=False)
    from mlscale.cluster.connect import configure_data
    from mlscale.config import RayConfig

    configure_data(RayConfig())  # what ensure_ray does for a pipeline run
    yield local_cluster
    restore_env(saved)


@pytest.fixture(scope="session")
def small_config_factory(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory):
    """Configs for the small flights pipeline, each with its own storage and tracking store."""
    from mlscale.config import load_config

    def make(name: str, **overrides):
        root = tmp_path_factory.mktemp(name)
        values = {
            "ray.address": local_cluster.gcs_address,
            "storage.root": str(root),
            "tracking.uri": None,  # the sqlite store under storage.root, whatever MLFLOW_TRACKING_URI says
            "serve.port": local_cluster.serve_port,
            "serve.app_name": name,
            "serve.route_prefix": f"/{name}",
            **overrides,
        }
        return load_config(REPO / "jobs" / "configs" / "flights-small.yaml", values)

    return make


@pytest.fixture(scope="session")
def pipeline_result(ray_session: LocalCluster, small_config_factory):
    """The whole pipeline once, on a 10% sample: prepare, train (2 Ray Train workers), register, deploy, compare."""
    from mlscale.pipeline import run_pipeline

    config = small_config_factory("pytest")
    return config, run_pipeline(config)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-protocol server (moto's standalone mode) on loopback that checks credentials (IAM on, as on a real
    store: a wrong key is refused), with a user allowed s3:* whose key is in the environment, and a bucket `lake`."""
    import json

    import boto3

    port = free_port()
    # IAM is enforced after the first 4 requests: the ones that create the user, its policy and its key
    server = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for_http(f"{endpoint}/moto-api/", 30, "the S3 server")
    bootstrap = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    iam = boto3.client("iam", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", **bootstrap)
    iam.create_user(UserName="mlscale")
    policy = iam.create_policy(PolicyName="lake-rw", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    iam.attach_user_policy(UserName="mlscale", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="mlscale")["AccessKey"]
    keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    saved = {name: os.environ.get(name) for name in keys}
    os.environ.update(keys)
    # the user's key, given explicitly: boto3's default session caches the first credentials it found in the
    # environment, which belong to the server of an earlier module
    boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                 **bootstrap).create_bucket(Bucket="lake")
    yield endpoint
    server.terminate()
    server.wait(10)
    restore_env(saved)


STRAY_STORES = ("mlruns", "mlflow.db", "mlartifacts")  # MLflow's defaults in the working directory (2.x and 3.x)


@pytest.fixture(autouse=True)
def _no_stray_mlflow_store() -> Iterator[None]:
    """MLflow must never fall back to its default store in the working directory (./mlruns, or ./mlflow.db and
    ./mlartifacts since MLflow 3): every run and artifact goes to the configured store."""
    before = {name for name in STRAY_STORES if (REPO / name).exists()}
    yield
    stray = [name for name in STRAY_STORES if name not in before and (REPO / name).exists()]
    for name in stray:
        path = REPO / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if stray:
        pytest.fail(f"a test wrote {stray} in the working directory instead of the configured store")
