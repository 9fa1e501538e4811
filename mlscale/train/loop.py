"""The per-worker training function run by Ray Train: sharded ingest, DDP, evaluation, checkpoints and resume.

Everything a run needs arrives in one frozen LoopConfig (built by trainer.loop_config); where it runs comes in a
`Session`: a Ray Train worker (the default), or a Ray Tune trial's own process for searches over models too small
to be worth a worker group. Determinism on CPU: the model is initialised from the seed, each shard is read in a
fixed order with a seeded shuffle per epoch (batches.py), and the dropout generator is reseeded from (seed, rank,
global step) after every checkpoint, so a run resumed from a checkpoint at step s continues exactly as an
uninterrupted run would from step s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from mlscale.config import EarlyStoppingConfig, OptimizerConfig, ScheduleConfig
from mlscale.logs import configure_logging
from mlscale.models.networks import build_network
from mlscale.train.batches import InMemoryShard, StreamedShard, ValidationBatches
from mlscale.train.metrics import metrics_for, metrics_from_vector
from mlscale.train.optim import EarlyStopping, build_optimizer, build_scheduler
from mlscale.train.progress import ProgressLog

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
PROGRESS_EVERY_STEPS = 10
PROGRESS_MIN_INTERVAL_S = 0.5  # fast GPU steps with checkpoints on S3 would otherwise be a PUT every few ms


@dataclass(frozen=True)
class MlflowTarget:
    """The MLflow run rank 0 logs each evaluation to."""

    tracking_uri: str
    run_id: str


@dataclass(frozen=True)
class LoopConfig:
    """Everything one training loop needs, typed and immutable; it travels to every worker (and trial) by pickle."""

    network_spec: dict[str, Any]
    task: Literal["classification", "regression"]
    epochs: int
    batch_size: int
    steps_per_epoch: int
    seed: int
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    early_stopping: EarlyStoppingConfig
    grad_clip_norm: float | None
    metric: str
    mode: Literal["max", "min"]
    every_n_steps: int | None
    use_bf16: bool
    cache_val_bytes: int
    train_in_memory: bool
    filesystem: pafs.FileSystem
    run_dir: str
    target_mean: float = 0.0
    target_std: float = 1.0
    mlflow: MlflowTarget | None = None
    extra_metrics: Mapping[str, float] = field(default_factory=dict)


def _all_reduce(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all workers (identity when training on one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
    dist.all_reduce(tensor)
    return tensor.numpy()


def _autocast(device: torch.device, use_bf16: bool) -> contextlib.AbstractContextManager:
    if use_bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the network as .module
    assert isinstance(inner, nn.Module)
    return inner


class Session:
    """The Ray Train worker context the loop runs in: rank, device, data shards, last checkpoint, report."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.distributed = context.get_world_size() > 1  # prepare_model wraps the network in DDP
        self.device = ray.train.torch.get_device()

    def checkpoint(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint()

    def prepare_model(self, network: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(network)  # DDP over gloo/NCCL, moved to the device

    def shard(self, name: str) -> Any:
        return ray.train.get_dataset_shard(name)

    def report(self, metrics: dict[str, float], checkpoint: ray.train.Checkpoint | None) -> None:
        ray.train.report(metrics, checkpoint=checkpoint)


class TrialSession(Session):
    """A Ray Tune trial that trains in its own process: rank 0 of 1, reports and checkpoints through Tune, which
    keeps the trial's checkpoints and hands the last one back when a restored sweep restarts the trial."""

    def __init__(self, datasets: dict[str, Any], use_gpu: bool = False) -> None:
        self.rank = 0
        self.distributed = False
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.datasets = datasets

    def checkpoint(self) -> ray.train.Checkpoint | None:
        import ray.tune

        return ray.tune.get_checkpoint()

    def prepare_model(self, network: nn.Module) -> nn.Module:
        return network.to(self.device)

    def shard(self, name: str) -> Any:
        return self.datasets[name]

    def report(self, metrics: dict[str, float], checkpoint: ray.train.Checkpoint | None) -> None:
        import ray.tune

        kept = ray.tune.Checkpoint.from_directory(checkpoint.path) if checkpoint is not None else None
        ray.tune.report(metrics, checkpoint=kept)


def _reseed(seed: int, rank: int, step: int) -> None:
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


class Target:
    """Turns the label into what the loss sees and the network's output into a prediction, per task."""

    def __init__(self, config: LoopConfig) -> None:
        self.task = config.task
        self.mean, self.std = config.target_mean, config.target_std
        self.loss = nn.BCEWithLogitsLoss() if self.task == "classification" else nn.MSELoss()

    def training_loss(self, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = label if self.task == "classification" else (label - self.mean) / self.std
        return self.loss(output.float(), target)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        output = output.float()
        return torch.sigmoid(output) if self.task == "classification" else output * self.std + self.mean


def evaluate_shard(model: nn.Module, batches: Any, target: Target, device: torch.device,
                   use_bf16: bool) -> dict[str, float]:
    """Validation metrics over this worker's shard, summed across workers."""
    model.eval()
    metrics = metrics_for(target.task)
    with torch.inference_mode(), _autocast(device, use_bf16):
        for batch in batches:
            predictions = target.predict(model(batch["x_num"], batch["x_cat"]))
            metrics.update(predictions.cpu().numpy(), batch["label"].cpu().numpy())
    model.train()
    return metrics_from_vector(target.task, _all_reduce(metrics.to_vector())).result("val")


class _MlflowLogger:
    """Rank 0 logs each evaluation to the run as it happens, asynchronously: never one blocking call per step.

    MLflow down never fails training: an evaluation that could not be logged is kept and tried again at the next
    flush (the end of the loop); what still fails then is reported in the worker's log and stays in the run's
    history, which Ray Train returns to the driver.
    """

    def __init__(self, target: MlflowTarget | None) -> None:
        self.run_id = target.run_id if target else None
        self.pending: list[tuple[list[Any], Any]] = []  # (metrics, the asynchronous operation logging them)
        self.unlogged: list[list[Any]] = []
        if target is not None:
            from mlscale.tracking import tracking_client

            self.client = tracking_client(target.tracking_uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items() if key != "step"]
        try:
            self.pending.append((batch, self.client.log_batch(self.run_id, metrics=batch, synchronous=False)))
        except Exception:  # noqa: BLE001 - the tracking server is unreachable: kept for the flush
            self.unlogged.append(batch)

    def flush(self) -> None:
        if not self.run_id:
            return
        for batch, operation in self.pending:
            try:
                operation.wait()
            except Exception:  # noqa: BLE001 - kept, tried once more below
                self.unlogged.append(batch)
        self.pending.clear()
        still = []
        for batch in self.unlogged:
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as error:  # noqa: BLE001 - never fail a finished training for its metrics
                still.append(batch)
                last = error
        self.unlogged = still
        if still:
            log.warning("%d evaluations could not be logged to MLflow (%s); they stay in the run's history",
                        len(still), last)


def read_checkpoint(checkpoint: ray.train.Checkpoint) -> tuple[dict[str, Any], list[dict[str, float]]]:
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        history = json.loads((Path(directory) / HISTORY_FILE).read_text())
    return state, history


LOOP_KEY = "loop"  # Ray Train passes a dict to the worker function: the typed config travels under this key


def train_loop_per_worker(train_loop_config: dict[str, LoopConfig]) -> None:
    """One Ray Train worker's loop. Resumes from the latest checkpoint after a failure or when the job is rerun."""
    run_loop(train_loop_config[LOOP_KEY], Session())


def warm_imports(distributed: bool, logs_to_mlflow: bool) -> threading.Thread:
    """Import, in the background, what the loop needs seconds later: DistributedDataParallel's constructor imports
    torch._dynamo (1.4 s alone, 3 s on a busy 2-core node) and rank 0's MLflow client imports mlflow (~1.7 s).
    A fresh worker process pays both once per run; behind the shard's first read they cost nothing."""
    def run() -> None:
        if distributed:
            import torch._dynamo  # noqa: F401 - DistributedDataParallel.__init__ reads torch._dynamo.utils
        if logs_to_mlflow:
            import mlscale.tracking  # noqa: F401

    thread = threading.Thread(target=run, name="mlscale-warm-imports", daemon=True)
    thread.start()
    return thread


def run_loop(config: LoopConfig, session: Session) -> None:
    """The training loop wherever it runs; `config.extra_metrics` (e.g. a trial's model cost) joins each report."""
    configure_logging()  # a worker process: its lines reach the driver's (or the job's) log through Ray
    warm_imports(session.distributed, config.mlflow is not None and session.rank == 0)
    TrainingLoop(config, session).run()


class TrainingLoop:
    """One worker's training: restore from the session's checkpoint (or start), then epochs of steps with an
    evaluation and a checkpoint at every `every_n_steps` and at each epoch's end, until the epochs are done or early
    stopping says so. The order of seeding, batches and steps is what makes a resumed run bit-identical."""

    def __init__(self, config: LoopConfig, session: Session) -> None:
        self.config, self.session = config, session
        self.rank, self.device = session.rank, session.device
        self.target = Target(config)
        self.steps_per_epoch = config.steps_per_epoch
        torch.manual_seed(config.seed)
        network = build_network(config.network_spec)
        self.history: list[dict[str, float]] = []
        self.position = {"step": 0, "epoch": 0, "step_in_epoch": 0}
        self.stopper = EarlyStopping(config.mode, **config.early_stopping.model_dump())
        state = None
        checkpoint = session.checkpoint()
        if checkpoint is not None:
            state, self.history = read_checkpoint(checkpoint)
            network.load_state_dict(state["model"])
            self.position = state["position"]
            self.stopper = EarlyStopping(config.mode, **config.early_stopping.model_dump(), **state["early_stopping"])
        # the shards first: reading the train shard waits seconds for Ray Data's split coordinator, time in which
        # warm_imports (started with the worker) imports what DDP and MLflow need below
        self.train_batches = (
            InMemoryShard(session.shard("train"), config.batch_size, self.device, config.seed, self.rank)
            if config.train_in_memory else
            StreamedShard(session.shard("train"), config.batch_size, self.device, config.seed))
        self.val_batches = ValidationBatches(session.shard("val"), config.batch_size * 4, self.device,
                                             config.cache_val_bytes)
        self.model = session.prepare_model(network)
        self.optimizer = build_optimizer(self.model.parameters(), config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config.epochs * self.steps_per_epoch, self.steps_per_epoch,
                                         config.schedule)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        _reseed(config.seed, self.rank, self.position["step"])

        self.progress = (ProgressLog(config.filesystem, config.run_dir).start(self.position["step"])
                         if self.rank == 0 else None)
        self.logger = _MlflowLogger(config.mlflow if self.rank == 0 else None)
        self.totals = np.zeros(2)  # loss sum, rows since the last evaluation
        self.timing = {"wait": 0.0, "compute": 0.0, "since": time.perf_counter()}
        self.reported = False  # this attempt reported at least once

    def run(self) -> None:
        stopped = self.history[-1]["early_stopped"] > 0 if self.history else False
        while self.position["epoch"] < self.config.epochs and not stopped:
            stopped = self.epoch()
            if not stopped:
                stopped = self.evaluate_and_checkpoint(epoch_done=True)
        if not self.reported and self.history:  # restored after it had already finished: say where it ended
            self.session.report(self.history[-1], None)
        self.logger.flush()
        if self.progress is not None:
            self.progress.step(self.position["step"], finished=True)

    def epoch(self) -> bool:
        """The current epoch's remaining steps (resuming mid-epoch: the same seeded order, minus what was done);
        True when early stopping ended it at a mid-epoch evaluation."""
        skip = self.position["step_in_epoch"]
        batches = self.train_batches.epoch(self.position["epoch"])
        index = 0
        every = self.config.every_n_steps
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return False
            index += 1
            if index <= skip:
                continue
            computing = time.perf_counter()
            self.timing["wait"] += computing - began
            self.step(batch)
            self.timing["compute"] += time.perf_counter() - computing
            progress = self.progress
            if (progress is not None and self.position["step"] % PROGRESS_EVERY_STEPS == 0
                    and time.monotonic() - progress.written_at >= PROGRESS_MIN_INTERVAL_S):
                progress.step(self.position["step"])
            if every and self.position["step"] % every == 0 and self.evaluate_and_checkpoint(epoch_done=False):
                return True

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimizer step on one batch."""
        with _autocast(self.device, self.config.use_bf16):
            output = self.model(batch["x_num"], batch["x_cat"])
        loss = self.target.training_loss(output, batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.totals += [float(loss.detach()) * len(batch["label"]), len(batch["label"])]
        self.position["step"] += 1
        self.position["step_in_epoch"] += 1

    def metrics(self, epoch_done: bool) -> dict[str, float]:
        """Training throughput and loss since the last evaluation, then validation, all reduced across workers."""
        timing, position = self.timing, self.position
        wall = time.perf_counter() - timing["since"]
        reduced = _all_reduce(np.array([*self.totals, timing["wait"], timing["compute"], wall]))
        workers = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        metrics: dict[str, float] = {
            "step": position["step"],
            "epoch": position["epoch"] + (1.0 if epoch_done else position["step_in_epoch"] / self.steps_per_epoch),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "train_loss": float(reduced[0] / max(reduced[1], 1)),
            "train_samples_per_s": float(reduced[1] / max(reduced[4] / workers, 1e-9)),
            "data_wait_fraction": float(reduced[2] / max(reduced[2] + reduced[3], 1e-9)),
        }
        metrics.update(evaluate_shard(self.model, self.val_batches, self.target, self.device, self.config.use_bf16))
        metrics.update(self.config.extra_metrics)
        return metrics

    def evaluate_and_checkpoint(self, epoch_done: bool) -> bool:
        """Validation metrics, a checkpoint (rank 0 writes it), and the early-stopping verdict (same on all ranks)."""
        config, position = self.config, self.position
        metrics = self.metrics(epoch_done)
        stop = self.stopper.update(metrics[config.metric])
        metrics["early_stopped"] = float(stop)
        self.history.append(metrics)
        self.totals[:] = 0
        if epoch_done:
            position.update(epoch=position["epoch"] + 1, step_in_epoch=0)
        self.report(metrics)
        if self.rank == 0:
            log.info("step %d, epoch %.2f: train_loss %.4f, %s %.5f, %.0f samples/s%s", position["step"],
                     metrics["epoch"], metrics["train_loss"], config.metric, metrics[config.metric],
                     metrics["train_samples_per_s"], " (early stop)" if stop else "")
        self.logger.log(metrics, position["step"])
        if self.progress is not None:
            self.progress.step(position["step"])
        _reseed(config.seed, self.rank, position["step"])
        self.timing.update(wait=0.0, compute=0.0, since=time.perf_counter())
        return stop

    def report(self, metrics: dict[str, float]) -> None:
        """The evaluation to Ray Train (or Tune), with the checkpoint rank 0 writes: weights, optimizer, schedule,
        position and early-stopping state, and the history so far."""
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if self.rank == 0:
                torch.save({"model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(), "position": dict(self.position),
                            "early_stopping": self.stopper.state()}, Path(directory) / STATE_FILE)
                (Path(directory) / HISTORY_FILE).write_text(json.dumps(self.history))
                saved = ray.train.Checkpoint.from_directory(directory)
            self.session.report(metrics, saved)
        self.reported = True
