"""Deploy a registered bundle with Ray Serve on the configured host and port."""

from __future__ import annotations

from ray import serve

from mlscale.config import PipelineConfig
from mlscale.data.schema import record_name
from mlscale.serve.app import Canary, api_key_digests, build_app
from mlscale.serve.graph import build_graph
from mlscale.serve.predlog import default_log_path


def endpoint_url(config: PipelineConfig) -> str:
    prefix = config.serve.route_prefix.rstrip("/")
    return f"http://{config.serve.host}:{config.serve.port}{prefix}/predict"


def deploy(config: PipelineConfig, model_uri: str, canary: Canary | None = None) -> str:
    """Start Serve (idempotent) and run the app for model_uri (and a canary beside it); returns the predict URL."""
    settings = config.serve
    serve.start(proxy_location=settings.proxy_location,
                http_options={"host": settings.host, "port": settings.port,
                              "request_timeout_s": settings.request_timeout_s})
    if settings.graph is not None:  # a fallback or ensemble graph of the models it names
        app = build_graph(settings, config.tracking_uri, record_name(config.name), api_key_digests(settings))
    else:
        log_path = default_log_path(config.storage.root_path, config.name)
        app = build_app(model_uri, config.tracking_uri, settings, record_name(config.name), canary, log_path)
    serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix, blocking=False)
    return endpoint_url(config)
