"""Deploy a registered bundle with Ray Serve on the configured host and port."""

from __future__ import annotations

import logging

import requests
from ray import serve

from mlscale.config import PipelineConfig
from mlscale.errors import ConfigError
from mlscale.serve.build import api_key_digests, build_app
from mlscale.serve.graph import build_graph
from mlscale.serve.predlog import default_log_path
from mlscale.serve.requests import record_name
from mlscale.serve.rollout import Canary

log = logging.getLogger(__name__)


def endpoint_url(config: PipelineConfig) -> str:
    prefix = config.serve.route_prefix.rstrip("/")
    return f"http://{config.serve.host}:{config.serve.port}{prefix}/predict"


def deploy(config: PipelineConfig, model_uri: str, canary: Canary | None = None) -> str:
    """Start Serve (idempotent) and run the app for model_uri (and a canary beside it); returns the predict URL."""
    settings = config.serve
    serve.start(proxy_location=settings.proxy_location,
                http_options={"host": settings.host, "port": settings.port,
                              "request_timeout_s": settings.request_timeout_s})
    digests = api_key_digests(settings)
    if not digests:
        refuse_to_open(config)
    if settings.graph is not None:  # a fallback or ensemble graph of the models it names
        app = build_graph(settings, config.tracking_uri, record_name(config.name), digests)
    else:
        log_path = default_log_path(config.storage.root_path, config.name)
        app = build_app(model_uri, config.tracking_uri, settings, record_name(config.name), canary, log_path,
                        bundle_cache(config))
    serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix, blocking=False)
    return endpoint_url(config)


def bundle_cache(config: PipelineConfig) -> str:
    """Where replicas keep the versions they downloaded (under the storage root every node shares)."""
    return str(config.storage.root_path / "bundles")


def refuse_to_open(config: PipelineConfig) -> None:
    """A config without API keys must not replace a running app that has them (a RayService deployed with keys, say):
    that would turn a keyed endpoint into an open one. The running app is asked the way any caller would: a
    request without a key, which a keyed app answers 401.

    Raises:
        ConfigError: the app named serve.app_name is running and asks for a key.
    """
    settings = config.serve
    if settings.app_name not in serve.status().applications:
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}{settings.route_prefix.rstrip('/')}/predict"
    try:
        answer = requests.post(url, data=b"[]", headers={"Content-Type": "application/json"}, timeout=10)
    except requests.RequestException as error:
        log.warning("cannot ask the running app %s whether it needs a key (%s): deploying", settings.app_name, error)
        return
    if answer.status_code == 401:
        raise ConfigError(f"serve.app_name {settings.app_name!r} is running with API keys and this config has none "
                          f"(serve.api_keys_env, serve.api_keys_file): deploying it would open the endpoint. Give "
                          f"it the same keys, or delete the app first (`serve.delete({settings.app_name!r})`)")
