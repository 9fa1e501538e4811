"""The service's Prometheus metrics, through Ray Serve's metrics API (exported by every node's metrics agent with
Serve's own deployment/replica/application tags added): requests and errors per model version and status, request
latency, and what batching achieved."""

from __future__ import annotations

import math
import time

from ray.serve.metrics import Counter, Histogram

LATENCY_BOUNDARIES_MS: list[float] = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000,
                                      2000, 5000]
PREDICTIONS_OBSERVED = 16
UNIT_BOUNDARIES: list[float] = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
SIZE_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]


class ServiceMetrics:
    """One set per replica; names are prefixed `ray_` by Ray's exporter (`ray_mlscale_requests_total`, ...)."""

    def __init__(self) -> None:
        self.requests = Counter("mlscale_requests", description="Predict requests answered, by model version and "
                                                                "HTTP status.",
                                tag_keys=("version", "status"))  # type: ignore[arg-type] # Ray hints tuple[str]
        self.latency = Histogram("mlscale_request_latency_ms", description="Time in the replica per predict "
                                                                           "request, by model version.",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("version",))
        self.records = Counter("mlscale_records", description="Records predicted, by model version.",
                               tag_keys=("version",))
        self.batch_requests = Histogram("mlscale_batch_requests", description="Requests merged into one forward "
                                                                              "pass.",
                                        boundaries=SIZE_BOUNDARIES, tag_keys=("version",))
        self.batch_records = Histogram("mlscale_batch_records", description="Records in one forward pass.",
                                       boundaries=SIZE_BOUNDARIES, tag_keys=("version",))

        self.cache_lookups = Counter("mlscale_cache_lookups", description="Requests looked up in the prediction "
                                                                          "cache, by version and result (hit: "
                                                                          "answered from it).",
                                     tag_keys=("version", "result"))  # type: ignore[arg-type]

        self.prediction = Histogram("mlscale_prediction", description="Predictions on one 0-1 scale, by version: "
                                                                      "the probability (classification), or where "
                                                                      "the value falls in the training label's "
                                                                      "normal distribution (regression).",
                                    boundaries=UNIT_BOUNDARIES, tag_keys=("version",))

        self.replica_seconds = Counter("mlscale_replica_seconds", description="Seconds this replica has been up, by "
                                                                              "the version it serves: what the "
                                                                              "service costs in replica time.",
                                       tag_keys=("version",))
        self.replica_cpu_seconds = Counter("mlscale_replica_cpu_seconds", description="CPU seconds the replica's "
                                                                                      "process used (its own "
                                                                                      "counters), by version.",
                                           tag_keys=("version",))
        self.accounted = (time.monotonic(), time.process_time())

    def account(self, version: str) -> None:
        """Add the replica time and CPU time since the last call (Serve's periodic health check calls it)."""
        now = (time.monotonic(), time.process_time())
        wall, cpu = now[0] - self.accounted[0], now[1] - self.accounted[1]
        self.accounted = now
        self.replica_seconds.inc(max(wall, 0.0), tags={"version": version})
        self.replica_cpu_seconds.inc(max(cpu, 0.0), tags={"version": version})

    def predictions(self, version: str, values: list[float], label: dict) -> None:
        """The distribution of what a version predicts, on one scale for any label (a regression value v becomes
        Phi((v - mean) / std) of the training label), so a shift between versions shows on one dashboard. At most
        PREDICTIONS_OBSERVED per request (evenly spaced), so a 10k-record request costs what a small one does."""
        tags = {"version": version}
        values = values[::max(1, len(values) // PREDICTIONS_OBSERVED)][:PREDICTIONS_OBSERVED]
        if label.get("task") == "regression":
            mean, std = float(label.get("mean", 0.0)), float(label.get("std", 1.0)) or 1.0
            values = [0.5 * (1.0 + math.erf((value - mean) / (std * math.sqrt(2.0)))) for value in values]
        for value in values:
            self.prediction.observe(value, tags=tags)

    def cache(self, version: str, hit: bool) -> None:
        self.cache_lookups.inc(tags={"version": version, "result": "hit" if hit else "miss"})

    def request(self, version: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"version": version, "status": str(status)})
        self.latency.observe(seconds * 1000.0, tags={"version": version})

    def batch(self, version: str, requests: int, records: int) -> None:
        tags = {"version": version}
        self.batch_requests.observe(requests, tags=tags)
        self.batch_records.observe(records, tags=tags)
        self.records.inc(records, tags=tags)
