"""The hand-written PyTorch the benchmarks compare mlscale with: no Ray, one process, the data in memory.

What a person would write without a framework: the featurized parquet read into tensors once, a shuffled index per
epoch, the same network, optimizer, schedule and gradient clipping as mlscale's loop (built by the same functions),
PyTorch's default threads. Shared by train_throughput.py (its speed) and search_efficiency.py (Optuna alone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from mlscale.config import PipelineConfig
from mlscale.models.networks import build_network
from mlscale.train.metrics import metrics_for
from mlscale.train.optim import build_optimizer, build_scheduler


@dataclass
class Tensors:
    x_num: torch.Tensor
    x_cat: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return len(self.label)


def load_tensors(directory: Path, device: torch.device) -> Tensors:
    """A featurized split (mlscale's feature cache: x_num, x_cat, label) as tensors on `device`."""
    table = pq.read_table(directory)
    return Tensors(
        torch.tensor(np.stack(table.column("x_num").to_numpy(zero_copy_only=False)), dtype=torch.float32).to(device),
        torch.tensor(np.stack(table.column("x_cat").to_numpy(zero_copy_only=False)), dtype=torch.int64).to(device),
        torch.tensor(table.column("label").to_numpy(), dtype=torch.float32).to(device),
    )


def train_epochs(config: PipelineConfig, spec: dict[str, Any], train: Tensors,
                 seed: int = 0) -> Iterator[tuple[nn.Module, float]]:
    """Train `config.train.epochs` epochs of binary classification; yields (model, samples/s of that epoch) after
    each, so a caller can evaluate, report or stop between epochs."""
    settings = config.train
    device = train.label.device
    torch.manual_seed(seed)
    model = build_network(spec).to(device)
    rows, batch = len(train), settings.batch_size
    steps_per_epoch = math.ceil(rows / batch)
    optimizer = build_optimizer(model.parameters(), settings.optimizer)
    scheduler = build_scheduler(optimizer, settings.epochs * steps_per_epoch, steps_per_epoch, settings.schedule)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(settings.epochs):
        began = time.perf_counter()
        model.train()
        order = torch.randperm(rows, device=device)
        for first in range(0, rows, batch):
            index = order[first:first + batch]
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                output = model(train.x_num[index], train.x_cat[index])
            loss = loss_fn(output.float(), train.label[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            optimizer.step()
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        yield model, rows / (time.perf_counter() - began)


def val_auc(model: nn.Module, val: Tensors, batch: int = 4096) -> float:
    """Validation AUC with mlscale's own metric code, so both sides of a comparison are scored the same way."""
    metrics = metrics_for("classification")
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(val), batch):
            scores = torch.sigmoid(model(val.x_num[first:first + batch], val.x_cat[first:first + batch]).float())
            metrics.update(scores.cpu().numpy(), val.label[first:first + batch].cpu().numpy())
    model.train()
    return metrics.result("val")["val_auc"]
