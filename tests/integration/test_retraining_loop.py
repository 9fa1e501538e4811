"""The retraining loop's failure path on the session's cluster, with no human step: a champion whose live accuracy
has decayed serves real HTTP traffic by month; labels arrive a month late; the monitor judges the log (drift,
decay), decides to retrain, submits the retrain job through the Jobs API, and the job fails (its data source is
gone): the failure is on record, the champion alias does not move and the service keeps answering with it.

The loop's success path (retrain, judge, canary under load, promote, not one failed request) is proven once, by the
replay notebook's test (tests/e2e/test_replay_notebook.py): two tests proving the same loop cost 2 minutes more."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import torch

from mlscale.data.records import json_value
from tests.conftest import wait_for_http
from tests.integration.test_prediction_log import logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "loop-test"
MONTHS = (8, 9, 10, 11, 12)  # the session model trained on months 1-9: 10-12 are the later, colder months
ROWS_PER_MONTH = 200


def month_rows(result, month: int) -> list[dict]:
    split = "train" if month <= 9 else "val" if month <= 11 else "test"
    rows = result.prepared.read(split).filter(expr=f"month == {month}").limit(ROWS_PER_MONTH).take_all()
    return [{name: json_value(value) for name, value in row.items()} for row in rows]


def as_request(rows: list[dict], inputs: set[str]) -> list[dict]:
    return [{name: value for name, value in row.items() if name in inputs} for row in rows]


def replay(result, endpoint: str, folder, inputs: set[str]) -> None:
    """Each month's flights as they happen; labels a month later (the newest month's are not all in yet)."""
    labels = {"request_id": [], "record_index": [], "arr_delay": []}
    for month in MONTHS:
        rows = month_rows(result, month)
        for start in range(0, len(rows), 50):
            response = requests.post(endpoint, json=as_request(rows[start:start + 50], inputs), timeout=30)
            assert response.status_code == 200, response.text[:300]
            if month < MONTHS[-1]:
                for index, row in enumerate(rows[start:start + 50]):
                    labels["request_id"].append(response.headers["x-request-id"])
                    labels["record_index"].append(index)
                    labels["arr_delay"].append(row["arr_delay"])
    pq.write_table(pa.table(labels), folder / "labels.parquet")
    deadline = time.time() + 30
    while len(logged(folder / "log")) < len(MONTHS) * ROWS_PER_MONTH:
        assert time.time() < deadline, "the prediction log was not written"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def decayed(pipeline_result, tmp_path_factory, local_cluster):
    """`loop-test` v1: the session's bundle with its weights scrambled (what a model whose world moved on looks
    like: live AUC near 0.5), tagged with the test AUC it once had; served as `loop` with a prediction log."""
    from mlscale.config import PredictionLogConfig
    from mlscale.registry.store import load_bundle, register_path, set_alias
    from mlscale.stages.deploy import deploy_stage
    from mlscale.tracking import start_tracking, tracking_client

    config, result = pipeline_result
    start_tracking(config)
    bundle = load_bundle(result.trained.version_uri, config.tracking_uri)
    generator = torch.Generator().manual_seed(0)
    scrambled = {name: torch.randn(tensor.shape, generator=generator) * 0.05 if tensor.is_floating_point()
                 else tensor for name, tensor in bundle.state_dict.items()}
    folder = tmp_path_factory.mktemp("loop")
    replace(bundle, state_dict=scrambled).save(folder / "decayed")
    version = register_path(folder / "decayed", MODEL).version
    set_alias(MODEL, "champion", version, config.tracking_uri)
    tracking_client(config.tracking_uri).set_model_version_tag(MODEL, version, "test_auc", "0.85")
    serve = config.serve.model_copy(update={
        "app_name": "loop", "route_prefix": "/loop", "model_cpus": 0.5,
        "prediction_log": PredictionLogConfig(path=str(folder / "log"), flush_interval_s=0.3)})
    monitor = config.monitor.model_validate({
        "window": "column", "window_column": "month", "min_window_rows": 100,
        "labels": {"path": str(folder / "labels.parquet"), "on": ["request_id"], "column": "arr_delay"},
        "retrain": {"enabled": True, "train_windows": 2, "val_windows": 1, "test_windows": 1, "cooldown_s": 0,
                    "jobs_address": local_cluster.dashboard_url, "timeout_s": 900}})
    loop_config = config.model_copy(update={
        "name": "loop", "serve": serve, "monitor": monitor,
        "tracking": config.tracking.model_copy(update={"registered_model": MODEL})})
    endpoint = deploy_stage(loop_config)
    wait_for_http(endpoint.rsplit("/", 1)[0] + "/health", 120, "the loop app")
    replay(result, endpoint, folder, {spec.name for spec in bundle.input_schema})
    yield loop_config, endpoint, version, folder
    from ray import serve as ray_serve

    ray_serve.delete("loop")


def test_decay_triggers_a_retrain_job_whose_failure_leaves_the_champion_serving(decayed, pipeline_result):
    """The monitor on the decayed champion's log: every labelled month decayed, drift judged on all five; it starts
    a retrain on the right windows; the job fails in its prepare stage (the source is gone); the failure is recorded
    and the champion keeps serving."""
    from mlscale.monitor.retrain import decision_log
    from mlscale.registry.store import load_bundle, version_of
    from mlscale.stages.monitor import monitor_stage

    config, endpoint, champion, folder = decayed
    _, result = pipeline_result
    inputs = {spec.name for spec in load_bundle(result.trained.version_uri, config.tracking_uri).input_schema}
    broken = config.model_copy(update={
        "data": config.data.model_copy(update={"source": "parquet", "path": str(folder / "gone")})})
    report = monitor_stage(broken)

    by_month = {window.key: window for window in report.windows}
    assert set(by_month) == set(MONTHS) and by_month[12].labelled_rows == 0
    assert all(by_month[m].decayed and by_month[m].performance["live_auc"] < 0.7 for m in MONTHS[:-1])
    assert all(window.features and math.isfinite(window.overall) for window in by_month.values())  # drift judged
    decision = report.decision
    assert decision.start and decision.job_id and any(r.startswith("decay in window 11") for r in decision.reasons)
    assert (decision.train, decision.val, decision.test) == ([8, 9], [10], [11])
    assert decision.outcome == "job FAILED; the champion keeps serving", decision.outcome
    assert len(report.plot_paths) == 2 and all(p.endswith(".png") for p in report.plot_paths)
    assert version_of(MODEL, "champion", config.tracking_uri) == champion
    answer = requests.post(endpoint, json=as_request(month_rows(result, 12)[:2], inputs), timeout=30)
    assert answer.status_code == 200 and answer.json()["model"]["version"] == champion
    entries = decision_log(broken).read()
    assert entries[-1]["event"] == "monitor" and entries[-1]["job_id"] == decision.job_id
    assert "job FAILED" in decision_log(broken).text_path.read_text()

    again = monitor_stage(broken)  # the next scheduled pass: the window has had its retrain; none starts twice
    assert not again.decision.start and again.decision.window == decision.window
