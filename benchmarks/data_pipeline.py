"""Scale proof for the data stages: validate -> fit -> transform -> write parquet, streaming, memory flat.

Runs the synthetic flights source at 1x, 4x and 16x a base size (and 64x with --full) through mlscale's prepare
stage (validation with quarantine, time split, parquet; the statistics the features are fitted on are gathered in the
same pass, as the prepare stage does) and its feature stage (the fit from those statistics, then the transform of
the train split to parquet), on an embedded Ray whose object store is far smaller than the largest run. A sampler
thread records the memory (PSS, so shared object-store pages count once) of every Ray process. In the same run, a
single-process baseline does the same work on the same rows with pyarrow/numpy and no Ray, in the same passes (the
train statistics gathered while it writes): it calls the same vectorized kernels (generate, validate, stats,
transform), so the ratio isolates what distributing the work costs per core. The 16x run and the baseline alternate
three times (the headline is the median pair's ratio), and Ray's task timeline splits each 16x stage's core-seconds
into the tasks' own work and where the cores sat idle.

    python benchmarks/data_pipeline.py            # 1x = 400k rows (~5 minutes on 2 cores)
    python benchmarks/data_pipeline.py --full     # and 64x (25.6M rows, 5.5 GB in Arrow; ~6 minutes more)
    python benchmarks/data_pipeline.py --ray-cpus 4   # 2 logical CPUs per core for Ray's tasks
    python benchmarks/data_pipeline.py --ray-intervals   # Ray Data's own scheduling intervals, not mlscale's
    python benchmarks/data_pipeline.py --base-rows 100000 --object-store-mb 80   # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from mlscale.cluster.connect import configure_data, set_process_env  # noqa: E402
from mlscale.config import PipelineConfig, RayConfig, load_config  # noqa: E402
from mlscale.data.prepare import SPLIT_COLUMN, prepare, schema_for, validate_and_split  # noqa: E402
from mlscale.data.synthetic import ROWS_PER_BLOCK, generate_table  # noqa: E402
from mlscale.data.validation import build_rules  # noqa: E402
from mlscale.features.cache import FeatureCache  # noqa: E402
from mlscale.features.featureset import FeatureSet, FitStatistics, batch_stats, transform_batch  # noqa: E402
from mlscale.features.stats import TableStats  # noqa: E402

SCALES = (1, 4, 16)
FULL_SCALES = (*SCALES, 64)
RESULTS = REPO / "benchmarks" / "results"


class MemorySampler:
    """Sums the PSS of this process and all its descendants (the embedded Ray: raylet, GCS, workers). Once a second:
    the kernel walks every page table for PSS, ~60 ms for the dozen processes of an embedded Ray, CPU taken from
    the run it measures (the single-process baseline's costs a few ms)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def total_pss() -> int:
        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def __enter__(self) -> MemorySampler:
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._began, self.total_pss()))
            self._stop.wait(self.interval_s)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(value for _, value in self.samples)


