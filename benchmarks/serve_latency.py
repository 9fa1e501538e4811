"""Serving throughput and latency on loopback: mlscale on Ray Serve against the simplest peer, in one run.

One bundle (trained here on the flights sample), one JSON body of one record, one closed-loop load generator
(benchmarks/serving/load.py, its own process) at fixed concurrency against:
  (a) mlscale: Ray Serve, one deployment that is ingress and model, @serve.batch merging concurrent requests;
  (b) mlscale without batching (max_batch_size 1);
  (c) a plain FastAPI + uvicorn process serving the same bundle with the same validation, one pass per request;
  (d) (a)'s replica reached on its own port (Ray Serve's direct ingress), to show what the proxy hop costs;
  (e) (a) with the prediction cache on: the same record again is a cache hit;
  (f) (a) as the int8 dynamically quantized variant against fp32, with requests of 256 records (where the forward
      pass, not HTTP, is the work), plus the forward pass alone in-process;
  (g) (a) with the prediction log on (every request, written to parquet in the background).
Then the autoscaling reaction: a load step against an autoscaled deployment, timed to its first new replica.

    python benchmarks/serve_latency.py                 # ~9 min on 2 cores
    python benchmarks/serve_latency.py --seconds 5     # a quick look

Writes benchmarks/results/serve_latency.json (throughput_ratio_c32, p99_ratio_c32, p50_overhead_ms_c1,
autoscale_reaction_s, cache_hit_p50_ms, int8_throughput_ratio, int8_metric_drop, log_overhead_p50_ms_c1,
log_throughput_ratio_c32, and every measurement) and serve_latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
# Replicas also listen on their own port (30000+), so the run measures the proxy hop's cost too (row d); the proxy
# path (a, b) is unchanged by it.
os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")
RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, seconds: float = 120) -> None:
    import requests

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f} s")


def load(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    """One load level, measured by the load generator in its own process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.serving.load", "--url", url, "--body", str(body),
                          "--concurrency", str(concurrency), "--seconds", str(seconds)],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep(name: str, url: str, body: Path, seconds: float, levels: tuple[int, ...] = CONCURRENCY) -> list[dict]:
    rows = []
    for concurrency in levels:
        row = {"system": name, **load(url, body, concurrency, seconds)}
        print(f"  {name:<22} c={concurrency:<3} {row['throughput_rps']:8.0f} req/s  p50 {row['p50_ms']:7.2f} ms  "
              f"p99 {row['p99_ms']:7.2f} ms  {row['statuses']}", flush=True)
        rows.append(row)
    return rows


def trained_bundle(work: Path):
    """A real bundle: the flights sample prepared and trained (one epoch) by mlscale's own stages."""
    from mlscale.config import load_config
    from mlscale.data.records import held_out_records
    from mlscale.stages.common import start
    from mlscale.stages.prepare import prepare_stage
    from mlscale.stages.train import train_stage

    config = load_config("flights-small", {"storage.root": str(work / "storage"), "tracking.uri": None,
                                           "train.epochs": 1, "serve.port": free_port(),
                                           "serve.app_name": "bench", "serve.route_prefix": "/bench"})
    start(config)
    prepared = prepare_stage(config)
    trained = train_stage(config, prepared)
    record = held_out_records(prepared.read("test"), 1)[0]
    return config, trained.version_uri, record


def serve_with(config, model_uri: str, name: str, **settings):
    """Deploy the bundle as its own Serve app with these serve settings; returns its predict URL."""
    from mlscale.stages.deploy import deploy_stage

    serve_settings = type(config.serve).model_validate({**config.serve.model_dump(), "app_name": name,
                                                        "route_prefix": f"/{name}", **settings})
    url = deploy_stage(config.model_copy(update={"serve": serve_settings}), model_uri)
    wait_until_up(url.rsplit("/", 1)[0] + "/health")
    return url


