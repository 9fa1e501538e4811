"""The Ray Serve application: an HTTP ingress that validates records against the bundle's input schema, and a
batched model deployment that predicts through the same Bundle code as batch scoring.
"""

import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from mlscale.config import ServeConfig
from mlscale.data.schema import ColumnSpec, record_name
from mlscale.errors import ConfigError
from mlscale.registry.store import load_bundle, pinned_uri
from mlscale.serve.requests import RequestParser, RequestRejected, authorized, key_digest

api = FastAPI(title="mlscale model service")


@dataclass(frozen=True)
class TransformFailed:
    """A request whose records passed validation but could not be turned into features or predicted."""

    reason: str


class BundleModelReplica:
    """Holds one bundle; concurrent requests are merged into one forward pass by @serve.batch."""

    def __init__(self, model_uri: str, tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        self.bundle = load_bundle(model_uri, tracking_uri)
        # @serve.batch's wrapper carries these setters; Ray's type hints present it as the plain coroutine
        self.predict_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[float] | TransformFailed]:
        return self.predict_requests(requests)

    def predict_requests(self, requests: list[list[dict[str, Any]]]) -> list[list[float] | TransformFailed]:
        """One forward pass for every request in the batch; if it fails, each request alone, so a record the
        bundle cannot transform fails only the request that sent it."""
        try:
            predictions = self.bundle.predict_records([record for request in requests for record in request])
        except Exception:  # noqa: BLE001 - which request is at fault is found below
            return [self._alone(request) for request in requests]
        out: list[list[float] | TransformFailed] = []
        start = 0
        for request in requests:
            out.append(predictions[start:start + len(request)].tolist())
            start += len(request)
        return out

    def _alone(self, request: list[dict[str, Any]]) -> list[float] | TransformFailed:
        try:
            return self.bundle.predict_records(request).tolist()
        except Exception as error:  # noqa: BLE001 - reported to this request's caller, not raised into the batch
            return TransformFailed(f"{type(error).__name__}: {error}"[:300])

    async def __call__(self, records: list[dict[str, Any]]) -> list[float] | TransformFailed:
        return await self.predict_batch(records)


def _error(status: int, detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


class IngressReplica:
    """POST /predict with one record or a list of records; GET /schema; GET /health."""

    def __init__(self, model: DeploymentHandle, input_schema: list[dict[str, Any]], model_info: dict[str, Any],
                 max_records: int, record: str = "Record", max_body_bytes: int = 8 * 2**20,
                 key_digests: tuple[str, ...] = ()) -> None:
        self.model = model
        self.input_schema = [ColumnSpec(**spec) for spec in input_schema]
        self.parser = RequestParser(self.input_schema, max_records, max_body_bytes, record)
        self.model_info = model_info
        self.key_digests = tuple(key_digests)

    def _refused(self, request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), self.key_digests):
            return None
        return JSONResponse(status_code=401, content={"detail": [{"loc": ["header", "authorization"],
                                                                  "msg": "a valid API key is required"}]},
                            headers={"WWW-Authenticate": "Bearer"})

    @api.post("/predict")
    async def predict(self, request: Request) -> Any:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            self.parser.check_length(request.headers.get("content-length"))
            records = self.parser.parse(await request.body())
        except RequestRejected as rejected:
            return _error(rejected.status, rejected.detail)
        predictions = await self.model.remote(records)
        if isinstance(predictions, TransformFailed):
            return _error(422, [{"loc": ["body"], "msg": f"the records passed validation but could not be "
                                                         f"transformed: {predictions.reason}"}])
        return {"predictions": predictions, "model": self.model_info}

    @api.get("/schema")
    async def schema(self, request: Request) -> Any:
        """The input schema; the model's lineage (runs, commit, data fingerprints) only to an authorized caller."""
        if (refused := self._refused(request)) is not None:
            return refused
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
    the request model (from the dataset's name).

    An alias is resolved here, once: every replica loads that exact version (`models:/name/<n>`), so a replica
    restarted after a promotion still serves what was deployed; a new version arrives by deploying again.
    """
    served = pinned_uri(model_uri, tracking_uri)
    bundle = load_bundle(served, tracking_uri)
    model = BundleModel.options(
        num_replicas=settings.num_replicas, ray_actor_options={"num_cpus": settings.model_cpus},
        max_queued_requests=settings.max_queued_requests,
    ).bind(served, tracking_uri, settings.max_batch_size, settings.batch_wait_timeout_s)
    version = served.rsplit("/", 1)[-1] if served.startswith("models:/") else ""
    info = {"uri": model_uri, "served_uri": served, "version": version, **bundle.lineage}
    ingress = Ingress.options(ray_actor_options={"num_cpus": settings.ingress_cpus},
                              max_queued_requests=settings.max_queued_requests)
    return ingress.bind(model, [spec.model_dump() for spec in bundle.input_schema], info,
                        settings.max_records_per_request, record, settings.max_body_bytes, api_key_digests(settings))


def api_key_digests(settings: ServeConfig) -> tuple[str, ...]:
    """The digests of the keys in the environment variable serve.api_keys_env names (read where the app is built).

    Raises:
        ConfigError: the variable is named but unset or empty (an open service by mistake is worse than none).
    """
    if settings.api_keys_env is None:
        return ()
    keys = [key.strip() for key in os.environ.get(settings.api_keys_env, "").split(",") if key.strip()]
    if not keys:
        raise ConfigError(f"serve.api_keys_env names {settings.api_keys_env}, which holds no keys")
    return tuple(key_digest(key) for key in keys)


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
