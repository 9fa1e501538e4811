"""mlscale: the production ML lifecycle on one Ray cluster.

The public API for pipeline authors and notebooks::

    import mlscale

    config = mlscale.load_config("jobs/configs/flights.yaml", {"train.epochs": 2})
    result = mlscale.run_pipeline(config)          # or stage by stage:
    mlscale.start(config)
    prepared = mlscale.prepare_stage(config)
    trained = mlscale.train_stage(config, prepared)
    bundle = mlscale.load_bundle(trained.model_uri, config.tracking_uri)
    bundle.predict_records(mlscale.held_out_records(prepared.read("test"), 5))

Names are resolved lazily (PEP 562), so `import mlscale` is cheap and a Ray worker importing one module of the
package does not load Ray Serve, MLflow plots or the search code with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlscale.version import __version__

_EXPORTS: dict[str, str] = {
    # configuration
    "PipelineConfig": "mlscale.config",
    "load_config": "mlscale.config",
    "config_from_dict": "mlscale.config",
    # stages and the whole pipeline
    "start": "mlscale.stages.common",
    "prepare_stage": "mlscale.stages.prepare",
    "train_stage": "mlscale.stages.train",
    "tune_stage": "mlscale.stages.tune",
    "deploy_stage": "mlscale.stages.deploy",
    "served_vs_batch": "mlscale.stages.deploy",
    "score_stage": "mlscale.stages.score",
    "canary_stage": "mlscale.stages.release",
    "monitor_stage": "mlscale.stages.monitor",
    "retrain_stage": "mlscale.retrain",
    "replay_stage": "mlscale.replay",
    "decide_retrain": "mlscale.monitor.retrain",
    "decision_log": "mlscale.monitor.retrain",
    "run_pipeline": "mlscale.pipeline",
    "PipelineResult": "mlscale.pipeline",
    "TrainedModel": "mlscale.stages.judge",
    # prepared data and records
    "PreparedData": "mlscale.data.prepare",
    "load_prepared": "mlscale.data.prepare",
    "held_out_records": "mlscale.data.records",
    "json_value": "mlscale.data.records",
    # the bundle and the registry
    "Bundle": "mlscale.registry.bundle",
    "load_bundle": "mlscale.registry.store",
    "register_bundle": "mlscale.registry.store",
    "register_path": "mlscale.registry.store",
    "set_alias": "mlscale.registry.store",
    "version_of": "mlscale.registry.store",
    "list_versions": "mlscale.registry.store",
    # promotion: a pure decision, then its application
    "Measurement": "mlscale.promotion",
    "PromotionDecision": "mlscale.promotion",
    "decide": "mlscale.promotion",
    "judge_against_champion": "mlscale.promotion",
    "apply_decision": "mlscale.promotion",
    # releases: the canary policy as a pure decision
    "decide_release": "mlscale.serve.release",
    "ReleaseDecision": "mlscale.serve.release",
    # errors
    "MlscaleError": "mlscale.errors",
    "ConfigError": "mlscale.errors",
    "SourceError": "mlscale.errors",
    "SchemaError": "mlscale.errors",
    "PreparedDataMissing": "mlscale.errors",
    "ValidationFailed": "mlscale.errors",
    "ExpressionError": "mlscale.errors",
    "PromotionError": "mlscale.errors",
    "PromotionConflict": "mlscale.errors",
    "NothingToServe": "mlscale.errors",
    "SearchError": "mlscale.errors",
    "NoWinner": "mlscale.errors",
    "ServingError": "mlscale.errors",
    "TrainingFailed": "mlscale.errors",
    "EXIT_CODES": "mlscale.errors",
}

__all__ = [
    "__version__", "Bundle", "ConfigError", "EXIT_CODES", "ExpressionError", "Measurement", "MlscaleError",
    "NoWinner", "NothingToServe", "PipelineConfig", "PipelineResult", "PreparedData", "PreparedDataMissing",
    "PromotionConflict", "PromotionDecision", "PromotionError", "ReleaseDecision", "SchemaError", "SearchError",
    "ServingError", "SourceError", "TrainedModel", "TrainingFailed", "ValidationFailed", "apply_decision",
    "canary_stage", "config_from_dict", "decide", "decide_release", "deploy_stage", "held_out_records", "json_value",
    "judge_against_champion", "list_versions", "load_bundle", "load_config", "load_prepared", "prepare_stage",
    "register_bundle", "register_path", "run_pipeline", "score_stage", "served_vs_batch", "set_alias", "start",
    "train_stage", "tune_stage", "version_of", "monitor_stage", "retrain_stage", "replay_stage", "decide_retrain",
    "decision_log",
]  # the names of _EXPORTS (a test keeps them equal)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from mlscale.config import PipelineConfig, config_from_dict, load_config
    from mlscale.data.prepare import PreparedData, load_prepared
    from mlscale.data.records import held_out_records, json_value
    from mlscale.errors import (
        EXIT_CODES,
        ConfigError,
        ExpressionError,
        MlscaleError,
        NothingToServe,
        NoWinner,
        PreparedDataMissing,
        PromotionConflict,
        PromotionError,
        SchemaError,
        SearchError,
        ServingError,
        SourceError,
        TrainingFailed,
        ValidationFailed,
    )
    from mlscale.monitor.retrain import decide_retrain, decision_log
    from mlscale.pipeline import PipelineResult, run_pipeline
    from mlscale.promotion import Measurement, PromotionDecision, apply_decision, decide, judge_against_champion
    from mlscale.registry.bundle import Bundle
    from mlscale.registry.store import (
        list_versions,
        load_bundle,
        register_bundle,
        register_path,
        set_alias,
        version_of,
    )
    from mlscale.replay import replay_stage
    from mlscale.retrain import retrain_stage
    from mlscale.serve.release import ReleaseDecision, decide_release
    from mlscale.stages.common import start
    from mlscale.stages.deploy import deploy_stage, served_vs_batch
    from mlscale.stages.judge import TrainedModel
    from mlscale.stages.monitor import monitor_stage
    from mlscale.stages.prepare import prepare_stage
    from mlscale.stages.release import canary_stage
    from mlscale.stages.score import score_stage
    from mlscale.stages.train import train_stage
    from mlscale.stages.tune import tune_stage
