"""The tune stage: a sweep over hyperparameters and architectures, tracked in MLflow, its winner registered as
challenger and judged like any trained model (evaluation, behavioural tests, promotion policy).

MLflow gets one run per sweep with a child run per trial (params, cost, curve, outcome); the sweep's run holds the
results table and the plots (optimization history, parameter importances, the Pareto front when multi-objective).
The winner's bundle is registered from its own trial run, with the chosen architecture in its lineage.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import Metric

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, load_prepared
from mlscale.errors import NoWinner
from mlscale.features.label import label_spec, target_stats
from mlscale.models.networks import spec_for_features
from mlscale.plots import bar_chart, optimization_history, pareto_plot
from mlscale.stages.judge import TrainedModel, register_and_judge, trained_model
from mlscale.stages.run_records import data_lineage, log_history, log_training_inputs
from mlscale.tracking import child_run, experiment_id, flat_params, tracking_client
from mlscale.train.inputs import training_data
from mlscale.tune.analysis import TrialRecord
from mlscale.tune.space import apply_params, architecture_of
from mlscale.tune.sweep import SweepResult, read_best, run_sweep, sweep_name
from mlscale.tune.trial import SweepContext, TrialInputs

RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "stopped": "KILLED", "failed": "FAILED"}


@dataclass
class TunedModel:
    sweep: SweepResult
    run_id: str
    trained: TrainedModel
    architecture: dict

    def summary(self) -> dict:
        sweep, best = self.sweep, self.sweep.best
        assert best is not None, "a TunedModel exists only for a sweep with a winner"
        searched = {
            "sweep": sweep.name, "resumed": sweep.resumed, "mlflow_run_id": self.run_id,
            "trials": len(sweep.trials), **{f"trials_{k}": v for k, v in sweep.counts().items()},
            "max_concurrent_trials": sweep.plan.max_concurrent,
            f"best_{sweep.metric}": best.value, "best_trial": best.trial_id, "architecture": self.architecture,
            "pareto_front": [{"trial": r.trial_id, sweep.metric: r.value, **r.cost} for r in sweep.pareto],
        }
        # the winner's own summary beside it; the run named is the sweep's (the trials are its children)
        return {**searched, **{k: v for k, v in self.trained.summary().items() if k not in searched}}


def _sweep_run(config: PipelineConfig, name: str) -> mlflow.ActiveRun:
    """The sweep's MLflow run: the one an interrupted attempt of this sweep started, or a new one."""
    found = mlflow.search_runs([experiment_id(config.tracking.experiment)], f"tags.`mlscale.sweep` = '{name}' and "
                               f"tags.`mlscale.stage` = 'tune'", output_format="list", max_results=1)
    if found:
        return mlflow.start_run(run_id=found[0].info.run_id, nested=mlflow.active_run() is not None)
    run = child_run(name)
    mlflow.log_params(flat_params(config, "tune"))
    mlflow.set_tags({"mlscale.stage": "tune", "mlscale.sweep": name})
    return run


def close_trial_runs(config: PipelineConfig, sweep: SweepResult, experiment: str) -> None:
    """Each trial's run gets its outcome (completed / pruned / stopped / failed), a matching status, and any point
    of its curve that Tune saw but the trial could not log (a pruned trial is stopped right after it reports)."""
    client = tracking_client(config.tracking_uri)
    runs = client.search_runs([experiment], f"tags.`mlscale.sweep` = '{sweep.name}' and "
                              f"tags.`mlscale.stage` = 'tune_trial'", max_results=10_000)
    by_trial = {run.data.tags["mlscale.trial_id"]: run.info.run_id for run in runs}
    for record in sweep.trials:
        record.run_id = by_trial.get(record.trial_id, "")
        if not record.run_id:
            continue
        client.set_tag(record.run_id, "mlscale.outcome", record.outcome)
        now = int(time.time() * 1000)
        logged = {point.step for point in client.get_metric_history(record.run_id, sweep.metric)}
        missing = [Metric(sweep.metric, r.value, now, r.step) for r in sweep.reports
                   if r.trial_id == record.trial_id and r.step not in logged]
        if record.value is not None:
            missing.append(Metric(f"best_{sweep.metric}", record.value, now, 0))
        client.log_batch(record.run_id, metrics=missing)
        client.set_terminated(record.run_id, RUN_STATUS[record.outcome])


