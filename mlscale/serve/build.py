"""Building the Serve application from the serve section: the replicas' user_config (a `Rollout`), their
reservations and queues, the API keys' digests, and the builder that `serve deploy` and a RayService call.

The replica itself (`mlscale.serve.app`) knows nothing of the config: what it serves arrives as its user_config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

from mlscale.config import ServeConfig, expand_env
from mlscale.errors import ConfigError
from mlscale.registry.store import pinned_uri
from mlscale.serve.app import ModelServer
from mlscale.serve.requests import key_digest, record_name
from mlscale.serve.rollout import Canary, Rollout
from mlscale.tracking import by_reference


def rollout_config(model_uri: str, served: str, tracking_uri: str | None, settings: ServeConfig,
                   record: str, canary: Canary | None = None, log_path: str | None = None,
                   bundle_cache: str | None = None) -> dict[str, Any]:
    cache, logging_settings = settings.cache, settings.prediction_log
    prediction_log = None
    if logging_settings is not None:
        path = logging_settings.path or log_path
        if path is None:
            raise ConfigError("serve.prediction_log.path is required here (no storage root to put it under)")
        prediction_log = {**logging_settings.model_dump(exclude={"path"}), "path": path}
    # the user_config is shown by `serve status` and the dashboard: a credential in the URI travels as a reference
    return Rollout(uri=model_uri, served_uri=served, tracking_uri=by_reference(tracking_uri, "tracking.uri"),
                   record=record,
                   max_records=settings.max_records_per_request, max_body_bytes=settings.max_body_bytes,
                   unknown_fields=settings.unknown_fields,
                   max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.batch_wait_timeout_s,
                   variant=settings.variant, cache_entries=cache.max_entries if cache else 0,
                   canary=canary,
                   **({"cache_bytes": cache.max_bytes, "cache_ttl_s": cache.ttl_s} if cache else {}),
                   prediction_log=prediction_log, bundle_cache=bundle_cache).model_dump()


def replica_actor_options(settings: ServeConfig, cpus: float) -> dict[str, Any]:
    """A model replica's reservation: its CPUs and the custom resources that pin it to its node group."""
    return {"num_cpus": cpus, **({"resources": dict(settings.replica_resources)} if settings.replica_resources
                                 else {})}


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    """Replicas (fixed or autoscaled), their CPUs, bounded queues and the overload answer, from the serve section.

    Serve 2.60 versions a deployment itself: applied from a config file (`serve deploy`, a RayService), a change of
    user_config alone (a new model version, batch size, limits) reconfigures the running replicas in place; through
    `serve.run` (the deploy stage) it replaces them with a rolling update.
    """
    options: dict[str, Any] = {
        "ray_actor_options": replica_actor_options(settings, settings.model_cpus),
        "max_ongoing_requests": settings.max_ongoing_requests,
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
              record: str = "Record", canary: Canary | None = None,
              log_path: str | None = None, bundle_cache: str | None = None) -> serve.Application:
    """The application for one registered bundle, sized by the serve section of the config; `record` names the
    request model (from the dataset's name).

    An alias is resolved here, once: every replica loads that exact version (`models:/name/<n>`), so a replica
    restarted after a promotion still serves what was deployed; a new version arrives by deploying again (in place
    through `reconfigure` when applied from a config file, see `deployment_options`).
    """
    served = pinned_uri(model_uri, tracking_uri)
    digests = api_key_digests(settings)
    rollout = rollout_config(model_uri, served, tracking_uri, settings, record, canary, log_path, bundle_cache)
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
    dataset (the pipeline's name, which names the request model), prediction_log_path (where the prediction log
    goes when serve.prediction_log sets no path), and any field of the config's serve section
    (num_replicas, autoscaling, max_batch_size, model_cpus, ...), validated the same way.
    """
    args = dict(args)
    model_uri = args.pop("model_uri", "models:/flights-late-arrival@champion")
    tracking_uri = args.pop("tracking_uri", None)
    tracking_uri = expand_env(tracking_uri) if tracking_uri else os.environ.get("MLFLOW_TRACKING_URI")
    dataset = args.pop("dataset", "flights")
    log_path = args.pop("prediction_log_path", None)
    bundle_cache = args.pop("bundle_cache", None)
    return build_app(model_uri, tracking_uri, ServeConfig.model_validate(args), record_name(dataset),
                     log_path=log_path, bundle_cache=bundle_cache)
