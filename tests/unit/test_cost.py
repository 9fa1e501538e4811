"""Stage cost: wall seconds, the driver's own CPU seconds, and the cluster's reserved CPU/GPU seconds integrated over
the stage from sampled reservations."""

import time
from unittest import mock

import pytest

from mlscale.cost import metered


def test_a_busy_driver_and_a_reserved_cluster_are_both_counted():
    with mock.patch("mlscale.cost._reserved", return_value=(2.0, 1.0)), metered(interval_s=0.05) as cost:
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:  # the driver computing
            sum(range(1000))
    assert cost.wall_s == pytest.approx(0.6, abs=0.1)
    assert cost.driver_cpu_s == pytest.approx(0.6, abs=0.2)
    assert cost.cluster_cpu_s == pytest.approx(2 * 0.6, abs=0.25) and cost.cluster_gpu_s == pytest.approx(0.6, abs=0.15)


def test_waiting_costs_wall_time_only():
    with mock.patch("mlscale.cost._reserved", return_value=(0.0, 0.0)), metered(interval_s=0.05) as cost:
        time.sleep(0.3)
    assert cost.wall_s >= 0.3 and cost.driver_cpu_s < 0.1 and cost.cluster_cpu_s == 0.0
    assert set(cost.to_dict()) == {"wall_s", "driver_cpu_s", "cluster_cpu_s", "cluster_gpu_s"}


def test_without_ray_nothing_is_reserved():
    from mlscale.cost import _reserved

    assert _reserved() == (0.0, 0.0)
