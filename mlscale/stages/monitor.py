"""The monitor stage: the prediction log cut into windows, each judged for drift against the serving model's
training profile, for prediction drift, and for decay once labels arrive; a report (JSON, plots) and an MLflow run
per pass; and the retraining decision, recorded, with the retrain job submitted when it starts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa

from mlscale.config import PipelineConfig
from mlscale.errors import ConfigError, SourceError
from mlscale.monitor.jobs import submit_retrain
from mlscale.monitor.labels import join_labels
from mlscale.monitor.retrain import RetrainDecision, decide_retrain, decision_log
from mlscale.monitor.windows import Decay, WindowDrift, judge_windows, read_log, read_table, with_windows
from mlscale.plots import drift_over_time, metric_over_time
from mlscale.registry.store import load_bundle, pinned_uri, uri_version, version_tags
from mlscale.serve.predlog import default_log_path
from mlscale.tracking import child_run

log = logging.getLogger(__name__)


@dataclass
class MonitorReport:
    model_uri: str
    log_path: str
    windows: list[WindowDrift] = field(default_factory=list)
    decision: RetrainDecision | None = None
    report_path: str = ""
    plot_paths: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[WindowDrift]:
        return [window for window in self.windows if window.drifted]

    def summary(self) -> dict[str, Any]:
        last = next((window for window in reversed(self.windows) if window.overall is not None), None)
        labelled = next((window for window in reversed(self.windows) if window.performance), None)
        return {"model_uri": self.model_uri, "prediction_log": self.log_path, "windows": len(self.windows),
                "drifted_windows": [window.start for window in self.drifted],
                "decayed_windows": [window.start for window in self.windows if window.decayed],
                "last_window": last.start if last else None, "last_overall_drift": last.overall if last else None,
                "last_drifted_features": last.drifted_features if last else [],
                "last_prediction_psi": last.prediction.psi if last and last.prediction else None,
                "last_labelled_window": labelled.start if labelled else None,
                "last_live_metrics": labelled.performance if labelled else {},
                "retrain_triggered": self.decision.trigger if self.decision else False,
                "retrain_started": self.decision.start if self.decision else False,
                "retrain_reasons": self.decision.reasons if self.decision else [],
                "retrain_held_back": self.decision.held_back if self.decision else None,
                "retrain_job": self.decision.job_id if self.decision else None,
                "retrain_outcome": self.decision.outcome if self.decision else None,
                "report": self.report_path, "plots": self.plot_paths}


def log_path_of(config: PipelineConfig) -> str:
    settings = config.serve.prediction_log
    return settings.path if settings and settings.path else default_log_path(config.storage.root_path, config.name)


def monitor_stage(config: PipelineConfig, model_uri: str | None = None, now: datetime | None = None) -> MonitorReport:
    """Judge every window of the prediction log against a model, decide whether to retrain, and (when the policy
    is on and nothing holds it back) submit the retrain job.

    Args:
        config: the pipeline config (serve.prediction_log: where the log is; monitor: windows, thresholds, labels,
            the retraining policy).
        model_uri: the model whose profile and test metric are the reference; None: the serving alias.
        now: the decision's time (cool-down and cap are measured from it); None: the clock.

    Returns:
        The judged windows, the decision, and where the report and plots were written.

    Raises:
        SourceError: there is no prediction log (turn on serve.prediction_log and send traffic first).
        NothingToServe: the alias points at no version.
    """
    uri = pinned_uri(model_uri or config.serving_uri, config.tracking_uri)
    path = log_path_of(config)
    try:
        logged = read_log(path)
    except FileNotFoundError as error:
        raise SourceError(f"{error}: set serve.prediction_log and send traffic to the service first") from None
    settings = config.monitor
    try:
        logged = with_windows(logged, settings)  # the only KeyError: a window column the log does not have
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None
    labelled = _labelled(config, logged)
    version = uri_version(uri)
    bundle = load_bundle(uri, config.tracking_uri)  # its profile and its label spec: one download
    windows = judge_windows(logged, bundle.profile, settings, labelled, bundle.label, label_column_of(config),
                            _decay(config, uri), version)
    report = MonitorReport(uri, path, windows)
    history = decision_log(config).read()
    report.decision = decide_retrain(windows, history, settings.retrain, now or datetime.now(UTC), version,
                                     settings.min_window_rows)
    decisions = decision_log(config)
    if report.decision.start and not decisions.claim(report.decision.window):  # another monitor was first
        report.decision.start = False
        report.decision.held_back = f"window {report.decision.window} has triggered a retrain already (claimed by " \
                                    "another monitor)"
    if report.decision.start:
        # the start is on record before the job exists: a monitor deciding meanwhile counts it (cool-down, cap)
        decisions.append(report.decision.to_dict())
        submit_retrain(config, report.decision)
    if report.decision.trigger or not history or history[-1].get("window") != report.decision.window:
        decisions.append(report.decision.to_dict())  # a quiet rerun on the same window adds nothing
    _write_report(config, report)
    _track(config, report)
    for window in windows:
        log.info("window %s: %d rows, drift %s%s%s", window.start, window.rows,
                 "n/a (too few rows)" if window.overall is None else f"{window.overall:.3f}",
                 f" DRIFTED ({', '.join(window.drifted_features)})" if window.drifted else "",
                 f" live {window.performance}{' DECAYED' if window.decayed else ''}" if window.performance else "")
    log.info("retrain: %s", "; ".join(report.decision.reasons) + (f" (held back: {report.decision.held_back})"
                                                                   if report.decision.held_back else ""))
    return report


def label_column_of(config: PipelineConfig) -> str:
    """The column the late labels carry: monitor.labels.column, else the training label."""
    settings = config.monitor.labels
    return (settings.column if settings else None) or config.data.label


def _labelled(config: PipelineConfig, logged: pa.Table) -> pa.Table | None:
    settings = config.monitor.labels
    if settings is None:
        return None
    try:
        labels = read_table(settings.path)
    except FileNotFoundError:  # none have arrived yet: drift is judged, performance waits
        log.warning("monitor.labels.path: no labels at %s yet; judging drift only", settings.path)
        return None
    try:
        return join_labels(logged, labels, settings.on, label_column_of(config))
    except KeyError as error:
        raise ConfigError(f"monitor.labels: {error.args[0]}") from None


def _decay(config: PipelineConfig, uri: str) -> Decay | None:
    _, mode = config.metric
    metric = config.metric_stem
    reference = version_tags(uri, config.tracking_uri).get(f"test_{metric}")
    if config.monitor.labels is None or reference is None:
        return None
    return Decay(metric, float(reference), mode, config.monitor.max_metric_drop)


def _write_report(config: PipelineConfig, report: MonitorReport) -> None:
    settings = config.monitor
    folder = config.storage.root_path / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    report.report_path = str(folder / f"{config.name}-monitor.json")
    windows = report.windows
    starts = [window.start for window in windows]
    features = sorted({feature.column for window in windows for feature in window.features})
    by_window = [{feature.column: feature.psi for feature in window.features} for window in windows]
    series = {name: [psi.get(name) for psi in by_window] for name in features}
    series["(prediction)"] = [window.prediction.psi if window.prediction else None for window in windows]
    report.plot_paths = [str(drift_over_time(starts, series, [window.overall for window in windows],
                                             settings.drift_threshold, folder / f"{config.name}-drift.png"))]
    metric = f"live_{config.metric_stem}"
    if any(metric in window.performance for window in windows):
        report.plot_paths.append(str(metric_over_time(
            starts, [window.performance.get(metric) for window in windows], metric,
            folder / f"{config.name}-live-metric.png")))
    Path(report.report_path).write_text(json.dumps(  # after the plots: the summary names them
        {**report.summary(), "thresholds": settings.model_dump(mode="json"),
         "decision": report.decision.to_dict() if report.decision else None,
         "windows": [w.to_dict() for w in report.windows]}, indent=2, default=str))


def _track(config: PipelineConfig, report: MonitorReport) -> None:
    with child_run(f"{config.name}-monitor"):
        decision = report.decision
        mlflow.set_tags({"mlscale.stage": "monitor", "mlscale.model": report.model_uri,
                         "mlscale.drifted_windows": str(len(report.drifted)),
                         "mlscale.retrain": json.dumps(decision.to_dict() if decision else None, default=str)})
        for step, window in enumerate(report.windows):
            if window.overall is None:
                continue
            mlflow.log_metrics({"drift_overall": window.overall, "window_rows": float(window.rows),
                                **{f"psi.{feature.column}": feature.psi for feature in window.features},
                                **({"psi.prediction": window.prediction.psi} if window.prediction else {}),
                                **window.performance}, step=step)
        mlflow.log_artifact(report.report_path, "monitor")
        for plot in report.plot_paths:
            mlflow.log_artifact(plot, "monitor")
