"""The stages chained: prepare -> features + train + register + evaluate -> deploy -> served == batch check.

Each stage is a plain function with typed inputs and outputs, so jobs, the CLI, notebooks and tests call the same
code. Stages run as separate jobs find each other's outputs through storage (prepared data) and MLflow (models).
"""

from __future__ import annotations

import json
import math
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
import ray.data
import requests
from mlflow import MlflowClient

from mlscale.behaviour import BehaviourReport, run_behaviour
from mlscale.cluster import ensure_ray
from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, load_prepared, prepare, schema_for
from mlscale.data.validation import ValidationFailed, ValidationReport
from mlscale.evaluate import PREDICTION_COLUMN, Evaluation, score
from mlscale.features.cache import FeatureCache
from mlscale.features.featureset import FittedFeatures
from mlscale.models.networks import network_spec
from mlscale.plots import reliability_diagram, training_curve
from mlscale.promotion import Comparison, compare, decide_and_promote, evaluate_model, require_served_version
from mlscale.registry.bundle import Bundle
from mlscale.registry.lineage import code_version
from mlscale.registry.store import RegisteredBundle, register_bundle, set_alias, use_tracking
from mlscale.serve.deploy import deploy
from mlscale.train.trainer import resumable_run_name, run_training

CHALLENGER = "challenger"


@dataclass
class TrainedModel:
    """What the train stage hands on: where the model is and how good it is."""

    model_uri: str
    version: str
    run_id: str
    test_metrics: dict[str, float]
    best_val_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    version_uri: str = ""
    promoted: bool = False
    comparison: dict[str, Any] = field(default_factory=dict)
    behaviour_passed: bool = True
    attempts: int = 1
    repeated_steps: int = 0
    slices: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServingCheck:
    rows: int
    max_abs_diff: float
    served: list[float]
    batch: list[float]


def start(config: PipelineConfig) -> None:
    """Ray and MLflow for this process; the embedded Ray gets enough logical CPUs for training plus ingest."""
    settings = config.train
    trial = sum(reserved.get("CPU", 0.0) for reserved in config.trial_reservation())
    needed = max(int(max(settings.num_workers, 1) * settings.cpus_per_worker) + 2,
                 math.ceil(config.tune.data_cpus + trial))
    if config.ray.address is None and config.ray.num_cpus is None:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": max(needed, 4)})})
    ensure_ray(config.ray)
    start_tracking(config)


def start_tracking(config: PipelineConfig) -> None:
    """MLflow for this process: the configured store and experiment (no Ray needed, e.g. for registry commands)."""
    config.storage.root_path.mkdir(parents=True, exist_ok=True)
    local_store = config.tracking_uri.startswith(("sqlite:", "file:"))
    artifacts = config.storage.root_path / "mlartifacts" if local_store else None  # a server keeps its own
    use_tracking(config.tracking_uri, config.tracking.experiment, artifacts)


def flat_params(config: PipelineConfig, section: str | None = None) -> dict[str, str]:
    """The config as MLflow params (dotted names): all but the search settings, or one section."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif value is not None:
            flat[prefix] = str(value)[:500]

    if section is not None:
        walk(section, config.model_dump(mode="json")[section])
    else:
        walk("", config.model_dump(mode="json", exclude={"data": {"schema_"}, "tune": True}))
    return flat


def _log_validation(config: PipelineConfig, report: ValidationReport, where: Path, status: str) -> None:
    """The prepare stage's MLflow run: the ValidationReport as an artifact and its counts as metrics."""
    with child_run(f"{config.name}-prepare") as run:
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


def child_run(name: str) -> mlflow.ActiveRun:
    """An MLflow run, nested under the active one when there is one (the pipeline's run, a tuning run)."""
    return mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None)


def label_spec(config: PipelineConfig, prepared: PreparedData) -> dict[str, Any]:
    """What the label means, stored in the bundle: a threshold for classification, the scale for regression."""
    column = config.data.label
    if config.data.task == "classification":
        threshold = config.data.label_threshold
        return {"task": "classification", "column": column, "threshold": threshold,
                "meaning": f"{column} >= {threshold:g}"}
    train = prepared.read("train")
    mean, std = float(train.mean(column)), float(train.std(column))
    return {"task": "regression", "column": column, "mean": mean, "std": std if std > 0 else 1.0,
            "meaning": f"{column} (predicted value)"}


def model_network_spec(config: PipelineConfig, features: FittedFeatures) -> dict[str, Any]:
    model = config.train.model
    return network_spec(model.family, len(features.numeric_names), features.cardinalities, model.embedding_cap,
                        **model.model_dump(exclude={"family", "embedding_cap"}))


