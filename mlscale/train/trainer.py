"""The train stage: a Ray Train V2 TorchTrainer over the featurized splits, returning the best weights."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.data
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer

from mlscale.config import PipelineConfig
from mlscale.train.loop import HISTORY_FILE, STATE_FILE, train_loop_per_worker


@dataclass
class TrainingOutcome:
    """What the trainer produced: the best epoch's weights, its metrics, and the whole curve."""

    state_dict: dict[str, torch.Tensor]
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    run_path: str


def _read_checkpoint(checkpoint: ray.train.Checkpoint) -> tuple[dict[str, Any], list[dict[str, float]]]:
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        history = json.loads((Path(directory) / HISTORY_FILE).read_text())
    return state, history


def run_training(config: PipelineConfig, train: ray.data.Dataset, val: ray.data.Dataset,
                 network_spec: dict[str, Any], run_name: str | None = None) -> TrainingOutcome:
    """Fit with Ray Train; rerunning with the same run_name resumes from its latest checkpoint."""
    settings = config.train
    run_name = run_name or f"{config.name}-{uuid.uuid4().hex[:8]}"
    resources = {"CPU": settings.cpus_per_worker}  # use_gpu adds one GPU per worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "network_spec": network_spec,
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "weight_decay": settings.weight_decay,
            "seed": settings.seed,
        },
        torch_config=TorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(config.storage.root_path / "train"),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.checkpoints_to_keep,
                checkpoint_score_attribute="val_auc",
                checkpoint_score_order="max",
            ),
        ),
        datasets={"train": train, "val": val},
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="val_auc", mode="max") or result.checkpoint
    if best is None:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    state, best_history = _read_checkpoint(best)
    _, history = _read_checkpoint(result.checkpoint) if result.checkpoint else (None, best_history)
    return TrainingOutcome(
        state_dict=state["model"],
        best_metrics=best_history[-1],
        history=history,
        run_path=result.path,
    )
