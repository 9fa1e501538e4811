"""Windows of live traffic from the prediction log, each judged for drift against the training profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from mlscale.monitor.drift import FeatureDrift, overall_drift, profile_drift

TRUNCATE = {"hour": "hour", "day": "day"}


@dataclass
class WindowDrift:
    start: str
    rows: int
    versions: dict[str, int]
    features: list[FeatureDrift] = field(default_factory=list)
    overall: float | None = None  # None: too few rows to judge
    drifted: bool = False
    drifted_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "rows": self.rows, "versions": self.versions, "overall": self.overall,
                "drifted": self.drifted, "drifted_features": self.drifted_features,
                "features": [feature.to_dict() for feature in self.features]}


def read_log(path: str) -> pa.Table:
    """The prediction log under path (local or a pyarrow filesystem URI), every window, as one table.

    Raises:
        FileNotFoundError: nothing has been logged there.
    """
    filesystem, root = pafs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no prediction log at {path}")
    dataset = pads.dataset(root, filesystem=filesystem, format="parquet", partitioning="hive",
                           exclude_invalid_files=True)
    return dataset.to_table()


def judge_windows(log: pa.Table, profile: dict[str, Any], window: Literal["hour", "day"], min_rows: int,
                  threshold: float, feature_threshold: float) -> list[WindowDrift]:
    """Cut the log into windows by time and judge each window's features against the profile."""
    if log.num_rows == 0:
        return []
    starts = pc.floor_temporal(log.column("timestamp"), unit=TRUNCATE[window])
    log = log.append_column("window_start", starts)
    judged = []
    for start in sorted(set(starts.to_pylist())):
        rows = log.filter(pc.equal(log.column("window_start"), pa.scalar(start, log.column("window_start").type)))
        versions = {str(k): int(v) for k, v in zip(*_counts(rows.column("model_version")), strict=True)}
        result = WindowDrift(start=start.isoformat(), rows=rows.num_rows, versions=versions)
        if rows.num_rows >= min_rows:
            result.features = profile_drift(profile, rows.to_pydict())
            result.overall = overall_drift(result.features)
            result.drifted_features = [f.column for f in result.features if f.psi > feature_threshold]
            result.drifted = result.overall > threshold
        judged.append(result)
    return judged


def _counts(column: pa.ChunkedArray) -> tuple[list[Any], list[int]]:
    counted = pc.value_counts(column)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()
