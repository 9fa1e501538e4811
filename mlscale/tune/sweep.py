"""A sweep: Ray Tune runs the trials, Optuna (TPE or random, seedable) picks them, ASHA stops the laggards.

The Optuna study lives in a SQL database and Tune keeps its experiment state in storage, so a sweep interrupted
midway resumes where it was when its job is resubmitted (Tuner.restore): finished trials are not run again, running
ones resume from their last checkpoint. Without `tune.name` the sweep is named from its config and data, with a
counter that only moves on once a sweep of that name has finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, cast

import optuna
import pandas as pd
import pyarrow.fs as pafs
import ray
import ray.train
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from mlscale.config import PipelineConfig
from mlscale.data.sources import resolve
from mlscale.data.storage import exists
from mlscale.direction import signed
from mlscale.train.loop import read_checkpoint
from mlscale.train.trainer import checkpoint_storage, first_unfinished
from mlscale.tune.analysis import OUTCOMES, Report, TrialRecord, pareto_front, pick_winner
from mlscale.tune.resources import TrialPlan, plan_trials
from mlscale.tune.space import DefineByRun
from mlscale.tune.trial import TrialInputs, run_trial

FINISHED_MARKER = "mlscale-finished.json"
PRUNED_DIR = "mlscale-pruned"
COST_METRICS = {"params": "params", "latency_ms": "latency_ms"}


def tune_storage(config: PipelineConfig) -> tuple[pafs.FileSystem, str]:
    uri = config.tune.storage_uri or str(config.storage.root_path / "tune")
    return resolve(uri, config.data.object_store)


def sweep_name(config: PipelineConfig, data_key: str) -> str:
    """tune.name, or `<name>-sweep-<hash>-<n>` with n the first sweep of that hash that has not finished."""
    if config.tune.name:
        return config.tune.name
    settings = json.dumps(config.tune.model_dump(mode="json"), sort_keys=True)
    digest = hashlib.sha256(f"{config.fingerprint()}|{settings}|{data_key}".encode()).hexdigest()[:10]
    filesystem, root = tune_storage(config)
    return first_unfinished(f"{config.name}-sweep-{digest}",
                            lambda name: exists(filesystem, f"{root}/{name}/{FINISHED_MARKER}"))


def study_storage_url(config: PipelineConfig, name: str) -> str:
    if config.tune.study_storage:
        return config.tune.study_storage
    folder = config.storage.root_path / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / f'{name}-optuna.db'}"


class RecordingASHA(ASHAScheduler):
    """ASHA that leaves a marker for every trial it stops before max_t, so the sweep can tell pruned trials from
    finished ones (and from ones the time budget cut short), even after a restore."""

    def __init__(self, marker_dir: str, filesystem: pafs.FileSystem, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker_dir, self.filesystem = marker_dir, filesystem

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.filesystem.create_dir(self.marker_dir, recursive=True)
            with self.filesystem.open_output_stream(f"{self.marker_dir}/{trial.trial_id}") as stream:
                stream.write(json.dumps({"epoch": result.get(self._time_attr)}).encode())
        return action


@dataclass(frozen=True)
class PrunedMarkers:
    """Whether ASHA stopped a trial, read from the markers RecordingASHA leaves (they survive a restore, and a
    searcher restored from Tune's state finds them where the scheduler wrote them)."""

    marker_dir: str
    filesystem: pafs.FileSystem

    def __call__(self, trial_id: str) -> bool:
        return exists(self.filesystem, f"{self.marker_dir}/{trial_id}")


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA stopped was PRUNED, not COMPLETE. Tune's OptunaSearch reports
    every finished trial with its last value, so TPE would model an epoch-1 AUC as if it were a final one and rank
    the regions it cut early among the good ones; as PRUNED (with the per-epoch values it reported as intermediate
    values) TPE ranks it below every complete trial, by how far it got and how well. Multi-objective studies have
    no pruned state in Optuna: their trials stay COMPLETE."""

    def __init__(self, *args: Any, pruned: PrunedMarkers, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pruned = pruned

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or isinstance(self.metric, list) or trial_id in self._completed_trials \
                or not self.pruned(trial_id):
            super().on_trial_complete(trial_id, result, error)
            return
        study = cast(optuna.Study, self._ot_study)  # set once the searcher has its search properties
        try:
            study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except (ValueError, RuntimeError) as error_told:  # already told (a restored sweep): Optuna refuses twice
            warnings.warn(f"trial {trial_id}: {error_told}", stacklevel=2)
        self._completed_trials.add(trial_id)


class EpochBudget(ray.tune.Stopper):
    """Ends the sweep once its trials have trained `budget` epochs in total (running trials are stopped too)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.reached: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.reached[trial_id] = max(float(result.get("epoch", 0.0)), self.reached.get(trial_id, 0.0))
        return False

    def stop_all(self) -> bool:
        return sum(self.reached.values()) >= self.budget


def pruned_trials(filesystem: pafs.FileSystem, sweep_dir: str) -> set[str]:
    selector = pafs.FileSelector(f"{sweep_dir}/{PRUNED_DIR}", allow_not_found=True)
    return {info.base_name for info in filesystem.get_file_info(selector)}


@dataclass
class SweepResult:
    name: str
    path: str
    metric: str
    mode: str
    trials: list[TrialRecord]
    reports: list[Report]
    best: TrialRecord | None
    pareto: list[TrialRecord]
    plan: TrialPlan
    study_storage: str
    resumed: bool
    cost: str | None = None
    """The cost metric of a multi-objective sweep."""

    def table(self) -> pd.DataFrame:
        rows = [{"trial": r.trial_id, "outcome": r.outcome, "epochs": r.epochs, self.metric: r.value,
                 **{f"cost.{k}": v for k, v in r.cost.items()}, **r.params} for r in self.trials]
        frame = pd.DataFrame(rows)
        return frame.sort_values(self.metric, ascending=signed(1, self.mode) < 0, na_position="last") if rows else frame

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for record in self.trials:
            counts[record.outcome] += 1
        return counts

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.study_storage)


