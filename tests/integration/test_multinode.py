"""Several raylets on one machine, as the cluster definition lays them out: a head that only schedules, an
on-demand worker that holds the jobs' drivers (the `driver` resource) and serving, a spot worker. Every stage goes
through `mlscale cluster submit` (the Jobs API, token auth). A spot worker is lost during training and during
serving (its raylet and everything under it killed, as a preemption does), and a replacement joins the way the
autoscaler would bring one. Prepared data, checkpoints and the prediction log live on the S3-protocol server on
loopback; the tracking store and the caches on the shared filesystem (one machine's disk stands in for EFS / an RWX
volume). Each node has its own --temp-dir, as separate machines would."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests

from mlscale.logs import summary_from_logs
from tests.conftest import REPO, VENV_BIN, free_port

pytestmark = pytest.mark.slow

DRIVER_NODE = {"num_cpus": 4, "resources": {"driver": 2, "serve": 2}}  # on-demand: drivers and serving
SPOT_NODE = {"num_cpus": 2, "resources": {"spot": 2}}                   # spot: data tasks, training workers


@dataclass
class Node:
    name: str
    temp_dir: Path
    manager_port: int
    alive: bool = True

    def processes(self) -> list[psutil.Process]:
        """The node's raylet with everything it started, and the node's own daemons (log monitor)."""
        found: list[psutil.Process] = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if str(self.temp_dir) in cmdline or f"--node_manager_port={self.manager_port}" in cmdline:
                found.append(process)
                with contextlib.suppress(psutil.NoSuchProcess):
                    found += process.children(recursive=True)
        return found

    def kill(self) -> None:
        """SIGKILL the node: what a reclaimed spot instance looks like to the rest of the cluster."""
        self.alive = False
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


@dataclass
class MultiNodeCluster:
    gcs_address: str
    dashboard_url: str
    serve_port: int
    storage: Path
    s3_endpoint: str
    env: dict[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)

    def start_worker(self, name: str, num_cpus: int, resources: dict[str, float], tmp: Path) -> Node:
        node = Node(name, tmp / name, free_port())
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        _ray_start(["--address", self.gcs_address, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                    f"--resources={json.dumps(resources)}",
                    f"--node-manager-port={node.manager_port}", *_own_ports(), f"--temp-dir={node.temp_dir}"],
                   self.env)
        self.nodes[name] = node
        return node

    def spot(self) -> Node:
        """The spot node that is up now (whichever test lost the one before): each test stands on its own."""
        return next(node for name, node in reversed(self.nodes.items()) if name.startswith("spot") and node.alive)

    def node_ids(self) -> dict[str, str]:
        """Alive node id by resource signature: 'driver', 'spot' or 'head'."""
        from ray.util.state import list_nodes

        ids = {}
        for node in list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                               raise_on_missing_output=False):  # dead nodes count in its total
            total = node.resources_total
            ids["driver" if "driver" in total else "spot" if "spot" in total else "head"] = node.node_id
        return ids

    def submit(self, stage: str, overrides: dict[str, object], timeout: int = 600) -> tuple[str, dict]:
        """`mlscale cluster submit <stage>` from the project folder, followed to its end: (job id, summary)."""
        words = [str(VENV_BIN / "mlscale"), "cluster", "submit", stage, "--config", "jobs/configs/flights-small.yaml",
                 "--address", self.dashboard_url]
        for key, value in {**self.common, **overrides}.items():
            words += ["--set", f"{key}={json.dumps(value)}"]
        try:
            done = subprocess.run(words, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            submitted = (expired.stdout or b"").decode().split()
            log = self.driver_log(submitted[1]) if len(submitted) > 1 else ""
            pytest.fail(f"{stage} job still running after {timeout} s; its driver log ends:\n{log[-5000:]}")
        output = done.stdout + done.stderr
        job_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("submitted "))
        assert done.returncode == 0, output[-3000:] + "\ndriver log:\n" + self.driver_log(job_id)[-5000:]
        summary = summary_from_logs(done.stdout) or summary_from_logs(self.driver_log(job_id))
        assert summary is not None, output[-4000:]
        return job_id, summary

    def driver_log(self, job_id: str) -> str:
        """The driver's log as its node wrote it. Several raylets on one machine each have their own temp dir,
        but a node's dashboard agent takes the head's (from the GCS), so the Jobs API serves the head's copy of
        a driver log, which stops at "Runtime env is setting up"; on separate machines the two paths coincide."""
        logs = [path.read_text() for path in self.storage.parent.glob(f"*/session_*/logs/job-driver-{job_id}.log")]
        return max(logs, key=len, default="")

    @property
    def common(self) -> dict[str, object]:
        return {"storage.root": str(self.storage), "storage.prepared_uri": "s3://lake/prepared", "tracking.uri": None,
                "serve.port": self.serve_port, "serve.proxy_location": "HeadOnly", "data.sample_fraction": 0.05}

    def ray_job_id(self, submission_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url).get_job_info(submission_id).job_id


def _own_ports() -> list[str]:
    """Every port a raylet would otherwise take by default: two nodes on one machine must not share one."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--object-manager-port={free_port()}"]


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    started = subprocess.run([str(VENV_BIN / "ray"), "start", "--disable-usage-stats", *args], env=env,
                             capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{started.stdout}\n{started.stderr}")


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory, local_cluster, s3_endpoint) -> Iterator[MultiNodeCluster]:
    """Head (no CPUs: it schedules), an on-demand node with the `driver` and `serve` resources, a spot node. The
    raylets get the object store's key in their environment, as a cluster gets it from its secrets."""
    tmp = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))  # short: a raylet's socket path must fit 107 bytes
    # the object store's endpoint as a cluster's environment carries it (AWS_ENDPOINT_URL: what pyarrow's s3:// URIs
    # and mlscale's object_store read); its key came into os.environ from s3_endpoint
    env = {**os.environ, "RAY_AUTH_MODE": "token", "AWS_ENDPOINT_URL": s3_endpoint}
    head = Node("head", tmp / "head", free_port())
    head.temp_dir.mkdir()
    port, dashboard_port = free_port(), free_port()
    cluster = MultiNodeCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", free_port(),
                               tmp / "storage", s3_endpoint, env, {"head": head})
    try:
        _ray_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                    "--object-store-memory=500000000", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}", f"--node-manager-port={head.manager_port}", *_own_ports(),
                    f"--temp-dir={head.temp_dir}"], env)
        cluster.start_worker("on-demand", tmp=tmp, **DRIVER_NODE)
        cluster.start_worker("spot-1", tmp=tmp, **SPOT_NODE)
        deadline = time.time() + 60
        while len(cluster.node_ids()) < 3:
            assert time.time() < deadline, f"three nodes did not join: {cluster.node_ids()}"
            time.sleep(0.5)
        yield cluster
    finally:
        for node in cluster.nodes.values():
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_an_unauthenticated_submit_is_refused(multinode):
    """Token auth is on: the Jobs API refuses a submit with no token and one with a wrong token, and accepts the
    cluster's own (which `ray job submit` and mlscale read from RAY_AUTH_TOKEN or ~/.ray/auth_token)."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    body = {"entrypoint": "echo should-never-run"}
    anonymous = requests.post(f"{multinode.dashboard_url}/api/jobs/", json=body, timeout=10)
    wrong = requests.post(f"{multinode.dashboard_url}/api/jobs/", json=body, timeout=10,
                          headers={"Authorization": "Bearer not-the-token"})
    assert anonymous.status_code in (401, 403) and wrong.status_code in (401, 403), (anonymous.text, wrong.text)
    refused = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", multinode.dashboard_url,
                              "--no-wait", "--", "echo", "should-never-run"], capture_output=True, text=True,
                             timeout=60, env={**multinode.env, "RAY_AUTH_MODE": "disabled"})
    # refused for the missing token (Ray's own message for a 401/403), not for any other failure
    assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr, refused
    listed = requests.get(f"{multinode.dashboard_url}/api/jobs/", timeout=10,
                          headers=get_auth_headers_if_auth_enabled({}))
    assert listed.status_code == 200 and all("should-never-run" not in job["entrypoint"] for job in listed.json())


def test_the_data_job_spreads_its_tasks_over_the_workers(multinode):
    """prepare as a job: its driver on the on-demand node (the definition's entrypoint resources), its Ray Data
    tasks on both workers, none on the head; its output on object storage, where every later job reads it."""
    from ray.util.state import list_tasks

    job_id, summary = multinode.submit("prepare", {})
    assert summary["train_rows"] > 0 and not summary["cached"]
    assert summary["prepared_path"].startswith("s3://lake/prepared/flights-small/"), summary["prepared_path"]
    assert not (multinode.storage / "prepared").exists()  # nothing on a node's disk
    nodes = multinode.node_ids()
    tasks = list_tasks(address=multinode.dashboard_url, filters=[("job_id", "=", multinode.ray_job_id(job_id))],
                       limit=10_000, detail=True, raise_on_missing_output=False)
    names = {node_id: name for name, node_id in nodes.items()}
    # the data work (actor calls go to Ray Data's bookkeeping actors, which need no CPU and sit on the head)
    work = [task for task in tasks if task.type == "NORMAL_TASK" and task.node_id]
    where = collections.Counter(names.get(task.node_id, task.node_id) for task in work)
    assert where["driver"] and where["spot"] and not where["head"], where
    print(f"multinode data job: {len(work)} tasks, per node {dict(where)}")


def _kill_after(progress, step: int, node: Node, seen: dict, timeout: float = 400) -> None:
    """Kill the node once training has passed `step` (and so checkpointed at least once)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            attempts = progress.attempts()
        except ValueError:  # a record read while rank 0 rewrites it (the S3 server on loopback is not atomic)
            attempts = []
        if attempts and attempts[-1].last_step >= step:
            node.kill()
            seen.update(at_step=attempts[-1].last_step, killed_at=time.time())
            return
        time.sleep(0.05)


def test_training_finishes_after_its_spot_node_is_lost(multinode):
    """Two workers, SPREAD: one per worker node. The spot node dies mid-run; Ray Train restarts both workers on
    what is left (the on-demand node) from the last checkpoint on object storage, and the job finishes."""
    from ray.util.state import list_actors

    from mlscale.config import load_config
    from mlscale.train.progress import ProgressLog
    from mlscale.train.trainer import checkpoint_storage

    run_name = f"multinode-{uuid.uuid4().hex[:6]}"
    # one epoch (~96 steps): checkpoints and steps on both sides of the kill at step 25 are what recovery needs.
    # Such a short run is no quality claim (its behavioural checks may fail): promoted regardless, since the
    # serving and scoring tests after it serve this champion
    overrides = {"train.run_name": run_name, "train.epochs": 1, "train.placement_strategy": "SPREAD",
                 "train.storage_uri": "s3://lake/checkpoints", "train.checkpoint.every_n_steps": 10,
                 "data.object_store.endpoint_url": multinode.s3_endpoint, "tracking.promotion": "always"}
    config = load_config(REPO / "jobs" / "configs" / "flights-small.yaml",
                         {**multinode.common, **overrides})
    filesystem, root = checkpoint_storage(config)
    spot = multinode.spot()
    seen: dict = {}
    progress = ProgressLog(filesystem, f"{root}/{run_name}")  # on object storage, beside the checkpoints
    killer = threading.Thread(target=_kill_after, args=(progress, 25, spot, seen))
    nodes_before = multinode.node_ids()
    killer.start()
    started = time.time()
    job_id, summary = multinode.submit("train", overrides, timeout=420)
    killer.join()
    assert seen, "the spot node was never killed: training ended before step 25"
    attempts = progress.attempts()
    assert summary["train_attempts"] == len(attempts) == 2, attempts
    resumed_from = attempts[1].started_from_step
    assert 0 < resumed_from <= seen["at_step"] and resumed_from % 10 == 0  # from a checkpoint, not from scratch
    assert attempts[1].finished and summary["train_repeated_steps"] >= seen["at_step"] - resumed_from
    workers = list_actors(address=multinode.dashboard_url, detail=True, limit=1000,
                          filters=[("class_name", "=", "RayTrainWorker"),
                                   ("job_id", "=", multinode.ray_job_id(job_id))])
    names = {node_id: name for name, node_id in nodes_before.items()}
    # the first attempt one worker per node; the restart both on the node left
    assert collections.Counter(names.get(actor.node_id) for actor in workers) == {"driver": 3, "spot": 1}, workers
    recovery = attempts[1].started_at - seen["killed_at"]
    print(f"multinode training: spot node killed at step {seen['at_step']}; the restarted workers began from step "
          f"{resumed_from} {recovery:.1f} s later; {summary['train_repeated_steps']} steps repeated; "
          f"job {time.time() - started:.0f} s; test AUC {summary.get('test_auc')}")
    # the autoscaler's part: a replacement spot node joins (a fresh machine: its own temp dir)
    multinode.start_worker(f"spot-{len(multinode.nodes)}", tmp=multinode.nodes["head"].temp_dir.parent, **SPOT_NODE)


def _load(url: str, body: list[dict], stop: threading.Event, results: list) -> None:
    session = requests.Session()
    while not stop.is_set():
        sent = time.time()
        try:
            status = session.post(url, json=body, timeout=30).status_code
        except requests.RequestException as error:
            status = type(error).__name__
        results.append((sent, time.time(), status))


def _replicas(cluster: MultiNodeCluster, app: str) -> list[dict]:
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    details = requests.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10,
                           headers=get_auth_headers_if_auth_enabled({})).json()
    deployments = details["applications"][app]["deployments"]
    return [replica for deployment in deployments.values() for replica in deployment["replicas"]]


