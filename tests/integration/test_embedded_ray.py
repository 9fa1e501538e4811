"""The embedded default is a Ray of its own: a laptop with a cluster already running (here: the session's
`ray start --head`) must not have its pipeline silently join that cluster, or fail in ray.init because the
embedded Ray asks for its own CPU count."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import ray
from mlscale.cluster.connect import ensure_ray
from mlscale.config import RayConfig
resources = ensure_ray(RayConfig(num_cpus=1, include_dashboard=False))
print("GCS", ray.get_runtime_context().gcs_address, "CPU", resources.get("CPU"))
ray.shutdown()
"""


def test_the_embedded_ray_starts_its_own_instance_beside_a_running_cluster(local_cluster):
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("GCS "))
    _, gcs, _, cpus = line.split()
    assert gcs != local_cluster.gcs_address and float(cpus) == 1.0, line
