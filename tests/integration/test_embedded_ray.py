"""The embedded default is a Ray of its own: a laptop with a cluster already running (here: the session's
`ray start --head`) must not have its pipeline silently join that cluster, or fail in ray.init because the
embedded Ray asks for its own CPU count. And its workers stay warm between a driver's stages."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import os, time
import ray
from mlscale.cluster.connect import ensure_ray
from mlscale.config import RayConfig
resources = ensure_ray(RayConfig(num_cpus=1, include_dashboard=False))
print("GCS", ray.get_runtime_context().gcs_address, "CPU", resources.get("CPU"))

@ray.remote(num_cpus=0)
def pid():
    time.sleep(0.5)  # four at once: several worker processes, more than the node's one CPU
    return os.getpid()

first = set(ray.get([pid.remote() for _ in range(4)]))
time.sleep(4)  # a pause between two stages of a driver
second = set(ray.get([pid.remote() for _ in range(4)]))
print("KEPT", len(first), len(first & second))
ray.shutdown()
"""


@pytest.fixture(scope="module")
def embedded(local_cluster) -> dict[str, list[str]]:
    """The script's printed lines by their first word, from a process whose environment has none of the settings
    ensure_ray gives an embedded Ray (it must set them itself) and no RAY_ADDRESS."""
    from mlscale.cluster.connect import PROCESS_ENV

    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS" and name not in PROCESS_ENV}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return {words[0]: words[1:] for words in map(str.split, result.stdout.splitlines()) if words}


def test_the_embedded_ray_starts_its_own_instance_beside_a_running_cluster(embedded, local_cluster):
    gcs, _, cpus = embedded["GCS"]
    assert gcs != local_cluster.gcs_address and float(cpus) == 1.0, embedded


def test_the_embedded_ray_keeps_idle_workers_warm_between_stages(embedded):
    """Ray kills a worker idle for 1 s once the node's workers outnumber its CPUs, so each Ray Data execution after a
    pause started new processes (a test session: 471 started, 193 killed idle). ensure_ray's environment keeps
    them 30 s: the workers of a first round of tasks serve the second round 4 s later (with Ray's 1 s, 1 of 4 was
    left)."""
    started, kept = embedded["KEPT"]
    assert int(started) >= 2 and kept == started, embedded
