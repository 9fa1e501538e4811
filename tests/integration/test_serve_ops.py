"""The service under load and under attack, on the session's cluster with real HTTP: overload refused fast, a load
step scaled up and back down, a replica killed under load, a new version rolled out to running replicas, Prometheus
metrics, and the generated Serve config file deployed with `serve deploy`."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
import yaml

from mlscale.data.records import held_out_records
from mlscale.serve.app import DEPLOYMENT
from tests.conftest import VENV_BIN, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def deploy_variant(pipeline_result, name: str, model_uri: str | None = None, **serve_updates) -> str:
    """The session's bundle as its own app, with these serve settings; returns its predict URL once it answers."""
    from mlscale.stages.deploy import deploy_stage

    config, result = pipeline_result
    settings = type(config.serve).model_validate({**config.serve.model_dump(), "app_name": name,
                                                  "route_prefix": f"/{name}", **serve_updates})
    endpoint = deploy_stage(config.model_copy(update={"serve": settings}), model_uri or result.trained.version_uri)
    wait_for_http(endpoint.rsplit("/", 1)[0] + "/health", 120, f"app {name}")
    return endpoint


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


def replica_actors(app: str) -> set[str]:
    """The named actors of the app's running replicas, as Serve's controller lists them."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    replicas = details["applications"][app]["deployments"][DEPLOYMENT]["replicas"]
    return {replica["actor_name"] for replica in replicas if replica["state"] == "RUNNING"}


def wait_for(condition, seconds: float, what: str) -> float:
    """Seconds until condition() holds; fails the test naming what did not happen."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.25)
    pytest.fail(f"{what} did not happen within {seconds:.0f} s")


RETRYABLE = {0, 408, 500, 502, 503, 504}  # what a client may safely send again: predicting is idempotent


