"""The registry against a real `mlflow server` on loopback with a SQL backend and proxied artifacts."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mlscale.errors import PromotionConflict
from mlscale.promotion import Measurement, apply_decision, decide
from mlscale.registry.store import load_bundle, register_bundle, set_alias, version_of
from mlscale.tracking import tracking_client, use_tracking
from tests.conftest import free_port, restore_env, start_server
from tests.unit.test_bundle import make_bundle
from tests.unit.test_featureset import sample_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_server(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        f"http://127.0.0.1:{port}/health", "mlflow server")
    url = f"http://127.0.0.1:{port}"
    import mlflow

    previous = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield url, root
    process.terminate()
    process.wait(30)
    # set_tracking_uri / set_registry_uri also export environment variables; later tests must not inherit a
    # stopped server, neither as the tracking nor as the registry URI.
    mlflow.set_tracking_uri(previous["MLFLOW_TRACKING_URI"] or "")
    mlflow.set_registry_uri(previous["MLFLOW_REGISTRY_URI"] or "")
    restore_env(previous)  # after: set_*_uri export the variables, "" included


def printed_json(output: str) -> dict:
    """The command's JSON line (MLflow may log lines of its own around it)."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


def test_register_alias_load_predict_through_the_server(mlflow_server):
    import mlflow

    url, root = mlflow_server
    use_tracking(url, "server-roundtrip")
    bundle = make_bundle()
    with mlflow.start_run():
        first = register_bundle(bundle, "server-model")
        set_alias("server-model", "champion", first.version)
        second = register_bundle(bundle, "server-model")
        set_alias("server-model", "challenger", second.version)
    assert (first.version, second.version) == ("1", "2")
    table = sample_table(30, seed=11)
    expected = bundle.predict_columns(table)
    for uri in (first.alias_uri("champion"), second.alias_uri("challenger"), second.version_uri):
        np.testing.assert_array_equal(load_bundle(uri, url).predict_columns(table), expected)
    assert any((root / "artifacts").rglob("weights.pt")), "artifacts were not proxied to the server's store"
    decision = decide("server-model", "champion", "if_better", "test_auc", "max", 0.0,
                      Measurement("2", {"test_auc": 0.9}), Measurement("1", {"test_auc": 0.8}))
    assert apply_decision(decision, url)  # challenger -> champion; the old champion stays reachable
    client = tracking_client(url)
    assert client.get_model_version_by_alias("server-model", "champion").version in (2, "2")
    assert client.get_model_version_by_alias("server-model", "previous_champion").version in (1, "1")
    assert client.get_model_version("server-model", "1").tags["config_hash"] == "abc"


def _apply_in_another_process(decision, url):
    """One trainer finishing: applies its decision from its own process (as two jobs on a cluster would)."""
    try:
        return "applied" if apply_decision(decision, url) else "not promoted"
    except PromotionConflict as error:
        return f"conflict: {error}"


