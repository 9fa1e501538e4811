"""Model graphs: more than one model behind one endpoint, composed through deployment handles.

Each model is its own deployment (`GraphModel`: batched forward passes, its own replicas or autoscaling, its own
bounded queue); an ingress (`GraphIngress`) validates the request once and calls them:
- fallback: the main model answers; when it is overloaded (its queue is full), slower than `timeout_s`, or failing,
  the next model answers instead, and the response says so (`fallback: true` and why);
- ensemble: every model predicts the same records at once and the answer is their weighted mean.

A request is validated against every member's input schema (any member may answer it), and each member is sent the
records as its own schema reads them. Error bodies say what the caller did wrong; what broke inside is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from mlscale.config import ServeConfig
from mlscale.registry.store import load_bundle, pinned_uri, uri_version
from mlscale.schema import ColumnSpec
from mlscale.serve.batching import TransformFailed, predict_requests
from mlscale.serve.build import replica_actor_options
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

GRAPH_INGRESS = "GraphIngress"
graph_api = FastAPI(title="mlscale model graph", openapi_url=None, docs_url=None, redoc_url=None)
log = logging.getLogger(__name__)


class GraphModel:
    """One model of a graph, called through its handle with validated records; batched like the single-model
    service, through the same `predict_requests` (a record it cannot transform fails only its own request)."""

    def __init__(self, served_uri: str, tracking_uri: str | None, variant: str, max_batch_size: int) -> None:
        self.bundle = load_bundle(served_uri, tracking_uri).with_variant(variant)
        self.predict.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def predict(self, requests: list[list[dict[str, Any]]]) -> list[list[float] | str]:
        results = await asyncio.to_thread(predict_requests, self.bundle, requests)
        return [result.reason if isinstance(result, TransformFailed) else result for result in results]


class Unanswerable(Exception):
    """Records a model validated but could not transform: the caller's data, not the model's health (422)."""


class GraphIngressReplica:
    """POST /predict (one record, a list, or {"records": [...]}), GET /health: validation, then the graph."""

    def __init__(self, mode: str, models: list[DeploymentHandle], infos: list[dict[str, Any]],
                 weights: list[float], timeout_s: float, members: list[dict[str, Any]],
                 limits: dict[str, Any], key_digests: tuple[str, ...] = ()) -> None:
        self.mode, self.models, self.infos, self.timeout_s = mode, models, infos, timeout_s
        total = sum(weights)
        self.weights = [weight / total for weight in weights]
        self.parsers = member_parsers(members, limits)
        self.key_digests = tuple(key_digests)

    async def _call(self, index: int, records: list[list[dict[str, Any]]], timeout: float | None = None
                    ) -> list[float]:
        response = self.models[index].predict.remote(records[index])
        try:
            result = await asyncio.wait_for(response, timeout) if timeout else await response
        except TimeoutError:
            response.cancel()
            raise
        if isinstance(result, str):
            raise Unanswerable(result)
        return result

    async def _fallback(self, records: list[list[dict[str, Any]]]) -> dict[str, Any]:
        reasons: list[str] = []
        for index in range(len(self.models)):
            last = index == len(self.models) - 1
            try:
                predictions = await self._call(index, records, None if last else self.timeout_s)
            except Unanswerable:
                raise
            except Exception as error:  # noqa: BLE001 - overloaded, too slow, or failing: the next model answers
                log.warning("graph model v%s did not answer: %r", self.infos[index]["version"], error)
                reasons.append(f"v{self.infos[index]['version']}: {_why(error, self.timeout_s)}")
                if last:
                    raise
                continue
            answer = {"predictions": predictions, "model": self.infos[index], "fallback": index > 0}
            if reasons:
                answer["fallback_reason"] = "; ".join(reasons)
            return answer
        raise AssertionError("unreachable")

    async def _ensemble(self, records: list[list[dict[str, Any]]]) -> dict[str, Any]:
        results = await asyncio.gather(*(self._call(index, records) for index in range(len(self.models))))
        mean = [sum(weight * values[row] for weight, values in zip(self.weights, results, strict=True))
                for row in range(len(records[0]))]
        return {"predictions": mean, "model": {"ensemble": self.infos, "weights": self.weights},
                "members": [list(values) for values in results]}

    @graph_api.post("/predict")
    async def predict(self, request: Request) -> Response:
        if not authorized(request.headers.get("authorization"), self.key_digests):
            return unauthorized()
        first = self.parsers[0]
        try:
            check_content_type(request.headers.get("content-type"))
            first.check_length(request.headers.get("content-length"))
            records = validate_for_members(self.parsers, first.decode(
                await read_body(request.stream(), first.max_body_bytes)))
        except RequestRejected as rejected:
            return rejection(rejected.status, rejected.detail)
        try:
            answer = await (self._fallback(records) if self.mode == "fallback" else self._ensemble(records))
        except Unanswerable as error:
            log.warning("a graph model could not transform a request's records: %s", error)
            return untransformable()
        except Exception as error:  # noqa: BLE001 - every model refused or failed: retryable, never a bare 500
            log.warning("no graph model could answer: %r", error)
            return rejection(503, [{"loc": ["model"], "msg": f"no model could answer: {_why(error, self.timeout_s)}"}],
                             {"Retry-After": "1"})
        return Response(content=json.dumps(answer).encode(), media_type="application/json")

    @graph_api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "mode": self.mode, "models": [info["version"] for info in self.infos]}


def member_parsers(members: list[dict[str, Any]], limits: dict[str, Any]) -> list[RequestParser]:
    """One request parser per graph member. A field another member reads is no unknown field to this one: each
    member lets the others' columns pass (and ignores them)."""
    schemas = [[ColumnSpec(**spec) for spec in member["input_schema"]] for member in members]
    known = {spec.name for schema in schemas for spec in schema} | {
        name for member in members for name in member.get("passthrough_columns", [])}
    return [RequestParser(schema, limits["max_records"], limits["max_body_bytes"], limits["record"],
                          limits.get("unknown_fields", "reject"),
                          tuple(sorted(known - {spec.name for spec in schema})))
            for schema in schemas]