def spilled_bytes() -> int:
    """Bytes spilled from the object store since this Ray started (Ray's memory summary)."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(stats_only=True)
    match = re.search(r"Spilled ([\d.]+) MiB", text)
    return int(float(match.group(1)) * 2**20) if match else 0


@dataclass
class Run:
    name: str
    rows: int
    seconds: float
    cores: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    spilled_bytes: int = 0
    train_rows: int = 0
    memory_trace: list[tuple[float, int]] = field(default_factory=list)
    core_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    driver_cpu_seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_s_per_core(self) -> float:
        return self.rows_per_s / self.cores


def config_for(rows: int, root: Path, name: str) -> PipelineConfig:
    return load_config(REPO / "jobs" / "configs" / "flights.yaml", {
        "name": name, "storage.root": str(root), "tracking.uri": None,
        "data.source": "synthetic", "data.synthetic.rows": rows, "data.synthetic.seed": 11,
        "data.synthetic.bad_fraction": 0.01, "validation.unique": None,
    })


def run_mlscale(rows: int, label: str, root: Path, cores: int) -> Run:
    config = config_for(rows, root, f"scale-{rows}")
    shutil.rmtree(config.storage.root_path / "cache", ignore_errors=True)  # a repeat must not reuse the features
    windows: dict[str, tuple[float, float]] = {}
    with MemorySampler() as memory:
        began, driver_began = time.time(), time.process_time()
        prepared = prepare(config, force=True, train_summary=FitStatistics(config.features))
        windows["validate+split+write"] = (began, time.time())
        cache = FeatureCache.for_run(config, prepared)
        mark = time.time()
        features, _ = cache.fitted(config, prepared)
        windows["fit"] = (mark, time.time())
        mark = time.time()
        cache.transformed(config, prepared, features, "train")
        windows["transform+write"] = (mark, time.time())
        seconds = time.time() - began
        driver_cpu = time.process_time() - driver_began
    stages = {name: end - start for name, (start, end) in windows.items()}
    return Run(f"mlscale {label}", rows, seconds, cores, stages, memory.peak,
               spilled_bytes(), prepared.counts["train"], memory.samples, stage_windows=windows,
               driver_cpu_seconds=driver_cpu)


def where_core_seconds_go(run: Run, cores: int) -> dict[str, dict[str, float]]:
    """Each stage's cores x wall time, split by Ray's task timeline into the tasks' own work and each worker's idle
    time: before its first task (planning, file listing, worker start-up, the executor's ramp), between one task's
    end and its next one's start (the executor noticing and dispatching), and after its last task (the last wave,
    then committing the output); `idle_other` is cores no worker used."""
    import ray

    spans = [(event["tid"], event["ts"] / 1e6, (event["ts"] + event["dur"]) / 1e6) for event in ray.timeline()
             if event.get("ph") == "X" and event.get("cat", "").startswith("task::")
             and "->" in event["cat"] and "Write" in event["cat"]]  # the fused read->...->write tasks
    breakdown = {}
    for stage, (start, end) in run.stage_windows.items():
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for worker, began, ended in sorted(spans):
            if start <= began <= end:
                by_worker.setdefault(worker, []).append((began, ended))
        if not by_worker:
            continue
        work = sum(ended - began for spans_ in by_worker.values() for began, ended in spans_)
        parts = {
            "core_seconds": cores * (end - start),
            "tasks": float(sum(len(spans_) for spans_ in by_worker.values())),
            "task_work": work,
            "idle_before_first_task": sum(spans_[0][0] - start for spans_ in by_worker.values()),
            "idle_between_tasks": sum(spans_[i + 1][0] - spans_[i][1]
                                      for spans_ in by_worker.values() for i in range(len(spans_) - 1)),
            "idle_after_last_task": sum(end - spans_[-1][1] for spans_ in by_worker.values()),
        }
        parts["idle_other"] = parts["core_seconds"] - work - sum(
            value for key, value in parts.items() if key.startswith("idle"))
        breakdown[stage] = parts
    return breakdown


def run_baseline(rows: int, label: str, root: Path) -> Run:
    """The same work in one process: generate, validate+split, write (gathering the train statistics); fit from
    them; transform train, write."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    config = config_for(rows, root, "baseline")
    specs = schema_for(config)
    rules = build_rules(specs, config.validation)
    out = root / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    (out / "prepared").mkdir(parents=True)
    stages: dict[str, float] = {}
    with MemorySampler() as memory:
        began = time.perf_counter()
        writers: dict[str, pq.ParquetWriter] = {}
        merged: TableStats | None = None
        for start in range(0, rows, ROWS_PER_BLOCK):
            ids = np.arange(start, min(start + ROWS_PER_BLOCK, rows))
            table = generate_table(ids, config.data.synthetic.seed, config.data.synthetic.bad_fraction)
            checked = validate_and_split(table, specs, rules, config.split, config.data.time_column)
            for name in pc.unique(checked.column(SPLIT_COLUMN)).to_pylist():
                part = checked.filter(pc.equal(checked.column(SPLIT_COLUMN), name)).drop_columns([SPLIT_COLUMN])
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out / "prepared" / f"{name}.parquet", part.schema)
                writers[name].write_table(part)
                if name == "train":
                    stats = batch_stats(part, config.features)
                    merged = stats if merged is None else merged.merge(stats)
        for writer in writers.values():
            writer.close()
        stages["validate+split+write"] = time.perf_counter() - began
        mark = time.perf_counter()
        train = pq.ParquetFile(out / "prepared" / "train.parquet")
        assert merged is not None
        features = FeatureSet(config.features).fit_stats(merged)
        stages["fit"] = time.perf_counter() - mark
        mark = time.perf_counter()
        writer = None
        used = list(dict.fromkeys([*features.input_columns, config.data.label]))
        for batch in train.iter_batches(batch_size=ROWS_PER_BLOCK, columns=used):
            tensors = transform_batch(pa.Table.from_batches([batch]), features, config.data.label,
                                      config.data.label_threshold)
            table = pa.table({
                "x_num": pa.FixedSizeListArray.from_arrays(tensors["x_num"].ravel(), tensors["x_num"].shape[1]),
                "x_cat": pa.FixedSizeListArray.from_arrays(tensors["x_cat"].ravel(), tensors["x_cat"].shape[1]),
                "label": tensors["label"],
            })
            writer = writer or pq.ParquetWriter(out / "train-features.parquet", table.schema)
            writer.write_table(table)
        assert writer is not None
        writer.close()
        stages["transform+write"] = time.perf_counter() - mark
        seconds = time.perf_counter() - began
    return Run(f"baseline {label}", rows, seconds, 1, stages, memory.peak, 0, train.metadata.num_rows,
               memory.samples)


