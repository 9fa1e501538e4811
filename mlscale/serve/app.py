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
from mlscale.data.schema import ColumnSpec, record_name, request_model
from mlscale.registry.store import load_bundle

api = FastAPI(title="mlscale model service")


class BundleModelReplica:
    """Holds one bundle; concurrent requests are merged into one forward pass by @serve.batch."""

    def __init__(self, model_uri: str, tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        self.bundle = load_bundle(model_uri, tracking_uri)
        # @serve.batch's wrapper carries these setters; Ray's type hints present it as the plain coroutine
        self.predict_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

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


class IngressReplica:
    """POST /predict with one record or a list of records; GET /schema; GET /health."""

    def __init__(self, model: DeploymentHandle, input_schema: list[dict[str, Any]], model_info: dict[str, Any],
                 max_records: int, record: str = "Record") -> None:
        self.model = model
        self.input_schema = [ColumnSpec(**spec) for spec in input_schema]
        record_type: Any = request_model(self.input_schema, record)
        self.one: TypeAdapter[Any] = TypeAdapter(record_type)
        self.many: TypeAdapter[list[Any]] = TypeAdapter(list[record_type])
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
        return {"input_schema": [spec.model_dump() for spec in self.input_schema], "model": self.model_info}

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}


# Decorators applied as calls: mypy cannot see a class decorator turn the class into a Deployment.
BundleModel = serve.deployment(name="BundleModel", max_ongoing_requests=64)(BundleModelReplica)
Ingress = serve.deployment(name="Ingress", max_ongoing_requests=128)(serve.ingress(api)(IngressReplica))


def build_app(model_uri: str, tracking_uri: str | None, settings: ServeConfig,
              record: str = "Record") -> serve.Application:
    """The application graph for one registered bundle, sized by the serve section of the config; `record` names
    the request model (from the dataset's name)."""
    bundle = load_bundle(model_uri, tracking_uri)
    model = BundleModel.options(
        num_replicas=settings.num_replicas, ray_actor_options={"num_cpus": settings.model_cpus}
    ).bind(model_uri, tracking_uri, settings.max_batch_size, settings.batch_wait_timeout_s)
    info = {"uri": model_uri, **bundle.lineage}
    ingress = Ingress.options(ray_actor_options={"num_cpus": settings.ingress_cpus})
    return ingress.bind(
        model, [spec.model_dump() for spec in bundle.input_schema], info, settings.max_records_per_request, record
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder for config files (`serve deploy`, KubeRay RayService).

    args: model_uri (default models:/flights-late-arrival@champion), tracking_uri (default $MLFLOW_TRACKING_URI),
    dataset (the pipeline's name, which names the request model), and any field of the config's serve section
    (num_replicas, max_batch_size, model_cpus, ...), validated the same way.
    """
    args = dict(args)
    model_uri = args.pop("model_uri", "models:/flights-late-arrival@champion")
    tracking_uri = args.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    dataset = args.pop("dataset", "flights")
    return build_app(model_uri, tracking_uri, ServeConfig.model_validate(args), record_name(dataset))
