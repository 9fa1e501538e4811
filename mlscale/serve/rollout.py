"""What the replicas serve and how, as Serve's user_config: a `Rollout` (and the `Canary` inside it during a release).

Changing the user_config updates running replicas in place (`reconfigure`); its defaults are the serve section's, so
a user_config written by hand means what the same YAML would.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mlscale.config import PredictionCacheConfig, ServeConfig
from mlscale.config.base import StrictModel
from mlscale.serve.requests import UnknownFields


class Canary(StrictModel):
    """A challenger served beside the champion on a share of the traffic, while a release watcher judges it."""

    uri: str
    served_uri: str
    fraction: float = Field(..., gt=0, lt=1)
    sticky_header: str | None = None
    rollout_id: str = Field(..., description="Names this canary's live numbers in the release ledger.")
    app_name: str
    lease_s: float = Field(15.0, gt=0, description="The challenger's share lasts while the watcher renews its lease.")


_SERVE, _CACHE = ServeConfig.model_fields, PredictionCacheConfig.model_fields


class Rollout(StrictModel):
    """The deployment's user_config: what the replicas serve and how. Changing it updates running replicas."""

    uri: str = Field(..., description="What was asked for (an alias URI is kept for the record).")
    served_uri: str = Field(..., description="The exact version resolved from it at deploy time.")
    tracking_uri: str | None = None
    record: str = "Record"
    # defaults are the serve section's: a user_config written by hand means what the same YAML would
    max_records: int = Field(_SERVE["max_records_per_request"].default, ge=1)
    max_body_bytes: int = Field(_SERVE["max_body_bytes"].default, ge=1)
    unknown_fields: UnknownFields = _SERVE["unknown_fields"].default
    max_batch_size: int = Field(_SERVE["max_batch_size"].default, ge=1)
    batch_wait_timeout_s: float = Field(_SERVE["batch_wait_timeout_s"].default, ge=0)
    variant: str = _SERVE["variant"].default
    cache_entries: int = Field(0, ge=0, description="0: no prediction cache.")
    cache_bytes: int = Field(_CACHE["max_bytes"].default, ge=1)
    cache_ttl_s: float = Field(_CACHE["ttl_s"].default, gt=0)
    canary: Canary | None = None
    prediction_log: dict[str, Any] | None = Field(None, description="LogSettings, the path resolved.")
    bundle_cache: str | None = Field(None, description="Where replicas keep downloaded versions for later starts.")
