"""The train stage: features fit on train, Ray Train over the featurized splits, then the judge stage, all in one
MLflow run with the config (secrets redacted), lineage, the training curve and the data that went in."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, load_prepared
from mlscale.features.label import label_spec, target_stats
from mlscale.models.networks import spec_for_features
from mlscale.stages.judge import TrainedModel, register_and_judge, trained_model
from mlscale.stages.run_records import data_lineage, log_history, log_training_inputs
from mlscale.tracking import flat_params, stage_run
from mlscale.train.inputs import training_data
from mlscale.train.loop import MlflowTarget
from mlscale.train.trainer import resumable_run_name, run_training


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
