"""The whole pipeline's config: every section, and what is derived from several of them."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from mlscale.config.base import StrictModel
from mlscale.config.data import DataConfig, SplitConfig, ValidationConfig
from mlscale.config.evaluate import EvaluateConfig
from mlscale.config.features import FeaturesConfig
from mlscale.config.monitor import MonitorConfig, ReplayConfig
from mlscale.config.platform import RayConfig, StorageConfig, TrackingConfig
from mlscale.config.serve import ScoreConfig, ServeConfig
from mlscale.config.train import TrainConfig
from mlscale.config.tune import TuneSettings
from mlscale.direction import mode_of
from mlscale.uris import alias_uri


class PipelineConfig(StrictModel):
    name: str = Field(
        "flights", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$",
        description="The pipeline's name: folders under storage.root are named by it, so it is a plain identifier "
                    "(letters, digits, _ and -; no dots, slashes or spaces).")
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)

    @model_validator(mode="after")
    def _searched_fields_exist(self) -> PipelineConfig:
        """tune.space.params names config fields by dotted path: each must be one (checked here, at the root: a
        section never reaches up to the config that holds it)."""
        for dotted in self.tune.space.params:
            node: Any = type(self).model_fields
            for part in dotted.split("."):
                field = node.get(part) if isinstance(node, dict) else None
                if field is None:
                    raise ValueError(f"tune.space.params: {dotted!r} is not a config field")
                annotation = field.annotation
                node = annotation.model_fields if isinstance(annotation, type) and issubclass(
                    annotation, BaseModel) else None
        return self

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{self.storage.root_path / 'mlflow.db'}"

    @property
    def serving_uri(self) -> str:
        """The model serving loads by default: models:/<tracking.registered_model>@<tracking.alias>."""
        return alias_uri(self.tracking.registered_model, self.tracking.alias)

    @property
    def metric(self) -> tuple[str, Literal["max", "min"]]:
        """The validation metric that picks the best checkpoint and stops early, and its direction."""
        name = self.train.metric or ("val_auc" if self.data.task == "classification" else "val_rmse")
        return name, mode_of(name)

    @property
    def metric_stem(self) -> str:
        """The metric without its split: `auc` for val_auc; test_<stem> and live_<stem> name it on other data."""
        return self.metric[0].removeprefix("val_")

    def fingerprint(self) -> str:
        """A stable hash of the settings that change a training run's results (lineage, caching); a search's settings
        are not among them: each trial's config has its own hash."""
        payload = self.model_dump(mode="json", exclude={"ray", "serve", "score", "monitor", "tracking", "tune",
                                                         "replay"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
