"""What Ray Train costs: samples/s of mlscale's Ray Train loop (1 and 2 workers) vs a plain PyTorch loop.

All runs train the same network (a residual MLP, the `resmlp` family) with the same optimizer, schedule, gradient
clipping and batch size on the same featurized data: the real 2013 flights (a 40% deterministic sample by default),
prepared and featurized by mlscale and cached as parquet. The plain loop is what a person would write by hand: the
parquet read into tensors once, a shuffled index per epoch, one process, PyTorch's default threads. The Ray Train runs
go through `mlscale.train.trainer.run_training` unchanged: Ray Data shards (held in memory by each worker under
`train.cache_train_mb`, as here; streamed by `iter_torch_batches` when larger), DDP (gloo), per-epoch validation
and checkpoints. Rates are steady state (the last epoch; the first pays the start of
the data pipeline), measured inside the loop from wall time between evaluations; the table also shows each run's
whole wall time.

The headline is interleaved: plain, Ray, plain, Ray, ..., plain (`--repeats` Ray runs, one more plain run); each Ray
run is compared with the mean of the plain runs just before and after it, and the headline is the median of those
ratios, so the drift of a shared VM over minutes (10-30% here) does not decide it. While the Ray runs train, a
sampler records the cores every Ray process uses beside the training worker (steady state: windows where the
worker is busy). A 2-worker run and a Ray Data ingest-only run (the shard iterated without training: the rate Ray
Data can feed a trainer) follow once.

    python benchmarks/train_throughput.py                  # ~9 minutes on 2 cores
    python benchmarks/train_throughput.py --gpu            # on a GPU machine: bf16, one worker per GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import psutil  # noqa: E402
import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from plain_torch import load_tensors, train_epochs  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from mlscale.config import PipelineConfig, load_config  # noqa: E402
from mlscale.data.prepare import prepare  # noqa: E402
from mlscale.models.networks import build_network, spec_for_features  # noqa: E402
from mlscale.stages.common import start  # noqa: E402
from mlscale.train.batches import BATCH_DTYPES  # noqa: E402
from mlscale.train.inputs import training_data  # noqa: E402
from mlscale.train.trainer import run_training  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MODEL = {"family": "resmlp", "width": 256, "blocks": 4, "dropout": 0.1}


def benchmark_config(storage: Path, workers: int, epochs: int, batch_size: int, gpu: bool,
                     sample_fraction: float = 1.0) -> PipelineConfig:
    cpus = os.cpu_count() or 2
    return load_config(REPO / "jobs" / "configs" / "flights.yaml", {
        "storage.root": str(storage),
        "data.sample_fraction": sample_fraction,
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
    """The hand-written baseline (plain_torch.py): tensors in memory, a shuffled index per epoch, same optimizer."""
    device = torch.device("cuda" if config.train.use_gpu else "cpu")
    train = load_tensors(train_dir, device)
    began = time.perf_counter()
    rates = [rate for _, rate in train_epochs(config, spec, train)]
    return {"samples_per_s": rates[-1], "first_epoch_samples_per_s": rates[0], "threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - began, "rows": len(train)}


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


ROLES = ("RayTrainWorker", "SplitCoordinator", "TrainController", "DashboardAgent", "dashboard", "log_monitor",
         "raylet", "gcs_server", "PlacementGroupCleaner", "_StatsActor", "PreemptionWatcher")


def cpu_seconds_by_process() -> dict[int, tuple[str, float]]:
    """(role, CPU seconds so far) of every process of the embedded Ray: this process and its descendants."""
    root = psutil.Process()
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = "driver" if process.pid == root.pid else next((r for r in ROLES if r in command), "other Ray workers")
        found[process.pid] = (role, times.user + times.system)
    return found


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two snapshots, for processes alive at the second one (the training workers of
    a finished run have exited by then and are not in it: this is what runs beside them)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used[role] = used.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return used


def cpu_used_during(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """cpu_by_role for the report: sorted by role, to a tenth of a second."""
    return {role: round(seconds, 1) for role, seconds in sorted(cpu_by_role(before, after).items())}


class SteadyStateCores:
    """Cores each Ray process role uses while a training worker is busy: the cost beside training, start-up and
    teardown excluded (sampled every `interval_s`; a window counts when the workers used more than one core)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.windows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyStateCores:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        before, at = cpu_seconds_by_process(), time.perf_counter()
        while not self._stop.wait(self.interval_s):
            after, now = cpu_seconds_by_process(), time.perf_counter()
            used = {role: seconds / (now - at) for role, seconds in cpu_by_role(before, after).items()}
            if used.get("RayTrainWorker", 0.0) > 1.0:
                self.windows.append(used)
            before, at = after, now

    def median(self) -> dict[str, float]:
        roles = sorted({role for window in self.windows for role in window})
        return {role: round(statistics.median(w.get(role, 0.0) for w in self.windows), 3) for role in roles}


def ray_train(config: PipelineConfig, data: Any, spec: dict[str, Any]) -> dict[str, Any]:
    began, cpu_before = time.perf_counter(), cpu_seconds_by_process()
    with SteadyStateCores() as cores:
        outcome = run_training(config, data.train, data.val, spec,
                               f"bench-{config.train.num_workers}w-{time.time_ns()}")
    cpu_after = cpu_seconds_by_process()
    last = outcome.history[-1]
    return {"samples_per_s": last["train_samples_per_s"], "first_epoch_samples_per_s":
            outcome.history[0]["train_samples_per_s"], "data_wait_fraction": last["data_wait_fraction"],
            "val_auc": last["val_auc"], "wall_s": time.perf_counter() - began,
            "cpu_seconds_beside_training": cpu_used_during(cpu_before, cpu_after),
            "steady_state_cores": cores.median()}


