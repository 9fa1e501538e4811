"""One trial of a search: the sampled point applied to the pipeline config, trained the way the train stage trains.

A trial is a Ray Tune function that launches a Ray Train run (TorchTrainer with Tune's report callback), so one
trial can itself use several workers or GPUs; with `tune.trial_workers: 0` it runs the same loop in its own process.
Each trial has an MLflow run under the sweep's run, with its params, model cost and learning curve.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import ray.data
import torch
from mlflow.entities import Param

from mlscale.config import PipelineConfig
from mlscale.features.featureset import FittedFeatures
from mlscale.models.networks import build_network, parameter_count, spec_for_features
from mlscale.tracking import tracking_client
from mlscale.train.batches import HeldSplit, fits_in_memory
from mlscale.train.loop import MlflowTarget, TrialSession, run_loop
from mlscale.train.trainer import checkpoint_storage, loop_config, make_trainer
from mlscale.tune.space import apply_params, architecture_of

LATENCY_ROWS = 256


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs to know about its sweep (plain data: it travels to the trial processes)."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


@dataclass
class TrialInputs:
    """The sweep's shared inputs, put in the object store once by tune.with_parameters."""

    config: PipelineConfig
    features: FittedFeatures
    train: ray.data.Dataset
    val: ray.data.Dataset
    target_stats: tuple[float, float] | None
    context: SweepContext
    held: dict[str, HeldSplit] | None = None

    def holding_splits(self) -> TrialInputs:
        """These inputs with train and val read into arrays once, when trials train in their own process
        (`tune.trial_workers: 0`) and the splits fit `train.cache_train_mb` and `train.cache_val_mb`: each trial
        would otherwise start two Ray Data executions (a second or more each) to hold them itself."""
        settings = self.config.train
        spec = spec_for_features(settings.model, self.features)
        if self.config.tune.trial_workers != 0 or not (  # counting a split may run a Ray Data execution: last
                fits_in_memory(self.train.count(), spec, settings.cache_train_mb)
                and fits_in_memory(self.val.count(), spec, settings.cache_val_mb)):
            return self
        return replace(self, held={"train": HeldSplit.read(self.train), "val": HeldSplit.read(self.val)})


def latency_ms(spec: dict[str, Any], rows: int = LATENCY_ROWS, repeats: int = 15) -> float:
    """Median CPU time of one forward pass over `rows` rows: what the architecture costs at serving time."""
    network = build_network(spec).eval()
    x_num = torch.zeros(rows, spec["n_numeric"])
    x_cat = torch.zeros(rows, len(spec["cardinalities"]), dtype=torch.int64)
    timings = []
    with torch.inference_mode():
        for index in range(repeats + 3):
            began = time.perf_counter()
            network(x_num, x_cat)
            if index >= 3:  # the first calls warm up the allocator
                timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings)


def model_cost(spec: dict[str, Any]) -> dict[str, float]:
    return {"params": float(parameter_count(spec)), "latency_ms": latency_ms(spec)}


def trial_run_id(context: SweepContext, trial_id: str, params: dict[str, Any], config: PipelineConfig) -> str:
    """The trial's MLflow run under the sweep's run: found again when a restored sweep restarts the trial."""
    client = tracking_client(context.tracking_uri)
    found = client.search_runs(
        [context.experiment_id],
        f"tags.`mlscale.sweep` = '{context.name}' and tags.`mlscale.trial_id` = '{trial_id}'", max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(context.experiment_id, run_name=f"{context.name}-{trial_id}", tags={
        "mlflow.parentRunId": context.parent_run_id, "mlscale.stage": "tune_trial", "mlscale.sweep": context.name,
        "mlscale.trial_id": trial_id, "mlscale.config_hash": config.fingerprint(),
        "mlscale.architecture": str(architecture_of(config)),
    })
    client.log_batch(run.info.run_id, params=[Param(name, str(value)[:500]) for name, value in params.items()])
    return run.info.run_id


def sized_for_trial(config: PipelineConfig) -> PipelineConfig:
    """A trial trains in its own process (trial_workers 0) or on its own Ray Train workers, never on the sweep
    config's `train.num_workers`: steps per epoch (so the learning-rate schedule) and the per-worker cache budget
    must be sized for the workers the trial really has."""
    return config.model_copy(update={"train": config.train.model_copy(
        update={"num_workers": max(1, config.tune.trial_workers)})})


def run_trial(params: dict[str, Any], inputs: TrialInputs) -> None:
    """Tune's trainable: train one sampled config and report every evaluation (with its model cost) to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    context = inputs.context
    config = apply_params(inputs.config, params)
    spec = spec_for_features(config.train.model, inputs.features)
    trial_id = ray.tune.get_context().get_trial_id()
    mlflow_run = MlflowTarget(context.tracking_uri, trial_run_id(context, trial_id, params, config))
    cost = model_cost(spec)
    run_name = f"{context.name}-{trial_id}"
    config = sized_for_trial(config)
    if config.tune.trial_workers == 0:
        filesystem, storage_path = checkpoint_storage(config)
        splits: dict[str, Any] = inputs.held or {"train": inputs.train, "val": inputs.val}
        loop = loop_config(config, spec, splits["train"].count(), inputs.target_stats, filesystem,
                           f"{storage_path}/{run_name}", mlflow_run, cost)
        # A HeldSplit has no local shuffle to stream with: the loop holds it (the sweep's budget check allowed it).
        if inputs.held:
            loop = replace(loop, train_in_memory=True)
        session = TrialSession(splits, config.train.use_gpu)
        run_loop(loop, session)
        return
    make_trainer(config, inputs.train, inputs.val, spec, run_name, inputs.target_stats, mlflow_run,
                 callbacks=[TuneReportCallback()], extra_metrics=cost).fit()
