"""The real-drift demonstration: the model trained on the first windows (months) serves the following ones as live
HTTP traffic, one window after another; each window's labels arrive `label_lag` windows later; the monitor runs
after every window and, when drift or decay passes its threshold, retrains, judges, canaries and releases by itself.
At the end the stale model and the one serving are compared on every window after the first release."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from mlscale.config import LabelsConfig, PipelineConfig, PredictionLogConfig
from mlscale.data.prepare import PARTITIONS, PreparedData
from mlscale.data.records import json_value
from mlscale.errors import NothingToServe, SourceError
from mlscale.monitor.labels import window_performance
from mlscale.monitor.windows import read_log
from mlscale.plots import drift_over_time, metric_over_time
from mlscale.registry.store import load_bundle, version_of
from mlscale.stages.common import start
from mlscale.stages.deploy import deploy_stage
from mlscale.stages.monitor import label_column_of, log_path_of, monitor_stage
from mlscale.stages.prepare import prepare_stage
from mlscale.tracking import child_run
from mlscale.uris import version_uri

log = logging.getLogger(__name__)


@dataclass
class ReplayedWindow:
    window: Any
    rows: int
    serving_version: str  # after this window's monitor pass
    drift: float | None
    drifted_features: list[str]
    labelled_window: Any  # the newest window whose labels had arrived
    live_metric: float | None  # the live metric of what served that window (the canary's share included)
    retrain: str  # started / held back: why / none
    outcome: str | None
    failed_requests: int
    retrain_gain: float | None = None  # judged: the new version's metric minus the champion's
    retrain_cpu_s: float | None = None  # the retrain job's reserved CPU-seconds


@dataclass
class ReplayReport:
    metric: str
    stale_version: str
    windows: list[ReplayedWindow] = field(default_factory=list)
    after_release: dict[str, dict[str, float]] = field(default_factory=dict)  # window -> {stale, serving}
    report_path: str = ""
    plot_paths: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        served = [w.serving_version for w in self.windows]
        gains = [row["serving"] - row["stale"] for row in self.after_release.values()]
        return {"windows": [w.window for w in self.windows], "stale_version": self.stale_version,
                "serving_version": served[-1] if served else self.stale_version,
                "retrains_started": sum(w.retrain == "started" for w in self.windows),
                "retrain_outcomes": [f"{w.window}: {w.outcome}" for w in self.windows if w.outcome],
                "failed_requests": sum(w.failed_requests for w in self.windows),
                f"mean_{self.metric}_gain_after_release": sum(gains) / len(gains) if gains else None,
                "report": self.report_path, "plots": self.plot_paths}


def replay_folder(config: PipelineConfig) -> Path:
    return config.storage.root_path / "replay" / config.name


def replay_config(config: PipelineConfig) -> PipelineConfig:
    """The config a replay runs with: its own prediction log and labels under <storage>/replay/<name> (a replay
    never writes into a production log or labels table the config may name), windows by the time column."""
    folder = replay_folder(config)
    log_settings = config.serve.prediction_log or PredictionLogConfig()
    serve = config.serve.model_copy(update={"prediction_log": log_settings.model_copy(update={
        "path": str(folder / "log"), "flush_interval_s": min(log_settings.flush_interval_s, 1.0)})})
    labels = config.monitor.labels
    monitor = config.monitor.model_copy(update={"labels": LabelsConfig(
        path=str(folder / "labels.parquet"), column=labels.column if labels else None)})
    if monitor.window != "column":
        column = config.split.column or config.data.time_column
        monitor = monitor.model_copy(update={"window": "column", "window_column": column})
    return config.model_copy(update={"serve": serve, "monitor": monitor})


def replay_stage(config: PipelineConfig) -> ReplayReport:
    """Replay config.replay.windows through the service with the monitor (and its retraining loop) after each.

    The champion must exist (run the pipeline first: `mlscale run` with the same config); the replayed rows are the
    prepared rows of those windows (valid, labelled), drawn with a seed. Run it on fresh storage: a rerun starts
    from the current champion and keeps the decision log (whose cool-down and cap still count).

    Returns:
        Per window: drift, the live metric of the serving model, what the monitor decided and released, failed
        requests; and the stale model against the serving one on every window after the first release.
    """
    config = replay_config(config)
    start(config)
    settings, column = config.replay, config.monitor.window_column or ""
    shutil.rmtree(replay_folder(config), ignore_errors=True)  # traffic and labels arrive during this replay only
    replay_folder(config).mkdir(parents=True)
    labels_path = Path(config.monitor.labels.path if config.monitor.labels else "")
    model = config.tracking.registered_model
    stale = version_of(model, config.tracking.alias, config.tracking_uri)
    if stale is None:
        raise NothingToServe(f"{model}@{config.tracking.alias} is not set: run the pipeline with this config first "
                             f"(mlscale run), then replay")
    endpoint = deploy_stage(config)
    prepared = prepare_stage(config)  # the pipeline's own preparation (cached): a retrain's split is another one
    rows = windows_of(prepared, column, settings.windows, settings.rows_per_window, settings.seed)
    metric = config.metric_stem
    report = ReplayReport(metric=metric, stale_version=str(stale))
    label_column = label_column_of(config)
    arrived: list[dict[str, Any]] = []
    logged = 0
    sent: dict[Any, list[dict[str, Any]]] = {}
    inputs = load_bundle(version_uri(model, stale), config.tracking_uri).input_columns
    for index, window in enumerate(settings.windows):
        records = [{name: row.get(name) for name in inputs} for row in rows[window]]
        answers, failed = send(endpoint, records, settings.clients, settings.records_per_request)
        sent[window] = [{"request_id": request_id, "record_index": position, label_column: rows[window][i][
            label_column]} for i, (request_id, position) in enumerate(answers) if request_id is not None]
        if index >= settings.label_lag:
            arrived += sent[settings.windows[index - settings.label_lag]]
            pq.write_table(pa.Table.from_pylist(arrived), labels_path)
        logged += sum(request_id is not None for request_id, _ in answers)
        wait_for_log(config, logged)
        with BackgroundTraffic(endpoint, records[: settings.records_per_request]) as background:
            monitored = monitor_stage(config)
        logged += background.answered_records
        report.windows.append(replayed(monitored, window, len(records), failed + background.failed,
                                       version_of(model, config.tracking.alias, config.tracking_uri) or "",
                                       f"live_{metric}"))
        log.info("replayed window %s: %s", window, asdict(report.windows[-1]))
    report.after_release = compare_after_release(config, report, rows, label_column)
    write_report(config, report)
    return report


def wait_for_log(config: PipelineConfig, sent: int, timeout_s: float = 60.0) -> None:
    """Until the prediction log holds (its sampled share of) every record sent so far: the service writes it in
    batches, off the request path, so the monitor would otherwise judge a window still in memory."""
    settings = config.serve.prediction_log
    path = log_path_of(config)
    rate = settings.sample_rate if settings else 1.0
    expected = sent if rate >= 1.0 else int(sent * rate * 0.8)  # a sampled log: about its share
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if read_log(path).num_rows >= expected:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.5)
    log.warning("the prediction log at %s holds fewer than %d rows after %.0f s; judging what is there", path,
                expected, timeout_s)


def windows_of(prepared: PreparedData, column: str, windows: list[Any], rows: int,
               seed: int) -> dict[Any, list[dict[str, Any]]]:
    """Each window's valid rows from every partition of the preparation but the quarantine, `rows` drawn with a
    seed, as JSON-ready records (label included)."""
    import pandas as pd

    frame = pd.concat([prepared.read(part).to_pandas() for part in PARTITIONS if part != "quarantine"],
                      ignore_index=True)
    found: dict[Any, list[dict[str, Any]]] = {}
    for window in windows:
        chosen = frame[frame[column] == window]
        if chosen.empty:
            raise SourceError(f"replay.windows: no prepared rows have {column} == {window!r}")
        chosen = chosen.sample(min(rows, len(chosen)), random_state=seed)
        found[window] = [{name: json_value(value) for name, value in row.items()}
                         for row in chosen.to_dict("records")]
    return found


def send(endpoint: str, records: list[dict[str, Any]], clients: int,
         per_request: int) -> tuple[list[tuple[str | None, int]], int]:
    """Post the records in requests of `per_request` from `clients` threads; each record's request id and position
    (None for a failed request), and how many requests failed."""
    batches = [records[start:start + per_request] for start in range(0, len(records), per_request)]

    def post(batch: list[dict[str, Any]]) -> tuple[str | None, int]:
        try:
            response = requests.post(endpoint, json=batch, timeout=60)
        except requests.RequestException:
            return None, len(batch)
        return (response.headers.get("x-request-id") if response.ok else None), len(batch)

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(post, batches))
    answers = [(request_id, position) for request_id, size in results for position in range(size)]
    return answers, sum(request_id is None for request_id, _ in results)


class BackgroundTraffic:
    """Live traffic while the monitor runs (a canary needs requests to judge): one client resending a window's
    first request until stopped; failures counted."""

    def __init__(self, endpoint: str, body: list[dict[str, Any]]) -> None:
        self.endpoint, self.body, self.failed, self.answered_records = endpoint, body, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackgroundTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=90)

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                ok = session.post(self.endpoint, json=self.body, timeout=60).ok
            except requests.RequestException:
                ok = False
            self.failed += not ok
            self.answered_records += len(self.body) if ok else 0


def replayed(monitored: Any, window: Any, rows: int, failed: int, serving: str, metric: str) -> ReplayedWindow:
    judged = {w.key: w for w in monitored.windows}
    current = judged.get(window)
    labelled = next((w for w in reversed(monitored.windows) if w.labelled_rows), None)
    decision = monitored.decision
    retrain = "started" if decision.start else f"held back: {decision.held_back}" if decision.trigger else "none"
    # what the model(s) serving that window achieved on it, once its labels are in
    live = labelled.served_performance.get(metric) if labelled is not None else None
    return ReplayedWindow(window=window, rows=rows, serving_version=serving,
                          drift=current.overall if current else None,
                          drifted_features=current.drifted_features if current else [],
                          labelled_window=labelled.key if labelled else None, live_metric=live, retrain=retrain,
                          outcome=decision.outcome, failed_requests=failed, retrain_gain=decision.gain,
                          retrain_cpu_s=decision.cost.get("cluster_cpu_s") if decision.cost else None)


def compare_after_release(config: PipelineConfig, report: ReplayReport, rows: dict[Any, list[dict[str, Any]]],
                          label_column: str) -> dict[str, dict[str, float]]:
    """The stale model and the one serving at the end, on every window after the first release (batch scores of the
    same rows, the training metrics' code)."""
    final = report.windows[-1].serving_version if report.windows else report.stale_version
    released = [w.window for w in report.windows if w.serving_version != report.stale_version]
    if final == report.stale_version or not released:
        return {}
    model = config.tracking.registered_model
    bundles = {name: load_bundle(version_uri(model, version), config.tracking_uri)
               for name, version in (("stale", report.stale_version), ("serving", final))}
    later = report.windows[[w.window for w in report.windows].index(released[0]) + 1:]
    compared = {}
    label = bundles["stale"].label
    for window in later:
        records = rows[window.window]
        scores = {}
        for name, bundle in bundles.items():
            table = pa.table({"prediction": bundle.predict_records(records),
                              label_column: [row[label_column] for row in records]})
            scores[name] = window_performance(table, label, label_column)[f"live_{report.metric}"]
        compared[str(window.window)] = scores
    return compared


def write_report(config: PipelineConfig, report: ReplayReport) -> None:
    folder = config.storage.root_path / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    report.report_path = str(folder / f"{config.name}-replay.json")
    starts = [str(w.window) for w in report.windows]
    marks = {str(w.window): f"retrain -> v{w.serving_version}" for w, before in
             zip(report.windows, [report.stale_version] + [w.serving_version for w in report.windows], strict=False)
             if w.serving_version != before}
    metric = f"live_{report.metric}"
    others = {f"{name} model (batch, same rows)": [report.after_release.get(s, {}).get(name) for s in starts]
              for name in ("stale", "serving")} if report.after_release else None
    report.plot_paths = [
        str(metric_over_time(starts, [w.live_metric for w in report.windows], metric,
                             folder / f"{config.name}-replay-{report.metric}.png", others, marks)),
        str(drift_over_time(starts, {}, [w.drift for w in report.windows], config.monitor.drift_threshold,
                            folder / f"{config.name}-replay-drift.png")),
    ]
    Path(report.report_path).write_text(json.dumps(
        {**report.summary(), "per_window": [asdict(w) for w in report.windows],
         "after_release": report.after_release}, indent=2, default=str))
    with child_run(f"{config.name}-replay"):
        mlflow.set_tag("mlscale.stage", "replay")
        for step, window in enumerate(report.windows):
            values = {"drift": window.drift, metric: window.live_metric,
                      "failed_requests": float(window.failed_requests)}
            mlflow.log_metrics({k: v for k, v in values.items() if v is not None}, step=step)
        mlflow.log_artifact(report.report_path, "replay")
        for plot in report.plot_paths:
            mlflow.log_artifact(plot, "replay")
