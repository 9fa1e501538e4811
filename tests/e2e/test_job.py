"""Stages submitted as real Ray jobs (Jobs API over HTTP) to the session's `ray start` cluster. The train job's
stop and resume, tracked to an MLflow server, is in tests/integration/test_mlflow_server.py."""

import json
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def wait(client: JobSubmissionClient, job_id: str, timeout: float = 600) -> JobStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(2)
    client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s:\n{client.get_job_logs(job_id)[-3000:]}")


def summary_from_logs(logs: str) -> dict:
    line = next(line for line in logs.splitlines() if line.startswith("MLSCALE_SUMMARY "))
    return json.loads(line.removeprefix("MLSCALE_SUMMARY "))


def submit(client, entrypoint, env):
    return client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "env_vars": env},
    )


def test_bad_config_fails_the_job_with_a_readable_message(local_cluster, tmp_path):
    client = JobSubmissionClient(local_cluster.dashboard_url)
    job_id = submit(client, "python jobs/prepare.py --config jobs/configs/flights-small.yaml --set train.epochs=0",
                    {"MLSCALE_STORAGE": str(tmp_path)})
    assert wait(client, job_id, 120) == JobStatus.FAILED
    assert "train.epochs" in client.get_job_logs(job_id)
