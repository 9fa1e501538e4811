"""The train stage: features fit on train, Ray Train over the featurized splits, then the judge stage, all in one
MLflow run with the config (secrets redacted), lineage, the training curve and the data that went in."""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from mlscale.config import PipelineConfig
from mlscale.data.prepare import REPORT_FILE, PreparedData, load_prepared
from mlscale.features.featureset import FittedFeatures
from mlscale.features.label import label_spec, target_stats
from mlscale.models.networks import spec_for_features
from mlscale.plots import training_curve
from mlscale.promotion import PromotionDecision
from mlscale.registry.lineage import code_version
from mlscale.stages.judge import Judged, register_and_judge
from mlscale.tracking import flat_params, stage_run
from mlscale.train.inputs import TrainingData, training_data
from mlscale.train.loop import MlflowTarget
from mlscale.train.trainer import resumable_run_name, run_training


@dataclass
class TrainedModel:
    """What the train stage hands on: where the model is, how good it is, and what was decided about it."""

    model_uri: str
    version: str
    run_id: str
    test_metrics: dict[str, float]
    best_val_metrics: dict[str, float]
    decision: PromotionDecision
    history: list[dict[str, float]] = field(default_factory=list)
    version_uri: str = ""
    promoted: bool = False
    behaviour_passed: bool = True
    attempts: int = 1
    repeated_steps: int = 0
    slices: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What `mlscale train` and the train job print (the pipeline's and a sweep's summaries include it)."""
        return {
            "model_uri": self.model_uri, "model_version": self.version, "version_uri": self.version_uri,
            "promoted": self.promoted, "promotion": self.decision.reason, "behaviour_passed": self.behaviour_passed,
            "mlflow_run_id": self.run_id, "train_attempts": self.attempts, "train_repeated_steps": self.repeated_steps,
            **{k: v for k, v in self.best_val_metrics.items() if k.startswith("val_")},
            **self.test_metrics,
        }


def data_lineage(config: PipelineConfig, prepared: PreparedData, features: FittedFeatures) -> dict[str, str]:
    """Where a model comes from: data, config, code, features, and the run it was trained under."""
    parent = mlflow.active_run()
    return {
        "data_fingerprint": prepared.data_fingerprint,
        "config_hash": config.fingerprint(),
        "code_version": code_version(),
        "feature_fingerprint": features.fingerprint,
        "parent_run": parent.info.run_id if parent else "",
    }


def log_training_inputs(prepared: PreparedData, data: TrainingData) -> None:
    """In the active run: the data that went in (as MLflow dataset inputs too, so the run's page lists the train and
    validation splits with their location and digest), its validation report and the feature cache used."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for split, context in (("train", "training"), ("val", "validation")):
        with warnings.catch_warnings():  # MLflow registers the local source twice and says so on every call
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(prepared.split_path(split))
        digest = (prepared.cache_key or prepared.data_fingerprint)[:16]
        # MLflow's docs build MetaDataset directly; only its type hints mark `profile` abstract
        dataset = MetaDataset(source, name=f"{prepared.pipeline}-{split}", digest=digest)  # type: ignore[abstract]
        mlflow.log_input(dataset, context=context)
    mlflow.log_dict(json.loads(prepared.to_json()), "data/prepared.json")
    if prepared.has_report():  # absent only in data prepared by an older mlscale
        mlflow.log_dict(prepared.report().to_dict(), f"data/{REPORT_FILE}")
    mlflow.set_tags({"mlscale.feature_cache": data.cache.key, "mlscale.feature_cache_hit": str(data.cached).lower()})
    mlflow.log_metrics({f"data_{k}_rows": float(v) for k, v in prepared.counts.items()})


def log_history(config: PipelineConfig, history: list[dict[str, float]], directory: Path) -> None:
    """The training curve, as JSON and as a plot, in the active run."""
    metric, _ = config.metric
    mlflow.log_text(json.dumps(history, indent=2), "training/history.json")
    mlflow.log_artifact(str(training_curve(history, directory / "training_curve.png", metric,
                                           f"{config.name}: training curve")), "plots")


def trained_model(config: PipelineConfig, judged: Judged, run_id: str, best_metrics: dict[str, float],
                  history: list[dict[str, float]], attempts: int = 1, repeated_steps: int = 0) -> TrainedModel:
    registered, decision = judged.registered, judged.decision
    return TrainedModel(
        model_uri=registered.alias_uri(config.tracking.alias), version=registered.version, run_id=run_id,
        test_metrics=judged.evaluation.metrics, best_val_metrics=best_metrics, history=history,
        version_uri=registered.version_uri, promoted=decision.promote, decision=decision,
        behaviour_passed=judged.behaviour.passed, attempts=attempts, repeated_steps=repeated_steps,
        slices=judged.evaluation.slices,
    )


def train_stage(config: PipelineConfig, prepared: PreparedData | None = None,
                run_name: str | None = None) -> TrainedModel:
    """Fit features on train, train with Ray Train, register the bundle as challenger, evaluate it on test
    (metrics, slices, calibration, behaviour), and promote it by the config's promotion policy.

    Args:
        config: the pipeline config; call `mlscale.start(config)` first.
        prepared: the prepare stage's result; None reads the last committed preparation of `config.name`.
        run_name: the Ray Train run name (a rerun with the same name resumes from its checkpoints); None derives a
            resumable name from the config and the data.

    Returns:
        The registered version, its test metrics, training history and the promotion decision.

    Raises:
        PreparedDataMissing: `prepared` is None and the prepare stage has not run for this pipeline name.
        PromotionConflict: the champion kept moving under concurrent promotions.
    """
    prepared = prepared or load_prepared(config)
    data = training_data(config, prepared)
    spec = spec_for_features(config.train.model, data.features)
    label = label_spec(config.data, prepared.read("train"))
    lineage = data_lineage(config, prepared, data.features)
    with stage_run(run_name or f"{config.name}-train", system_metrics=True) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(flat_params(config))
        mlflow.set_tags({f"mlscale.{k}": v for k, v in lineage.items()} | {"mlscale.stage": "train"})
        log_training_inputs(prepared, data)
        outcome = run_training(
            config, data.train, data.val, spec, run_name or resumable_run_name(config, prepared.cache_key or
                                                                               prepared.data_fingerprint),
            target_stats=target_stats(label),
            mlflow_run=MlflowTarget(config.tracking_uri, run.info.run_id),
        )
        mlflow.log_metrics(outcome.summary_metrics())
        mlflow.set_tag("mlscale.train_run_name", outcome.run_name)
        log_history(config, outcome.history, Path(tmp))
        judged = register_and_judge(config, prepared, data.features, spec, label, outcome.state_dict,
                                    outcome.best_metrics, lineage, Path(tmp))
    return trained_model(config, judged, run.info.run_id, outcome.best_metrics, outcome.history,
                         len(outcome.attempts), outcome.repeated_steps)