def _searcher(config: PipelineConfig, name: str, storage_url: str, pruned: PrunedMarkers) -> OptunaSearch:
    tune = config.tune
    metric, mode = config.metric
    with warnings.catch_warnings():  # multivariate/group are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group=True: TPE models each conditional branch (one network family's parameters) on its own trials
        sampler = (optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.startup_trials,
                                              multivariate=True, group=True)
                   if tune.sampler == "tpe" else optuna.samplers.RandomSampler(seed=tune.seed))
    metrics: str | list[str] = metric
    modes: str | list[str] = mode
    if tune.cost:
        metrics, modes = [metric, COST_METRICS[tune.cost]], [mode, "min"]
    return PruningAwareOptunaSearch(space=DefineByRun(tune.space), metric=metrics, mode=modes, sampler=sampler,
                                    study_name=name, storage=optuna.storages.RDBStorage(storage_url), pruned=pruned)


def _scheduler(config: PipelineConfig, filesystem: pafs.FileSystem, sweep_dir: str) -> TrialScheduler:
    settings = config.tune.scheduler
    if settings.name == "none":
        return FIFOScheduler()
    metric, mode = config.metric
    return RecordingASHA(f"{sweep_dir}/{PRUNED_DIR}", filesystem, time_attr="epoch", metric=metric, mode=mode,
                         max_t=config.train.epochs, grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


def trial_id_of(result: ray.tune.Result) -> str:
    """The trial's id: in its reports, or (a trial that never reported) its folder's name (see trial_dirname)."""
    return (result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1]


def best_row_of(frame: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    return frame.loc[signed(frame[metric], mode).idxmax()]


def _record(result: ray.tune.Result, config: PipelineConfig, pruned: set[str]) -> tuple[TrialRecord, list[Report]]:
    metric, mode = config.metric
    frame = result.metrics_dataframe
    trial_id = trial_id_of(result)
    params = {k: v for k, v in (result.config or {}).items()}
    if frame is None or frame.empty or metric not in frame:  # ended before its first evaluation
        outcome = "failed" if result.error is not None else "stopped"
        return TrialRecord(trial_id, params, outcome, 0.0, None, error=repr(result.error) if result.error else ""), []
    frame = frame.dropna(subset=[metric])
    best_row = best_row_of(frame, metric, mode)
    last = frame.iloc[-1]
    epochs = float(frame["epoch"].max())
    if result.error is not None:
        outcome = "failed"
    elif epochs >= config.train.epochs - 1e-9 or last.get("early_stopped", 0) > 0:
        outcome = "completed"
    else:
        outcome = "pruned" if trial_id in pruned else "stopped"
    metrics = {k: float(v) for k, v in best_row.items() if isinstance(v, int | float) and k.startswith("val_")}
    cost = {k: float(last[k]) for k in COST_METRICS.values() if k in last}
    reports = [Report(float(row["timestamp"]) + float(row.get("time_total_s", 0)) * 1e-6, trial_id,
                      float(row["epoch"]), float(row[metric]), int(row.get("step", 0))) for _, row in frame.iterrows()]
    record = TrialRecord(trial_id, params, outcome, epochs, float(best_row[metric]), metrics, cost,
                         error=repr(result.error) if result.error else "")
    return record, reports


def best_checkpoint(config: PipelineConfig, result: ray.tune.Result) -> Any:
    """The winner's checkpoint at its best evaluation: Tune's own (trial trains in-process) or the one its Ray
    Train run reported (the path arrives through Tune's report callback)."""
    metric, mode = config.metric
    if result.best_checkpoints:
        scored = [(c, m) for c, m in result.best_checkpoints if metric in m]
        chosen = max(scored, key=lambda pair: signed(pair[1][metric], mode))
        return chosen[0]
    if result.metrics_dataframe is None:
        raise RuntimeError(f"trial {result.path} reported no metrics")
    frame = result.metrics_dataframe.dropna(subset=[metric])
    if "checkpoint_path" in frame:
        frame = frame.dropna(subset=["checkpoint_path"])
        row = best_row_of(frame, metric, mode)
        filesystem, _ = checkpoint_storage(config)
        return ray.train.Checkpoint(path=row["checkpoint_path"], filesystem=filesystem)
    raise RuntimeError(f"trial {result.path} reported no checkpoint")


def run_sweep(config: PipelineConfig, inputs: TrialInputs, name: str) -> tuple[SweepResult, ray.tune.ResultGrid]:
    """Run (or resume) the sweep `name` on the connected cluster and read its results back."""
    metric, mode = config.metric
    filesystem, root = tune_storage(config)
    sweep_dir = f"{root}/{name}"
    plan = plan_trials(config, ray.available_resources())  # what a running Serve app holds is not free
    storage_url = study_storage_url(config, name)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, inputs=inputs.holding_splits()),
                                        plan.driver)
    # Tune saves the sweep's state at most every 10 s by default; a trial that finished inside that window would
    # run again after an interruption. Every second keeps the window small at a negligible cost for a sweep.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    resumed = ray.tune.Tuner.can_restore(sweep_dir, storage_filesystem=filesystem)
    if resumed:
        tuner = ray.tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=filesystem)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            tune_config=ray.tune.TuneConfig(
                search_alg=_searcher(config, name, storage_url, PrunedMarkers(f"{sweep_dir}/{PRUNED_DIR}",
                                                                               filesystem)),
                scheduler=_scheduler(config, filesystem, sweep_dir),
                num_samples=config.tune.num_trials,
                max_concurrent_trials=plan.max_concurrent,
                time_budget_s=config.tune.time_budget_s,
                trial_dirname_creator=trial_dirname,
                # A trial that trains in its own process pays a process start and the imports of torch and Ray
                # Data (~2-3 s) before its first step; with many short trials (ASHA stops most after one epoch)
                # that is a large share of the budget. Its process is kept for the next trial instead; a trial
                # that starts a Ray Train worker group holds no state worth keeping.
                reuse_actors=config.tune.trial_workers == 0,
            ),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=root, storage_filesystem=filesystem,
                stop=EpochBudget(config.tune.epoch_budget) if config.tune.epoch_budget else None,
                failure_config=ray.tune.FailureConfig(max_failures=max(config.train.max_failures, 0)),
                checkpoint_config=ray.tune.CheckpointConfig(
                    num_to_keep=config.train.checkpoint.keep, checkpoint_score_attribute=metric,
                    checkpoint_score_order=mode),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    close_orphans(name, storage_url)
    pruned = pruned_trials(filesystem, sweep_dir)
    trials, reports = [], []
    for index in range(len(grid)):  # ResultGrid indexes; its type hints do not declare iteration
        record, trial_reports = _record(grid[index], config, pruned)
        trials.append(record)
        reports += trial_reports
    cost = config.tune.cost
    winner = pick_winner(trials, mode, COST_METRICS.get(cost) if cost else None, config.tune.max_cost)
    front = pareto_front(trials, COST_METRICS[cost], mode) if cost else []
    with filesystem.open_output_stream(f"{sweep_dir}/{FINISHED_MARKER}") as stream:
        stream.write(json.dumps({"trials": len(trials)}).encode())
    return SweepResult(name, sweep_dir, metric, mode, trials, reports, winner, front, plan, storage_url,
                       resumed, COST_METRICS[cost] if cost else None), grid


def close_orphans(name: str, storage_url: str) -> None:
    """Optuna trials still RUNNING once the sweep is over were asked for by an attempt that was interrupted before
    Tune started them: marked FAIL, so the study holds only real outcomes."""
    study = optuna.load_study(study_name=name, storage=storage_url)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def result_of(grid: ray.tune.ResultGrid, trial_id: str) -> ray.tune.Result:
    for index in range(len(grid)):
        if trial_id_of(grid[index]) == trial_id:
            return grid[index]
    raise KeyError(trial_id)


def read_best(config: PipelineConfig, grid: ray.tune.ResultGrid, best: TrialRecord) -> tuple[dict, list[dict]]:
    """The winner's weights and its curve up to its best checkpoint."""
    state, history = read_checkpoint(best_checkpoint(config, result_of(grid, best.trial_id)))
    return state["model"], history


def trial_dirname(trial: Any) -> str:
    """Trial folders named by trial id alone (Tune's default packs the sampled params into the name)."""
    return trial.trial_id
