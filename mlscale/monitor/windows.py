"""Windows of live traffic from the prediction log, each judged for drift against the training profile, for
prediction drift against the version's first window, and (once labels arrive) for decay of the live metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from mlscale.config import MonitorConfig
from mlscale.direction import gain
from mlscale.monitor.drift import (
    FeatureDrift,
    has_moved,
    numeric_drift,
    overall_drift,
    profile_drift,
    sample_profile,
)
from mlscale.monitor.labels import window_performance

TRUNCATE = {"hour": "hour", "day": "day"}
WINDOW = "window_key"


@dataclass(frozen=True)
class Decay:
    """What a window's live metric is compared with: the model's metric on its test split."""

    metric: str  # e.g. auc, rmse (the live and test values are live_<metric> and test_<metric>)
    reference: float
    mode: str  # max: higher is better
    max_drop: float

    def decayed(self, live: float) -> bool:
        return gain(self.reference, live, self.mode) > self.max_drop


@dataclass
class WindowDrift:
    start: str  # the window: its first instant (time windows) or the column's value
    key: Any
    rows: int
    versions: dict[str, int]
    features: list[FeatureDrift] = field(default_factory=list)
    overall: float | None = None  # None: too few rows to judge
    drifted: bool = False
    drifted_features: list[str] = field(default_factory=list)
    prediction: FeatureDrift | None = None  # against the first judged window of the same version
    prediction_drifted: bool = False
    labelled_rows: int = 0  # rows whose labels have arrived, whichever version answered them: data to learn from
    performance: dict[str, float] = field(default_factory=dict)  # live_* metrics of the monitored version
    served_performance: dict[str, float] = field(default_factory=dict)  # of whichever versions answered the window
    decayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "rows": self.rows, "versions": self.versions, "overall": self.overall,
                "drifted": self.drifted, "drifted_features": self.drifted_features,
                "prediction_psi": self.prediction.psi if self.prediction else None,
                "prediction_drifted": self.prediction_drifted, "labelled_rows": self.labelled_rows,
                "performance": self.performance, "served_performance": self.served_performance,
                "decayed": self.decayed,
                "features": [feature.to_dict() for feature in self.features]}


def read_table(path: str) -> pa.Table:
    """A parquet file or folder (hive-partitioned, as the prediction log writes it) or a CSV file, local or a
    pyarrow filesystem URI.

    Raises:
        FileNotFoundError: nothing is there.
    """
    filesystem, root = pafs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {path}")
    if root.endswith(".csv"):
        return pads.dataset(root, filesystem=filesystem, format="csv").to_table()
    dataset = pads.dataset(root, filesystem=filesystem, format="parquet", partitioning="hive",
                           exclude_invalid_files=True)
    return dataset.to_table()


def read_log(path: str) -> pa.Table:
    """The prediction log under path, every window, as one table.

    Raises:
        FileNotFoundError: nothing has been logged there.
    """
    try:
        return read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no prediction log at {path}") from None


def with_windows(log: pa.Table, settings: MonitorConfig) -> pa.Table:
    """The log with each row's window key: the start of its hour or day, the value of the window column, or (count)
    the index of its block of window_rows rows in the order they were served. Kept when already there (labels
    joined to a windowed log carry their rows' keys)."""
    if WINDOW in log.column_names:
        return log
    if settings.window == "count":
        log = log.sort_by([("timestamp", "ascending"), ("request_id", "ascending"), ("record_index", "ascending")])
        return log.append_column(WINDOW, pa.array([i // settings.window_rows for i in range(log.num_rows)],
                                                  pa.int64()))
    if settings.window == "column":
        column = settings.window_column or ""
        if column not in log.column_names:
            raise KeyError(f"monitor.window_column {column!r} is not a logged column (the log has "
                           f"{log.column_names}); the service logs the model's input columns")
        keys = log.column(column)
    else:
        keys = pc.floor_temporal(log.column("timestamp"), unit=TRUNCATE[settings.window])
    return log.append_column(WINDOW, keys)


def judge_windows(log: pa.Table, profile: dict[str, Any], settings: MonitorConfig,
                  labelled: pa.Table | None = None, label: dict[str, Any] | None = None,
                  label_column: str = "label", decay: Decay | None = None,
                  version: str | None = None) -> list[WindowDrift]:
    """Cut the log into windows and judge each: its features against the training profile, its predictions
    against the first judged window of the version that served most of it, and its labelled rows (the log joined
    with the labels, `labelled`) for the live metric against the model's test metric. With `version`, only the
    rows that version answered count for the live metric: a model is not blamed for its predecessor's answers.

    Windows are ordered by their key; one with fewer than min_window_rows rows is reported, not judged."""
    if log.num_rows == 0:
        return []
    log = with_windows(log, settings)
    if labelled is not None:
        labelled = with_windows(labelled, settings)
    reference_predictions: dict[str, dict[str, Any]] = {}
    judged = []
    for key in sorted(k for k in set(log.column(WINDOW).to_pylist()) if k is not None):
        rows = _in_window(log, key)
        versions = dict(sorted(_counts(rows.column("model_version")).items(), key=lambda item: -item[1]))
        result = WindowDrift(start=key.isoformat() if hasattr(key, "isoformat") else str(key), key=key,
                             rows=rows.num_rows, versions=versions)
        judged.append(result)
        if rows.num_rows < settings.min_window_rows:
            continue
        result.features = profile_drift(profile, rows.to_pydict())
        result.overall = overall_drift(result.features)
        result.drifted_features = [f.column for f in result.features
                                   if has_moved(f, settings.feature_threshold, settings.feature_p_value)]
        result.drifted = result.overall > settings.drift_threshold
        predictions = rows.column("prediction").to_numpy(zero_copy_only=False).astype(np.float64)
        main_version = next(iter(versions))
        reference = reference_predictions.setdefault(main_version, sample_profile(predictions))
        result.prediction = numeric_drift("prediction", reference, predictions)
        result.prediction_drifted = has_moved(result.prediction, settings.prediction_threshold,
                                              settings.feature_p_value)
        if labelled is not None and label is not None:
            _judge_performance(result, _in_window(labelled, key), label, label_column, settings, decay, version)
    return judged


def _judge_performance(result: WindowDrift, rows: pa.Table, label: dict[str, Any], label_column: str,
                       settings: MonitorConfig, decay: Decay | None, version: str | None) -> None:
    result.labelled_rows = rows.num_rows
    if rows.num_rows >= settings.min_window_rows:
        result.served_performance = window_performance(rows, label, label_column)
    if version is not None:
        rows = rows.filter(pc.equal(rows.column("model_version"), version))
    if rows.num_rows < settings.min_window_rows:
        return
    result.performance = window_performance(rows, label, label_column)
    if decay is not None:
        result.decayed = decay.decayed(result.performance[f"live_{decay.metric}"])


def _in_window(table: pa.Table, key: Any) -> pa.Table:
    return table.filter(pc.equal(table.column(WINDOW), pa.scalar(key, table.column(WINDOW).type)))


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    counted = pc.value_counts(column)
    return {str(k): int(v) for k, v in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(),
                                           strict=True)}
