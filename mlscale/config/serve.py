"""Serving and batch scoring: the serve section (replicas, canary, cache, log, graphs) and score."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlscale.config.base import StrictModel


class ServeAutoscaling(StrictModel):
    """Ray Serve's autoscaler for the model deployment: replicas follow ongoing requests per replica."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica the autoscaler steers toward.")
    upscale_delay_s: float = Field(2.0, ge=0, description="Load must stay above target this long before scaling up.")
    downscale_delay_s: float = Field(
        30.0, ge=0, description="Load must stay below target this long before scaling down.")
    metrics_interval_s: float = Field(1.0, gt=0, description="How often replicas report their load.")
    look_back_period_s: float = Field(5.0, gt=0, description="The window the load is averaged over.")

    @model_validator(mode="after")
    def _bounds(self) -> ServeAutoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class CanaryConfig(StrictModel):
    """A challenger served beside the champion on a share of live traffic, judged on it, then promoted or rolled
    back automatically (`mlscale canary`)."""

    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of requests the challenger answers.")
    sticky_header: str | None = Field(
        None, description="A request header (e.g. X-User-Id) whose value picks the version, so one caller always "
                          "meets the same model; None: each request is drawn at random.")
    min_requests: int = Field(200, ge=1, description="Challenger requests seen before anything is decided.")
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0, description="Challenger failures per request allowed.")
    max_p99_ratio: float = Field(1.5, ge=1.0, description="Challenger p99 latency allowed, as a multiple of the "
                                                           "champion's on the same replicas.")
    p99_floor_ms: float = Field(20.0, ge=0, description="A p99 excess below this many ms never rolls back (noise).")
    max_prediction_shift: float = Field(
        0.05, gt=0, description="Largest mean |challenger - champion| on the same records, in units of the label's "
                                "scale (1 for probabilities, the label's std for regression).")
    min_paired_records: int = Field(
        100, ge=1, description="Challenger records also predicted by the champion (the shadow comparison) before a "
                               "promotion: a release is judged on a measured prediction shift, never an unknown one.")
    auto_promote: bool = Field(True, description="Promote when min_requests pass every threshold; False: hold the "
                                                 "canary (rollback still automatic).")
    check_interval_s: float = Field(1.0, gt=0, description="How often the live numbers are read and judged.")
    timeout_s: float = Field(3600.0, gt=0, description="No decision by then: roll back (the canary saw too little "
                                                       "traffic to be judged).")
    lease_s: float = Field(
        15.0, gt=0, description="The challenger keeps its share only while the watcher renews this lease (every "
                                "check): a watcher that dies (Ctrl-C, a stopped or killed job, a lost node) leaves "
                                "the champion serving alone within this time. A held canary is leased for "
                                "timeout_s.")

    @model_validator(mode="after")
    def _lease_outlasts_a_check(self) -> CanaryConfig:
        if self.lease_s <= self.check_interval_s + 1.0:  # the replicas hear of a renewal within a second
            raise ValueError(f"lease_s ({self.lease_s:g}) must exceed check_interval_s ({self.check_interval_s:g}) "
                             f"+ 1 s, or the challenger loses its share between two renewals")
        return self


class PredictionCacheConfig(StrictModel):
    """Answers remembered per replica, keyed on the validated record and the version that predicted it."""

    max_entries: int = Field(100_000, ge=1)
    max_bytes: int = Field(
        64 * 2**20, ge=1024, description="Memory the cached keys may take per replica (a key is the record's text): "
                                         "past it the least recently used go, so long text fields cannot fill RAM.")
    ttl_s: float = Field(300.0, gt=0, description="An answer older than this is predicted again.")


class PredictionLogConfig(StrictModel):
    """What the service was asked and answered, sampled, written to parquet in batches off the request path."""

    path: str | None = Field(None, description="A folder or object-storage URI (s3://...); None: "
                                               "<storage.root>/predictions/<name>.")
    sample_rate: float = Field(1.0, gt=0.0, le=1.0, description="Share of requests logged.")
    flush_records: int = Field(5_000, ge=1, description="Write when this many records wait.")
    flush_interval_s: float = Field(5.0, gt=0, description="Write at least this often.")
    max_pending_records: int = Field(
        200_000, ge=1, description="Records kept while storage is failing; past it the oldest are dropped (counted).")
    max_pending_bytes: int = Field(
        128 * 2**20, ge=1024, description="Memory the pending rows may take (their text and numbers, estimated): "
                                          "the same drop-oldest bound by size, so long text cannot fill RAM.")
    shutdown_flush_s: float = Field(
        10.0, gt=0, description="A replica shutting down (a rolling update, a scale-down) writes what is pending "
                                "within this time (below Serve's graceful_shutdown_timeout_s of 20 s).")


