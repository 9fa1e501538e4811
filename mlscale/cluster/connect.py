"""Connect to the configured cluster, or start the embedded local Ray when no address is given.

Inside a `ray job submit` job, Ray has already set RAY_ADDRESS, so the same script joins the cluster it was
submitted to without any flag.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ray
import ray.data

from mlscale.config import RayConfig

logger = logging.getLogger(__name__)

PROCESS_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Arrow's default jemalloc pool keeps freed pages, so a long-lived Ray worker grows with the data it has read;
    # the system allocator gives them back and keeps worker memory flat (the cluster definitions set it too).
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "MALLOC_ARENA_MAX": "2",  # and glibc keeps one arena per thread unless capped: Arrow's reader threads add up
    # Each parquet read is planned by a pool of footer-reading actors, one process each, 32 by default (tuned for
    # object-store latency on big clusters). On a laptop or CI box they cost more start-up and memory than they save.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
    # The dashboard agent samples every process with psutil each 5 s for the dashboard's node view; on a small node
    # that is 1-2% of a core taken from training (benchmarks/train_throughput.py). 10 s is fresh enough to look at.
    "REPORTER_UPDATE_INTERVAL_MS": "10000",
    # Ray Train's controller polls its workers every 2 s and only then sees that training has finished: on a laptop,
    # where a run trains for seconds, that is up to 2 s of every run. A poll is one tiny task per worker; a missed
    # one is waited on, not counted as a failure (worker_group.poll_status), so polling faster loses nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # A raylet kills a worker idle for 1 s once the node's workers outnumber its CPUs, which long-lived actors
    # (Serve replicas, Train's controller and workers) alone do: every Ray Data execution after a pause of a second
    # then starts fresh worker processes, each paying Python, Ray and pyarrow imports again (a full test session
    # started 471, 193 of them killed idle). 30 s keeps a driver's workers warm from one stage to the next.
    "RAY_idle_worker_killing_time_threshold_ms": "30000",
}


def set_process_env() -> None:
    """Environment that workers of an embedded Ray inherit (a value already set wins); must run before ray.init."""
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)


def ensure_ray(config: RayConfig) -> dict[str, float]:
    """Initialize Ray once per process; returns the cluster's resources."""
    set_process_env()
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                address="local",  # a Ray of its own: never the cluster some other `ray start` left on this machine
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory,
                include_dashboard=config.include_dashboard,
                log_to_driver=True,
            )
    configure_data(config)
    return ray.cluster_resources()


READ_UNIT_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"  # Ray's v2 reader's; mlscale.data.parquet sizes v1 reads by it


def configure_data(config: RayConfig) -> None:
    """Ray Data settings that keep memory flat as data grows: small read units and blocks, so a reader never holds
    more than a few tens of MB whatever the dataset size (Ray's default packs 128 MiB of parquet per read task)."""
    os.environ[READ_UNIT_ENV] = str(config.read_unit_bytes)  # read when a read is planned
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = config.parquet_reader == "v2"
    context.target_max_block_size = config.target_max_block_size
    context.raise_original_map_exception = True  # a SchemaError from a batch stays a SchemaError for the caller
    context.enable_progress_bars = progress_bars_wanted()
    tighten_data_scheduling(config.data_poll_s, config.data_limits_refresh_s)


def tighten_data_scheduling(poll_s: float, limits_refresh_s: float) -> None:
    """Two intervals of Ray Data's streaming executor that leave cores idle, with no setting of their own.

    - It collects finished tasks with `ray.wait(timeout=0.1)`; a task's end takes two of those loops to notice, so a
      core idled ~0.15 s between tasks (~15% of a core with ~1 s tasks; ~40 ms at 0.02 s, benchmarks/README.md).
    - It reads the cluster's resources from its autoscaling coordinator once a second, and the first read of every
      execution is empty: for its first second each execution runs one task, whatever the cluster's size.
    Shorter intervals cost the driver ~5% of a core while an execution runs. Set in this process (the driver, where
    the executor runs); a Ray upgrade that renames them leaves Ray's defaults, with a warning.
    """
    from ray.data._internal.execution import resource_manager, streaming_executor_state

    targets: list[tuple[Any, str, float]] = [
        (streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", poll_s),
        (resource_manager.ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", limits_refresh_s),
    ]
    for owner, name, value in targets:
        if hasattr(owner, name):
            setattr(owner, name, value)
        else:
            logger.warning("Ray Data has no %s.%s any more: its own interval stays", owner.__name__, name)


def progress_bars_wanted() -> bool:
    """Ray Data's live bars in a terminal; in a job log or CI (no terminal) they would print a line per refresh, a
    wall of thousands of lines, so there Ray Data's periodic progress summaries stand in. MLSCALE_PROGRESS_BARS=1
    forces them on, RAY_DATA_DISABLE_PROGRESS_BARS=1 off."""
    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0") == "1":
        return False
    return os.environ.get("MLSCALE_PROGRESS_BARS") == "1" or sys.stderr.isatty()
