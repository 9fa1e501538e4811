"""Connect to the configured cluster, or start the embedded local Ray when no address is given.

Inside a `ray job submit` job, Ray has already set RAY_ADDRESS, so the same script joins the cluster it was
submitted to without any flag.
"""

from __future__ import annotations

import os

import ray
import ray.data

from mlscale.config import RayConfig


def ensure_ray(config: RayConfig) -> dict[str, float]:
    """Initialize Ray once per process; returns the cluster's resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory,
                include_dashboard=config.include_dashboard,
                log_to_driver=True,
            )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0") != "1"
    return ray.cluster_resources()