def direct_url(app: str) -> str:
    """The predict URL on the app's (first) replica's own HTTP port: with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 every
    ingress replica also listens itself (a load balancer such as Ray's HAProxy mode fronts them on a cluster)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{app}:" in part for part in process.info["cmdline"] or []):
            ports = [c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                     and 30000 <= c.laddr.port <= 31000]
            if ports:
                return f"http://127.0.0.1:{min(ports)}/{app}/predict"
    raise RuntimeError(f"no replica of {app} listens on a direct-ingress port")


def autoscale_reaction(config, model_uri: str, body: Path) -> dict:
    """Seconds from the start of a load step (32 clients) to the first added replica answering (RUNNING)."""
    from ray import serve

    from mlscale.config import ServeAutoscaling
    from mlscale.serve.app import DEPLOYMENT

    scaling = ServeAutoscaling(min_replicas=1, max_replicas=2, target_ongoing_requests=4, upscale_delay_s=1.0,
                               downscale_delay_s=10.0, metrics_interval_s=0.5, look_back_period_s=2.0)
    url = serve_with(config, model_uri, "autoscaled", autoscaling=scaling, model_cpus=0.5)

    def running() -> int:
        status = serve.status().applications["autoscaled"].deployments[DEPLOYMENT]
        return int(status.replica_states.get("RUNNING", 0))

    assert running() == 1
    started = time.perf_counter()
    step = threading.Thread(target=load, args=(url, body, 32, 25.0))
    step.start()
    reaction = None
    while step.is_alive():
        if running() >= 2:
            reaction = time.perf_counter() - started
            break
        time.sleep(0.2)
    step.join()
    serve.delete("autoscaled")
    return {"autoscale_reaction_s": reaction, "load_step_clients": 32, **scaling.model_dump()}


def int8_against_fp32(config, model_uri: str, records: list[dict], work: Path, seconds: float) -> dict:
    """The int8 variant against fp32: served (256-record requests, 8 clients) and the forward pass in-process."""
    from ray import serve

    from mlscale.registry.store import load_bundle
    from mlscale.stages.deploy import check_variant

    body = work / "body-256.json"
    body.write_text(json.dumps(records))
    served = {}
    for variant in ("fp32", "int8"):
        url = serve_with(config, model_uri, f"v-{variant}", variant=variant, int8_max_metric_drop=1.0)
        served[variant] = {"system": f"mlscale-{variant}-256-records", **load(url, body, 8, seconds)}
        print(f"  {variant}: {served[variant]['throughput_rps']:.0f} req/s of 256 records, p50 "
              f"{served[variant]['p50_ms']:.1f} ms", flush=True)
        serve.delete(f"v-{variant}")
    int8_config = config.model_copy(update={"serve": config.serve.model_copy(update={
        "variant": "int8", "int8_max_metric_drop": 1.0})})
    measured = check_variant(int8_config, model_uri)
    bundle = load_bundle(model_uri, config.tracking_uri)
    batch = (records * (4096 // len(records) + 1))[:4096]
    forward = {}
    for variant in ("fp32", "int8"):
        variant_bundle = bundle.with_variant(variant)
        variant_bundle.predict_records(batch)  # warm up
        started = time.perf_counter()
        for _ in range(10):
            variant_bundle.predict_records(batch)
        forward[variant] = 10 * len(batch) / (time.perf_counter() - started)
    return {"int8_throughput_ratio": served["int8"]["throughput_rps"] / served["fp32"]["throughput_rps"],
            "int8_forward_ratio": forward["int8"] / forward["fp32"], "int8_metric_drop": measured["drop"],
            "int8_metric": measured["metric"], "int8_metric_values": {"fp32": measured["fp32"],
                                                                     "int8": measured["int8"]},
            "forward_records_per_s": forward, "rows": list(served.values())}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for system in dict.fromkeys(row["system"] for row in rows):
        mine = [row for row in rows if row["system"] == system]
        levels = [row["concurrency"] for row in mine]
        left.plot(levels, [row["throughput_rps"] for row in mine], marker="o", label=system)
        right.plot(levels, [row["p99_ms"] for row in mine], marker="o", label=system)
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="Throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="Tail latency", xscale="log")
    left.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load level")
    arguments.add_argument("--replicas", type=int, default=1, help="replicas of (a) and (b)")
    args = arguments.parse_args()
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as folder:
        work = Path(folder)
        print("training the bundle served by every system ...", flush=True)
        config, model_uri, record = trained_bundle(work)
        from mlscale.registry.store import load_bundle

        bundle_dir = load_bundle(model_uri, config.tracking_uri).save(work / "bundle")
        body = work / "body.json"
        body.write_text(json.dumps(record))

        rows: list[dict] = []
        port = free_port()
        baseline = subprocess.Popen([sys.executable, "-m", "benchmarks.serving.baseline_server", "--bundle",
                                     str(bundle_dir), "--port", str(port)], cwd=REPO)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/health")
            print("(c) FastAPI + uvicorn, one process, one forward pass per request", flush=True)
            rows += sweep("fastapi-uvicorn", f"http://127.0.0.1:{port}/predict", body, args.seconds)
        finally:
            baseline.terminate()
            baseline.wait()
        print("(a) mlscale on Ray Serve, batching", flush=True)
        url = serve_with(config, model_uri, "batched", num_replicas=args.replicas)
        rows += sweep("mlscale-batched", url, body, args.seconds)
        print("(d) the same replica, reached directly (Ray Serve's direct ingress: no proxy hop)", flush=True)
        rows += sweep("mlscale-direct-ingress", direct_url("batched"), body, args.seconds, levels=(1, 32))
        from ray import serve

        serve.delete("batched")
        print("(b) mlscale on Ray Serve, no batching", flush=True)
        url = serve_with(config, model_uri, "unbatched", num_replicas=args.replicas, max_batch_size=1)
        rows += sweep("mlscale-unbatched", url, body, args.seconds, levels=(32,))
        serve.delete("unbatched")
        print("(e) mlscale with the prediction cache: the same record again", flush=True)
        url = serve_with(config, model_uri, "cached", num_replicas=args.replicas,
                         cache={"max_entries": 10_000, "ttl_s": 600})
        cached = [{"system": "mlscale-cache-hit", **load(url, body, concurrency, args.seconds)}
                  for concurrency in (1, 32)]
        for row in cached:
            print(f"  cache hit c={row['concurrency']}: {row['throughput_rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms",
                  flush=True)
        rows += cached
        serve.delete("cached")
        print("(g) mlscale with the prediction log on (every request)", flush=True)
        url = serve_with(config, model_uri, "logged", num_replicas=args.replicas,
                         prediction_log={"path": str(work / "prediction-log"), "sample_rate": 1.0})
        rows += [{"system": "mlscale-logged", **load(url, body, concurrency, args.seconds)} for concurrency in (1, 32)]
        for row in rows[-2:]:
            print(f"  logged c={row['concurrency']}: {row['throughput_rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms",
                  flush=True)
        serve.delete("logged")
        print("(f) int8 against fp32, 256 records per request", flush=True)
        from mlscale.data.prepare import load_prepared
        from mlscale.data.records import held_out_records

        int8 = int8_against_fp32(config, model_uri, held_out_records(load_prepared(config).read("test"), 256),
                                 work, args.seconds)
        print("autoscaling: a load step against min 1 / max 2 replicas", flush=True)
        scaling = autoscale_reaction(config, model_uri, body)

    def at(system: str, concurrency: int) -> dict:
        return next(row for row in rows if row["system"] == system and row["concurrency"] == concurrency)

    ours, theirs = at("mlscale-batched", 32), at("fastapi-uvicorn", 32)
    result = {
        "throughput_ratio_c32": ours["throughput_rps"] / theirs["throughput_rps"],
        "p99_ratio_c32": ours["p99_ms"] / theirs["p99_ms"],
        "p50_overhead_ms_c1": at("mlscale-batched", 1)["p50_ms"] - at("fastapi-uvicorn", 1)["p50_ms"],
        "autoscale_reaction_s": scaling["autoscale_reaction_s"],
        "unbatched_throughput_ratio_c32": at("mlscale-unbatched", 32)["throughput_rps"] / theirs["throughput_rps"],
        "direct_ingress_throughput_ratio_c32": at("mlscale-direct-ingress", 32)["throughput_rps"]
        / theirs["throughput_rps"],
        "direct_ingress_p50_overhead_ms_c1": at("mlscale-direct-ingress", 1)["p50_ms"]
        - at("fastapi-uvicorn", 1)["p50_ms"],
        "cache_hit_p50_ms": at("mlscale-cache-hit", 1)["p50_ms"],
        "cache_miss_p50_ms": at("mlscale-batched", 1)["p50_ms"],
        "log_overhead_p50_ms_c1": at("mlscale-logged", 1)["p50_ms"] - at("mlscale-batched", 1)["p50_ms"],
        "log_throughput_ratio_c32": at("mlscale-logged", 32)["throughput_rps"] / ours["throughput_rps"],
        "cache_hit_throughput_ratio_c32": at("mlscale-cache-hit", 32)["throughput_rps"] / theirs["throughput_rps"],
        **{key: value for key, value in int8.items() if key != "rows"}, "int8_rows": int8["rows"],
        "replicas": args.replicas, "seconds_per_level": args.seconds, "rows": rows, "autoscaling": scaling,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": date.today().isoformat(), "wall_s": time.time() - began,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_latency.json").write_text(json.dumps(result, indent=2))
    plot(rows, RESULTS / "serve_latency.png")
    print()
    print(f"{'system':<22}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for row in rows:
        print(f"{row['system']:<22}{row['concurrency']:>8}{row['throughput_rps']:>10.0f}{row['p50_ms']:>10.2f}"
              f"{row['p99_ms']:>10.2f}")
    print(f"cache_hit_p50_ms: {result['cache_hit_p50_ms']:.2f} (a miss: {result['cache_miss_p50_ms']:.2f})")
    print(f"prediction log: {result['log_overhead_p50_ms_c1']:+.2f} ms p50 at 1 client, "
          f"{result['log_throughput_ratio_c32']:.2f}x throughput at 32")
    print(f"int8 / fp32: served {result['int8_throughput_ratio']:.2f}x, forward pass "
          f"{result['int8_forward_ratio']:.2f}x, {result['int8_metric']} drop {result['int8_metric_drop']:+.5f}")
    reaction = result["autoscale_reaction_s"]
    print(f"autoscale reaction to a load step: {'none' if reaction is None else f'{reaction:.1f} s'}")
    print(f"p99 ratio at 32 clients (mlscale / FastAPI): {result['p99_ratio_c32']:.2f}; "
          f"p50 overhead at 1 client: {result['p50_overhead_ms_c1']:+.2f} ms")
    print(f"throughput_ratio_c32 (mlscale batched / FastAPI + uvicorn): {result['throughput_ratio_c32']:.2f}x")


if __name__ == "__main__":
    main()
