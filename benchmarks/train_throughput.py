"""What Ray Train costs: samples/s of mlscale's Ray Train loop (1 and 2 workers) vs a plain PyTorch loop.

All runs train the same network (a residual MLP, the `resmlp` family) with the same optimizer, schedule, gradient
clipping and batch size on the same featurized data: the real 2013 flights, prepared and featurized by mlscale
(train split, ~250k rows) and cached as parquet. The plain loop is what a person would write by hand: the parquet
read into tensors once, a shuffled index per epoch, one process, PyTorch's default threads. The Ray Train runs go
through `mlscale.train.trainer.run_training` unchanged: Ray Data shards streamed by `iter_torch_batches`, DDP
(gloo), per-epoch validation and checkpoints. Rates are steady state (the last epoch; the first pays the start of
the data pipeline), measured inside the loop from wall time between evaluations; the table also shows each run's
whole wall time. A third Ray Train run iterates the shard without training: Ray Data's ingest rate, compared with
the plain loop's consumption rate.

    python benchmarks/train_throughput.py                  # ~5 minutes on 2 cores
    python benchmarks/train_throughput.py --gpu            # on a GPU machine: bf16, one worker per GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from mlscale.config import PipelineConfig, load_config  # noqa: E402
from mlscale.data.prepare import prepare  # noqa: E402
from mlscale.models.networks import build_network, spec_for_features  # noqa: E402
from mlscale.stages.common import start  # noqa: E402
from mlscale.train.inputs import training_data  # noqa: E402
from mlscale.train.loop import BATCH_DTYPES  # noqa: E402
from mlscale.train.optim import build_optimizer, build_scheduler  # noqa: E402
from mlscale.train.trainer import run_training  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MODEL = {"family": "resmlp", "width": 256, "blocks": 4, "dropout": 0.1}


def benchmark_config(storage: Path, workers: int, epochs: int, batch_size: int, gpu: bool) -> PipelineConfig:
    cpus = os.cpu_count() or 2
    return load_config(REPO / "jobs" / "configs" / "flights.yaml", {
        "storage.root": str(storage),
        "ray.num_cpus": cpus * 2,  # logical slots for Ray Data's tasks beside the training workers
        "train.num_workers": workers,
        "train.use_gpu": gpu,
        "train.cpus_per_worker": max(1, cpus // workers) if not gpu else 1,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.model": MODEL,
        "train.early_stopping.enabled": False,
        "train.max_failures": 0,
    })


def plain_loop(config: PipelineConfig, train_dir: Path, spec: dict[str, Any], epochs: int) -> dict[str, float]:
    """The hand-written baseline: tensors in memory, a shuffled index per epoch, the same optimizer and schedule."""
    table = pq.read_table(train_dir)
    x_num = torch.tensor(np.stack(table.column("x_num").to_numpy(zero_copy_only=False)), dtype=torch.float32)
    x_cat = torch.tensor(np.stack(table.column("x_cat").to_numpy(zero_copy_only=False)), dtype=torch.int64)
    label = torch.tensor(table.column("label").to_numpy(), dtype=torch.float32)
    device = torch.device("cuda" if config.train.use_gpu else "cpu")
    x_num, x_cat, label = x_num.to(device), x_cat.to(device), label.to(device)
    torch.manual_seed(0)
    model = build_network(spec).to(device)
    batch = config.train.batch_size
    rows = len(label)
    steps_per_epoch = math.ceil(rows / batch)
    optimizer = build_optimizer(model.parameters(), config.train.optimizer)
    scheduler = build_scheduler(optimizer, epochs * steps_per_epoch, steps_per_epoch,
                                config.train.schedule)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rates = []
    began = time.perf_counter()
    for _ in range(epochs):
        start_epoch = time.perf_counter()
        order = torch.randperm(rows, device=device)
        for first in range(0, rows, batch):
            index = order[first:first + batch]
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                output = model(x_num[index], x_cat[index])
            loss = loss_fn(output.float(), label[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip_norm)
            optimizer.step()
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(rows / (time.perf_counter() - start_epoch))
    return {"samples_per_s": rates[-1], "first_epoch_samples_per_s": rates[0], "threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - began, "rows": rows}


def ingest_only_loop(config: dict[str, Any]) -> None:
    """A Ray Train worker that only pulls batches from its shard: the rate Ray Data can feed a trainer."""
    shard = ray.train.get_dataset_shard("train")
    rates = []
    for _ in range(config["epochs"]):
        began, rows = time.perf_counter(), 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], dtypes=BATCH_DTYPES,
                                              local_shuffle_buffer_size=config["batch_size"] * 8):
            rows += len(batch["label"])
        rates.append(rows / (time.perf_counter() - began))
    with tempfile.TemporaryDirectory() as directory:  # Ray Train V2 keeps the metrics of checkpointed reports
        Path(directory, "rates.json").write_text(json.dumps(rates))
        ray.train.report({"samples_per_s": rates[-1], "first_epoch_samples_per_s": rates[0]},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def cpu_seconds_by_process() -> dict[int, tuple[str, float]]:
    """(role, CPU seconds so far) of every process of the embedded Ray: this process and its descendants."""
    roles = ("RayTrainWorker", "SplitCoordinator", "TrainController", "raylet", "gcs_server", "dashboard")
    root = psutil.Process()
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = "driver" if process.pid == root.pid else next((r for r in roles if r in command), "other Ray workers")
        found[process.pid] = (role, times.user + times.system)
    return found


def cpu_used_during(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two snapshots, for processes alive at the second one (the training workers of
    a finished run have exited by then and are not in it: this is what runs beside them)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used[role] = round(used.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1], 1)
    return dict(sorted(used.items()))


def ray_train(config: PipelineConfig, data: Any, spec: dict[str, Any]) -> dict[str, Any]:
    began, cpu_before = time.perf_counter(), cpu_seconds_by_process()
    outcome = run_training(config, data.train, data.val, spec, f"bench-{config.train.num_workers}w-{time.time():.0f}")
    cpu_after = cpu_seconds_by_process()
    last = outcome.history[-1]
    return {"samples_per_s": last["train_samples_per_s"], "first_epoch_samples_per_s":
            outcome.history[0]["train_samples_per_s"], "data_wait_fraction": last["data_wait_fraction"],
            "val_auc": last["val_auc"], "wall_s": time.perf_counter() - began,
            "cpu_seconds_beside_training": cpu_used_during(cpu_before, cpu_after)}


def ingest(config: PipelineConfig, data: Any) -> dict[str, float]:
    trainer = TorchTrainer(
        ingest_only_loop, train_loop_config={"epochs": config.train.epochs, "batch_size": config.train.batch_size},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"bench-ingest-{time.time():.0f}",
                                       storage_path=str(config.storage.root_path / "train")),
        datasets={"train": data.train},
    )
    return dict(trainer.fit().metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--gpu", action="store_true", help="use_gpu, bf16 autocast, one worker per visible GPU")
    parser.add_argument("--storage", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    storage = args.storage or Path(tempfile.mkdtemp(prefix="mlscale-train-bench-"))
    gpus = torch.cuda.device_count() if args.gpu else 0
    one = benchmark_config(storage, 1, args.epochs, args.batch_size, args.gpu)
    start(one)
    prepared = prepare(one)
    data = training_data(one, prepared)
    spec = spec_for_features(one.train.model, data.features)
    parameters = sum(p.numel() for p in build_network(spec).parameters())
    print(f"data: {data.train.count():,} training rows; {MODEL['family']} with {parameters:,} parameters", flush=True)

    results: dict[str, dict[str, float]] = {}
    plain_before = plain_loop(one, data.cache.directory / "train", spec, args.epochs)
    print("plain:", plain_before, flush=True)
    results["Ray Train, 1 worker"] = ray_train(one, data, spec)
    print("1 worker:", results["Ray Train, 1 worker"], flush=True)
    workers = max(2, gpus)
    results[f"Ray Train, {workers} workers"] = ray_train(
        benchmark_config(storage, workers, args.epochs, args.batch_size, args.gpu), data, spec)
    print(f"{workers} workers:", results[f"Ray Train, {workers} workers"], flush=True)
    results["Ray Data ingest only, 1 worker"] = ingest(one, data)
    print("ingest:", results["Ray Data ingest only, 1 worker"], flush=True)
    # The baseline runs before and after the Ray runs; their mean is the reference, so drift of the machine over
    # the benchmark (a 2-core VM varies by ~10% between minutes) does not favour either side.
    plain_after = plain_loop(one, data.cache.directory / "train", spec, args.epochs)
    print("plain again:", plain_after, flush=True)
    results = {"plain PyTorch, 1 process": {
        key: (plain_before[key] + plain_after[key]) / 2 for key in plain_before
    } | {"before_samples_per_s": plain_before["samples_per_s"], "after_samples_per_s": plain_after["samples_per_s"]},
        **results}

    plain = results["plain PyTorch, 1 process"]["samples_per_s"]
    summary = {
        "ray_train_1w_vs_plain": results["Ray Train, 1 worker"]["samples_per_s"] / plain,
        "ray_train_2w_vs_plain": results[f"Ray Train, {workers} workers"]["samples_per_s"] / plain,
        "ingest_vs_consumption": results["Ray Data ingest only, 1 worker"]["samples_per_s"] / plain,
        "runs": results,
        "model": MODEL,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "ray": ray.__version__, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if gpus else None},
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(summary, indent=2))

    print(f"\n{'run':<34}{'samples/s (last epoch)':>24}{'first epoch':>14}{'wall s':>9}")
    for name, run in results.items():
        print(f"{name:<34}{run['samples_per_s']:>24,.0f}{run['first_epoch_samples_per_s']:>14,.0f}"
              f"{run.get('wall_s', float('nan')):>9.1f}")
    for name, run in results.items():
        if "cpu_seconds_beside_training" in run:
            print(f"CPU seconds used beside the training workers during {name}: "
                  f"{run['cpu_seconds_beside_training']}")
    print(f"ingest (Ray Data, 1 worker) / consumption (plain loop): {summary['ingest_vs_consumption']:.2f}x")
    print(f"Ray Train 2 workers / plain: {summary['ray_train_2w_vs_plain']:.2f}x")
    print(f"Ray Train 1 worker / plain PyTorch (samples/s, target >= 0.95): {summary['ray_train_1w_vs_plain']:.2f}x")


if __name__ == "__main__":
    main()
