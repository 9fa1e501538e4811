"""The stages chained: prepare -> features + train + register + evaluate -> deploy -> served == batch check.

Each stage is a plain function with typed inputs and outputs, so jobs, the CLI, notebooks and tests call the same
code. Stages run as separate jobs find each other's outputs through storage (prepared data) and MLflow (models).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric

from mlscale.cluster import ensure_ray
from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, load_prepared, prepare, schema_for
from mlscale.data.validation import ValidationFailed, ValidationReport
from mlscale.evaluate import PREDICTION_COLUMN, evaluate, score
from mlscale.features.cache import FeatureCache
from mlscale.models.networks import mlp_spec
from mlscale.plots import training_curve
from mlscale.registry.bundle import Bundle
from mlscale.registry.lineage import code_version
from mlscale.registry.store import log_and_register, promote, use_tracking
from mlscale.serve.deploy import deploy
from mlscale.train.trainer import run_training


@dataclass
class TrainedModel:
    """What the train stage hands on: where the model is and how good it is."""

    model_uri: str
    version: str
    run_id: str
    test_metrics: dict[str, float]
    best_val_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ServingCheck:
    rows: int
    max_abs_diff: float
    served: list[float]
    batch: list[float]


def start(config: PipelineConfig) -> None:
    """Ray and MLflow for this process; the embedded Ray gets enough logical CPUs for training plus ingest."""
    settings = config.train
    needed = int(max(settings.num_workers, 1) * settings.cpus_per_worker) + 2
    if config.ray.address is None and config.ray.num_cpus is None:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": max(needed, 4)})})
    ensure_ray(config.ray)
    config.storage.root_path.mkdir(parents=True, exist_ok=True)
    local_store = config.tracking_uri.startswith(("sqlite:", "file:"))
    artifacts = config.storage.root_path / "mlartifacts" if local_store else None  # a server keeps its own
    use_tracking(config.tracking_uri, config.tracking.experiment, artifacts)


def _flat_params(config: PipelineConfig) -> dict[str, str]:
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif value is not None:
            flat[prefix] = str(value)[:500]

    walk("", config.model_dump(mode="json", exclude={"data": {"schema_"}}))
    return flat


def _log_validation(config: PipelineConfig, report: ValidationReport, where: Path, status: str) -> None:
    """The prepare stage's MLflow run: the ValidationReport as an artifact and its counts as metrics."""
    with mlflow.start_run(run_name=f"{config.name}-prepare") as run:
        mlflow.set_tags({"mlscale.stage": "prepare", "mlscale.config_hash": config.fingerprint(),
                         "mlscale.validation_passed": str(report.passed).lower()})
        mlflow.log_metrics({"rows_read": float(report.rows_read), "rows_quarantined": float(report.rows_quarantined),
                            "quarantine_fraction": report.quarantine_fraction,
                            **{f"rule_failed.{rule}": float(n) for rule, n in _metric_safe(report).items()}})
        mlflow.log_artifact(str(where), "data")
    if status != "FINISHED":
        MlflowClient().set_terminated(run.info.run_id, status)


def _metric_safe(report: ValidationReport) -> dict[str, int]:
    """MLflow metric names allow letters, digits, _ - . / and space: rule ids like unique(a,b) are rewritten."""
    return {re.sub(r"[^A-Za-z0-9_\-./ ]", "_", rule): n for rule, n in report.counts_by_rule().items()}


def prepare_stage(config: PipelineConfig) -> PreparedData:
    """Prepare (or reuse the cached preparation), print the validation report and record it in MLflow."""
    try:
        prepared = prepare(config)
    except ValidationFailed as failure:
        _log_validation(config, failure.report, failure.report_path, "FAILED")
        raise
    report = prepared.report()
    print(report.render() + (" (cached)" if prepared.cached else ""), flush=True)
    if not prepared.cached:
        _log_validation(config, report, prepared.report_path, "FINISHED")
    return prepared


def _log_history(run_id: str, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics in one batched call."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(key=key, value=float(value), timestamp=now, step=int(row["epoch"]))
        for row in history for key, value in row.items() if key != "epoch"
    ]
    MlflowClient().log_batch(run_id, metrics=metrics)