def _importances(sweep: SweepResult) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator) over the finished trials (needs a few)."""
    study = sweep.study()
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < 3:
        return {}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        return optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError):  # e.g. every trial has the same value: nothing to attribute
        return {}


def log_sweep(sweep: SweepResult, directory: Path) -> None:
    """In the sweep's run: the results table, the counts, the best value and the plots."""
    table = sweep.table()
    table.to_csv(directory / "trials.csv", index=False)
    mlflow.log_artifact(str(directory / "trials.csv"), "tune")
    mlflow.log_metrics({f"trials_{k}": float(v) for k, v in sweep.counts().items()})
    if sweep.best is not None and sweep.best.value is not None:
        mlflow.log_metric(f"best_{sweep.metric}", sweep.best.value)
        mlflow.set_tag("mlscale.best_trial", sweep.best.trial_id)
    finished = [r.value for r in sorted(sweep.trials, key=_finish_time(sweep))]
    mlflow.log_artifact(str(optimization_history(finished, directory / "optimization_history.png", sweep.metric,
                                                 sweep.mode, f"{sweep.name}: optimization history")), "plots")
    importances = _importances(sweep)
    if importances:
        mlflow.log_dict(importances, "tune/param_importances.json")
        mlflow.log_artifact(str(bar_chart(importances, directory / "param_importances.png", "importance (Optuna)",
                                          f"{sweep.name}: parameter importances")), "plots")
    cost_key = sweep.cost
    if cost_key:
        points = [(r.cost[cost_key], r.value) for r in sweep.trials if r.value is not None and cost_key in r.cost]
        front = [(r.cost[cost_key], r.value) for r in sweep.pareto if r.value is not None]
        mlflow.log_text(json.dumps([{"trial": r.trial_id, sweep.metric: r.value, **r.cost, "params": r.params}
                                    for r in sweep.pareto], indent=2, default=str), "tune/pareto_front.json")
        mlflow.log_artifact(str(pareto_plot(points, front, directory / "pareto_front.png", cost_key, sweep.metric,
                                            f"{sweep.name}: {sweep.metric} against {cost_key}")), "plots")


def _finish_time(sweep: SweepResult) -> Callable[[TrialRecord], float]:
    last: dict[str, float] = {}
    for report in sweep.reports:
        last[report.trial_id] = max(report.time, last.get(report.trial_id, 0.0))
    return lambda record: last.get(record.trial_id, float("inf"))


def tune_stage(config: PipelineConfig, prepared: PreparedData | None = None) -> TunedModel:
    """Run or resume the sweep, then register its winner as challenger and judge it like a trained model.

    Args:
        config: the pipeline config with its `tune` section; call `mlscale.start(config)` first.
        prepared: the prepare stage's result; None reads the last committed preparation of `config.name`.

    Returns:
        The sweep (trials, best, Pareto front), its MLflow run and the winner as a judged TrainedModel.

    Raises:
        NoWinner: no trial reported the metric.
        PreparedDataMissing: nothing prepared for this pipeline name.
    """
    prepared = prepared or load_prepared(config)
    data = training_data(config, prepared)
    label = label_spec(config.data, prepared.read("train"))
    name = sweep_name(config, prepared.cache_key or prepared.data_fingerprint)
    experiment = experiment_id(config.tracking.experiment)
    lineage = data_lineage(config, prepared, data.features)  # parent_run: the pipeline's run, if any
    with _sweep_run(config, name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({f"mlscale.{k}": v for k, v in lineage.items()})
        log_training_inputs(prepared, data)
        context = SweepContext(name, config.tracking_uri, experiment, run.info.run_id)
        inputs = TrialInputs(config, data.features, data.train, data.val, target_stats(label), context)
        sweep, grid = run_sweep(config, inputs, name)
        close_trial_runs(config, sweep, experiment)
        log_sweep(sweep, Path(tmp))
        best = sweep.best
        if best is None:
            raise NoWinner(f"sweep {name}: no trial reported {sweep.metric} ({sweep.counts()})")
        state, history = read_best(config, grid, best)
        chosen = apply_params(config, best.params)
        architecture = architecture_of(chosen)
        mlflow.log_dict({"trial": best.trial_id, "params": best.params, "architecture": architecture},
                        "tune/best.json")
        with mlflow.start_run(run_id=best.run_id, nested=True), tempfile.TemporaryDirectory() as trial_tmp:
            log_history(chosen, history, Path(trial_tmp))
            lineage = {**lineage, "config_hash": chosen.fingerprint(), "parent_run": run.info.run_id,
                       "tune_sweep": name, "tune_trial": best.trial_id, "architecture": json.dumps(architecture)}
            judged = register_and_judge(chosen, prepared, data.features, spec_for_features(chosen.train.model,
                                                                                           data.features),
                                        label, state, history[-1], lineage, Path(trial_tmp))
        mlflow.set_tag("mlscale.registered_version", judged.registered.version)
    trained = trained_model(chosen, judged, best.run_id, history[-1], history)
    return TunedModel(sweep, run.info.run_id, trained, architecture)