class GraphConfig(StrictModel):
    """More than one model behind one endpoint, each its own deployment (own replicas, own autoscaling)."""

    mode: Literal["fallback", "ensemble"]
    models: list[str] = Field(..., min_length=2, description="fallback: the main model, then what answers when it "
                                                               "is overloaded or failing; ensemble: the averaged "
                                                               "models (models:/ URIs, aliases resolved at deploy).")
    weights: list[float] | None = Field(None, description="ensemble: one weight per model (default equal).")
    timeout_s: float = Field(5.0, gt=0, description="fallback: how long the main model may take.")
    model_cpus: float = Field(0.5, gt=0, description="CPUs per replica of each model deployment.")
    num_replicas: int = Field(1, ge=1, description="Replicas per model when autoscaling is off.")
    autoscaling: ServeAutoscaling | None = Field(
        None, description="Set: each model's deployment scales on its own load between these bounds.")
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica of each ensemble model, or of the main "
                                                             "model of a fallback (its fallbacks get the serve "
                                                             "section's own, larger limits).")
    max_queued_requests: int = Field(64, ge=1, description="Past it the model refuses at once (and, in fallback "
                                                            "mode, the next model answers).")

    @model_validator(mode="after")
    def _weights(self) -> GraphConfig:
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.models)} models")
        return self


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "mlscale"
    route_prefix: str = "/"
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs an HTTP proxy: on every node (a load balancer in front reaches "
                                 "any of them) or on the head only (several raylets on one machine share a port).")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is off.")
    autoscaling: ServeAutoscaling | None = Field(
        None, description="Set: the replica count follows the load between min_replicas and max_replicas.")
    model_cpus: float = Field(
        1.0, gt=0, description="CPUs reserved per replica (each replica is the HTTP ingress and the model); one "
                               "intra-op thread per reserved CPU.")
    replica_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each model replica asks for, e.g. {serve: 1}: "
                                          "replicas then run only on node groups that carry it (the cluster "
                                          "definition's on-demand serve group), never on spot capacity.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on at once; more wait in the caller's queue.")
    max_batch_size: int = Field(64, ge=1, description="Requests merged into one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a batch waits for more requests after its first. 0: it takes whatever "
                               "queued while the previous batch ran (no added latency when idle, full batches "
                               "under load).")
    max_records_per_request: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="Larger request bodies get a 413 before parsing "
                                                                 "(a chunked body is read only up to the limit).")
    unknown_fields: Literal["reject", "ignore"] = Field(
        "reject", description="A record field the input schema does not declare: reject (a 422 naming it, so a "
                              "misspelt optional field is not silently imputed as missing) or ignore (dropped, for "
                              "callers that send more). The dataset's other columns (its label, unused columns) "
                              "are accepted and ignored either way.")
    max_queued_requests: int = Field(
        512, ge=1, description="Requests waiting per deployment beyond its replicas' capacity; past it callers get "
                               "a 503 at once instead of queueing without bound.")
    overload_status: Literal[503, 429] = Field(
        503, description="The status a request refused for overload gets (past max_queued_requests).")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with an overload refusal.")
    access_log: bool = Field(
        False, description="Serve's access log line per request (costs ~5% of a replica's CPU at full load); "
                           "requests, errors and latency are counted in the Prometheus metrics either way.")
    api_keys_env: str | None = Field(
        None, description="Name of an environment variable holding comma-separated API keys; set: /predict and "
                          "/schema need `Authorization: Bearer <key>` (401 without), /health stays open.")
    api_keys_file: str | None = Field(
        None, description="A file holding API keys, one per line (# comments allowed), e.g. a mounted Kubernetes "
                          "secret; combined with api_keys_env when both are set.")
    request_timeout_s: float | None = Field(
        30.0, gt=0, description="End-to-end HTTP request timeout (408); applied when Serve starts on the cluster.")
    variant: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: Linear layers dynamically quantized for CPU serving; deploy measures its metric "
                            "against fp32 on the test split and refuses it beyond int8_max_metric_drop.")
    int8_max_metric_drop: float = Field(0.005, ge=0, description="Largest loss of the test metric int8 may cost.")
    cache: PredictionCacheConfig | None = Field(None, description="Set: repeated records are answered from memory.")
    prediction_log: PredictionLogConfig | None = Field(
        None, description="Set: requests are logged (features, prediction, version, request id, time) for "
                          "monitoring and label joins.")
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    graph: GraphConfig | None = Field(None, description="Set: deploy a fallback or ensemble graph instead.")
    compare_rows: int = Field(128, ge=1, description="Held-out rows served and compared with batch scoring.")
    compare_rtol: float = Field(
        1e-5, ge=0, description="Served vs batch: allowed difference relative to the prediction (float32 rounding "
                                "grows with the value: labels in the thousands differ by ~1e-3).")
    compare_atol: float = Field(
        1e-6, ge=0, description="Served vs batch: allowed absolute difference, in units of the label's scale "
                                "(1 for probabilities, the label's standard deviation for regression).")


class ScoreConfig(StrictModel):
    """Batch inference over the data section's source (`mlscale score`)."""

    model: str | None = Field(None, description="models:/name@alias or models:/name/<version>; None: the serving "
                                                "alias (tracking.registered_model @ tracking.alias).")
    output: str | None = Field(None, description="Where the scores go; None: <storage.root>/scores/<name>.")
    columns: list[str] | None = Field(
        None, description="Input columns written beside each prediction; None: validation.unique when set (the "
                          "rows' key), else every input column.")
    actors: int | None = Field(
        None, ge=1, description="Model replicas scoring in parallel (a Ray Data actor pool; Ray Data fuses reading "
                                "and validation into them); None: autoscaled from 1 to the cluster's CPUs.")
    batch_size: int = Field(4096, ge=1)
