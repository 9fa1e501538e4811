"""What a training run (or a search) reads: features fitted on the train split and the featurized splits."""

from __future__ import annotations

from dataclasses import dataclass

import ray.data

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData
from mlscale.features.cache import FeatureCache
from mlscale.features.featureset import FittedFeatures


@dataclass
class TrainingData:
    cache: FeatureCache
    features: FittedFeatures
    train: ray.data.Dataset
    val: ray.data.Dataset
    cached: bool


def training_data(config: PipelineConfig, prepared: PreparedData) -> TrainingData:
    """Fitted features and the featurized train/val splits (from the feature cache when it has them)."""
    cache = FeatureCache.for_run(config, prepared)
    features, features_cached = cache.fitted(config, prepared)
    train, train_cached = cache.transformed(config, prepared, features, "train")
    val, val_cached = cache.transformed(config, prepared, features, "val")
    budget, train_bytes = config.train.materialize_mb * 2**20, cache.split_bytes("train")
    if train_bytes <= budget:
        train = train.materialize()  # read once, not once per epoch
    if train_bytes + cache.split_bytes("val") <= budget:
        val = val.materialize()  # nor once per trial of a search (a Ray Data execution costs seconds to start)
    return TrainingData(cache, features, train, val, features_cached and train_cached and val_cached)