def _held_out_records(prepared: PreparedData, rows: int) -> list[dict[str, Any]]:
    return [{name: json_value(value) for name, value in row.items()} for row in prepared.read("test").limit(rows)
            .take_all()]


def _log_evaluation(config: PipelineConfig, evaluation: Evaluation, directory: Path) -> None:
    """Test metrics, the slice table and (classification) the reliability diagram, in the active run."""
    mlflow.log_metrics(evaluation.metrics)
    mlflow.log_dict(evaluation.slices, "evaluation/slices.json")
    if evaluation.reliability is not None:
        mlflow.log_dict(evaluation.reliability, "evaluation/reliability.json")
        mlflow.log_artifact(str(reliability_diagram(evaluation.reliability, directory / "reliability.png",
                                                    evaluation.metrics["test_ece"],
                                                    f"{config.name}: reliability on test")), "plots")


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
    if cache.split_bytes("train") <= config.train.materialize_mb * 2**20:
        train = train.materialize()  # read once, not once per epoch
    return TrainingData(cache, features, train, val, features_cached and train_cached and val_cached)


def _judge_challenger(config: PipelineConfig, prepared: PreparedData, bundle: Bundle, registered: RegisteredBundle,
                      directory: Path) -> tuple[Evaluation, BehaviourReport, Comparison]:
    """In the training run: evaluate the new version on test, run its behavioural tests, compare it with the
    champion on the same rows, and promote it by the config's policy (never when a behavioural test fails,
    unless the policy is `always`)."""
    test = prepared.read("test")
    evaluation = evaluate_model(config, test, registered.version_uri)
    _log_evaluation(config, evaluation, directory)
    behaviour = run_behaviour(bundle, _held_out_records(prepared, config.evaluate.behaviour.rows),
                              config.evaluate.behaviour)
    print(behaviour.render(), flush=True)
    mlflow.log_dict(behaviour.to_dict(), "evaluation/behaviour.json")
    mlflow.set_tag("mlscale.behaviour_passed", str(behaviour.passed).lower())
    comparison = compare(config, test, registered.version, config.tracking.alias, challenger_evaluation=evaluation)
    if not behaviour.passed:
        comparison.better = False
        comparison.reason += f"; behaviour checks failed: {[r.name for r in behaviour.failures()]}"
    decide_and_promote(config, comparison)
    mlflow.log_dict(comparison.to_dict(), "evaluation/comparison.json")
    mlflow.set_tag("mlscale.promoted", str(comparison.promoted).lower())
    client = MlflowClient()
    for key, value in evaluation.metrics.items():
        client.set_model_version_tag(registered.name, registered.version, key, f"{value:.6f}")
    return evaluation, behaviour, comparison


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


def log_training_inputs(config: PipelineConfig, prepared: PreparedData, data: TrainingData) -> None:
    """In the active run: the data that went in, its validation report and the feature cache used."""
    mlflow.log_dict(json.loads(prepared.to_json()), "data/prepared.json")
    if prepared.report_path.exists():  # absent only in data prepared by an older mlscale
        mlflow.log_artifact(str(prepared.report_path), "data")
    mlflow.set_tags({"mlscale.feature_cache": data.cache.key, "mlscale.feature_cache_hit": str(data.cached).lower()})
    mlflow.log_metrics({f"data_{k}_rows": float(v) for k, v in prepared.counts.items()})


@dataclass
class Judged:
    """A new version registered as challenger, evaluated, and promoted or not."""

    registered: RegisteredBundle
    evaluation: Evaluation
    behaviour: BehaviourReport
    comparison: Comparison


def register_and_judge(config: PipelineConfig, prepared: PreparedData, features: FittedFeatures,
                       spec: dict[str, Any], label: dict[str, Any], state_dict: dict[str, Any],
                       best_metrics: dict[str, float], lineage: dict[str, str], directory: Path) -> Judged:
    """In the active run: bundle the weights with their features, register them as challenger, then evaluate,
    run the behavioural tests and promote by the config's policy."""
    columns = set(features.input_columns)
    bundle = Bundle(
        network_spec=spec,
        features=features,
        input_schema=[column for column in schema_for(config) if column.name in columns],
        state_dict=state_dict,
        label=label,
        metrics={k: v for k, v in best_metrics.items() if k.startswith("val_")},
        lineage={**lineage, "run_id": mlflow.active_run().info.run_id},
    )
    registered = register_bundle(bundle, config.tracking.registered_model)
    set_alias(registered.name, CHALLENGER, registered.version)
    return Judged(registered, *_judge_challenger(config, prepared, bundle, registered, directory))


