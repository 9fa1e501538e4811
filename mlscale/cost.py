"""What a stage cost: wall seconds, the CPU seconds the driver process used (its own counters), and the CPU- and
GPU-seconds the cluster had reserved while it ran (Ray's resource accounting: total minus available resources,
sampled). Reserved seconds are what a cluster bills for; on a shared cluster they include other jobs' reservations
made during the stage, so they are an upper bound for one stage."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

SAMPLE_INTERVAL_S = 0.5


@dataclass
class StageCost:
    wall_s: float = 0.0
    driver_cpu_s: float = 0.0
    cluster_cpu_s: float = 0.0  # reserved CPU-seconds over the stage
    cluster_gpu_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in asdict(self).items()}


def _driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _reserved() -> tuple[float, float]:
    """The CPUs and GPUs reserved on the cluster now (0 when Ray is not running)."""
    import ray

    if not ray.is_initialized():
        return 0.0, 0.0
    total, available = ray.cluster_resources(), ray.available_resources()
    return (max(0.0, total.get("CPU", 0.0) - available.get("CPU", 0.0)),
            max(0.0, total.get("GPU", 0.0) - available.get("GPU", 0.0)))


@contextmanager
def metered(interval_s: float = SAMPLE_INTERVAL_S) -> Iterator[StageCost]:
    """Measure the block's cost into the yielded StageCost (filled when the block ends)."""
    cost = StageCost()
    stop = threading.Event()

    def sample() -> None:
        last = time.monotonic()
        while not stop.wait(interval_s):
            now = time.monotonic()
            try:
                cpus, gpus = _reserved()
            except Exception:  # noqa: BLE001 - a cluster restarting: this sample is lost, not the stage
                cpus = gpus = 0.0
            cost.cluster_cpu_s += cpus * (now - last)
            cost.cluster_gpu_s += gpus * (now - last)
            last = now

    sampler = threading.Thread(target=sample, daemon=True, name="mlscale-cost")
    began, cpu = time.perf_counter(), _driver_cpu()
    sampler.start()
    try:
        yield cost
    finally:
        stop.set()
        sampler.join(timeout=5)
        cost.wall_s = time.perf_counter() - began
        cost.driver_cpu_s = _driver_cpu() - cpu
