"""The Ray Serve application: one deployment whose replicas are both the HTTP ingress and the model.

A request goes proxy -> replica and back: the replica validates the body against the bundle's input schema, merges
concurrent requests into one forward pass (@serve.batch), and answers with the version that predicted. A separate
ingress deployment would add a second hop (a handle call, serialization, a second queue) and buy nothing here: both
halves scale together with the load.

The version served arrives through `user_config`: pinned at deploy time (`models:/name/<n>`), and changed only by
Serve's own update path (`reconfigure` on the running replicas), never by a replica re-reading an alias.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from mlscale.config import ServeConfig
from mlscale.data.schema import record_name
from mlscale.errors import ConfigError
from mlscale.registry.bundle import Bundle
from mlscale.registry.store import load_bundle, pinned_uri
from mlscale.serve.docs import openapi_document
from mlscale.serve.metrics import ServiceMetrics
from mlscale.serve.requests import RequestParser, RequestRejected, authorized, key_digest

DEPLOYMENT = "ModelServer"
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


class Rollout(BaseModel):
    """The deployment's user_config: what the replicas serve and how. Changing it updates running replicas."""

    model_config = ConfigDict(extra="forbid")
    uri: str = Field(..., description="What was asked for (an alias URI is kept for the record).")
    served_uri: str = Field(..., description="The exact version resolved from it at deploy time.")
    tracking_uri: str | None = None
    record: str = "Record"
    max_records: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1)
    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class TransformFailed:
    """A request whose records passed validation but could not be turned into features or predicted."""

    reason: str


@dataclass(frozen=True)
class ServedModel:
    """Everything a request needs from one version, swapped as one object so a request never mixes two."""

    bundle: Bundle
    parser: RequestParser
    info: dict[str, Any]
    info_json: bytes

    @property
    def version(self) -> str:
        return str(self.info["version"])


def predict_requests(bundle: Bundle, requests: list[list[dict[str, Any]]]) -> list[list[float] | TransformFailed]:
    """One forward pass for every request in a batch; if it fails, each request alone, so a record the bundle
    cannot transform fails only the request that sent it."""
    try:
        predictions = bundle.predict_records([record for request in requests for record in request])
    except Exception:  # noqa: BLE001 - which request is at fault is found below
        return [_alone(bundle, request) for request in requests]
    out: list[list[float] | TransformFailed] = []
    start = 0
    for request in requests:
        out.append(predictions[start:start + len(request)].tolist())
        start += len(request)
    return out


def _alone(bundle: Bundle, request: list[dict[str, Any]]) -> list[float] | TransformFailed:
    try:
        return bundle.predict_records(request).tolist()
    except Exception as error:  # noqa: BLE001 - reported to this request's caller, not raised into the batch
        return TransformFailed(f"{type(error).__name__}: {error}"[:300])


def _error(status: int, detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "The body is not JSON."), (401, "A valid API key is required."),
        (413, "The body is above serve.max_body_bytes."),
        (422, "Not records, too many of them, or a field breaks the input schema (named in `loc`)."),
        (503, "Overloaded: retry after the Retry-After header's seconds."))}


class ModelServerReplica:
    """POST /predict (one record, a list, or {"records": [...]}); GET /schema, /health, /docs, /openapi.json."""

    def __init__(self, key_digests: tuple[str, ...] = ()) -> None:
        self.key_digests = tuple(key_digests)
        self.metrics = ServiceMetrics()
        self.served: ServedModel | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's update path: load the version the rollout names (kept when unchanged) and apply its limits."""
        rollout = Rollout.model_validate(user_config)
        current = self.served
        if current is not None and current.info["served_uri"] == rollout.served_uri:
            bundle = current.bundle
        else:
            bundle = load_bundle(rollout.served_uri, rollout.tracking_uri)
        version = rollout.served_uri.rsplit("/", 1)[-1] if rollout.served_uri.startswith("models:/") else ""
        info = {"uri": rollout.uri, "served_uri": rollout.served_uri, "version": version, **bundle.lineage}
        parser = RequestParser(list(bundle.input_schema), rollout.max_records, rollout.max_body_bytes, rollout.record)
        # @serve.batch's wrapper carries these setters; Ray's type hints present it as the plain coroutine
        self.predict_batch.set_max_batch_size(rollout.max_batch_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(rollout.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.served = ServedModel(bundle, parser, info, json.dumps(info).encode())

    def check_health(self) -> None:
        """Serve's health check: a replica without a loaded model is restarted rather than sent traffic."""
        if self.served is None:
            raise RuntimeError("no model loaded")

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

    def _refused(self, request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), self.key_digests):
            return None
        return JSONResponse(status_code=401, content={"detail": [{"loc": ["header", "authorization"],
                                                                  "msg": "a valid API key is required"}]},
                            headers={"WWW-Authenticate": "Bearer"})

    def _model(self) -> ServedModel:
        if self.served is None:  # Serve sends no traffic before reconfigure has run; kept for a direct call
            raise RuntimeError("no model loaded")
        return self.served

    @api.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        served = self._model()
        response = await self._answer(request, served)
        self.metrics.request(served.version, response.status_code, time.perf_counter() - started)
        return response

    async def _answer(self, request: Request, served: ServedModel) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            served.parser.check_length(request.headers.get("content-length"))
            records = served.parser.parse(await request.body())
        except RequestRejected as rejected:
            return _error(rejected.status, rejected.detail)
        predictions = await self.predict_batch((served, records))
        if isinstance(predictions, TransformFailed):
            return _error(422, [{"loc": ["body"], "msg": f"the records passed validation but could not be "
                                                         f"transformed: {predictions.reason}"}])
        body = b'{"predictions":' + json.dumps(predictions).encode() + b',"model":' + served.info_json + b"}"
        return Response(content=body, media_type="application/json")

    @api.get("/schema", responses={401: ERRORS[401]})
    async def schema(self, request: Request) -> Any:
        """The input schema; the model's lineage (runs, commit, data fingerprints) only to an authorized caller."""
        if (refused := self._refused(request)) is not None:
            return refused
        served = self._model()
        return {"input_schema": [spec.model_dump() for spec in served.parser.input_schema], "model": served.info}

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok" if self.served is not None else "loading"}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Any:
        served = self._model()
        return openapi_document(request.app, served.parser.record_type, served.version)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=api.title)


