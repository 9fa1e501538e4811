"""How many trials fit on the cluster at once, and what each reserves.

A trial whose driver holds a CPU while its Ray Train workers wait for one, or a set of trials that takes every CPU
so their Ray Data reads never get scheduled, hangs instead of failing. The plan reserves the Data CPUs first, then
fits whole trials (driver plus workers) into what is left, and refuses a trial that can never fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlscale.config import PipelineConfig
from mlscale.errors import ConfigError


@dataclass(frozen=True)
class TrialPlan:
    driver: dict[str, float]
    """What Tune reserves for the trial's own process."""
    workers: dict[str, float]
    """What the trial's Ray Train workers reserve together (empty when the trial trains in its own process)."""
    max_concurrent: int

    @property
    def per_trial(self) -> dict[str, float]:
        keys = set(self.driver) | set(self.workers)
        return {key: self.driver.get(key, 0.0) + self.workers.get(key, 0.0) for key in keys}


def trial_reservation(config: PipelineConfig) -> tuple[dict[str, float], dict[str, float]]:
    """What one search trial reserves: (its own process, its Ray Train workers together). A trial that trains
    in its own process reserves one worker's share there and no workers."""
    tune, train = config.tune, config.train
    gpu = "GPU" if train.use_gpu else None
    if tune.trial_workers == 0:
        return {"CPU": train.cpus_per_worker, **({gpu: train.gpus_per_worker} if gpu else {})}, {}
    workers = {"CPU": tune.trial_workers * train.cpus_per_worker,
               **({gpu: tune.trial_workers * train.gpus_per_worker} if gpu else {})}
    return {"CPU": tune.driver_cpus}, workers


def plan_trials(config: PipelineConfig, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial resources and the concurrency the free resources allow (capped by tune.max_concurrent_trials).

    `cluster` is what is free when the sweep starts: a Serve application or another job on the same cluster
    keeps what it holds, and counting it would starve the trials' data reads."""
    tune, train = config.tune, config.train
    driver, workers = trial_reservation(config)
    plan = TrialPlan(driver, workers, 1)
    free_cpus = cluster.get("CPU", 0.0) - tune.data_cpus
    fits = []
    for resource, amount in plan.per_trial.items():
        available = free_cpus if resource == "CPU" else cluster.get(resource, 0.0)
        fits.append(math.floor(available / amount + 1e-9) if amount > 0 else math.inf)
    concurrent = min(fits) if fits else 1
    if concurrent < 1:
        raise ConfigError(
            f"one trial needs {plan.per_trial} (tune.trial_workers={tune.trial_workers} x "
            f"train.cpus_per_worker={train.cpus_per_worker}, plus tune.driver_cpus={tune.driver_cpus}) but the "
            f"cluster has {dict(cluster)} free with tune.data_cpus={tune.data_cpus} kept for Ray Data: lower them or "
            f"add nodes"
        )
    if tune.max_concurrent_trials is not None:
        concurrent = min(concurrent, tune.max_concurrent_trials)
    return TrialPlan(driver, workers, int(min(concurrent, tune.num_trials)))
