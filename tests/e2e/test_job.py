"""Stages submitted as real Ray jobs (Jobs API over HTTP) to the session's `ray start` cluster."""

import json
import time
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from mlscale.tracking import tracking_client

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


@pytest.mark.timeout(1200)  # above its own deadlines: 300 + 120 + 600 s
def test_a_stopped_train_job_resumes_from_its_checkpoint_when_rerun(pipeline_result, local_cluster, tmp_path):
    """Submit the train job, stop it mid-run (`ray job stop`), submit it again: it picks up where it was, tracked
    in MLflow. (The train job against an MLflow server is in tests/integration/test_mlflow_server.py.)"""
    import pyarrow.fs as pafs

    from mlscale.train.progress import ProgressLog

    config, _ = pipeline_result
    run_name = f"resume-{uuid.uuid4().hex[:6]}"
    tracking_uri = f"sqlite:///{tmp_path / 'resume-mlflow.db'}"
    env = {"MLSCALE_STORAGE": str(config.storage.root_path), "MLFLOW_TRACKING_URI": tracking_uri}
    entrypoint = (f"python jobs/train.py --config jobs/configs/flights-small.yaml --set train.run_name={run_name} "
                  "--set train.epochs=2 --set train.checkpoint.every_n_steps=25")
    client = JobSubmissionClient(local_cluster.dashboard_url)
    progress = ProgressLog(pafs.LocalFileSystem(), str(config.storage.root_path / "train" / run_name))
    first = submit(client, entrypoint, env)
    deadline = time.time() + 300
    while time.time() < deadline and not (progress.attempts() and progress.attempts()[-1].last_step >= 80):
        assert not client.get_job_status(first).is_terminal(), client.get_job_logs(first)[-3000:]
        time.sleep(0.2)
    client.stop_job(first)
    assert wait(client, first, 120) == JobStatus.STOPPED
    stopped_at = progress.attempts()[-1].last_step

    second = submit(client, entrypoint, env)
    assert wait(client, second) == JobStatus.SUCCEEDED, client.get_job_logs(second)[-5000:]
    attempts = progress.attempts()
    assert len(attempts) == 2 and attempts[1].finished
    assert 0 < attempts[1].started_from_step <= stopped_at  # resumed from a checkpoint, not from step 0
    summary = summary_from_logs(client.get_job_logs(second))
    assert summary["train_attempts"] == 2
    assert summary["train_repeated_steps"] == stopped_at - attempts[1].started_from_step
    run = tracking_client(tracking_uri).get_run(summary["mlflow_run_id"])
    assert run.data.metrics["train_steps"] == attempts[1].last_step
    print(f"resume: stopped at step {stopped_at}, rerun resumed from step {attempts[1].started_from_step}, "
          f"{summary['train_repeated_steps']} steps repeated, test_auc {summary['test_auc']:.4f}")
