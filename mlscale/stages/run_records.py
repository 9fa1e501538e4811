"""What the stages write into their MLflow runs, shared by the stages that train (train, tune) and that validate
(prepare, score): a model's lineage, the data that went in, the training curve, a validation report."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import mlflow

from mlscale.config import PipelineConfig
from mlscale.data.prepare import REPORT_FILE, PreparedData
from mlscale.data.validation import ValidationReport
from mlscale.features.featureset import FittedFeatures
from mlscale.plots import training_curve
from mlscale.registry.lineage import code_version
from mlscale.tracking import stage_run, tracking_client
from mlscale.train.inputs import TrainingData


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


def log_validation(config: PipelineConfig, report: ValidationReport, status: str,
                   stage: str = "prepare", tags: dict[str, str] | None = None) -> None:
    """A validating stage's MLflow run: the ValidationReport as an artifact and its counts as metrics."""
    with stage_run(f"{config.name}-{stage}") as run:
        mlflow.set_tags({"mlscale.stage": stage, "mlscale.config_hash": config.fingerprint(),
                         "mlscale.validation_passed": str(report.passed).lower(), **(tags or {})})
        mlflow.log_metrics({"rows_read": float(report.rows_read), "rows_quarantined": float(report.rows_quarantined),
                            "quarantine_fraction": report.quarantine_fraction,
                            **{f"rule_failed.{rule}": float(n) for rule, n in _metric_safe(report).items()}})
        mlflow.log_dict(report.to_dict(), f"data/{REPORT_FILE}")
    if status != "FINISHED":
        tracking_client(config.tracking_uri).set_terminated(run.info.run_id, status)


def _metric_safe(report: ValidationReport) -> dict[str, int]:
    """MLflow metric names allow letters, digits, _ - . / and space: rule ids like unique(a,b) are rewritten."""
    return {re.sub(r"[^A-Za-z0-9_\-./ ]", "_", rule): n for rule, n in report.counts_by_rule().items()}
