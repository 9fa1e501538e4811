"""The prediction log behind the live service: requests logged with Serve's request ids, and a storage outage that
fails no request and loses no logged row once storage is back."""

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from mlscale.data.records import held_out_records
from tests.conftest import wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def logged(folder) -> list[dict]:
    return [row for path in sorted(folder.rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_requests_are_logged_off_the_request_path_and_survive_a_storage_outage(pipeline_result, tmp_path):
    from ray import serve

    from mlscale.stages.deploy import deploy_stage

    config, result = pipeline_result
    blocker = tmp_path / "storage-down"
    blocker.write_text("a file where the log's folder should be: writes fail until it is removed")
    folder = blocker / "log"
    settings = type(config.serve).model_validate({
        **config.serve.model_dump(), "app_name": "logged", "route_prefix": "/logged", "model_cpus": 0.5,
        "prediction_log": {"path": str(folder), "flush_interval_s": 0.3}})
    endpoint = deploy_stage(config.model_copy(update={"serve": settings}), result.trained.version_uri)
    health = endpoint.rsplit("/", 1)[0] + "/health"
    try:
        wait_for_http(health, 120, "the logged app")
        records = held_out_records(result.prepared.read("test"), 3)
        answers = {}
        for index in range(8):  # while storage is down: every request answered, promptly
            started = time.perf_counter()
            response = requests.post(endpoint, json=records, headers={"x-request-id": f"req-{index}"}, timeout=30)
            assert response.status_code == 200 and time.perf_counter() - started < 5
            assert response.headers["x-request-id"] == f"req-{index}"
            answers[f"req-{index}"] = response.json()["predictions"]
            time.sleep(0.1)
        counts = requests.get(health, timeout=10).json()["prediction_log"]
        assert counts["failed_writes"] >= 1 and counts["written"] == 0 and counts["pending"] == 24
        blocker.unlink()  # storage is back
        deadline = time.time() + 30
        while requests.get(health, timeout=10).json()["prediction_log"]["written"] < 24:
            assert time.time() < deadline, "the pending rows were not written after storage came back"
            time.sleep(0.3)
        rows = logged(folder)
        assert len(rows) == 24 and {row["model_version"] for row in rows} == {result.trained.version}
        for row in rows:
            assert row["prediction"] == pytest.approx(answers[row["request_id"]][row["record_index"]])
            assert row["carrier"] == records[row["record_index"]]["carrier"]
    finally:
        serve.delete("logged")


def test_the_monitor_judges_logged_traffic_against_the_training_profile(pipeline_result, tmp_path):
    """Rows drawn at random from the training months do not drift; the held-out later months do, on the weather
    (the split is by month: real seasonal drift). The report, the plot and the MLflow runs are written."""
    from ray import serve

    from mlscale.stages.deploy import deploy_stage
    from mlscale.stages.monitor import monitor_stage
    from mlscale.tracking import tracking_client

    config, result = pipeline_result
    trained_months = held_out_records(result.prepared.read("train").random_shuffle(seed=0), 400)
    later_months = held_out_records(result.prepared.read("test"), 400)
    outcomes = {}
    try:
        for name, body in (("training-months", trained_months), ("later-months", later_months)):
            settings = type(config.serve).model_validate({
                **config.serve.model_dump(), "app_name": "monitored", "route_prefix": "/monitored",
                "model_cpus": 0.5, "prediction_log": {"path": str(tmp_path / name), "flush_interval_s": 0.3}})
            monitored = config.model_copy(update={
                "serve": settings, "monitor": config.monitor.model_copy(update={"min_window_rows": 100})})
            endpoint = deploy_stage(monitored, result.trained.version_uri)
            wait_for_http(endpoint.rsplit("/", 1)[0] + "/health", 120, "the monitored app")
            for start in range(0, len(body), 100):
                assert requests.post(endpoint, json=body[start:start + 100], timeout=30).status_code == 200
            deadline = time.time() + 30
            while len(logged(tmp_path / name)) < len(body):
                assert time.time() < deadline, "the log was not written"
                time.sleep(0.3)
            outcomes[name] = monitor_stage(monitored, result.trained.version_uri)
    finally:
        serve.delete("monitored")
    calm, seasonal = outcomes["training-months"].windows[-1], outcomes["later-months"].windows[-1]
    assert calm.rows == seasonal.rows == 400 and calm.versions == {result.trained.version: 400}
    assert not calm.drifted and not calm.drifted_features, calm.to_dict()
    assert seasonal.drifted and "temp" in seasonal.drifted_features
    assert seasonal.overall > 3 * calm.overall
    report = outcomes["later-months"]
    assert Path(report.report_path).exists() and Path(report.plot_paths[0]).stat().st_size > 10_000
    client = tracking_client(config.tracking_uri)
    experiment = client.get_run(result.trained.run_id).info.experiment_id
    runs = client.search_runs([experiment], "tags.`mlscale.stage` = 'monitor'")
    assert len(runs) >= 2 and "drift_overall" in runs[0].data.metrics
    print(f"monitor: training months drift {calm.overall:.3f}; later months {seasonal.overall:.3f} on "
          f"{seasonal.drifted_features}")
