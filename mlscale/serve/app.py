"""The Ray Serve application: one deployment whose replicas are both the HTTP ingress and the model.

A request goes proxy -> replica and back: the replica validates the body against the bundle's input schema, merges
concurrent requests into one forward pass (@serve.batch), and answers with the version that predicted. A separate
ingress deployment would add a second hop (a handle call, serialization, a second queue) and buy nothing here: both
halves scale together with the load.

The version served arrives through `user_config`: pinned at deploy time (`models:/name/<n>`), and changed only by
Serve's own update path (`reconfigure` on the running replicas), never by a replica re-reading an alias.

This module is the replica and its HTTP handling only: batching many requests into one pass is `serve/batching.py`,
the user_config it receives is `serve/rollout.py`, and building the application from the serve section (options,
key digests, the builder a RayService calls) is `serve/build.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from mlscale.config import expand_env
from mlscale.registry.bundle import Bundle
from mlscale.registry.store import load_pinned_bundle, uri_version
from mlscale.serve.batching import TransformFailed, predict_requests
from mlscale.serve.cache import PredictionCache
from mlscale.serve.docs import openapi_document
from mlscale.serve.ledger import release_ledger
from mlscale.serve.live import LiveStats
from mlscale.serve.metrics import ServiceMetrics
from mlscale.serve.predlog import LogSettings, PredictionLog
from mlscale.serve.requests import (
    RequestParser,
    RequestRejected,
    authorized,
    check_content_type,
    read_body,
    rejection,
    unauthorized,
    untransformable,
)
from mlscale.serve.rollout import Canary, Rollout

DEPLOYMENT = "ModelServer"
REPORT_INTERVAL_S = 1.0  # how often a replica sends its live release numbers to the ledger
log = logging.getLogger(__name__)
api = FastAPI(title="mlscale model service", openapi_url=None, docs_url=None, redoc_url=None)


class ModelInfo(BaseModel):
    """Which model answered: the URI asked for, the exact version it was pinned to, and its lineage."""

    model_config = ConfigDict(extra="allow")
    uri: str
    served_uri: str
    version: str


class PredictResponse(BaseModel):
    predictions: list[float] = Field(..., description="One prediction per record, in request order.")
    model: ModelInfo


class ErrorBody(BaseModel):
    detail: list[dict[str, Any]] = Field(..., description="What is wrong, each entry naming its place (`loc`).")


# What a request was, for a canary's judgement: only what a version answered (or failed to answer for its own
# reasons) is evidence about it; a request refused for the caller's fault never reached the model.
CALLER, ANSWERED, FAILED = "caller", "answered", "failed"


@dataclass(frozen=True)
class ServedModel:
    """Everything a request needs from one version, swapped as one object so a request never mixes two."""

    bundle: Bundle
    parser: RequestParser
    info: dict[str, Any]
    info_json: bytes
    cache: PredictionCache | None = None

    @property
    def version(self) -> str:
        return str(self.info["version"])


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "The body is not JSON."), (401, "A valid API key is required."),
        (413, "The body is above serve.max_body_bytes."), (415, "The body is not declared application/json."),
        (422, "Not records, too many of them, or a field breaks the input schema (named in `loc`)."),
        (503, "Overloaded: retry after the Retry-After header's seconds."))}


class ModelServerReplica:
    """POST /predict (one record, a list, or {"records": [...]}); GET /schema, /health, /docs, /openapi.json."""

    def __init__(self, key_digests: tuple[str, ...] = ()) -> None:
        self.key_digests = tuple(key_digests)
        self.metrics = ServiceMetrics()
        self.served: ServedModel | None = None
        self.challenger: ServedModel | None = None
        self.canary: Canary | None = None
        self.live: dict[str, LiveStats] = {}
        self.reporter: asyncio.Task | None = None
        self.shadows: set[asyncio.Task] = set()  # shadow comparisons in flight (kept so they are not collected)
        self.prediction_log: PredictionLog | None = None
        self.log_writer: asyncio.Task | None = None
        self.lease_until = 0.0  # time.monotonic() until which the challenger may answer (the canary's lease)
        self.answered = 0  # predictions this replica answered (in /health: which replicas take traffic)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's update path: load the versions the rollout names (kept when unchanged) and apply its limits."""
        rollout = Rollout.model_validate(user_config)
        loaded = {(model.info["served_uri"], model.bundle.variant): model
                  for model in (self.served, self.challenger) if model is not None}
        champion = self._serving(rollout.uri, rollout.served_uri, rollout, loaded)
        canary = rollout.canary
        self.challenger = (self._serving(canary.uri, canary.served_uri, rollout, loaded, "challenger")
                           if canary else None)
        if canary is None or self.canary is None or canary.rollout_id != self.canary.rollout_id:
            self.live = {}
            self.lease_until = time.monotonic() + canary.lease_s if canary else 0.0  # until the first report
        self.canary = canary
        # @serve.batch's wrapper carries these setters; Ray's type hints present it as the plain coroutine
        self.predict_batch.set_max_batch_size(rollout.max_batch_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(rollout.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.served = champion
        self._configure_log(rollout, champion)

    def _configure_log(self, rollout: Rollout, champion: ServedModel) -> None:
        """A new prediction log when its settings or the input schema change; the old one writes what it holds."""
        wanted = LogSettings(**rollout.prediction_log) if rollout.prediction_log else None
        current = self.prediction_log
        if current is not None and wanted == current.settings and current.input_schema == list(
                champion.bundle.input_schema):
            return
        if current is not None:
            current.closed = True
            current.wake.set()
        self.prediction_log = PredictionLog(wanted, list(champion.bundle.input_schema)) if wanted else None
        self.log_writer = None

    @staticmethod
    def _serving(uri: str, served_uri: str, rollout: Rollout, loaded: dict[tuple[str, str], ServedModel],
                 role: str = "champion") -> ServedModel:
        """One version ready to answer: its bundle (reused when already loaded), request parser, cache and info."""
        current = loaded.get((served_uri, rollout.variant))
        tracking_uri = expand_env(rollout.tracking_uri) if rollout.tracking_uri else None
        bundle = current.bundle if current else load_pinned_bundle(served_uri, tracking_uri, rollout.bundle_cache
                                                                   ).with_variant(rollout.variant)
        version = uri_version(served_uri)
        info = {"uri": uri, "served_uri": served_uri, "version": version, "variant": rollout.variant,
                "role": role, **bundle.lineage}
        parser = RequestParser(list(bundle.input_schema), rollout.max_records, rollout.max_body_bytes, rollout.record,
                               rollout.unknown_fields, tuple(bundle.passthrough_columns))
        same_cache = current is not None and current.cache is not None and current.cache.max_entries == \
            rollout.cache_entries and current.cache.ttl_s == rollout.cache_ttl_s and \
            current.cache.max_bytes == rollout.cache_bytes
        cache = current.cache if same_cache and current else (
            PredictionCache(rollout.cache_entries, rollout.cache_ttl_s, max_bytes=rollout.cache_bytes)
            if rollout.cache_entries else None)
        return ServedModel(bundle, parser, info, json.dumps(info).encode(), cache)

    def __del__(self) -> None:
        """Serve's graceful shutdown (a rolling update, a scale-down, a deleted app): the prediction log writes
        what it holds, within its shutdown_flush_s."""
        prediction_log = getattr(self, "prediction_log", None)  # None too when __init__ did not finish
        if prediction_log is not None:
            prediction_log.close()

    def check_health(self) -> None:
        """Serve's health check (every few seconds): a replica without a loaded model is restarted rather than sent
        traffic; a healthy one adds its replica-seconds and CPU-seconds to the cost metrics."""
        if self.served is None:
            raise RuntimeError("no model loaded")
        self.metrics.account(self.served.version)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def predict_batch(self, items: list[tuple[ServedModel, list[dict[str, Any]]]]
                            ) -> list[list[float] | TransformFailed]:
        # the forward pass in a thread: the replica's loop keeps reading and validating the next requests meanwhile
        return await asyncio.to_thread(self._predict_items, items)

    def _predict_items(self, items: list[tuple[ServedModel, list[dict[str, Any]]]]
                       ) -> list[list[float] | TransformFailed]:
        """Items of one batch grouped by the version they were parsed for (two only during a rollout)."""
        groups: dict[int, list[int]] = {}
        for index, (served, _) in enumerate(items):
            groups.setdefault(id(served), []).append(index)
        out: list[list[float] | TransformFailed] = [[] for _ in items]
        for indices in groups.values():
            served = items[indices[0]][0]
            requests = [items[index][1] for index in indices]
            self.metrics.batch(served.version, len(requests), sum(len(request) for request in requests))
            for index, result in zip(indices, predict_requests(served.bundle, requests), strict=True):
                out[index] = result
        return out

    def _refused(self, request: Request) -> Response | None:
        """401 unless the request carries a valid key (every route but /health asks this)."""
        return None if authorized(request.headers.get("authorization"), self.key_digests) else unauthorized()

    def _model(self) -> ServedModel:
        if self.served is None:  # Serve sends no traffic before reconfigure has run; kept for a direct call
            raise RuntimeError("no model loaded")
        return self.served

    def _route(self, request: Request) -> ServedModel:
        """The champion, or during a canary the challenger for its share of requests (the same one for every
        request carrying the same sticky header value) while the canary's lease runs."""
        served, canary = self._model(), self.canary
        if canary is None or self.challenger is None:
            return served
        self._start_reporter()
        if time.monotonic() >= self.lease_until:  # nobody is judging the challenger: the champion answers alone
            return served
        key = request.headers.get(canary.sticky_header) if canary.sticky_header else None
        draw = (int(hashlib.sha256(f"{canary.rollout_id}:{key}".encode()).hexdigest()[:12], 16) / 16**12
                if key is not None else random.random())
        return self.challenger if draw < canary.fraction else served

    @api.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        served = self._route(request)
        outcome = FAILED
        try:
            response, outcome, answered_by = await self._answer(request, served)
        finally:
            elapsed = time.perf_counter() - started
            if self.canary is not None and outcome != CALLER:
                self._live(served.version).request(elapsed, outcome == FAILED)
        self.metrics.request(answered_by.version, response.status_code, elapsed)
        self.answered += outcome == ANSWERED
        return response

    def _live(self, version: str) -> LiveStats:
        self._start_reporter()
        return self.live.setdefault(version, LiveStats())

    def _start_reporter(self) -> None:
        if self.reporter is None or self.reporter.done():
            self.reporter = asyncio.get_running_loop().create_task(self._report_live())

    async def _report_live(self) -> None:
        """Send this replica's live numbers to the release ledger while a canary runs; its answer renews the
        challenger's share here (an unreachable ledger renews nothing: the lease runs out)."""
        replica = _replica_id()
        while self.canary is not None:
            canary = self.canary
            try:
                left = await release_ledger(canary.app_name).report.remote(
                    canary.rollout_id, replica, {version: stats.to_dict() for version, stats in self.live.items()})
                if self.canary is canary:
                    self.lease_until = time.monotonic() + float(left)
            except Exception as error:  # noqa: BLE001 - the ledger is being restarted: the next report catches up
                log.warning("release ledger report failed: %s", error)
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def _answer(self, request: Request, served: ServedModel) -> tuple[Response, str, ServedModel]:
        """The response, what it was (CALLER: refused for the caller's fault; ANSWERED; FAILED: the version's own
        failure), and the version that answered."""
        if (refused := self._refused(request)) is not None:
            return refused, CALLER, served
        try:
            check_content_type(request.headers.get("content-type"))
            served.parser.check_length(request.headers.get("content-length"))
            records = served.parser.parse(await read_body(request.stream(), served.parser.max_body_bytes))
        except RequestRejected as rejected:
            return rejection(rejected.status, rejected.detail), CALLER, served
        keys, predictions = served.cache.lookup(records) if served.cache is not None else ([], None)
        if served.cache is not None:
            self.metrics.cache(served.version, predictions is not None)
        if predictions is None:
            predicted = await self.predict_batch((served, records))
            if isinstance(predicted, TransformFailed):
                return await self._transform_failed(request, served, records, predicted)
            predictions = predicted
            if served.cache is not None:
                served.cache.store(keys, predictions)
        self.metrics.predictions(served.version, predictions, served.bundle.label)
        if (prediction_log := self.prediction_log) is not None:
            if self.log_writer is None:
                self.log_writer = asyncio.get_running_loop().create_task(prediction_log.run())
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            prediction_log.offer(request_id, served.version, records, predictions)
        if self.canary is not None:  # after the answer, so the shadow pass never counts in the version's latency
            shadow = asyncio.get_running_loop().create_task(self._compare(served, records, predictions))
            self.shadows.add(shadow)
            shadow.add_done_callback(self.shadows.discard)
        return _prediction_response(predictions, served), ANSWERED, served

    async def _transform_failed(self, request: Request, served: ServedModel, records: list[dict[str, Any]],
                                failure: TransformFailed) -> tuple[Response, str, ServedModel]:
        """Records that passed validation but that this version could not transform. During a canary the other
        version decides whose fault it is: if the champion answers the same records, the challenger failed (counted
        against it, and the caller gets the champion's answer); if it cannot either, the records are at fault."""
        log.warning("version %s could not transform a request's records: %s", served.version, failure.reason)
        champion = self.served
        if self.canary is not None and served is self.challenger and champion is not None:
            fallback = await self.predict_batch((champion, records))
            if not isinstance(fallback, TransformFailed):
                return _prediction_response(fallback, champion), FAILED, champion
        return untransformable(), CALLER, served

    async def _compare(self, served: ServedModel, records: list[dict[str, Any]], predictions: list[float]) -> None:
        """During a canary: the version's prediction level, and for the challenger the champion's answer for the
        same records (a shadow prediction, never returned), so the shift is measured on the same traffic."""
        stats = self._live(served.version)
        stats.predicted(predictions)
        champion = self.served
        if served is not self.challenger or champion is None:
            return
        shadow = await self.predict_batch((champion, records))
        if not isinstance(shadow, TransformFailed):
            stats.compared(predictions, shadow)

    @api.get("/schema", responses={401: ERRORS[401]})
    async def schema(self, request: Request) -> Any:
        """The input schema; the model's lineage (runs, commit, data fingerprints) only to an authorized caller."""
        if (refused := self._refused(request)) is not None:
            return refused
        served = self._model()
        return {"input_schema": [spec.model_dump() for spec in served.parser.input_schema], "model": served.info}

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness, the versions this replica serves, and its prediction cache's counts."""
        served, challenger = self.served, self.challenger
        answer: dict[str, Any] = {"status": "ok" if served is not None else "loading", "replica": _replica_id(),
                                  "answered": self.answered}
        if served is not None:
            answer["version"] = served.version
            if challenger is not None and self.canary is not None:
                answer["canary"] = {"version": challenger.version, "fraction": self.canary.fraction,
                                    "leased": time.monotonic() < self.lease_until}
            if served.cache is not None:
                answer["cache"] = {"entries": len(served.cache), "hits": served.cache.hits,
                                   "misses": served.cache.misses}
            if self.prediction_log is not None:
                answer["prediction_log"] = {**asdict(self.prediction_log.counts),
                                            "pending": len(self.prediction_log.pending)}
        return answer

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Any:
        """The API document (the input schema and version): like /schema, only for a key holder when keys are set."""
        if (refused := self._refused(request)) is not None:
            return refused
        served = self._model()
        return openapi_document(request.app, served.parser.record_type, served.version)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        page: HTMLResponse = get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                                 title=api.title)
        return page


# A decorator applied as a call: mypy cannot see a class decorator turn the class into a Deployment.
ModelServer = serve.deployment(name=DEPLOYMENT)(serve.ingress(api)(ModelServerReplica))


def _prediction_response(predictions: list[float], served: ServedModel) -> Response:
    body = b'{"predictions":' + json.dumps(predictions).encode() + b',"model":' + served.info_json + b"}"
    return Response(content=body, media_type="application/json")


OPEN_ROUTES = frozenset({"/health"})  # every other route asks for a key when keys are configured


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (a direct call in a test)
        return f"pid-{os.getpid()}"