def train_stage(config: PipelineConfig, prepared: PreparedData | None = None,
                run_name: str | None = None) -> TrainedModel:
    """Fit features on train, train with Ray Train, register the bundle, evaluate it on test, alias it."""
    prepared = prepared or load_prepared(config)
    cache = FeatureCache.for_run(config, prepared)
    features, features_cached = cache.fitted(config, prepared)
    train, train_cached = cache.transformed(config, prepared, features, "train")
    val, _ = cache.transformed(config, prepared, features, "val")
    spec = mlp_spec(len(features.numeric_names), features.cardinalities, config.train.hidden, config.train.dropout)
    columns = set(features.input_columns)
    input_schema = [column for column in schema_for(config) if column.name in columns]
    lineage = {
        "data_fingerprint": prepared.data_fingerprint,
        "config_hash": config.fingerprint(),
        "code_version": code_version(),
        "feature_fingerprint": features.fingerprint,
        "parent_run": "",
    }
    with mlflow.start_run(run_name=run_name or f"{config.name}-train") as run:
        mlflow.log_params(_flat_params(config))
        mlflow.set_tags({f"mlscale.{k}": v for k, v in lineage.items()})
        mlflow.log_dict(json.loads(prepared.to_json()), "data/prepared.json")
        if prepared.report_path.exists():  # absent only in data prepared by an older mlscale
            mlflow.log_artifact(str(prepared.report_path), "data")
        mlflow.set_tags({"mlscale.feature_cache": cache.key,
                         "mlscale.feature_cache_hit": str(features_cached and train_cached).lower()})
        mlflow.log_metrics({f"data_{k}_rows": float(v) for k, v in prepared.counts.items()})
        outcome = run_training(config, train, val, spec, run_name)
        _log_history(run.info.run_id, outcome.history)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(training_curve(outcome.history, Path(tmp) / "training_curve.png",
                                                   f"{config.name}: training curve")), "plots")
        bundle = Bundle(
            network_spec=spec,
            features=features,
            input_schema=input_schema,
            state_dict=outcome.state_dict,
            label={"column": config.data.label, "threshold": config.data.label_threshold,
                   "meaning": f"{config.data.label} >= {config.data.label_threshold:g}"},
            metrics={k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
            lineage={**lineage, "run_id": run.info.run_id},
        )
        registered = log_and_register(bundle, config.tracking.registered_model, config.tracking.alias)
        scored = score(prepared.read("test"), registered.version_uri, config.tracking_uri)
        test_metrics = evaluate(scored, config.data.label, config.data.label_threshold, "test")
        mlflow.log_metrics(test_metrics)
        for key, value in test_metrics.items():
            MlflowClient().set_model_version_tag(registered.name, registered.version, key, f"{value:.6f}")
        promote(registered)
    return TrainedModel(
        model_uri=registered.uri, version=registered.version, run_id=run.info.run_id,
        test_metrics=test_metrics, best_val_metrics=outcome.best_metrics, history=outcome.history,
    )


def served_vs_batch(config: PipelineConfig, prepared: PreparedData, model_uri: str, endpoint: str,
                    rows: int | None = None, tolerance: float = 1e-6) -> ServingCheck:
    """Score held-out rows in batch (map_batches) and over HTTP; they must agree to float rounding."""
    rows = rows or config.serve.compare_rows
    scored = score(prepared.read("test").limit(rows), model_uri, config.tracking_uri).take_all()
    inputs = [name for name in scored[0] if name != PREDICTION_COLUMN] if scored else []
    records = [{name: json_value(row[name]) for name in inputs} for row in scored]
    served: list[float] = []
    for start_at in range(0, len(records), 50):  # several requests of different sizes exercise batching
        response = requests.post(endpoint, json=records[start_at:start_at + 50], timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text[:2000]}")
        served += response.json()["predictions"]
    batch = [float(row[PREDICTION_COLUMN]) for row in scored]
    diff = float(np.max(np.abs(np.asarray(served) - np.asarray(batch)))) if batch else 0.0
    check = ServingCheck(rows=len(batch), max_abs_diff=diff, served=served, batch=batch)
    if len(batch) < rows:
        raise RuntimeError(f"only {len(batch)} held-out rows to compare, wanted {rows}")
    if diff > tolerance:
        raise RuntimeError(f"served and batch predictions differ by {diff:.3g} (> {tolerance:g})")
    return check


def json_value(value: Any) -> Any:
    """A dataset value as JSON has it: NumPy scalars as Python numbers, NaN as null (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


@dataclass
class PipelineResult:
    prepared: PreparedData
    trained: TrainedModel
    endpoint: str
    check: ServingCheck
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        counts = self.prepared.counts
        return {
            "rows_read": self.prepared.rows_read,
            "rows_quarantined": counts["quarantine"],
            "train_rows": counts["train"],
            "val_rows": counts["val"],
            "test_rows": counts["test"],
            "test_auc": self.trained.test_metrics["test_auc"],
            "model_uri": self.trained.model_uri,
            "model_version": self.trained.version,
            "endpoint": self.endpoint,
            "served_vs_batch_rows": self.check.rows,
            "served_vs_batch_max_abs_diff": self.check.max_abs_diff,
        }

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "stage_seconds": self.seconds, "history": self.trained.history,
                           "quarantine_reasons": self.prepared.quarantine_reasons,
                           "test_metrics": self.trained.test_metrics, "counts": asdict(self.prepared)["counts"]},
                          indent=2)


@contextmanager
def stage(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Announce a stage and record how long it took (long work shows where it is)."""
    print(f"[mlscale] {name} ...", flush=True)
    began = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - began, 1)
    print(f"[mlscale] {name} done in {seconds[name]:.1f} s", flush=True)


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """The whole flights pipeline on whatever cluster `start` connected to."""
    seconds: dict[str, float] = {}
    with stage("start", seconds):
        start(config)
    with stage("prepare", seconds):
        prepared = prepare_stage(config)
    with stage("train", seconds):
        trained = train_stage(config, prepared)
    with stage("deploy", seconds):
        endpoint = deploy(config, trained.model_uri)
    with stage("served vs batch", seconds):
        check = served_vs_batch(config, prepared, trained.model_uri, endpoint)
    return PipelineResult(prepared=prepared, trained=trained, endpoint=endpoint, check=check, seconds=seconds)
