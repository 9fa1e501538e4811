"""The monitor stage: the prediction log cut into windows, each judged for drift against the serving model's
training profile; a report (JSON, a plot) and an MLflow run per monitoring pass."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from mlscale.config import PipelineConfig
from mlscale.errors import SourceError
from mlscale.monitor.windows import WindowDrift, judge_windows, read_log
from mlscale.plots import drift_over_time
from mlscale.registry.store import load_bundle, pinned_uri
from mlscale.serve.predlog import default_log_path
from mlscale.tracking import child_run

log = logging.getLogger(__name__)


@dataclass
class MonitorReport:
    model_uri: str
    log_path: str
    windows: list[WindowDrift] = field(default_factory=list)
    report_path: str = ""
    plot_path: str = ""

    @property
    def drifted(self) -> list[WindowDrift]:
        return [window for window in self.windows if window.drifted]

    def summary(self) -> dict[str, Any]:
        last = next((window for window in reversed(self.windows) if window.overall is not None), None)
        return {"model_uri": self.model_uri, "prediction_log": self.log_path, "windows": len(self.windows),
                "drifted_windows": [window.start for window in self.drifted],
                "last_window": last.start if last else None, "last_overall_drift": last.overall if last else None,
                "last_drifted_features": last.drifted_features if last else [], "report": self.report_path,
                "plot": self.plot_path}


def log_path_of(config: PipelineConfig) -> str:
    settings = config.serve.prediction_log
    return settings.path if settings and settings.path else default_log_path(config.storage.root_path, config.name)


def monitor_stage(config: PipelineConfig, model_uri: str | None = None) -> MonitorReport:
    """Judge every window of the prediction log for drift against a model's training profile.

    Args:
        config: the pipeline config (serve.prediction_log: where the log is; monitor: windows and thresholds).
        model_uri: the model whose profile is the reference; None: the serving alias.

    Returns:
        The windows with per-feature drift, and where the report and plot were written.

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
    profile = load_bundle(uri, config.tracking_uri).profile
    windows = judge_windows(logged, profile, settings.window, settings.min_window_rows, settings.drift_threshold,
                            settings.feature_threshold)
    report = MonitorReport(uri, path, windows)
    folder = config.storage.root_path / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    report.report_path = str(folder / f"{config.name}-monitor.json")
    Path(report.report_path).write_text(json.dumps({**report.summary(), "thresholds": settings.model_dump(),
                                                    "windows": [w.to_dict() for w in windows]}, indent=2))
    features = sorted({feature.column for window in windows for feature in window.features})
    by_window = [{feature.column: feature.psi for feature in window.features} for window in windows]
    report.plot_path = str(drift_over_time([window.start for window in windows],
                                           {name: [psi.get(name) for psi in by_window] for name in features},
                                           [window.overall for window in windows], settings.drift_threshold,
                                           folder / f"{config.name}-drift.png"))
    _track(config, report)
    for window in windows:
        log.info("window %s: %d rows, drift %s%s", window.start, window.rows,
                 "n/a (too few rows)" if window.overall is None else f"{window.overall:.3f}",
                 f" DRIFTED ({', '.join(window.drifted_features)})" if window.drifted else "")
    return report


def _track(config: PipelineConfig, report: MonitorReport) -> None:
    with child_run(f"{config.name}-monitor"):
        mlflow.set_tags({"mlscale.stage": "monitor", "mlscale.model": report.model_uri,
                         "mlscale.drifted_windows": str(len(report.drifted))})
        for step, window in enumerate(report.windows):
            if window.overall is None:
                continue
            mlflow.log_metrics({"drift_overall": window.overall, "window_rows": float(window.rows),
                                **{f"psi.{feature.column}": feature.psi for feature in window.features}}, step=step)
        mlflow.log_artifact(report.report_path, "monitor")
        mlflow.log_artifact(report.plot_path, "monitor")
