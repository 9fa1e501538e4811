"""Typed pipeline configuration: one section per stage, loadable from YAML.

A bad config fails early with a message naming the field and the value, instead of a stack trace
from deep inside a stage minutes later. Each section lives in its own module; everything is
re-exported here, so `from mlscale.config import PipelineConfig` is the one import users need.
"""

from __future__ import annotations

from mlscale.config.data import (
    SPLIT_NAMES,
    CheckRule,
    DataConfig,
    ObjectStoreConfig,
    SplitConfig,
    SplitName,
    SplitValues,
    SyntheticConfig,
    TimeRange,
    ValidationConfig,
)
from mlscale.config.evaluate import (
    BehaviourConfig,
    DirectionalCheck,
    EvaluateConfig,
    InvarianceCheck,
    MinimumCase,
)
from mlscale.config.features import (
    CategoricalFeature,
    CrossFeature,
    FeaturesConfig,
    NumericFeature,
)
from mlscale.config.loading import (
    EXAMPLES,
    config_from_dict,
    example_config,
    expand_env,
    load_config,
    parse_overrides,
)
from mlscale.config.monitor import (
    LabelsConfig,
    MonitorConfig,
    ReplayConfig,
    RetrainConfig,
)
from mlscale.config.pipeline import (
    PipelineConfig,
)
from mlscale.config.platform import (
    PromotionPolicy,
    RayConfig,
    StorageConfig,
    TrackingConfig,
)
from mlscale.config.serve import (
    CanaryConfig,
    GraphConfig,
    PredictionCacheConfig,
    PredictionLogConfig,
    ScoreConfig,
    ServeAutoscaling,
    ServeConfig,
)
from mlscale.config.train import (
    CheckpointSettings,
    EarlyStoppingConfig,
    Family,
    ModelConfig,
    Norm,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
)
from mlscale.config.tune import (
    ArchitectureSpace,
    Distribution,
    FtTransformerSpace,
    MlpSpace,
    ResMlpSpace,
    SchedulerSettings,
    SearchSpace,
    TuneSettings,
)

__all__ = [
    "SPLIT_NAMES",
    "ArchitectureSpace",
    "BehaviourConfig",
    "CanaryConfig",
    "CategoricalFeature",
    "CheckRule",
    "CheckpointSettings",
    "CrossFeature",
    "DataConfig",
    "DirectionalCheck",
    "Distribution",
    "EXAMPLES",
    "EarlyStoppingConfig",
    "EvaluateConfig",
    "Family",
    "FeaturesConfig",
    "FtTransformerSpace",
    "GraphConfig",
    "InvarianceCheck",
    "LabelsConfig",
    "MinimumCase",
    "MlpSpace",
    "ModelConfig",
    "MonitorConfig",
    "Norm",
    "NumericFeature",
    "ObjectStoreConfig",
    "OptimizerConfig",
    "PipelineConfig",
    "PredictionCacheConfig",
    "PredictionLogConfig",
    "PromotionPolicy",
    "RayConfig",
    "ReplayConfig",
    "ResMlpSpace",
    "RetrainConfig",
    "ScheduleConfig",
    "SchedulerSettings",
    "ScoreConfig",
    "SearchSpace",
    "ServeAutoscaling",
    "ServeConfig",
    "SplitConfig",
    "SplitName",
    "SplitValues",
    "StorageConfig",
    "SyntheticConfig",
    "TimeRange",
    "TrackingConfig",
    "TrainConfig",
    "TuneSettings",
    "ValidationConfig",
    "config_from_dict",
    "example_config",
    "expand_env",
    "load_config",
    "parse_overrides",
]
