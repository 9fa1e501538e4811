"""The job a stage becomes: the same command `ray job submit` runs, the project's code as working_dir without the
venv or local stores, and an address that must be the Jobs API."""

from pathlib import Path

import pytest

from mlscale.errors import ConfigError
from mlscale.submit import STAGES, job_entrypoint, job_runtime_env, jobs_address

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_has_its_job_script_and_the_command_is_quoted():
    for stage in STAGES:
        assert (REPO / "jobs" / f"{stage}.py").exists(), stage
    command = job_entrypoint("train", "jobs/configs/flights.yaml", ["train.epochs=2", "split.train=[1, 2]"])
    assert command == "python jobs/train.py --config jobs/configs/flights.yaml --set train.epochs=2 " \
                      "--set 'split.train=[1, 2]'"
    with pytest.raises(ConfigError, match="stage 'trian' has no job; known: pipeline"):
        job_entrypoint("trian")


def test_the_working_dir_is_the_project_without_what_must_not_travel(tmp_path):
    env = job_runtime_env(REPO, {"MLSCALE_STORAGE": "s3://lake/mlscale"})
    assert env["working_dir"] == str(REPO) and env["env_vars"] == {"MLSCALE_STORAGE": "s3://lake/mlscale"}
    assert {".venv", ".mlscale", "mlruns", ".git"} <= set(env["excludes"])
    with pytest.raises(ConfigError, match="not an mlscale project"):
        job_runtime_env(tmp_path)


def test_the_address_must_be_the_jobs_api(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not the Jobs API
    with pytest.raises(ConfigError, match="no Jobs API address"):
        jobs_address()
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265")
    assert jobs_address() == "http://127.0.0.1:8265"
    assert jobs_address("https://head:8265") == "https://head:8265"
    assert jobs_address("head:8265") == "http://head:8265"  # a bare host:port, as `ray job submit` reads it
    with pytest.raises(ConfigError, match="monitor.retrain.jobs_address 'ray://head:10001'"):
        jobs_address("ray://head:10001", setting="monitor.retrain.jobs_address")


def test_the_connected_clusters_dashboard_is_the_last_resort(monkeypatch):
    import ray._private.worker

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.worker, "get_dashboard_url", lambda: "127.0.0.1:8265")
    assert jobs_address(connected=True) == "http://127.0.0.1:8265"
    with pytest.raises(ConfigError, match="set monitor.retrain.jobs_address"):
        jobs_address(setting="monitor.retrain.jobs_address")  # not asked to look at the connected cluster
