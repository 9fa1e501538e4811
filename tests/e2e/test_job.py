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
        time.sleep(0.5)
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


def test_cluster_status_logs_and_stop_follow_a_running_job(local_cluster):
    """`mlscale cluster status/logs/stop` against the Jobs API: a job that is running is listed with its stage,
    its log so far is printed, and stopping it ends it as STOPPED (a job id the cluster does not know is an error,
    not a traceback)."""
    from typer.testing import CliRunner

    from mlscale.cli import app

    client = JobSubmissionClient(local_cluster.dashboard_url)
    job_id = client.submit_job(entrypoint="python -u -c \"import time; print('warming up', flush=True); "
                                          "time.sleep(300)\"", metadata={"mlscale.stage": "prepare"})
    address = ["--address", local_cluster.dashboard_url]
    runner = CliRunner()
    deadline = time.time() + 120
    while time.time() < deadline and "warming up" not in client.get_job_logs(job_id):
        time.sleep(0.5)
    status = runner.invoke(app, ["cluster", "status", job_id, *address])
    assert status.exit_code == 0 and status.output.strip() == "RUNNING", status.output
    listed = runner.invoke(app, ["cluster", "status", *address])
    row = next(line.split("\t") for line in listed.output.splitlines() if line.startswith(job_id))
    assert row[1:3] == ["RUNNING", "prepare"], row
    logs = runner.invoke(app, ["cluster", "logs", job_id, *address])
    assert logs.exit_code == 0 and "warming up" in logs.output
    stopped = runner.invoke(app, ["cluster", "stop", job_id, *address])
    assert stopped.exit_code == 0 and stopped.output.strip() == f"{job_id}: stopping"
    assert wait(client, job_id, 60) == JobStatus.STOPPED
    again = runner.invoke(app, ["cluster", "stop", job_id, *address])
    assert again.output.strip() == f"{job_id}: not running"
    unknown = runner.invoke(app, ["cluster", "status", "no-such-job", *address])
    assert unknown.exit_code == 1 and "no-such-job" in unknown.output
    assert "Traceback" not in unknown.output