def validate_for_members(parsers: list[RequestParser], data: Any) -> list[list[dict[str, Any]]]:
    """The decoded body validated against every member's schema (the first rejection is the answer), and the
    records each member is sent."""
    return [parser.validate(data) for parser in parsers]


def _why(error: BaseException, timeout_s: float) -> str:
    """Why a model did not answer, as a caller may read it: a category and the error's type, not its text."""
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(error, BackPressureError):
        return "overloaded: its queue is full (BackPressureError)"
    return f"failed ({type(error).__name__})"


GraphModelDeployment = serve.deployment(name="GraphModel")(GraphModel)
GraphIngress = serve.deployment(name=GRAPH_INGRESS)(serve.ingress(graph_api)(GraphIngressReplica))


def build_graph(settings: ServeConfig, tracking_uri: str | None, record: str,
                key_digests: tuple[str, ...] = ()) -> serve.Application:
    """The graph in serve.graph: each model pinned to its exact version and deployed on its own; the ingress
    validates requests against every model's input schema."""
    graph = settings.graph
    assert graph is not None
    served = [pinned_uri(uri, tracking_uri) for uri in graph.models]
    bundles = [load_bundle(uri, tracking_uri) for uri in served]
    infos, handles = [], []
    for index, (uri, pinned) in enumerate(zip(graph.models, served, strict=True)):
        version = uri_version(pinned)
        infos.append({"uri": uri, "served_uri": pinned, "version": version, "variant": settings.variant})
        # a fallback takes what the main model turned away: it gets the service's own (larger) limits
        spare = graph.mode == "fallback" and index > 0
        options: dict[str, Any] = {
            "name": f"Model{index}", "ray_actor_options": replica_actor_options(settings, graph.model_cpus),
            "max_ongoing_requests": settings.max_ongoing_requests if spare else graph.max_ongoing_requests,
            "max_queued_requests": settings.max_queued_requests if spare else graph.max_queued_requests}
        if graph.autoscaling is None:
            options["num_replicas"] = graph.num_replicas
        else:
            options["autoscaling_config"] = graph.autoscaling.model_dump()
        handles.append(GraphModelDeployment.options(**options).bind(pinned, tracking_uri, settings.variant,
                                                                    settings.max_batch_size))
    limits = {"max_records": settings.max_records_per_request, "max_body_bytes": settings.max_body_bytes,
              "record": record, "unknown_fields": settings.unknown_fields}
    members = [{"input_schema": [spec.model_dump() for spec in bundle.input_schema],
                "passthrough_columns": bundle.passthrough_columns} for bundle in bundles]
    return GraphIngress.options(ray_actor_options=replica_actor_options(settings, 0.25),
                                max_ongoing_requests=settings.max_ongoing_requests,
                                max_queued_requests=settings.max_queued_requests).bind(
        graph.mode, handles, infos, graph.weights or [1.0] * len(served), graph.timeout_s, members, limits,
        key_digests)