# A decorator applied as a call: mypy cannot see a class decorator turn the class into a Deployment.
ModelServer = serve.deployment(name=DEPLOYMENT)(serve.ingress(api)(ModelServerReplica))


def rollout_config(model_uri: str, served: str, tracking_uri: str | None, settings: ServeConfig,
                   record: str) -> dict[str, Any]:
    return Rollout(uri=model_uri, served_uri=served, tracking_uri=tracking_uri, record=record,
                   max_records=settings.max_records_per_request, max_body_bytes=settings.max_body_bytes,
                   max_batch_size=settings.max_batch_size,
                   batch_wait_timeout_s=settings.batch_wait_timeout_s).model_dump()


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    """Replicas (fixed or autoscaled), their CPUs, bounded queues and the overload answer, from the serve section.

    Serve 2.60 versions a deployment itself: applied from a config file (`serve deploy`, a RayService), a change of
    user_config alone (a new model version, batch size, limits) reconfigures the running replicas in place; through
    `serve.run` (the deploy stage) it replaces them with a rolling update.
    """
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.model_cpus}, "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": {"status_code": settings.overload_status, "retry_after_s": settings.retry_after_s},
        "logging_config": {"enable_access_log": settings.access_log},
    }
    if settings.autoscaling is None:
        options["num_replicas"] = settings.num_replicas
    else:
        options["autoscaling_config"] = settings.autoscaling.model_dump()
    return options


def build_app(model_uri: str, tracking_uri: str | None, settings: ServeConfig,
              record: str = "Record") -> serve.Application:
    """The application for one registered bundle, sized by the serve section of the config; `record` names the
    request model (from the dataset's name).

    An alias is resolved here, once: every replica loads that exact version (`models:/name/<n>`), so a replica
    restarted after a promotion still serves what was deployed; a new version arrives by deploying again (in place
    through `reconfigure` when applied from a config file, see `deployment_options`).
    """
    served = pinned_uri(model_uri, tracking_uri)
    digests = api_key_digests(settings)
    rollout = rollout_config(model_uri, served, tracking_uri, settings, record)
    return ModelServer.options(user_config=rollout, **deployment_options(settings)).bind(digests)


def api_key_digests(settings: ServeConfig) -> tuple[str, ...]:
    """The digests of the keys in the environment variable serve.api_keys_env names and in serve.api_keys_file
    (read where the app is built; only the digests travel to the replicas).

    Raises:
        ConfigError: a source is named but holds no keys, or the file cannot be read (an open service by mistake
            is worse than none).
    """
    keys: list[str] = []
    if settings.api_keys_env is not None:
        found = [key.strip() for key in os.environ.get(settings.api_keys_env, "").split(",") if key.strip()]
        if not found:
            raise ConfigError(f"serve.api_keys_env names {settings.api_keys_env}, which holds no keys")
        keys += found
    if settings.api_keys_file is not None:
        try:
            lines = Path(settings.api_keys_file).read_text().splitlines()
        except OSError as error:
            raise ConfigError(f"serve.api_keys_file {settings.api_keys_file!r} cannot be read: {error}") from None
        found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise ConfigError(f"serve.api_keys_file {settings.api_keys_file!r} holds no keys")
        keys += found
    return tuple(dict.fromkeys(key_digest(key) for key in keys))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for config files (`serve deploy`, KubeRay RayService).

    args: model_uri (default models:/flights-late-arrival@champion), tracking_uri (default $MLFLOW_TRACKING_URI),
    dataset (the pipeline's name, which names the request model), and any field of the config's serve section
    (num_replicas, autoscaling, max_batch_size, model_cpus, ...), validated the same way.
    """
    args = dict(args)
    model_uri = args.pop("model_uri", "models:/flights-late-arrival@champion")
    tracking_uri = args.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    dataset = args.pop("dataset", "flights")
    return build_app(model_uri, tracking_uri, ServeConfig.model_validate(args), record_name(dataset))