def run_baseline_apart(rows: int, label: str, root: Path) -> Run:
    """The baseline in a fresh process of its own: its heap must not stay behind in the driver, whose memory counts
    in the mlscale runs that follow it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_baseline, rows, label, root).result()


def bytes_per_row() -> float:
    sample = generate_table(np.arange(100_000), seed=11, bad_fraction=0.01)
    return sample.nbytes / sample.num_rows


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        times, values = zip(*run.memory_trace, strict=True)
        axis.plot(times, np.asarray(values) / 2**20, label=f"{run.name} ({run.rows:,} rows)")
    axis.set_xlabel("seconds")
    axis.set_ylabel("PSS of all processes (MiB)")
    axis.set_title("data pipeline memory: flat as the data grows")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-rows", type=int, default=400_000)
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="cores (the per-core denominator)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs Ray schedules on (default: --cpus)")
    parser.add_argument("--full", action="store_true", help="add 64x")
    parser.add_argument("--repeats", type=int, default=3, help="16x runs, each followed by a baseline run")
    parser.add_argument("--ray-intervals", action="store_true",
                        help="Ray Data's own scheduling intervals (0.1 s poll, 1 s limits), not mlscale's: the A/B")
    args = parser.parse_args()
    scales = FULL_SCALES if args.full else SCALES
    import ray

    set_process_env()
    row_bytes = bytes_per_row()
    root = Path(tempfile.mkdtemp(prefix="mlscale-bench-"))
    runs: dict[int, list[Run]] = {}
    baselines: list[Run] = []
    try:
        for scale in scales:
            for _ in range(args.repeats if scale == 16 else 1):
                # A fresh Ray per run, so each peak is that run's own, not leftovers of the last.
                ray.init(num_cpus=args.ray_cpus or args.cpus, object_store_memory=args.object_store_mb * 2**20,
                         include_dashboard=False, logging_level="ERROR", log_to_driver=False)
                configure_data(RayConfig(data_poll_s=0.1, data_limits_refresh_s=1.0) if args.ray_intervals
                               else RayConfig())
                try:
                    run = run_mlscale(args.base_rows * scale, f"{scale}x", root, args.cpus)
                    run.core_seconds = where_core_seconds_go(run, args.cpus)
                finally:
                    ray.shutdown()
                runs.setdefault(scale, []).append(run)
                print(f"  {run.name}: {run.seconds:.1f} s", flush=True)
                if scale == 16:  # interleaved, so the machine's drift does not decide the ratio
                    baselines.append(run_baseline_apart(args.base_rows * 16, "16x", root))
                    print(f"  {baselines[-1].name}: {baselines[-1].seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    pair_ratios = [run.rows_per_s_per_core / base.rows_per_s_per_core
                   for run, base in zip(runs[16], baselines, strict=True)]
    throughput_ratio = float(np.median(pair_ratios))
    at16 = runs[16][pair_ratios.index(sorted(pair_ratios)[len(pair_ratios) // 2])]  # the median pair's run
    baseline = baselines[runs[16].index(at16)]
    baseline_rate = float(np.median([base.rows_per_s_per_core for base in baselines]))
    first, largest = runs[scales[0]][0], runs[scales[-1]][-1]
    memory_ratio = max(run.peak_memory_bytes for run in runs[16]) / first.peak_memory_bytes
    by_scale = {f"{scale}x": throughput_ratio if scale == 16  # 16x: the median interleaved pair, as the headline
                else runs[scale][0].rows_per_s_per_core / baseline_rate for scale in scales}
    terabyte_rows = 1e12 / row_bytes
    cluster_cores = 16 * 16
    projected_s = terabyte_rows / (largest.rows_per_s_per_core * cluster_cores)
    limiting = max(largest.stage_seconds, key=lambda stage: largest.stage_seconds[stage])
    result = {
        "memory_ratio_16x": memory_ratio,
        "throughput_ratio_vs_baseline": throughput_ratio,
        "throughput_ratio_16x_each": pair_ratios,
        "throughput_ratio_by_scale": by_scale,
        "memory_ratio_largest": largest.peak_memory_bytes / first.peak_memory_bytes,
        "core_seconds_16x": at16.core_seconds,
        "ray_cpus": args.ray_cpus or args.cpus,
        "rows_per_s_per_core": at16.rows_per_s_per_core,
        "baseline_rows_per_s_per_core": baseline.rows_per_s_per_core,
        "object_store_memory_bytes": args.object_store_mb * 2**20,
        "largest_run_bytes": largest.rows * row_bytes,
        "largest_run_vs_object_store": largest.rows * row_bytes / (args.object_store_mb * 2**20),
        "bytes_per_row_arrow": row_bytes,
        "projection_1tb_16x16_cores_s": projected_s,
        "projection_limiting_stage": limiting,
        "runs": [{k: v for k, v in {**run.__dict__, "rows_per_s": run.rows_per_s,
                                     "rows_per_s_per_core": run.rows_per_s_per_core}.items()
                  if k not in ("memory_trace", "stage_windows")}
                 for run in [*(run for scale in scales for run in runs[scale]), *baselines]],
        "machine": {"cpus": args.cpus, "platform": platform.platform(), "python": platform.python_version()},
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "data_pipeline" + ("_full" if args.full else "") + (f"_ray_cpus{args.ray_cpus}" if args.ray_cpus else "") \
        + ("_ray_intervals" if args.ray_intervals else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot([*(runs[scale][0] for scale in scales), baseline], RESULTS / f"{name}_memory.png")

    header = f"{'run':<16}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'rows/s/core':>13}{'peak MiB':>10}{'spill MiB':>11}"
    print(header)
    for run in [*(run for scale in scales for run in runs[scale]), *baselines]:
        print(f"{run.name:<16}{run.rows:>12,}{run.seconds:>10.1f}{run.rows_per_s:>12,.0f}"
              f"{run.rows_per_s_per_core:>13,.0f}{run.peak_memory_bytes / 2**20:>10.0f}"
              f"{run.spilled_bytes / 2**20:>11.1f}")
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in at16.stage_seconds.items())
    print(f"16x stages (median pair): {stages}, driver CPU {at16.driver_cpu_seconds:.1f} s; largest run = "
          f"{result['largest_run_vs_object_store']:.1f}x the object store")
    for stage, parts in at16.core_seconds.items():
        print(f"  {stage} core-seconds: " + ", ".join(
            f"{key.removeprefix('idle_').replace('_', ' ')} {value:.1f}" for key, value in parts.items()))
    print("16x per-core ratio of each interleaved pair: " + ", ".join(f"{ratio:.2f}" for ratio in pair_ratios))
    print("per core, mlscale / baseline, by size: " + ", ".join(f"{k} {v:.2f}" for k, v in by_scale.items())
          + f"; memory {largest.name} / 1x: {result['memory_ratio_largest']:.2f}")
    print(f"1 TB ({terabyte_rows:,.0f} rows) on 16 nodes x 16 cores: ~{projected_s / 60:.0f} min, "
          f"limited by {limiting}")
    print(f"memory 16x/1x: {memory_ratio:.2f} (target <= 1.25)")
    print(f"throughput per core, mlscale / single-process baseline: {throughput_ratio:.2f}x (target >= 0.9)")


if __name__ == "__main__":
    main()
