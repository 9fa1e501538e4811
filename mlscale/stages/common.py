"""What every stage does first: Ray and MLflow for this process, and a timer that shows where a run is."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from mlscale.cluster.connect import ensure_ray
from mlscale.config import PipelineConfig
from mlscale.cost import metered
from mlscale.tracking import start_tracking
from mlscale.tune.resources import trial_reservation

log = logging.getLogger(__name__)


def start(config: PipelineConfig) -> None:
    """Ray and MLflow for this process: join the configured cluster, or start the embedded Ray with enough logical
    CPUs for training plus ingest (a search's trial reservation included), then open the tracking store.

    Args:
        config: the pipeline config (its `ray`, `train`, `tune`, `storage` and `tracking` sections are read).
    """
    settings = config.train
    trial = sum(reserved.get("CPU", 0.0) for reserved in trial_reservation(config))
    needed = max(int(max(settings.num_workers, 1) * settings.cpus_per_worker) + 2,
                 math.ceil(config.tune.data_cpus + trial))
    ray_settings = config.ray
    if ray_settings.address is None and ray_settings.num_cpus is None:
        ray_settings = ray_settings.model_copy(update={"num_cpus": max(needed, 4)})
    ensure_ray(ray_settings)
    start_tracking(config)


@contextmanager
def timed(name: str, seconds: dict[str, float], costs: dict[str, dict[str, float]] | None = None) -> Iterator[None]:
    """Announce a stage and record how long it took (long work shows where it is) and, with `costs`, what it cost
    (mlscale.cost: wall, driver CPU, the cluster's reserved CPU/GPU seconds)."""
    log.info("%s ...", name)
    with metered() as cost:
        yield
    seconds[name] = round(cost.wall_s, 1)
    if costs is not None:
        costs[name] = cost.to_dict()
    log.info("%s done in %.1f s (%.0f reserved CPU-s)", name, seconds[name], cost.cluster_cpu_s)
