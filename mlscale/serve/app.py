"""The Ray Serve application: an HTTP ingress that validates records against the bundle's input schema, and a
batched model deployment that predicts through the same Bundle code as batch scoring.
"""

import json
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from mlscale.config import ServeConfig
from mlscale.data.schema import ColumnSpec, request_model
from mlscale.registry.store import load_bundle

api = FastAPI(title="mlscale model service")


@serve.deployment(max_ongoing_requests=64)
class BundleModel:
    """Holds one bundle; concurrent requests are merged into one forward pass by @serve.batch."""

    def __init__(self, model_uri: str, tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        self.bundle = load_bundle(model_uri, tracking_uri)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[float]]:
        flat = [record for request in requests for record in request]
        probabilities = self.bundle.predict_records(flat).tolist()
        out, start = [], 0
        for request in requests:
            out.append(probabilities[start:start + len(request)])
            start += len(request)
        return out

    async def __call__(self, records: list[dict[str, Any]]) -> list[float]:
        return await self.predict_batch(records)


def _error(status: int, detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


@serve.deployment(max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    """POST /predict with one record or a list of records; GET /schema; GET /health."""

    def __init__(self, model: DeploymentHandle, input_schema: list[dict[str, Any]], model_info: dict[str, Any],
                 max_records: int) -> None:
        self.model = model
        self.schema = [ColumnSpec(**spec) for spec in input_schema]
        record = request_model(self.schema, "FlightRecord")
        self.one = TypeAdapter(record)
        self.many = TypeAdapter(list[record])
        self.model_info = model_info
        self.max_records = max_records

    @api.post("/predict")
    async def predict(self, request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return _error(400, [{"loc": ["body"], "msg": f"body is not valid JSON: {error}"}])
        if isinstance(body, dict) and "records" in body:
            body = body["records"]
        single = isinstance(body, dict)
        if not single and not isinstance(body, list):
            return _error(422, [{"loc": ["body"], "msg": "expected a record (object) or a list of records"}])
        if not single and not 1 <= len(body) <= self.max_records:
            msg = f"expected 1 to {self.max_records} records, got {len(body)}"
            return _error(422, [{"loc": ["body"], "msg": msg}])
        try:
            records = [self.one.validate_python(body)] if single else self.many.validate_python(body)
        except ValidationError as error:
            detail = [
                {"loc": ["body", *item["loc"]], "field": str(item["loc"][-1]) if item["loc"] else None,
                 "msg": item["msg"], "input": item.get("input")}
                for item in error.errors(include_url=False)
            ]
            return _error(422, json.loads(json.dumps(detail, default=str)))
        probabilities = await self.model.remote([record.model_dump() for record in records])
        return {"predictions": probabilities, "model": self.model_info}

    @api.get("/schema")
    async def schema(self) -> dict[str, Any]:
        return {"input_schema": [spec.model_dump() for spec in self.schema], "model": self.model_info}

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}


def build_app(model_uri: str, tracking_uri: str | None, settings: ServeConfig) -> serve.Application:
    """The application graph for one registered bundle, sized by the serve section of the config."""
    bundle = load_bundle(model_uri, tracking_uri)
    model = BundleModel.options(
        num_replicas=settings.num_replicas, ray_actor_options={"num_cpus": settings.model_cpus}
    ).bind(model_uri, tracking_uri, settings.max_batch_size, settings.batch_wait_timeout_s)
    info = {"uri": model_uri, **bundle.lineage}
    ingress = Ingress.options(ray_actor_options={"num_cpus": settings.ingress_cpus})
    return ingress.bind(
        model, [spec.model_dump() for spec in bundle.input_schema], info, settings.max_records_per_request
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for config files (`serve deploy`, KubeRay RayService).

    args: model_uri (default models:/flights-late-arrival@champion), tracking_uri (default $MLFLOW_TRACKING_URI),
    and any field of the config's serve section (num_replicas, max_batch_size, model_cpus, ...), validated the same way.
    """
    args = dict(args)
    model_uri = args.pop("model_uri", "models:/flights-late-arrival@champion")
    tracking_uri = args.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    return build_app(model_uri, tracking_uri, ServeConfig.model_validate(args))
