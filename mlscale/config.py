"""Typed pipeline configuration: one section per stage, loadable from YAML.

A bad config fails early with a message naming the field and the value, instead of a stack trace
from deep inside a stage minutes later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlscale.data.schema import ColumnSpec

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A pipeline config that cannot be used, with a message a person can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(_Section):
    address: str | None = Field(None, description="Cluster address; None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of the embedded Ray (None: Ray decides).")
    object_store_memory: int | None = Field(None, ge=78_643_200)
    include_dashboard: bool = Field(True, description="Ray Train's placement-group cleanup needs the state API.")


class StorageConfig(_Section):
    root: str = Field(".mlscale", description="Where prepared data, checkpoints and caches live.")

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; None means a sqlite store under storage.root.")
    experiment: str = "mlscale"
    registered_model: str = "flights-late-arrival"
    alias: str = "champion"


class DataConfig(_Section):
    source: Literal["flights"] = "flights"
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Deterministic hash sample of the source.")
    label: str = "arr_delay"
    label_threshold: float = Field(15.0, description="Label is 1 when the label column is >= this value.")
    time_column: str = "month"
    schema_: list[ColumnSpec] | None = Field(None, alias="schema", description="None: the source's own schema.")
    read_blocks: int = Field(8, ge=1, description="How many files the source is cut into for parallel reads.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitConfig(_Section):
    train: list[int] = Field(default_factory=lambda: list(range(1, 10)))
    val: list[int] = Field(default_factory=lambda: [10, 11])
    test: list[int] = Field(default_factory=lambda: [12])

    @model_validator(mode="after")
    def _disjoint(self) -> SplitConfig:
        seen: dict[int, str] = {}
        for name in ("train", "val", "test"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"split.{name} is empty")
            for value in values:
                if value in seen:
                    raise ValueError(f"split.{name} and split.{seen[value]} both contain {value}")
                seen[value] = name
        return self


class FeaturesConfig(_Section):
    numeric: list[str] = Field(
        default_factory=lambda: [
            "dep_delay", "distance", "temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib",
        ]
    )
    categorical: list[str] = Field(default_factory=lambda: ["carrier", "origin", "dest"])
    min_category_count: int = Field(20, ge=1, description="Rarer categories share the out-of-vocabulary bucket.")
    max_categories: int = Field(200, ge=1)
    hhmm_columns: list[str] = Field(
        default_factory=lambda: ["sched_dep_time", "sched_arr_time"],
        description="HHMM clock times, encoded as cyclical time of day.",
    )
    date_columns: tuple[str, str, str] | None = Field(
        ("year", "month", "day"), description="Columns giving a calendar date: day of week and season features."
    )


class TrainConfig(_Section):
    num_workers: int = Field(2, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    max_failures: int = Field(1, ge=-1)
    checkpoints_to_keep: int = Field(2, ge=1)
    run_name: str | None = Field(None, description="A fixed name makes a rerun resume from that run's checkpoints.")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        for width in value:
            if width < 1:
                raise ValueError(f"every hidden width must be >= 1, got {width}")
        return value


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "mlscale"
    route_prefix: str = "/"
    num_replicas: int = Field(1, ge=1)
    model_cpus: float = Field(0.5, gt=0, description="CPUs reserved per model replica.")
    ingress_cpus: float = Field(0.25, gt=0, description="CPUs reserved per HTTP ingress replica.")
    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_records_per_request: int = Field(10_000, ge=1)
    compare_rows: int = Field(128, ge=1, description="Held-out rows served and compared with batch scoring.")


class PipelineConfig(_Section):
    name: str = "flights"
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{self.storage.root_path / 'mlflow.db'}"

    def fingerprint(self) -> str:
        """A stable hash of the settings that change results (lineage, caching)."""
        payload = self.model_dump(mode="json", exclude={"ray", "serve", "tracking"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default} so one YAML serves laptop and cluster."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"environment variable {name} is not set and has no default (${{{name}:-...}})")
            return default
        return value

    return _ENV_PATTERN.sub(replace, text)


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid pipeline config ({source}):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {field}: {item['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "dict") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a YAML pipeline config (None: all defaults), then apply dotted overrides like {"train.epochs": 2}."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(_expand_env(path.read_text())) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
        source = str(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data, source)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.epochs=2", "serve.port=8001"] -> {"train.epochs": 2, ...}; values are parsed as JSON when they can be."""
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override must look like key=value, got {item!r}")
        try:
            pairs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key.strip()] = value
    return pairs
