"""Judging a trained model, shared by the stages that train (train, tune): register the bundle as challenger,
evaluate it on test, run its behavioural tests, decide its promotion against the champion it was measured with, and
apply that decision (compare-and-set); the TrainedModel they hand on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from mlscale.behaviour import BehaviourReport, run_behaviour
from mlscale.config import PipelineConfig
from mlscale.data.prepare import SPLIT_ROW_COLUMNS, PreparedData, schema_for
from mlscale.data.records import held_out_records
from mlscale.errors import PromotionConflict
from mlscale.evaluate import Evaluation
from mlscale.features.featureset import FittedFeatures
from mlscale.plots import reliability_diagram
from mlscale.promotion import PromotionDecision, apply_decision, evaluate_model, judge_against_champion
from mlscale.registry.bundle import Bundle
from mlscale.registry.store import RegisteredBundle, register_bundle, set_alias
from mlscale.tracking import active_run_id, tracking_client

log = logging.getLogger(__name__)
CHALLENGER = "challenger"
JUDGE_ATTEMPTS = 3  # a champion moved by a concurrent promotion is measured again, this many times at most
EXAMPLE_ROWS = 3  # held-out records stored with the model as its input example


@dataclass
class Judged:
    """A new version registered as challenger, evaluated, and promoted or not."""

    registered: RegisteredBundle
    evaluation: Evaluation
    behaviour: BehaviourReport
    decision: PromotionDecision


def register_and_judge(config: PipelineConfig, prepared: PreparedData, features: FittedFeatures,
                       spec: dict[str, Any], label: dict[str, Any], state_dict: dict[str, Any],
                       best_metrics: dict[str, float], lineage: dict[str, str], directory: Path) -> Judged:
    """In the active MLflow run: bundle the weights with their features, register them as challenger, then judge.

    Args:
        config: the pipeline config the model was trained with.
        prepared: the prepared data (its test split is evaluated, its held-out rows feed the behavioural tests).
        features, spec, label, state_dict: the fitted features, network spec, label spec and trained weights.
        best_metrics: the best evaluation's metrics (its val_* metrics go into the bundle).
        lineage: where the model comes from (data fingerprint, config hash, code version, parent run).
        directory: scratch space for plots.

    Returns:
        The registered version, its evaluation, behaviour report and the applied promotion decision.

    Raises:
        PromotionConflict: the champion kept moving under concurrent promotions (after JUDGE_ATTEMPTS tries).
    """
    columns = set(features.input_columns)
    declared = prepared.column_specs() or schema_for(config)
    bundle = Bundle(
        network_spec=spec,
        features=features,
        input_schema=[column for column in declared if column.name in columns],
        passthrough_columns=[*(column.name for column in declared if column.name not in columns),
                             *SPLIT_ROW_COLUMNS],
        state_dict=state_dict,
        label=label,
        metrics={k: v for k, v in best_metrics.items() if k.startswith("val_")},
        lineage={**lineage, "run_id": active_run_id()},
    )
    registered = register_bundle(bundle, config.tracking.registered_model,
                                 held_out_records(prepared.read("test"), EXAMPLE_ROWS))
    set_alias(registered.name, CHALLENGER, registered.version, config.tracking_uri)
    return Judged(registered, *judge(config, prepared, bundle, registered, directory))


def judge(config: PipelineConfig, prepared: PreparedData, bundle: Bundle, registered: RegisteredBundle,
          directory: Path) -> tuple[Evaluation, BehaviourReport, PromotionDecision]:
    """Evaluate the registered version on test, run its behavioural tests, decide against the current champion and
    apply the decision; all of it recorded in the active run and on the version's tags."""
    test = prepared.read("test")
    evaluation = evaluate_model(config.evaluate, test, registered.version_uri, config.tracking_uri, "test",
                                bundle.label)
    _log_evaluation(config, evaluation, directory)
    behaviour = run_behaviour(bundle, held_out_records(test, config.evaluate.behaviour.rows),
                              config.evaluate.behaviour)
    log.info("%s", behaviour.render())
    mlflow.log_dict(behaviour.to_dict(), "evaluation/behaviour.json")
    mlflow.set_tag("mlscale.behaviour_passed", str(behaviour.passed).lower())
    failures = [result.name for result in behaviour.failures()]
    for attempt in range(1, JUDGE_ATTEMPTS + 1):
        decision = judge_against_champion(config, test, registered.version, challenger_evaluation=evaluation,
                                          behaviour_passed=behaviour.passed, behaviour_failures=failures)
        try:
            apply_decision(decision, config.tracking_uri)
            break
        except PromotionConflict:
            if attempt == JUDGE_ATTEMPTS:
                raise
            log.warning("%s moved during judging; measuring again", config.tracking.alias)
    log.info("promotion of v%s: %s", registered.version, decision.reason)
    mlflow.log_dict(decision.to_dict(), "evaluation/promotion.json")
    mlflow.set_tag("mlscale.promoted", str(decision.promote).lower())
    client = tracking_client(config.tracking_uri)
    for key, value in evaluation.metrics.items():
        client.set_model_version_tag(registered.name, registered.version, key, f"{value:.6f}")
    return evaluation, behaviour, decision


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