def test_serving_keeps_answering_when_a_node_is_lost(multinode):
    """Two replicas, one per worker node, under load from four clients; the spot node dies. The other replica
    keeps answering (no gap over 10 s, every request after the replacement answered) while Serve replaces the lost
    one on the capacity left; only requests in flight on the lost replica may fail."""
    app = "multinode"
    log = {"path": "s3://lake/predictions/multinode", "flush_interval_s": 1.0}  # every replica writes there
    _, summary = multinode.submit("deploy", {"serve.app_name": app, "serve.route_prefix": f"/{app}",
                                             "serve.num_replicas": 2, "serve.model_cpus": 0.5,
                                             "serve.prediction_log": log})
    url = summary["endpoint"]
    nodes = multinode.node_ids()
    running = [replica for replica in _replicas(multinode, app) if replica["state"] == "RUNNING"]
    assert {replica["node_id"] for replica in running} == {nodes["driver"], nodes["spot"]}, running
    record = {"year": 2013, "month": 7, "day": 12, "carrier": "UA", "origin": "EWR", "dest": "ORD",
              "tailnum": "N14228", "distance": 719, "sched_dep_time": 1700, "sched_arr_time": 1830,
              "dep_delay": 40, "temp": 80, "dewp": 60, "humid": 50, "wind_speed": 8, "precip": 0,
              "pressure": 1015, "visib": 10}
    stop, results = threading.Event(), []
    clients = [threading.Thread(target=_load, args=(url, [record] * 4, stop, results)) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(5)
    killed_at = time.time()
    multinode.spot().kill()
    replaced = None
    while time.time() - killed_at < 120:
        running = [replica for replica in _replicas(multinode, app) if replica["state"] == "RUNNING"]
        if len(running) == 2 and nodes["spot"] not in {replica["node_id"] for replica in running}:
            replaced = time.time() - killed_at
            break
        time.sleep(0.5)
    time.sleep(5)
    stop.set()
    for client in clients:
        client.join()
    assert replaced is not None, "Serve did not replace the lost replica within 120 s"
    failed = [(sent - killed_at, status) for sent, _, status in results if status != 200]
    answered = sorted(done for _, done, status in results if status == 200)
    gaps = [later - earlier for earlier, later in itertools.pairwise(answered) if later > killed_at]
    after = [status for sent, _, status in results if sent > killed_at + replaced]
    print(f"multinode serving: {len(results)} requests, {len(failed)} failed {failed[:10]}; the longest wait "
          f"between answers after the kill {max(gaps):.2f} s; the lost replica replaced in {replaced:.1f} s")
    # What fails is what was in flight on the lost replica when it died: Serve's proxy answers those with a 500
    # (predictions are idempotent: a client retries them); each client has one request in flight at a time, and
    # a client may hit the dying replica once more before the router drops it.
    assert len(failed) <= 2 * len(clients) and all(-1 < sent < 5 for sent, _ in failed), failed
    assert max(gaps) < 10 and after and all(status == 200 for status in after)

    # the prediction log went to object storage from the replicas on both nodes (the lost one and its replacement
    # included), and the monitor, a job like any stage, judges it from there
    import pyarrow.fs as pafs

    from mlscale.config import ObjectStoreConfig
    from mlscale.data.sources import object_store

    files = object_store(ObjectStoreConfig(endpoint_url=multinode.s3_endpoint)).get_file_info(
        pafs.FileSelector("lake/predictions/multinode", recursive=True))
    writers = {info.base_name.split("-")[0] for info in files if info.base_name.endswith(".parquet")}
    assert len(writers) >= 3, sorted(info.path for info in files)  # two replicas, then the replacement
    _, monitored = multinode.submit("monitor", {"serve.app_name": app, "serve.prediction_log": log,
                                                "monitor.window": "count", "monitor.window_rows": 2000})
    assert monitored["prediction_log"] == log["path"] and monitored["windows"] >= 2, monitored
    assert monitored["last_overall_drift"] is not None  # one repeated record: far from the training profile
    print(f"multinode monitor: {monitored['windows']} windows of the S3 log from {len(writers)} replicas; last drift "
          f"{monitored['last_overall_drift']:.2f}")


def test_a_sweep_and_batch_scoring_are_cluster_jobs_too(multinode):
    """The remaining data and training stages through the same `mlscale cluster submit`: a sweep (its trial a Ray
    Train run) on the prepared data on object storage, then batch scoring of the source with the champion, on the
    capacity left after the spot node's loss. One trial: what a sweep of several proves (trials told to Optuna,
    pruned, resumed) is tests/e2e/test_tune_job.py's; a second trial here cost 18 s (124 -> 107 s) and proved
    nothing more."""
    # the on-demand node's CPUs left beside the serve replicas and this job's driver cannot hold a trial and its
    # Ray Data tasks (the sweep refuses to start, saying so): a spot node joins, as the autoscaler brings one
    multinode.start_worker(f"spot-{len(multinode.nodes)}", tmp=multinode.nodes["head"].temp_dir.parent, **SPOT_NODE)
    _, swept = multinode.submit("tune", {"tune.num_trials": 1, "train.epochs": 1,
                                         "tune.name": f"multinode-{uuid.uuid4().hex[:6]}",
                                         "tracking.registered_model": "flights-small-swept"})
    assert swept["trials"] == 1 and swept["trials_failed"] == 0 and swept["model_version"], swept
    _, scored = multinode.submit("score", {})
    assert scored["rows_read"] == scored["scored_rows"] + scored["quarantine_rows"] and scored["scored_rows"] > 0
    print(f"multinode: sweep {swept['trials']} trials, best val AUC {swept.get('best_val_auc')}; scored "
          f"{scored['scored_rows']} rows with v{scored['model_version']}")
