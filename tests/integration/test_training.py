"""Ray Train on the session's real cluster: reproducibility, a worker killed mid-run, early stopping, checkpoints
on object storage with resume, and the regression task.

The runs train on the featurized 10% sample the session pipeline prepared (2 epochs of 96 steps on 2 workers),
evaluating and checkpointing every 25 steps so that a failure lands between checkpoints.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pyarrow.fs as pafs
import pytest
import ray
from ray.util.state import list_actors

from mlscale.data.prepare import load_prepared
from mlscale.models.networks import spec_for_features
from mlscale.stages.train import train_stage
from mlscale.train.inputs import training_data
from mlscale.train.loop import PROGRESS_EVERY_STEPS
from mlscale.train.progress import ProgressLog
from mlscale.train.trainer import checkpoint_storage, run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EVERY = 25


@pytest.fixture(scope="module")
def setup(pipeline_result):
    config, _ = pipeline_result
    config = config.model_copy(update={"train": config.train.model_copy(update={
        "epochs": 2, "checkpoint": config.train.checkpoint.model_copy(update={"every_n_steps": EVERY}),
        "early_stopping": config.train.early_stopping.model_copy(update={"enabled": False}),
    })})
    data = training_data(config, load_prepared(config))
    return config, data, spec_for_features(config.train.model, data.features)


def train(setup, config=None, run_name=None):
    base, data, spec = setup
    return run_training(config or base, data.train, data.val, spec, run_name or f"t-{uuid.uuid4().hex[:6]}")


def curve(outcome):
    return [(row["step"], row["train_loss"], row["val_auc"]) for row in outcome.history]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    return train(setup)


def test_an_uninterrupted_run_reports_at_every_checkpoint_step(uninterrupted):
    """Same seed, same metrics bit for bit is proven by the chaos test below (a second run of the same seed, killed
    and resumed, must match this one exactly); this checks the run it compares against."""
    steps = [row["step"] for row in uninterrupted.history]
    assert steps[:3] == [EVERY, 2 * EVERY, 3 * EVERY] and steps[-1] == uninterrupted.summary_metrics()["train_steps"]
    assert len({row["val_auc"] for row in uninterrupted.history}) > 3  # the metric moves: equality means something
    assert uninterrupted.attempts[0].finished and len(uninterrupted.attempts) == 1


def _kill_a_worker_after(progress: ProgressLog, step: int, killed: dict, timeout: float = 300) -> None:
    """Find the Ray Train worker processes through the state API as soon as they exist (the query takes a moment),
    then SIGKILL one the moment training passes `step`."""
    deadline = time.time() + timeout
    pids: list[int] = []
    while time.time() < deadline:
        if not pids:
            workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                  detail=True)
            pids = sorted(actor.pid for actor in workers)
        attempts = progress.attempts()
        if pids and attempts and attempts[-1].last_step >= step:
            os.kill(pids[-1], signal.SIGKILL)
            killed.update(pid=pids[-1], at_step=attempts[-1].last_step)
            return
        time.sleep(0.02)


def test_training_survives_a_killed_worker(setup, uninterrupted):
    config, _, _ = setup
    run_name = f"chaos-{uuid.uuid4().hex[:6]}"
    filesystem, root = checkpoint_storage(config)
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(ProgressLog(filesystem, f"{root}/{run_name}"), 2 * EVERY + 10, killed))
    killer.start()
    outcome = train(setup, run_name=run_name)
    killer.join()
    assert killed, "no worker was killed: the run ended before the chaos thread found one"
    assert len(outcome.attempts) == 2, outcome.attempts
    restarted_from = outcome.attempts[1].started_from_step
    # Resumed from a checkpoint, not from scratch. Ray Train registers a checkpoint when its controller next polls
    # the workers, so a worker killed right after reporting one can restart from the one before.
    assert restarted_from > 0 and restarted_from % EVERY == 0 and restarted_from <= killed["at_step"]
    # repeated work, bounded from what the chaos thread saw (not only from the records the code sums): the first
    # attempt had reached killed["at_step"] when it was killed, and may have recorded one more progress point.
    # Zero is possible: the controller polls every 0.5 s (cluster/connect.PROCESS_ENV), so a worker killed just
    # after the checkpoint at its last recorded step resumes from that very step
    lower = killed["at_step"] - restarted_from
    assert 0 <= lower <= outcome.repeated_steps <= lower + 2 * PROGRESS_EVERY_STEPS
    # the loop resumes bit for bit (same shard order, shuffles, dropout reseeded per step): the same history
    assert curve(outcome) == curve(uninterrupted)
    final, reference = outcome.history[-1]["val_auc"], uninterrupted.history[-1]["val_auc"]
    print(f"chaos: killed pid {killed['pid']} at step {killed['at_step']}, resumed from step {restarted_from}, "
          f"{outcome.repeated_steps} steps repeated; final val_auc {final:.6f} vs {reference:.6f} uninterrupted")


def test_early_stopping_ends_the_run(setup):
    config, _, _ = setup
    stopping = config.model_copy(update={"train": config.train.model_copy(update={
        "early_stopping": config.train.early_stopping.model_copy(
            update={"enabled": True, "patience": 1, "min_delta": 1.0})})})  # nothing improves by 1.0 AUC
    outcome = train(setup, stopping)
    assert [row["step"] for row in outcome.history] == [EVERY, 2 * EVERY, 3 * EVERY]
    assert outcome.early_stopped and outcome.attempts[-1].finished


def test_checkpoints_on_object_storage_and_a_rerun_resumes(setup, s3_endpoint):
    import boto3

    config, _, _ = setup
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="checkpoints")
    data = config.data.model_copy(update={"object_store": config.data.object_store.model_copy(
        update={"endpoint_url": s3_endpoint})})

    def on_s3(epochs: int):  # and the train shard streamed every epoch (the other tests hold it in memory)
        return config.model_copy(update={"data": data, "train": config.train.model_copy(
            update={"epochs": epochs, "storage_uri": "s3://checkpoints/mlscale", "cache_train_mb": 0, "checkpoint":
                    config.train.checkpoint.model_copy(update={"every_n_steps": None})})})

    first = train(setup, on_s3(1), "s3-resume")
    filesystem, root = checkpoint_storage(on_s3(1))
    assert isinstance(filesystem, pafs.S3FileSystem)
    stored = filesystem.get_file_info(pafs.FileSelector(f"{root}/s3-resume", recursive=True))
    assert any(info.path.endswith("state.pt") for info in stored)
    second = train(setup, on_s3(2), "s3-resume")  # the same run name: Ray Train restores the latest checkpoint
    assert [a.started_from_step for a in second.attempts] == [0, first.history[-1]["step"]]
    assert second.repeated_steps == 0
    assert [row["epoch"] for row in second.history] == [1.0, 2.0]
    assert second.history[0] == first.history[0]
    assert second.history[1]["val_auc"] > 0.8  # the streamed shard trains too


def test_a_failure_beyond_max_failures_fails_cleanly_and_registers_nothing(setup, pipeline_result):
    """With train.max_failures=0 one lost worker ends the run: the train stage raises TrainingFailed (exit 9)
    naming the setting and the run to resume, and no version of the model is registered."""
    from mlscale.errors import TrainingFailed
    from mlscale.tracking import tracking_client

    config, _, _ = setup
    _, result = pipeline_result
    model = "flights-small-never-registered"
    fragile = config.model_copy(update={
        "train": config.train.model_copy(update={"epochs": 1, "max_failures": 0}),
        "tracking": config.tracking.model_copy(update={"registered_model": model})})
    run_name = f"fragile-{uuid.uuid4().hex[:6]}"
    filesystem, root = checkpoint_storage(fragile)
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(ProgressLog(filesystem, f"{root}/{run_name}"), EVERY, killed))
    killer.start()
    with pytest.raises(TrainingFailed, match="train.max_failures=0") as raised:
        train_stage(fragile, result.prepared, run_name=run_name)
    killer.join()
    assert killed, "no worker was killed: the run ended before the chaos thread found one"
    assert raised.value.exit_code == 9 and f"train.run_name={run_name}" in str(raised.value)
    assert tracking_client(fragile.tracking_uri).search_model_versions(f"name = '{model}'") == []


def test_regression_task_end_to_end(pipeline_result):
    config, result = pipeline_result
    regression = config.model_copy(update={
        "data": config.data.model_copy(update={"task": "regression"}),
        "train": config.train.model_copy(update={"epochs": 1, "model": config.train.model.model_copy(
            update={"family": "resmlp"})}),
        "evaluate": config.evaluate.model_copy(update={"behaviour": config.evaluate.behaviour.model_copy(
            update={"invariance": [], "minimum": []})}),  # probabilities bounds mean nothing for minutes
        "tracking": config.tracking.model_copy(update={"registered_model": "flights-small-arrival-delay",
                                                       "experiment": "regression"}),
    })
    from mlscale.registry.store import load_bundle
    from mlscale.tracking import start_tracking

    start_tracking(regression)
    trained = train_stage(regression, result.prepared, run_name=f"regression-{uuid.uuid4().hex[:6]}")
    assert {"test_rmse", "test_mae", "test_r2"} <= set(trained.test_metrics)
    assert trained.best_val_metrics["val_rmse"] > 0
    # measured 0.80 after this one epoch on the sample (the floor is that minus 0.05); for scale, a straight line
    # through dep_delay alone scores 0.84 on December: one epoch of this network does not reach it yet
    assert trained.test_metrics["test_r2"] > 0.75
    bundle = load_bundle(trained.version_uri, regression.tracking_uri)
    assert bundle.label["task"] == "regression" and bundle.network_spec["family"] == "resmlp"
    rows = result.prepared.read("test").limit(200).take_all()
    predictions = bundle.predict_records(rows)
    assert predictions.std() > 10  # minutes, not probabilities
    carriers, least = trained.slices["carrier"].values(), regression.evaluate.min_slice_rows
    assert any("test_rmse" in v for v in carriers)  # scored only where enough rows: RMSE exactly there
    assert all(("test_rmse" in v) == (v["test_rows"] >= least) and v["test_rmse" if "test_rmse" in v else
                                                                     "test_rows"] > 0 for v in carriers)
    assert ray.is_initialized()