@dataclass
class SteadyLoad:
    """`clients` threads posting the same body in a loop until stopped, retrying once where safe (as a real client
    would); every answer kept: (sent at, first status, final status, seconds to the first answer)."""

    endpoint: str
    body: list[dict]
    clients: int
    answers: list[tuple[float, int, int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> SteadyLoad:
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def _post(self, session: requests.Session) -> int:
        try:
            return session.post(self.endpoint, json=self.body, timeout=60).status_code
        except requests.RequestException:
            return 0

    def _client(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            sent = time.perf_counter()
            first = self._post(session)
            seconds = time.perf_counter() - sent
            final = self._post(session) if first in RETRYABLE else first
            self.answers.append((sent, first, final, seconds))


def test_overload_is_refused_at_once_with_retry_after(pipeline_result):
    """One replica working on 1 request with 2 queued: a burst of 48 gets 503 + Retry-After for the excess, fast,
    and the accepted ones keep a bounded latency; nothing else (no 500, no timeout)."""
    config, result = pipeline_result
    endpoint = deploy_variant(pipeline_result, "overload", max_ongoing_requests=1, max_queued_requests=2,
                              max_batch_size=1, retry_after_s=2.0, model_cpus=0.5)
    records = held_out_records(result.prepared.read("test"), 500)  # heavy requests: the queue fills
    try:
        def post(_: int) -> tuple[int, float, str | None]:
            sent = time.perf_counter()
            answer = requests.post(endpoint, json=records, timeout=60)
            return answer.status_code, time.perf_counter() - sent, answer.headers.get("Retry-After")

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(post, range(96)))
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 3 and statuses[503] >= 24, statuses
        refused = [seconds for status, seconds, _ in answers if status == 503]
        accepted = [seconds for status, seconds, _ in answers if status == 200]
        assert {after for status, _, after in answers if status == 503} == {"2"}
        print(f"overload: {statuses[200]} accepted (p50 {np.median(accepted):.2f} s, p99 "
              f"{np.percentile(accepted, 99):.2f} s), {statuses[503]} refused (p50 {np.median(refused) * 1000:.0f} ms)")
        assert np.median(refused) < 1.0  # turned away at once, not after queueing
        assert np.percentile(accepted, 99) < 20.0, accepted  # bounded by the queue, not by the burst
    finally:
        from ray import serve

        serve.delete("overload")


def test_autoscaling_follows_a_load_step_up_and_back_down(pipeline_result):
    config, result = pipeline_result
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
               "downscale_delay_s": 3.0, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}
    endpoint = deploy_variant(pipeline_result, "autoscaled", autoscaling=scaling, model_cpus=0.5)
    records = held_out_records(result.prepared.read("test"), 200)
    try:
        assert running_replicas("autoscaled") == 1
        with SteadyLoad(endpoint, records, clients=6) as load:
            up = wait_for(lambda: running_replicas("autoscaled") == 2, 90, "scaling up to 2 replicas")
        down = wait_for(lambda: running_replicas("autoscaled") == 1, 120, "scaling back down to 1 replica")
        assert {first for _, first, _, _ in load.answers} == {200}  # scaling up and down failed nothing
        print(f"autoscaling: second replica running {up:.1f} s into the load step, back to one {down:.1f} s "
              "after it stopped")
    finally:
        from ray import serve

        serve.delete("autoscaled")


def test_a_killed_replica_is_replaced_and_the_service_keeps_answering(pipeline_result):
    import ray

    config, result = pipeline_result
    endpoint = deploy_variant(pipeline_result, "chaos", num_replicas=2, model_cpus=0.5)
    records = held_out_records(result.prepared.read("test"), 20)
    try:
        before = replica_actors("chaos")
        assert len(before) == 2
        with SteadyLoad(endpoint, records, clients=4) as load:
            time.sleep(2.0)
            victim = sorted(before)[0]
            killed_at = time.perf_counter()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            recovery = wait_for(lambda: len(replica_actors("chaos") - before) == 1 and
                                running_replicas("chaos") == 2, 180, "a replacement replica")
            time.sleep(2.0)
        # every request answered after the kill, including those in flight on the victim when it died
        around = [(first, final) for sent, first, final, seconds in load.answers if sent + seconds >= killed_at]
        failed_first = Counter(first for first, _ in around if first != 200)
        failed_final = Counter(final for _, final in around if final != 200)
        print(f"chaos: killed {victim}; of {len(around)} requests answered after the kill, "
              f"{sum(failed_first.values())} failed at first {dict(failed_first)}, {sum(failed_final.values())} after "
              f"one retry; replacement running {recovery:.1f} s after the kill")
        assert sum(final == 200 for _, final in around) >= 10  # the other replica kept answering
        assert not failed_final, failed_final  # a client that retries once where safe lost nothing
        assert sum(failed_first.values()) <= 4, failed_first  # at most the requests in flight on the victim
    finally:
        from ray import serve

        serve.delete("chaos")


def test_prometheus_metrics_count_requests_per_version_and_status(pipeline_result, local_cluster):
    """The request counter grows by what this test sent (earlier tests sent to the same endpoint: read it before
    and after), labelled by version and status; latency, batch, prediction and cost series are exported too."""
    config, result = pipeline_result
    metrics_url = f"http://127.0.0.1:{local_cluster.metrics_port}/metrics"
    version = result.trained.version

    def total(text: str, name: str, *labels: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and all(label in line for label in labels))

    def requests_by_status(text: str) -> tuple[float, float]:
        return (total(text, "ray_mlscale_requests_total", f'version="{version}"', 'status="200"'),
                total(text, "ray_mlscale_requests_total", 'status="422"'))

    ok_before, bad_before = requests_by_status(requests.get(metrics_url, timeout=10).text)
    records = held_out_records(result.prepared.read("test"), 3)
    for _ in range(3):
        assert requests.post(result.endpoint, json=records, timeout=30).status_code == 200
    assert requests.post(result.endpoint, json={"dep_delay": "soon"}, timeout=30).status_code == 422

    def exported() -> bool:
        text = requests.get(metrics_url, timeout=10).text
        ok, bad = requests_by_status(text)
        return (ok >= ok_before + 3 and bad >= bad_before + 1
                and "ray_mlscale_request_latency_ms_bucket" in text and "ray_mlscale_batch_records_bucket" in text
                and total(text, "ray_mlscale_prediction_count", f'version="{version}"') > 0
                and total(text, "ray_mlscale_replica_seconds_total", f'version="{version}"') > 0
                and any(line.startswith("ray_mlscale_replica_cpu_seconds_total") for line in text.splitlines()))

    wait_for(exported, 90, "mlscale's metrics on the node's Prometheus endpoint (the counters grown by this test)")


def test_the_generated_serve_config_deploys_and_rolls_out_a_new_version_in_place(pipeline_result, local_cluster,
                                                                               tmp_path):
    """`mlscale serve-config` output through `serve deploy` (Ray's schema, Ray's CLI); then the file for another
    version: only the app's user_config changes, so the running replicas reconfigure (the same actors answer) and
    every answer names the new version."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from mlscale.serve.config_file import serve_config_document
    from mlscale.tracking import tracking_client

    config, result = pipeline_result
    config = config.model_copy(update={
        "serve": config.serve.model_copy(update={"app_name": "from-file", "route_prefix": "/from-file",
                                                 "num_replicas": 2, "model_cpus": 0.5}),
        "tracking": config.tracking.model_copy(update={"alias": "from-file"})})  # an alias of this test's own
    client = tracking_client(config.tracking_uri)
    first = client.get_model_version(config.tracking.registered_model, result.trained.version)
    second = client.create_model_version(first.name, first.source, run_id=first.run_id)  # same bundle, new version
    client.set_registered_model_alias(first.name, "from-file", first.version)

    def deploy_file(model_uri: str | None) -> dict:
        document = serve_config_document(config, model_uri, host="127.0.0.1")
        ServeDeploySchema.model_validate(document)  # Ray's own schema for `serve deploy` and a RayService
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(document))
        deployed = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "--address",
                                   local_cluster.dashboard_url], capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        return document

    document = deploy_file(None)  # the configured alias, resolved when the file was written
    rollout = document["applications"][0]["deployments"][0]["user_config"]
    assert rollout["served_uri"] == f"models:/{first.name}/{first.version}" and rollout["uri"] == config.serving_uri
    base = f"http://127.0.0.1:{local_cluster.serve_port}/from-file"
    records = held_out_records(result.prepared.read("test"), 2)

    def versions() -> set[str]:
        return {requests.post(f"{base}/predict", json=records, timeout=30).json()["model"]["version"]
                for _ in range(8)}

    try:
        wait_for_http(f"{base}/health", 120, "the app deployed from the generated file")
        wait_for(lambda: running_replicas("from-file") == 2, 60, "two replicas running")
        answer = requests.post(f"{base}/predict", json=records, timeout=30)
        assert answer.status_code == 200 and versions() == {str(first.version)}
        before = replica_actors("from-file")
        client.set_registered_model_alias(first.name, "from-file", second.version)  # a promotion
        deploy_file(None)  # regenerated: the same app, a new user_config
        wait_for(lambda: versions() == {str(second.version)}, 90, "every replica answering as the new version")
        # a replica reconfiguring is UPDATING, not RUNNING, and takes no requests: wait until both are back
        wait_for(lambda: running_replicas("from-file") == 2, 60, "both replicas running after the reconfigure")
        assert replica_actors("from-file") == before  # reconfigured in place, not restarted
        assert versions() == {str(second.version)}
        again = requests.post(f"{base}/predict", json=records, timeout=30).json()["predictions"]
        assert again == pytest.approx(answer.json()["predictions"], abs=1e-7)
    finally:
        serve.delete("from-file")
