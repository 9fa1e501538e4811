"""The per-worker training function run by Ray Train: sharded ingest, DDP, per-epoch checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from mlscale.models.networks import build_network
from mlscale.train.metrics import BinaryMetrics

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
BATCH_DTYPES = {"x_num": torch.float32, "x_cat": torch.int64, "label": torch.float32}


def _all_reduce(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all workers (identity when training on one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.from_numpy(values.astype(np.float64))
    dist.all_reduce(tensor)
    return tensor.numpy()


def _autocast(device: torch.device, use_bf16: bool) -> contextlib.AbstractContextManager:
    if use_bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_shard(model: nn.Module, shard: Any, batch_size: int, device: torch.device,
                   use_bf16: bool) -> dict[str, float]:
    """Validation metrics over this worker's shard, summed across workers."""
    model.eval()
    metrics = BinaryMetrics()
    with torch.inference_mode(), _autocast(device, use_bf16):
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=BATCH_DTYPES, device=device):
            scores = torch.sigmoid(model(batch["x_num"], batch["x_cat"]).float())
            metrics.update(scores.cpu().numpy(), batch["label"].cpu().numpy())
    packed = _all_reduce(np.concatenate([metrics.histograms.ravel(), [metrics.loss_sum, metrics.rows]]))
    metrics.histograms = packed[:-2].reshape(metrics.histograms.shape)
    metrics.loss_sum, metrics.rows = float(packed[-2]), int(packed[-1])
    return metrics.result("val")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker's loop. Resumes from Ray Train's latest checkpoint when the run restarts after a failure."""
    context = ray.train.get_context()
    torch.manual_seed(config["seed"])
    model = ray.train.torch.prepare_model(build_network(config["network_spec"]))
    device = ray.train.torch.get_device()
    use_bf16 = bool(config.get("use_bf16", True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    loss_fn = nn.BCEWithLogitsLoss()

    history: list[dict[str, float]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
            _unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = json.loads((Path(directory) / HISTORY_FILE).read_text())

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(len(history), config["epochs"]):
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        rows = 0
        for batch in train_shard.iter_torch_batches(
            batch_size=config["batch_size"], dtypes=BATCH_DTYPES, device=device,
            local_shuffle_buffer_size=config["batch_size"] * 8, local_shuffle_seed=config["seed"] + epoch,
        ):
            with _autocast(device, use_bf16):
                logits = model(batch["x_num"], batch["x_cat"])
            loss = loss_fn(logits.float(), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(batch["label"])
            rows += len(batch["label"])
        train_totals = _all_reduce(np.array([loss_sum.item(), rows], dtype=np.float64))
        metrics = {"epoch": epoch + 1, "train_loss": float(train_totals[0] / max(train_totals[1], 1))}
        metrics.update(evaluate_shard(model, val_shard, config["batch_size"] * 4, device, use_bf16))
        history.append(metrics)
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if context.get_world_rank() == 0:
                state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}
                torch.save(state, Path(directory) / STATE_FILE)
                (Path(directory) / HISTORY_FILE).write_text(json.dumps(history))
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved)
