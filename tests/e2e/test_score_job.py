"""Batch scoring as a real Ray job over a lake of new rows (parquet, bad rows among them): every row scored or
quarantined with its reason, the scores equal what the service answers for the same rows, and a rerun commits
nothing new."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from ray.job_submission import JobStatus, JobSubmissionClient

from mlscale.data.records import json_value
from tests.e2e.test_job import submit, summary_from_logs, wait

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROWS = 600


def new_rows(pipeline_result, folder) -> tuple[pa.Table, dict[str, int]]:
    """Held-out rows as tonight's lake: two files, with rows that break the input rules and a duplicated key."""
    config, result = pipeline_result
    table = pq.read_table(result.prepared.split_path("test")).slice(0, ROWS)
    table = table.drop_columns([name for name in ("split",) if name in table.column_names]).combine_chunks()
    rows = table.to_pylist()
    rows[3]["dep_delay"] = 5000.0  # above the schema's 2000
    rows[10]["origin"] = "XXX"  # not an allowed airport
    rows[20]["carrier"] = None  # a required input missing
    rows.append(dict(rows[30]))  # the same flight twice: both copies break the key's uniqueness
    bad = {"dep_delay.max": 1, "origin.allowed": 1, "carrier.not_null": 1,
           f"unique({','.join(config.validation.unique)})": 2}
    lake = pa.Table.from_pylist(rows, schema=table.schema)
    folder.mkdir()
    half = lake.num_rows // 2
    pq.write_table(lake.slice(0, half), folder / "part-0.parquet")
    pq.write_table(lake.slice(half), folder / "part-1.parquet")
    return lake, bad


def test_score_job_quarantines_bad_rows_matches_the_service_and_is_idempotent(pipeline_result, local_cluster,
                                                                               tmp_path):
    from mlscale.stages.score import score_stage

    config, result = pipeline_result
    lake, bad = new_rows(pipeline_result, tmp_path / "lake")
    out = tmp_path / "scores"
    overrides = ["data.source=parquet", f"data.path={tmp_path / 'lake'}", f"score.output={out}",
                 f"score.model={result.trained.version_uri}"]
    client = JobSubmissionClient(local_cluster.dashboard_url)
    job_id = submit(client, "python jobs/score.py --config jobs/configs/flights-small.yaml "
                    + " ".join(f"--set {item}" for item in overrides),
                    {"MLSCALE_STORAGE": str(config.storage.root_path), "MLFLOW_TRACKING_URI": config.tracking_uri})
    assert wait(client, job_id, 600) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-5000:]
    summary = summary_from_logs(client.get_job_logs(job_id))
    quarantined = sum(bad.values())
    assert summary["rows_read"] == lake.num_rows
    assert summary["quarantine_rows"] == quarantined and summary["scored_rows"] == lake.num_rows - quarantined
    assert summary["quarantine_reasons"] == bad
    assert summary["model_version"] == result.trained.version

    scored = pq.read_table(out / "part=scored").to_pylist()
    quarantine = pq.read_table(out / "part=quarantine")
    assert sorted(set(quarantine.column("quarantine_rules").combine_chunks().flatten().to_pylist())) == sorted(bad)
    assert all(reason for reason in quarantine.column("quarantine_reason").to_pylist())
    assert {row["model_version"] for row in scored} == {result.trained.version}
    assert set(scored[0]) >= {*config.validation.unique, "prediction", "model_version"}

    # the same rows through the HTTP service, matched on the rows' key
    key = config.validation.unique
    by_key = {tuple(row[name] for name in key): row for row in lake.to_pylist()}
    inputs = [spec.name for spec in result.prepared.column_specs()]
    records = [{name: json_value(by_key[tuple(row[name] for name in key)][name]) for name in inputs}
               for row in scored]
    served = []
    for start in range(0, len(records), 100):
        response = requests.post(result.endpoint, json=records[start:start + 100], timeout=60)
        assert response.status_code == 200, response.text[:500]
        served += response.json()["predictions"]
    batch = np.array([row["prediction"] for row in scored])
    np.testing.assert_allclose(served, batch, rtol=config.serve.compare_rtol, atol=1e-6)

    # a rerun over the same rows with the same version commits nothing new
    before = sorted((path.name, path.stat().st_mtime_ns) for path in out.rglob("*.parquet"))
    rerun_config = config.model_copy(update={
        "data": config.data.model_copy(update={"source": "parquet", "path": str(tmp_path / "lake")}),
        "score": config.score.model_copy(update={"output": str(out)})})
    again = score_stage(rerun_config, result.trained.version_uri)
    assert again.cached and again.counts == {"scored": summary["scored_rows"], "quarantine": quarantined}
    assert sorted((path.name, path.stat().st_mtime_ns) for path in out.rglob("*.parquet")) == before
    print(f"score job: {lake.num_rows} rows, {quarantined} quarantined {bad}, served == batch on "
          f"{len(scored)} rows (max |diff| {np.abs(np.array(served) - batch).max():.2e})")
