"""The train stage: a Ray Train V2 TorchTrainer over the featurized splits, returning the best weights.

Scaling, failure handling and checkpoint retention come from the pipeline config. Checkpoints go to
`train.storage_uri` (a path or s3://), under the run's name: a rerun with the same name finds Ray Train's
checkpoint-manager snapshot there and resumes from the latest checkpoint instead of starting over. Without a
configured `train.run_name`, the name comes from the config and the data, so resubmitting an interrupted job resumes
it with no flags, while a run that finished is never resumed: the next one gets a fresh name.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray.data
import ray.train
import torch
from ray.train import DataConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mlscale.caching import cache_key
from mlscale.config import PipelineConfig
from mlscale.data.sources import resolve
from mlscale.errors import TrainingFailed
from mlscale.train.batches import fits_in_memory
from mlscale.train.loop import LOOP_KEY, LoopConfig, MlflowTarget, read_checkpoint, train_loop_per_worker
from mlscale.train.progress import Attempt, ProgressLog, repeated_steps


@dataclass
class TrainingOutcome:
    """What the trainer produced: the best evaluation's weights, its metrics, the whole curve, and the attempts."""

    state_dict: dict[str, torch.Tensor]
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    run_path: str
    run_name: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def repeated_steps(self) -> int:
        return repeated_steps(self.attempts)

    @property
    def early_stopped(self) -> bool:
        return bool(self.history and self.history[-1].get("early_stopped"))

    def summary_metrics(self) -> dict[str, float]:
        """Run-level numbers for MLflow: attempts, repeated work, where training ended."""
        return {"train_attempts": float(len(self.attempts)), "train_repeated_steps": float(self.repeated_steps),
                "train_steps": float(self.history[-1]["step"]) if self.history else 0.0,
                "train_early_stopped": float(self.early_stopped)}


def checkpoint_storage(config: PipelineConfig) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) where the run folders and their checkpoints live."""
    uri = config.train.storage_uri or str(config.storage.root_path / "train")
    return resolve(uri, config.data.object_store)


def resumable_run_name(config: PipelineConfig, data_key: str) -> str:
    """train.run_name, or `<name>-<config+data hash>-<n>` with n the first run of that hash not known to be finished."""
    if config.train.run_name:
        return config.train.run_name
    filesystem, root = checkpoint_storage(config)

    def finished(name: str) -> bool:
        attempts = ProgressLog(filesystem, f"{root}/{name}").attempts()
        return bool(attempts) and attempts[-1].finished

    return first_unfinished(f"{config.name}-{cache_key(config.fingerprint(), data_key)[:10]}", finished)


def first_unfinished(base: str, finished: Callable[[str], bool]) -> str:
    """`<base>-<n>` with n the first number whose run is not known to be finished: a rerun resumes an interrupted
    run, and never a finished one."""
    for number in itertools.count(1):
        if not finished(f"{base}-{number}"):
            return f"{base}-{number}"
    raise AssertionError("unreachable")


def loop_config(config: PipelineConfig, network_spec: dict[str, Any], train_rows: int,
                target_stats: tuple[float, float] | None, filesystem: pafs.FileSystem, run_dir: str,
                mlflow_run: MlflowTarget | None, extra_metrics: dict[str, float] | None = None) -> LoopConfig:
    """Everything the workers need (the filesystem object pickles its settings)."""
    settings = config.train
    metric, mode = config.metric
    mean, std = target_stats or (0.0, 1.0)
    return LoopConfig(
        network_spec=network_spec,
        task=config.data.task,
        target_mean=mean,
        target_std=std,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        steps_per_epoch=max(1, math.ceil(train_rows / settings.num_workers / settings.batch_size)),
        seed=settings.seed,
        optimizer=settings.optimizer,
        schedule=settings.schedule,
        grad_clip_norm=settings.grad_clip_norm,
        metric=metric,
        mode=mode,
        early_stopping=settings.early_stopping,
        every_n_steps=settings.checkpoint.every_n_steps,
        use_bf16=settings.bf16,
        cache_val_bytes=settings.cache_val_mb * 2**20,
        train_in_memory=fits_in_memory(math.ceil(train_rows / settings.num_workers), network_spec,
                                       settings.cache_train_mb),
        filesystem=filesystem,
        run_dir=run_dir,
        mlflow=mlflow_run,
        extra_metrics=extra_metrics or {},
    )


def make_trainer(config: PipelineConfig, train: ray.data.Dataset, val: ray.data.Dataset, network_spec: dict[str, Any],
                 run_name: str, target_stats: tuple[float, float] | None = None,
                 mlflow_run: MlflowTarget | None = None, callbacks: list[Any] | None = None,
                 extra_metrics: dict[str, float] | None = None) -> TorchTrainer:
    """The TorchTrainer for one run (a training job, or one trial of a search with Tune's report callback)."""
    settings = config.train
    filesystem, storage_path = checkpoint_storage(config)
    metric, mode = config.metric
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # a fixed order per shard: same seed, same batches, same metrics
    loop = loop_config(config, network_spec, train.count(), target_stats, filesystem, f"{storage_path}/{run_name}",
                       mlflow_run, extra_metrics)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={LOOP_KEY: loop},
        torch_config=TorchConfig(),  # gloo on CPU, NCCL when use_gpu
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker,
                                  **({"GPU": settings.gpus_per_worker} if settings.use_gpu else {})},
            placement_strategy=settings.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.checkpoint.keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode,
            ),
            callbacks=callbacks or [],
        ),
        datasets={"train": train, "val": val},
        dataset_config=DataConfig(execution_options=ingest, enable_shard_locality=False),
    )


def run_training(config: PipelineConfig, train: ray.data.Dataset, val: ray.data.Dataset,
                 network_spec: dict[str, Any], run_name: str | None = None,
                 target_stats: tuple[float, float] | None = None,
                 mlflow_run: MlflowTarget | None = None) -> TrainingOutcome:
    """Fit with Ray Train; rerunning with the same run_name resumes from its latest checkpoint.

    mlflow_run makes rank 0 log every evaluation to that run as training goes.
    """
    run_name = run_name or f"{config.name}-{uuid.uuid4().hex[:8]}"
    filesystem, storage_path = checkpoint_storage(config)
    progress = ProgressLog(filesystem, f"{storage_path}/{run_name}")
    metric, mode = config.metric
    try:
        result = make_trainer(config, train, val, network_spec, run_name, target_stats, mlflow_run).fit()
    except ray.train.TrainingFailedError as error:
        attempts = len(progress.attempts())
        raise TrainingFailed(
            f"training run {run_name} failed after {attempts} attempt(s), more than train.max_failures="
            f"{config.train.max_failures} allows; its checkpoints stay under {storage_path}/{run_name} and a rerun "
            f"with train.run_name={run_name} resumes from the last one. Cause: {error}") from error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    best = result.get_best_checkpoint(metric=metric, mode=mode) or result.checkpoint
    state, best_history = read_checkpoint(best)
    _, history = read_checkpoint(result.checkpoint)
    return TrainingOutcome(state_dict=state["model"], best_metrics=best_history[-1], history=history,
                           run_path=result.path, run_name=run_name, attempts=progress.attempts())
