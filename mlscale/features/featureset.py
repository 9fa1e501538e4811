"""FeatureSet: fit on the training split with one streaming pass, then apply the same code to batches and requests.

The fitted state is plain JSON (means, scales, vocabularies), so it travels inside the model bundle and the
serving replica rebuilds exactly the transform that training used: no pickles, no train/serve skew.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from mlscale.config import FeaturesConfig
from mlscale.features.stats import TableStats

STATE_VERSION = 1
ColumnLike = np.ndarray | pa.Array | pa.ChunkedArray | list


def _floats(values: ColumnLike) -> np.ndarray:
    """Any column (numpy, Arrow, list with None) as float64 with NaN for missing."""
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, from_pandas=True)
    return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _strings(values: ColumnLike) -> pa.Array | pa.ChunkedArray:
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, from_pandas=True)
    return pc.cast(array, pa.string())


def _cyclical(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    angle = 2.0 * np.pi * values / period
    return np.sin(angle), np.cos(angle)


def _batch_stats(batch: pa.Table, numeric: list[str], categorical: list[str]) -> dict[str, list[str]]:
    return {"stats": [json.dumps(TableStats.of(batch, numeric, categorical).to_dict())]}


@dataclass(frozen=True)
class FittedFeatures:
    """The fitted state and the transform it defines. Column order lives in lists, never in dict order."""

    state: dict[str, Any]

    @property
    def numeric_names(self) -> list[str]:
        """Names of the columns of x_num, in order."""
        names: list[str] = []
        for stats in self.state["numeric"]:
            names.append(stats["name"])
            if stats["indicator"]:
                names.append(f"{stats['name']}_missing")
        for name in self.state["hhmm"]:
            names += [f"{name}_sin", f"{name}_cos"]
        if self.state["date"]:
            names += ["day_of_week_sin", "day_of_week_cos", "day_of_year_sin", "day_of_year_cos"]
        return names

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes for x_cat, index 0 being the out-of-vocabulary bucket."""
        return [len(spec["vocab"]) + 1 for spec in self.state["categorical"]]

    @property
    def input_columns(self) -> list[str]:
        date = list(self.state["date"] or [])
        named = [spec["name"] for spec in self.state["numeric"] + self.state["categorical"]]
        return named + list(self.state["hhmm"]) + date

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.state, sort_keys=True).encode()).hexdigest()[:16]

    def transform(self, columns: Mapping[str, ColumnLike]) -> dict[str, np.ndarray]:
        """Raw columns -> {"x_num": float32 [n, d], "x_cat": int64 [n, k]}; the same code for batches and requests."""
        numeric: list[np.ndarray] = []
        for stats in self.state["numeric"]:
            values = _floats(columns[stats["name"]])
            missing = np.isnan(values)
            scaled = (values - stats["mean"]) / stats["scale"]
            numeric.append(np.where(missing, 0.0, scaled))
            if stats["indicator"]:
                numeric.append(missing.astype(np.float64))
        for name in self.state["hhmm"]:
            hhmm = _floats(columns[name])
            minutes = np.floor(hhmm / 100.0) * 60.0 + np.mod(hhmm, 100.0)
            numeric.extend(np.nan_to_num(part) for part in _cyclical(minutes, 1440.0))
        if self.state["date"]:
            year, month, day = (np.nan_to_num(_floats(columns[c]), nan=1.0).astype(np.int64)
                                for c in self.state["date"])
            dates = (
                (year - 1970).astype("datetime64[Y]") + (month - 1).astype("timedelta64[M]")
            ).astype("datetime64[D]") + (day - 1).astype("timedelta64[D]")
            days = dates.astype(np.int64)
            year_start = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
            numeric.extend(_cyclical(((days + 3) % 7).astype(np.float64), 7.0))
            numeric.extend(_cyclical((days - year_start).astype(np.float64), 365.25))
        categorical = []
        for spec in self.state["categorical"]:
            index = pc.index_in(_strings(columns[spec["name"]]), value_set=pa.array(spec["vocab"], type=pa.string()))
            categorical.append(_floats(index) + 1.0)
        n_rows = len(numeric[0]) if numeric else len(categorical[0])
        x_num = np.stack(numeric, axis=1).astype(np.float32) if numeric else np.zeros((n_rows, 0), np.float32)
        x_cat = (
            np.nan_to_num(np.stack(categorical, axis=1), nan=0.0).astype(np.int64)
            if categorical else np.zeros((n_rows, 0), np.int64)
        )
        return {"x_num": x_num, "x_cat": x_cat}

    def profile(self) -> dict[str, Any]:
        """The training data profile that monitoring compares live traffic against."""
        return {"rows": self.state["rows"], "numeric": self.state["profile_numeric"],
                "categorical": self.state["profile_categorical"]}

    def to_json(self) -> str:
        return json.dumps(self.state, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FittedFeatures:
        state = json.loads(text)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"feature state version {state.get('version')} is not supported (need {STATE_VERSION})")
        return cls(state)


class FeatureSet:
    """What to compute from which columns; fit() learns the statistics from the training data."""

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config

    def fit_stats(self, stats: TableStats) -> FittedFeatures:
        config = self.config
        numeric = []
        for name in config.numeric:
            column = stats.numeric[name]
            numeric.append({
                "name": name,
                "mean": column.mean,
                "scale": column.std if column.std > 0 else 1.0,
                "indicator": column.nulls > 0,
            })
        categorical = []
        for name in config.categorical:
            frequent = [(value, count) for value, count in stats.categorical[name].counts.items()
                        if count >= config.min_category_count]
            frequent.sort(key=lambda item: (-item[1], item[0]))
            categorical.append({"name": name, "vocab": [value for value, _ in frequent[: config.max_categories]]})
        state = {
            "version": STATE_VERSION,
            "rows": stats.rows,
            "numeric": numeric,
            "categorical": categorical,
            "hhmm": list(config.hhmm_columns),
            "date": list(config.date_columns) if config.date_columns else None,
            "profile_numeric": {
                name: {"count": s.count, "null_fraction": s.null_fraction, "mean": s.mean, "std": s.std,
                       "min": s.min, "max": s.max}
                for name, s in stats.numeric.items()
            },
            "profile_categorical": {
                name: {"null_fraction": s.nulls / max(stats.rows, 1),
                       "frequencies": {k: v / max(stats.rows, 1) for k, v in s.counts.most_common(50)}}
                for name, s in stats.categorical.items()
            },
        }
        return FittedFeatures(state)

    def fit(self, dataset: ray.data.Dataset) -> FittedFeatures:
        """One streaming pass: per-batch statistics in parallel, merged on the driver (bounded by cardinality)."""
        partials = dataset.map_batches(
            _batch_stats,
            fn_kwargs={"numeric": self.config.numeric, "categorical": self.config.categorical},
            batch_format="pyarrow",
            batch_size=None,
        )
        merged: TableStats | None = None
        for row in partials.iter_rows():
            stats = TableStats.from_dict(json.loads(row["stats"]))
            merged = stats if merged is None else merged.merge(stats)
        if merged is None or merged.rows == 0:
            raise ValueError("cannot fit features on an empty dataset")
        return self.fit_stats(merged)


def transform_batch(batch: pa.Table, features: FittedFeatures, label: str | None,
                    threshold: float) -> dict[str, np.ndarray]:
    """map_batches body: features plus the binary label, as tensors for training."""
    columns = {name: batch.column(name) for name in features.input_columns}
    out = features.transform(columns)
    if label is not None:
        out["label"] = (_floats(batch.column(label)) >= threshold).astype(np.float32)
    return out
