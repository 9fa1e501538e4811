"""Challenger against champion on the same data, and the decision to move the champion alias.

Both versions are scored by the same batch path (evaluate.score) on the same rows, so the comparison measures the
models, not the data. The metric is the config's validation metric, read on the evaluated split (test by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import ray.data

from mlscale.config import PipelineConfig
from mlscale.evaluate import Evaluation, evaluate, score
from mlscale.registry.store import load_bundle, promote, version_of


class NothingToServe(RuntimeError):
    """The model alias that serving loads points at no version (e.g. the first model failed its checks)."""


@dataclass
class Comparison:
    metric: str
    mode: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    delta: float | None  # challenger minus champion; positive is better when mode is max
    better: bool
    promoted: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_uri(config: PipelineConfig, reference: str) -> str:
    """models:/name/<version> for a number, models:/name@<alias> otherwise; a full URI is kept."""
    if reference.startswith(("models:/", "runs:/")):
        return reference
    name = config.tracking.registered_model
    return f"models:/{name}/{reference}" if reference.isdigit() else f"models:/{name}@{reference}"


def evaluate_model(config: PipelineConfig, dataset: ray.data.Dataset, uri: str, prefix: str = "test") -> Evaluation:
    """Score a registered version on a dataset through the bundle and compute its metrics, slices and calibration."""
    bundle = load_bundle(uri, config.tracking_uri)
    return evaluate(score(dataset, uri, config.tracking_uri), bundle.label, prefix, config.evaluate.slices,
                    config.evaluate.min_slice_rows, config.evaluate.calibration_bins)


def compare(config: PipelineConfig, dataset: ray.data.Dataset, challenger: str = "challenger",
            champion: str = "champion", prefix: str = "test",
            challenger_evaluation: Evaluation | None = None) -> Comparison:
    """Both versions on the same rows. A missing champion makes the challenger better by default."""
    name, mode = config.metric
    metric = f"{prefix}_{name.removeprefix('val_')}"
    challenger_uri = model_uri(config, challenger)
    mine = challenger_evaluation or evaluate_model(config, dataset, challenger_uri, prefix)
    champion_uri = model_uri(config, champion)
    is_alias = champion_uri.endswith(f"@{champion}")
    if is_alias and version_of(config.tracking.registered_model, champion) is None:
        return Comparison(metric, mode, {"uri": challenger_uri, "metrics": mine.metrics}, None, None, True,
                          reason=f"no {champion} yet")
    theirs = evaluate_model(config, dataset, champion_uri, prefix)
    delta = mine.metrics[metric] - theirs.metrics[metric]
    gain = delta if mode == "max" else -delta
    return Comparison(metric, mode, {"uri": challenger_uri, "metrics": mine.metrics},
                      {"uri": champion_uri, "metrics": theirs.metrics}, delta,
                      better=gain > config.tracking.promotion_min_delta,
                      reason=f"{metric} {mine.metrics[metric]:.5f} vs {theirs.metrics[metric]:.5f}")


def decide_and_promote(config: PipelineConfig, comparison: Comparison, challenger_alias: str = "challenger") -> bool:
    """Apply tracking.promotion: always, if_better (the comparison says so), or manual (never here)."""
    policy = config.tracking.promotion
    if policy == "always" or (policy == "if_better" and comparison.better):
        promote(config.tracking.registered_model, challenger_alias, config.tracking.alias)
        comparison.promoted = True
    comparison.reason = f"{policy}: {comparison.reason}" if comparison.reason else policy
    return comparison.promoted


def require_served_version(config: PipelineConfig, trained_version: str, reason: str) -> str:
    """The version behind the serving alias; a clear error when training left it unset."""
    version = version_of(config.tracking.registered_model, config.tracking.alias)
    if version is None:
        raise NothingToServe(f"{config.tracking.registered_model}@{config.tracking.alias} is not set: version "
                             f"{trained_version} was not promoted ({reason}); nothing to deploy")
    return version
