"""mlscale shortens two intervals of Ray Data's streaming executor (mlscale/cluster/connect.py); their effect is
measured in benchmarks/data_pipeline.py. These tests guard that the names still exist and are still read when the
executor runs, so a Ray upgrade that moves them fails here instead of silently bringing the idle cores back."""

import inspect
import logging

import pytest
from ray.data._internal.execution import resource_manager, streaming_executor_state

from mlscale.cluster.connect import tighten_data_scheduling
from mlscale.config import RayConfig


@pytest.fixture
def restored(monkeypatch):
    """Ray's own values come back after the test (monkeypatch undoes the setattr calls it saw first)."""
    monkeypatch.setattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S",
                        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S)
    monkeypatch.setattr(resource_manager.ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S",
                        resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S)
    return monkeypatch


def test_the_intervals_land_where_the_executor_reads_them_at_run_time(restored):
    tighten_data_scheduling(0.03, 0.2)
    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 0.03
    assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 0.2
    # Read as a global and a class attribute when the loop runs, not bound earlier as a default argument.
    assert "timeout=WAIT_FOR_TASK_COMPLETION_TIMEOUT_S" in inspect.getsource(
        streaming_executor_state.process_completed_tasks)
    assert "self.GLOBAL_LIMITS_UPDATE_INTERVAL_S" in inspect.getsource(
        resource_manager.ResourceManager.get_global_limits)


def test_the_defaults_are_shorter_than_rays_and_configurable():
    config = RayConfig()
    assert config.data_poll_s < 0.1 and config.data_limits_refresh_s < 1.0
    assert RayConfig(data_poll_s=0.1, data_limits_refresh_s=1.0).data_limits_refresh_s == 1.0


def test_a_ray_without_the_names_keeps_its_own_behaviour_and_says_so(restored, caplog):
    restored.delattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S")
    with caplog.at_level(logging.WARNING, logger="mlscale.cluster.connect"):
        tighten_data_scheduling(0.03, 0.2)
    assert "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S" in caplog.text
    assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 0.2