def test_concurrent_challengers_only_a_judged_version_becomes_champion(mlflow_server):
    """Two trainings judge their versions against the same (empty) champion and promote at the same moment from
    two processes, while a third version sits behind `challenger` unjudged. Exactly one judged version wins; the
    other decision is refused as stale instead of silently replacing the winner, and the unjudged challenger is
    never promoted."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import mlflow

    url, _ = mlflow_server
    use_tracking(url, "concurrent-promotion")
    with mlflow.start_run():
        versions = [register_bundle(make_bundle(), "race-model").version for _ in range(3)]
    assert versions == ["1", "2", "3"]
    set_alias("race-model", "challenger", "3", url)  # the newest registration: never judged
    decisions = [decide("race-model", "champion", "if_better", "test_auc", "max", 0.0,
                        Measurement(version, {"test_auc": auc}), None)
                 for version, auc in (("1", 0.81), ("2", 0.82))]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_apply_in_another_process, decisions, [url, url]))
    assert sorted(o.split(":")[0] for o in outcomes) == ["applied", "conflict"], outcomes
    winner = decisions[outcomes.index("applied")].challenger_version
    loser = decisions[1 - outcomes.index("applied")]
    assert version_of("race-model", "champion", url) == winner
    assert version_of("race-model", "challenger", url) == "3"
    assert f"is v{winner} now" in outcomes[1 - outcomes.index("applied")]
    client = tracking_client(url)
    recorded = json.loads(client.get_model_version("race-model", winner).tags["mlscale.promotion"])
    assert recorded["challenger_version"] == winner and recorded["champion_version"] is None and recorded["by"]
    assert "mlscale.promotion" not in client.get_model_version("race-model", "3").tags
    # the loser is judged again, against the champion that now exists, and replaces it only through that decision
    again = decide("race-model", "champion", "if_better", "test_auc", "max", 0.0, Measurement(loser.challenger_version,
                   {"test_auc": 0.83}), Measurement(winner, {"test_auc": 0.8}))
    assert apply_decision(again, url)
    assert version_of("race-model", "champion", url) == loser.challenger_version
    assert version_of("race-model", "previous_champion", url) == winner
    with pytest.raises(PromotionConflict):  # the first round's decision is stale for good
        apply_decision(decisions[0] if winner == "2" else decisions[1], url)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # above its own deadlines: 300 + 120 + 600 s
def test_a_stopped_train_job_resumes_tracked_on_the_server_then_the_registry_cli(mlflow_server, pipeline_result,
                                                                                 local_cluster, tmp_path):
    """The train stage as a real `ray job submit` tracking to the server: stopped mid-run (`ray job stop`) and
    submitted again, it picks up from its checkpoint; then register/compare/promote/list/load through the
    `mlscale registry` CLI against the same server."""
    import time
    import uuid

    import pyarrow.fs as pafs
    from ray.job_submission import JobStatus, JobSubmissionClient
    from typer.testing import CliRunner

    from mlscale.cli import app
    from mlscale.train.progress import ProgressLog
    from tests.e2e.test_job import submit, summary_from_logs, wait

    url, _ = mlflow_server
    config, result = pipeline_result
    client = JobSubmissionClient(local_cluster.dashboard_url)
    run_name = f"resume-{uuid.uuid4().hex[:6]}"
    # Two short epochs; such a model may fail the behavioural checks, so promotion is forced here.
    entrypoint = (f"python jobs/train.py --config jobs/configs/flights-small.yaml --set train.run_name={run_name} "
                  "--set train.epochs=2 --set train.checkpoint.every_n_steps=25 "
                  "--set tracking.experiment=server-train --set tracking.promotion=always")
    env = {"MLSCALE_STORAGE": str(config.storage.root_path), "MLFLOW_TRACKING_URI": url}
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
    status = wait(client, second)
    logs = client.get_job_logs(second)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    attempts = progress.attempts()
    assert len(attempts) == 2 and attempts[1].finished
    resumed_from = attempts[1].started_from_step
    assert 0 < resumed_from <= stopped_at  # resumed from a checkpoint, not from step 0
    summary = summary_from_logs(logs)
    assert summary["train_attempts"] == 2
    assert summary["train_repeated_steps"] == stopped_at - resumed_from
    assert summary["promoted"] is True and summary["model_version"] == "1", summary
    assert summary["promotion"].startswith("always")

    tracking = tracking_client(url)
    run = tracking.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train_steps"] == attempts[1].last_step
    assert run.data.params["train.model.family"] == "mlp" and run.data.params["train.optimizer.name"] == "adamw"
    assert {"mlscale.data_fingerprint", "mlscale.config_hash", "mlscale.code_version", "mlscale.parent_run",
            "mlscale.feature_fingerprint"} <= set(run.data.tags)
    steps = [m.step for m in tracking.get_metric_history(run.info.run_id, "val_auc")]  # by rank 0 as it went
    assert steps == sorted(steps) and steps[0] > resumed_from and steps[-1] == run.data.metrics["train_steps"]
    artifacts = {a.path for folder in ("plots", "evaluation", "data") for a in tracking.list_artifacts(
        run.info.run_id, folder)}
    assert {"plots/training_curve.png", "plots/reliability.png", "evaluation/slices.json",
            "evaluation/behaviour.json", "data/_validation_report.json"} <= artifacts
    assert 0 <= run.data.metrics["test_ece"] < 0.2
    print(f"resume: stopped at step {stopped_at}, rerun resumed from step {resumed_from}, "
          f"{summary['train_repeated_steps']} steps repeated, test_auc {summary['test_auc']:.4f}")

    model = "flights-small-late-arrival"
    base = ["--config", str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "flights-small.yaml"),
            "--set", f"tracking.uri={url}", "--set", f"storage.root={config.storage.root}"]
    runner = CliRunner()
    bundle_dir = load_bundle(f"models:/{model}@champion", url).save(tmp_path / "bundle")
    registered = runner.invoke(app, ["registry", "register", str(bundle_dir), "--alias", "challenger", *base])
    assert registered.exit_code == 0, registered.output
    assert printed_json(registered.output)["version"] == "2"

    compared = runner.invoke(app, ["registry", "compare", *base])
    assert compared.exit_code == 0, compared.output
    decision = json.loads(compared.output.split("MLSCALE_DECISION ", 1)[1].splitlines()[0])
    assert (decision["challenger_version"], decision["champion_version"]) == ("2", "1")
    assert decision["delta"] == pytest.approx(0, abs=1e-9)
    assert decision["promote"] is False  # the same weights on the same rows: nothing to gain

    refused = runner.invoke(app, ["registry", "promote", "--if-better", *base])
    assert refused.exit_code == 6 and "not promoted" in refused.output
    promoted = runner.invoke(app, ["registry", "promote", *base])
    assert promoted.exit_code == 0, promoted.output
    listed = runner.invoke(app, ["registry", "list", *base])
    versions = json.loads(listed.output.split("MLSCALE_REGISTRY ", 1)[1].splitlines()[0])
    aliases = {v["version"]: v["aliases"] for v in versions}
    assert aliases == {"2": ["challenger", "champion"], "1": ["previous_champion"]}
    assert versions[1]["metrics"]["test_auc"] == pytest.approx(summary["test_auc"])

    rows = result.prepared.read("test").limit(20).take_all()
    np.testing.assert_array_equal(load_bundle(f"models:/{model}@champion", url).predict_records(rows),
                                  load_bundle(f"models:/{model}/1", url).predict_records(rows))


def _promote_on_another_machine(decision, url, address, barrier, pause_after_read):
    """A trainer on another machine of the cluster: connected to the same Ray cluster, but no file lock shared
    with the other writer (each skips it); it pauses between reading the alias and moving it."""
    import contextlib
    import time

    import ray

    from mlscale import promotion

    ray.init(address=address, log_to_driver=False)
    promotion.machine_lock = lambda uri: contextlib.nullcontext()
    real, reads = promotion.version_of, []

    def slow(*args):
        value = real(*args)
        if not reads:
            reads.append(value)
            time.sleep(pause_after_read)
        return value

    promotion.version_of = slow
    barrier.wait(120)
    try:
        return "applied" if promotion.apply_decision(decision, url) else "not promoted"
    except PromotionConflict as error:
        return f"conflict: {error}"


def _run(queue, *args):
    queue.put(_promote_on_another_machine(*args))


def test_the_compare_and_set_holds_across_machines_of_one_cluster(mlflow_server, ray_session):
    """Two writers with no file lock in common (two machines) promote against the same champion; one pauses
    between its read and its write. The cluster's lock lets exactly one move the alias: without it both 'succeed'
    and the alias ends on whichever wrote last."""
    import multiprocessing

    import mlflow

    url, _ = mlflow_server
    use_tracking(url, "cluster-lock")
    with mlflow.start_run():
        versions = [register_bundle(make_bundle(), "lock-model").version for _ in range(2)]
    decisions = [decide("lock-model", "champion", "if_better", "test_auc", "max", 0.0,
                        Measurement(version, {"test_auc": 0.8}), None) for version in versions]
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    writers = [context.Process(target=_run, args=(queue, decision, url, ray_session.gcs_address, barrier, pause))
               for decision, pause in zip(decisions, (0.0, 3.0), strict=True)]
    for writer in writers:
        writer.start()
    outcomes = [queue.get(timeout=180) for _ in writers]
    for writer in writers:
        writer.join(30)
    assert sorted(outcome.split(":")[0] for outcome in outcomes) == ["applied", "conflict"], outcomes


def test_a_replica_starts_from_the_bundle_cache_while_the_registry_is_down(mlflow_server, tmp_path, monkeypatch):
    """The first replica downloads the pinned version and keeps it under the shared storage root; a replica started
    later (a scale-out, a replacement on another node) with the registry unreachable starts from that copy and
    answers; with nothing cached, it fails loudly rather than serving something else."""
    import mlflow

    from mlscale.config import ServeConfig
    from mlscale.registry import store
    from mlscale.serve.app import ModelServerReplica
    from mlscale.serve.build import rollout_config

    url, _ = mlflow_server
    use_tracking(url, "bundle-cache")
    with mlflow.start_run():
        version = register_bundle(make_bundle(), "cache-model").version
    uri = f"models:/cache-model/{version}"
    user_config = rollout_config(uri, uri, url, ServeConfig(), "R", bundle_cache=str(tmp_path / "bundles"))
    ModelServerReplica().reconfigure(user_config)  # the first replica: from the registry, cached on the way
    assert list((tmp_path / "bundles").rglob("bundle.json"))

    def registry_down(*args, **kwargs):
        raise ConnectionError("MLflow is unreachable")

    monkeypatch.setattr(store, "load_bundle", registry_down)
    later = ModelServerReplica()
    later.reconfigure(user_config)
    records = [{key: value for key, value in row.items() if key in later.served.bundle.input_columns}
               for row in sample_table(3, seed=2).to_pylist()]
    np.testing.assert_allclose(later.served.bundle.predict_records(records), make_bundle().predict_records(records),
                               atol=1e-6)
    cold = rollout_config(uri, uri, url, ServeConfig(), "R", bundle_cache=str(tmp_path / "empty"))
    with pytest.raises(ConnectionError):
        ModelServerReplica().reconfigure(cold)