def ingest(config: PipelineConfig, data: Any) -> dict[str, float]:
    trainer = TorchTrainer(
        ingest_only_loop, train_loop_config={"epochs": config.train.epochs, "batch_size": config.train.batch_size},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"bench-ingest-{time.time():.0f}",
                                       storage_path=str(config.storage.root_path / "train")),
        datasets={"train": data.train},
    )
    return dict(trainer.fit().metrics)


def interleaved(one: PipelineConfig, data: Any, spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    """plain, Ray, plain, ..., Ray, plain: each Ray run against the mean of its two neighbours; the median ratio."""
    train_dir = data.cache.directory / "train"
    plain = [plain_loop(one, train_dir, spec, one.train.epochs)]
    print(f"plain 1/{repeats + 1}: {plain[-1]['samples_per_s']:,.0f} samples/s", flush=True)
    ray_runs, ratios = [], []
    for repeat in range(repeats):
        ray_runs.append(ray_train(one, data, spec))
        plain.append(plain_loop(one, train_dir, spec, one.train.epochs))
        reference = (plain[-2]["samples_per_s"] + plain[-1]["samples_per_s"]) / 2
        ratios.append(ray_runs[-1]["samples_per_s"] / reference)
        print(f"Ray 1 worker {repeat + 1}/{repeats}: {ray_runs[-1]['samples_per_s']:,.0f} samples/s; plain "
              f"{repeat + 2}/{repeats + 1}: {plain[-1]['samples_per_s']:,.0f}; ratio {ratios[-1]:.3f}", flush=True)
    return {"plain": plain, "ray": ray_runs, "ratios": ratios}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (its own numbers, not a blend of several runs)."""
    return sorted(runs, key=lambda run: run["samples_per_s"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved Ray Train 1-worker runs")
    parser.add_argument("--sample-fraction", type=float, default=0.4, help="of the 2013 flights")
    parser.add_argument("--gpu", action="store_true", help="use_gpu, bf16 autocast, one worker per visible GPU")
    parser.add_argument("--storage", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    storage = args.storage or Path(tempfile.mkdtemp(prefix="mlscale-train-bench-"))
    gpus = torch.cuda.device_count() if args.gpu else 0
    one = benchmark_config(storage, 1, args.epochs, args.batch_size, args.gpu, args.sample_fraction)
    start(one)
    prepared = prepare(one)
    data = training_data(one, prepared)
    spec = spec_for_features(one.train.model, data.features)
    parameters = sum(p.numel() for p in build_network(spec).parameters())
    print(f"data: {data.train.count():,} training rows; {MODEL['family']} with {parameters:,} parameters", flush=True)

    runs = interleaved(one, data, spec, args.repeats)
    results: dict[str, dict[str, Any]] = {"plain PyTorch, 1 process": median_run(runs["plain"]),
                                          "Ray Train, 1 worker": median_run(runs["ray"])}
    workers = max(2, gpus)
    results[f"Ray Train, {workers} workers"] = ray_train(
        benchmark_config(storage, workers, args.epochs, args.batch_size, args.gpu, args.sample_fraction), data, spec)
    print(f"{workers} workers:", results[f"Ray Train, {workers} workers"], flush=True)
    results["Ray Data ingest only, 1 worker"] = ingest(one, data)
    print("ingest:", results["Ray Data ingest only, 1 worker"], flush=True)

    plain = statistics.median(run["samples_per_s"] for run in runs["plain"])
    summary = {
        "ray_train_1w_vs_plain": statistics.median(runs["ratios"]),
        "ray_train_1w_vs_plain_each": runs["ratios"],
        "plain_samples_per_s_each": [run["samples_per_s"] for run in runs["plain"]],
        "ray_train_1w_samples_per_s_each": [run["samples_per_s"] for run in runs["ray"]],
        "ray_train_2w_vs_plain": results[f"Ray Train, {workers} workers"]["samples_per_s"] / plain,
        "ingest_vs_consumption": results["Ray Data ingest only, 1 worker"]["samples_per_s"] / plain,
        "steady_state_cores_beside_worker": median_run(runs["ray"])["steady_state_cores"],
        "runs": results,
        "model": MODEL,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "sample_fraction": args.sample_fraction,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "ray": ray.__version__, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if gpus else None},
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(summary, indent=2))

    print(f"\n{'run (median of the interleaved runs)':<38}{'samples/s (last epoch)':>24}{'first epoch':>14}"
          f"{'wall s':>9}")
    for name, run in results.items():
        print(f"{name:<38}{run['samples_per_s']:>24,.0f}{run['first_epoch_samples_per_s']:>14,.0f}"
              f"{run.get('wall_s', float('nan')):>9.1f}")
    beside = {role: cores for role, cores in summary["steady_state_cores_beside_worker"].items()
              if role != "RayTrainWorker" and cores >= 0.005}
    print(f"cores used beside the training worker while it trains (median window): {beside} "
          f"= {sum(beside.values()):.2f} in all")
    print(f"ingest (Ray Data, 1 worker) / consumption (plain loop): {summary['ingest_vs_consumption']:.2f}x")
    print(f"Ray Train 2 workers / plain: {summary['ray_train_2w_vs_plain']:.2f}x")
    print("Ray Train 1 worker / plain, each interleaved pair: "
          + ", ".join(f"{ratio:.3f}" for ratio in runs["ratios"]))
    print(f"Ray Train 1 worker / plain PyTorch (samples/s, median of {args.repeats} interleaved, target >= 0.95): "
          f"{summary['ray_train_1w_vs_plain']:.2f}x")


if __name__ == "__main__":
    main()
