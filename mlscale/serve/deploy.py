"""Deploy a registered bundle with Ray Serve on the configured host and port."""

from __future__ import annotations

from ray import serve

from mlscale.config import PipelineConfig
from mlscale.data.schema import record_name
from mlscale.serve.app import build_app


def endpoint_url(config: PipelineConfig) -> str:
    prefix = config.serve.route_prefix.rstrip("/")
    return f"http://{config.serve.host}:{config.serve.port}{prefix}/predict"


def deploy(config: PipelineConfig, model_uri: str) -> str:
    """Start Serve (idempotent) and run the app for model_uri; returns the predict URL."""
    settings = config.serve
    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "request_timeout_s": settings.request_timeout_s})
    app = build_app(model_uri, config.tracking_uri, settings, record_name(config.name))
    serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix, blocking=False)
    return endpoint_url(config)