def trained_model(config: PipelineConfig, judged: Judged, run_id: str, best_metrics: dict[str, float],
                  history: list[dict[str, float]], attempts: int = 1, repeated_steps: int = 0) -> TrainedModel:
    registered, comparison = judged.registered, judged.comparison
    return TrainedModel(
        model_uri=registered.alias_uri(config.tracking.alias), version=registered.version, run_id=run_id,
        test_metrics=judged.evaluation.metrics, best_val_metrics=best_metrics, history=history,
        version_uri=registered.version_uri, promoted=comparison.promoted, comparison=comparison.to_dict(),
        behaviour_passed=judged.behaviour.passed, attempts=attempts, repeated_steps=repeated_steps,
        slices=judged.evaluation.slices,
    )


def log_history(config: PipelineConfig, history: list[dict[str, float]], directory: Path) -> None:
    metric, _ = config.metric
    mlflow.log_dict(history, "training/history.json")
    mlflow.log_artifact(str(training_curve(history, directory / "training_curve.png", metric,
                                           f"{config.name}: training curve")), "plots")


def train_stage(config: PipelineConfig, prepared: PreparedData | None = None,
                run_name: str | None = None) -> TrainedModel:
    """Fit features on train, train with Ray Train, register the bundle as challenger, evaluate it on test
    (metrics, slices, calibration, behaviour), and promote it to champion by the config's promotion policy."""
    prepared = prepared or load_prepared(config)
    data = training_data(config, prepared)
    spec = model_network_spec(config, data.features)
    label = label_spec(config, prepared)
    lineage = data_lineage(config, prepared, data.features)
    with child_run(run_name or f"{config.name}-train") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(flat_params(config))
        mlflow.set_tags({f"mlscale.{k}": v for k, v in lineage.items()} | {"mlscale.stage": "train"})
        log_training_inputs(config, prepared, data)
        outcome = run_training(
            config, data.train, data.val, spec, run_name or resumable_run_name(config, prepared.cache_key or
                                                                               prepared.data_fingerprint),
            target_stats=target_stats(label),
            mlflow_run={"tracking_uri": config.tracking_uri, "run_id": run.info.run_id},
        )
        mlflow.log_metrics(outcome.summary_metrics())
        mlflow.set_tag("mlscale.train_run_name", outcome.run_name)
        log_history(config, outcome.history, Path(tmp))
        judged = register_and_judge(config, prepared, data.features, spec, label, outcome.state_dict,
                                    outcome.best_metrics, lineage, Path(tmp))
    return trained_model(config, judged, run.info.run_id, outcome.best_metrics, outcome.history,
                         len(outcome.attempts), outcome.repeated_steps)


def target_stats(label: dict[str, Any]) -> tuple[float, float] | None:
    """Regression trains on a standardized target: the label's mean and std; None for classification."""
    return (label["mean"], label["std"]) if label["task"] == "regression" else None


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
            **{k: v for k, v in self.trained.test_metrics.items() if k in ("test_auc", "test_ece", "test_rmse")},
            "promoted": self.trained.promoted,
            "behaviour_passed": self.trained.behaviour_passed,
            "model_uri": self.trained.model_uri,
            "model_version": self.trained.version,
            "endpoint": self.endpoint,
            "served_vs_batch_rows": self.check.rows,
            "served_vs_batch_max_abs_diff": self.check.max_abs_diff,
        }

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "stage_seconds": self.seconds, "history": self.trained.history,
                           "quarantine_reasons": self.prepared.quarantine_reasons,
                           "test_metrics": self.trained.test_metrics, "slices": self.trained.slices,
                           "comparison": self.trained.comparison, "counts": asdict(self.prepared)["counts"]},
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
    with child_run(f"{config.name}-pipeline"):
        mlflow.set_tag("mlscale.stage", "pipeline")
        with stage("prepare", seconds):
            prepared = prepare_stage(config)
        with stage("train", seconds):
            trained = train_stage(config, prepared)
        mlflow.log_metrics({f"{k}_seconds": v for k, v in seconds.items()})
    require_served_version(config, trained.version, trained.comparison.get("reason", ""))
    with stage("deploy", seconds):
        endpoint = deploy(config, trained.model_uri)
    with stage("served vs batch", seconds):
        check = served_vs_batch(config, prepared, trained.model_uri, endpoint)
    return PipelineResult(prepared=prepared, trained=trained, endpoint=endpoint, check=check, seconds=seconds)
