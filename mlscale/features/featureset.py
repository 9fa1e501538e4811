"""FeatureSet: fit on the training split with one streaming pass, then apply the same code to batches and requests.

Transforms: numeric columns are clipped, optionally signed-log1p'd, then standardized or min-max scaled, with
missing values imputed by the mean plus an indicator column, and optionally quantile-bucketized (approximate
quantiles from a mergeable sketch); categorical columns get a top-k vocabulary with an out-of-vocabulary bucket, or
stable hashing for high-cardinality ids; crosses hash several columns together; HHMM clock times and calendar
dates become cyclical encodings. The fitted state is plain JSON (ordered lists, versioned, fingerprinted), so it
travels inside the model bundle and a serving replica rebuilds exactly the transform that training used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.caching import cache_key, code_hash
from mlscale.config import FeaturesConfig, NumericFeature
from mlscale.features.sketch import QuantileSketch
from mlscale.features.stats import CategoryStats, Distribution, NumericStats, TableStats
from mlscale.hashing import HASH_SCHEME, bucket_ids

if TYPE_CHECKING:  # serving loads a bundle without Ray: only fitting takes a Ray dataset
    import ray.data

STATE_VERSION = 2
ColumnLike: TypeAlias = np.ndarray | pa.Array | pa.ChunkedArray | list


def _arrow(values: ColumnLike) -> pa.Array | pa.ChunkedArray:
    return values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, from_pandas=True)


def _floats(values: ColumnLike) -> np.ndarray:
    """Any column (numpy, Arrow, list with None) as float64 with NaN for missing."""
    return pc.cast(_arrow(values), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _strings(values: ColumnLike) -> pa.Array | pa.ChunkedArray:
    return pc.cast(_arrow(values), pa.string())


def _cyclical(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    angle = 2.0 * np.pi * values / period
    return np.sin(angle), np.cos(angle)


def preprocess(values: np.ndarray, clip: list[float] | tuple[float, float] | None, log1p: bool) -> np.ndarray:
    """The stateless part of a numeric transform: clip, then sign(x) * log(1 + |x|)."""
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    if log1p:
        values = np.sign(values) * np.log1p(np.abs(values))
    return values


def batch_stats(table: pa.Table, config: FeaturesConfig) -> TableStats:
    """The statistics one batch contributes to the fit; merged across batches with TableStats.merge."""
    numeric, profile, sketches, distributions = {}, {}, {}, {}
    for feature in config.numeric:
        raw = _floats(table.column(feature.column))
        profile[feature.column] = NumericStats.of(raw)
        distributions[feature.column] = Distribution.of(raw)
        values = preprocess(raw, feature.clip, feature.log1p)
        numeric[feature.column] = profile[feature.column] if values is raw else NumericStats.of(values)
        if feature.buckets:
            sketches[feature.column] = QuantileSketch(k=config.sketch_size).update(values)
    categorical = {f.column: CategoryStats.of(table.column(f.column)) for f in config.categorical if not f.hash_buckets}
    return TableStats(numeric=numeric, categorical=categorical, profile=profile, sketches=sketches,
                      rows=table.num_rows, distributions=distributions)


def _distribution_profile(distribution: Distribution | None) -> dict[str, Any]:
    """What monitoring compares live values against: 101 quantiles (the KS reference) and exact decile bins (PSI)."""
    if distribution is None:
        return {"quantiles": None, "bins": None}
    return {"quantiles": distribution.quantiles(), "bins": distribution.bins()}


def _batch_stats(batch: pa.Table, config: FeaturesConfig) -> dict[str, list[str]]:
    return {"stats": [json.dumps(batch_stats(batch, config).to_dict())]}


@dataclass(frozen=True)
class FittedFeatures:
    """The fitted state and the transform it defines. Column order lives in lists, never in dict order."""

    state: dict[str, Any]

    @property
    def numeric_names(self) -> list[str]:
        """Names of the columns of x_num, in order."""
        names: list[str] = []
        for spec in self.state["numeric"]:
            names.append(spec["name"])
            if spec["indicator"]:
                names.append(f"{spec['name']}_missing")
        for name in self.state["hhmm"]:
            names += [f"{name}_sin", f"{name}_cos"]
        if self.state["date"]:
            names += ["day_of_week_sin", "day_of_week_cos", "day_of_year_sin", "day_of_year_cos"]
        return names

    @property
    def categorical_names(self) -> list[str]:
        """Names of the columns of x_cat, in order: categorical, bucketized numeric, crosses."""
        return ([spec["name"] for spec in self.state["categorical"]]
                + [f"{spec['name']}_bucket" for spec in self.state["buckets"]]
                + [spec["name"] for spec in self.state["crosses"]])

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes for x_cat; index 0 is the out-of-vocabulary / missing bucket."""
        sizes = [(spec["hash_buckets"] or len(spec["vocab"])) + 1 for spec in self.state["categorical"]]
        sizes += [len(spec["edges"]) + 2 for spec in self.state["buckets"]]
        return sizes + [spec["hash_buckets"] + 1 for spec in self.state["crosses"]]

    @property
    def hashed(self) -> list[bool]:
        """Per column of x_cat: is it a hashed id (no vocabulary, so no minimum count behind each id)?"""
        flags = [bool(spec["hash_buckets"]) for spec in self.state["categorical"]]
        return flags + [False] * len(self.state["buckets"]) + [True] * len(self.state["crosses"])

    @property
    def input_columns(self) -> list[str]:
        names = [spec["name"] for spec in self.state["numeric"] + self.state["categorical"]]
        names += [column for spec in self.state["crosses"] for column in spec["columns"]]
        names += list(self.state["hhmm"]) + list(self.state["date"] or [])
        return list(dict.fromkeys(names))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.state, sort_keys=True).encode()).hexdigest()[:16]

    def transform(self, columns: Mapping[str, ColumnLike]) -> dict[str, np.ndarray]:
        """Raw columns -> {"x_num": float32 [n, d], "x_cat": int64 [n, k]}; the same code for batches and requests."""
        numeric: list[np.ndarray] = []
        categorical: list[np.ndarray] = []
        processed: dict[str, np.ndarray] = {}
        for spec in self.state["numeric"]:
            values = preprocess(_floats(columns[spec["name"]]), spec["clip"], spec["log1p"])
            processed[spec["name"]] = values
            missing = np.isnan(values)
            scaled = (values - spec["center"]) / spec["divisor"]
            numeric.append(np.where(missing, (spec["impute"] - spec["center"]) / spec["divisor"], scaled))
            if spec["indicator"]:
                numeric.append(missing.astype(np.float64))
        for name in self.state["hhmm"]:
            hhmm = _floats(columns[name])
            minutes = np.floor(hhmm / 100.0) * 60.0 + np.mod(hhmm, 100.0)
            numeric.extend(np.nan_to_num(part) for part in _cyclical(minutes, 1440.0))
        if self.state["date"]:
            numeric.extend(_date_parts(*(columns[c] for c in self.state["date"])))
        for spec in self.state["categorical"]:
            if spec["hash_buckets"]:
                categorical.append(bucket_ids([_strings(columns[spec["name"]])], spec["hash_buckets"]))
            else:
                index = pc.index_in(_strings(columns[spec["name"]]), value_set=pa.array(spec["vocab"], pa.string()))
                categorical.append(np.nan_to_num(_floats(index) + 1.0, nan=0.0).astype(np.int64))
        for spec in self.state["buckets"]:
            values = processed[spec["name"]]
            bucket = np.searchsorted(np.asarray(spec["edges"], dtype=np.float64), values, side="right") + 1
            categorical.append(np.where(np.isnan(values), 0, bucket).astype(np.int64))
        for spec in self.state["crosses"]:
            categorical.append(bucket_ids([_strings(columns[c]) for c in spec["columns"]], spec["hash_buckets"]))
        n_rows = len(numeric[0]) if numeric else len(categorical[0])
        x_num = np.stack(numeric, axis=1).astype(np.float32) if numeric else np.zeros((n_rows, 0), np.float32)
        x_cat = np.stack(categorical, axis=1).astype(np.int64) if categorical else np.zeros((n_rows, 0), np.int64)
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
        scheme = state.get("hash_scheme", HASH_SCHEME)  # states written before the scheme was recorded used this one
        if scheme != HASH_SCHEME:
            raise ValueError(f"feature state hashes ids with {scheme!r}; this mlscale hashes with {HASH_SCHEME!r}: "
                             f"serving it would put ids in other buckets than training did")
        return cls(state)


def _date_parts(year: ColumnLike, month: ColumnLike, day: ColumnLike) -> list[np.ndarray]:
    """Day of week and day of year, each as a point on a circle (Sunday is next to Monday, Dec 31 to Jan 1)."""
    year_, month_, day_ = (np.nan_to_num(_floats(c), nan=1.0).astype(np.int64) for c in (year, month, day))
    year_start = (year_ - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    dates = ((year_ - 1970).astype("datetime64[Y]") + (month_ - 1).astype("timedelta64[M]")).astype("datetime64[D]")
    days = (dates + (day_ - 1).astype("timedelta64[D]")).astype(np.int64)
    return [*_cyclical(((days + 3) % 7).astype(np.float64), 7.0),
            *_cyclical((days - year_start.astype(np.int64)).astype(np.float64), 365.25)]


def _scaling(feature: NumericFeature, stats: NumericStats) -> tuple[float, float]:
    """(center, divisor) so that (x - center) / divisor is the scaled value; constant columns keep divisor 1."""
    if feature.scale == "standard":
        return stats.mean, stats.std if stats.std > 0 else 1.0
    if feature.scale == "minmax":
        span = stats.max - stats.min if stats.count else 0.0
        return (stats.min if stats.count else 0.0), span if span > 0 else 1.0
    return 0.0, 1.0


class FeatureSet:
    """What to compute from which columns; fit() learns the statistics from the training data."""

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config

    def fit_stats(self, stats: TableStats) -> FittedFeatures:
        config = self.config
        numeric, buckets = [], []
        for feature in config.numeric:
            column = stats.numeric[feature.column]
            center, divisor = _scaling(feature, column)
            numeric.append({
                "name": feature.column, "clip": list(feature.clip) if feature.clip else None, "log1p": feature.log1p,
                "scale": feature.scale, "center": center, "divisor": divisor,
                "impute": column.mean, "indicator": column.nulls > 0,
            })
            if feature.buckets:
                edges = stats.sketches[feature.column].quantiles(np.arange(1, feature.buckets) / feature.buckets)
                buckets.append({"name": feature.column, "edges": np.unique(edges[~np.isnan(edges)]).tolist()})
        categorical = []
        for category in config.categorical:
            if category.hash_buckets:
                categorical.append({"name": category.column, "hash_buckets": category.hash_buckets, "vocab": []})
                continue
            min_count = category.min_count or config.min_category_count
            frequent = [(value, count) for value, count in stats.categorical[category.column].counts.items()
                        if count >= min_count]
            frequent.sort(key=lambda item: (-item[1], item[0]))
            limit = category.max_categories or config.max_categories
            categorical.append({"name": category.column, "hash_buckets": None,
                                "vocab": [value for value, _ in frequent[:limit]]})
        rows = max(stats.rows, 1)
        state = {
            "version": STATE_VERSION,
            "hash_scheme": HASH_SCHEME,
            "rows": stats.rows,
            "numeric": numeric,
            "buckets": buckets,
            "categorical": categorical,
            "crosses": [{"name": c.name, "columns": list(c.columns), "hash_buckets": c.hash_buckets}
                        for c in config.crosses],
            "hhmm": list(config.hhmm_columns),
            "date": list(config.date_columns) if config.date_columns else None,
            "profile_numeric": {
                name: {"count": s.count, "null_fraction": s.null_fraction, "mean": s.mean, "std": s.std,
                       "min": s.min, "max": s.max,
                       **_distribution_profile(stats.distributions.get(name))}
                for name, s in stats.profile.items()
            },
            "profile_categorical": {
                name: {"null_fraction": s.nulls / rows,
                       # ties broken by value: the same 50 whatever order the partial counts were merged in
                       "frequencies": {k: v / rows for k, v in sorted(s.counts.items(),
                                                                      key=lambda kv: (-kv[1], kv[0]))[:50]}}
                for name, s in stats.categorical.items()
            },
        }
        return FittedFeatures(state)

    def fit(self, dataset: ray.data.Dataset) -> FittedFeatures:
        """One streaming pass: per-batch statistics in parallel, merged on the driver (bounded memory)."""
        partials = dataset.select_columns(self.config.raw_columns).map_batches(  # parquet reads only these
            partial(_batch_stats, config=self.config), batch_format="pyarrow", batch_size=None,
        )
        merged = merge_stats(json.loads(row["stats"]) for row in partials.iter_rows())
        if merged is None or merged.rows == 0:
            raise ValueError("cannot fit features on an empty dataset")
        return self.fit_stats(merged)


def merge_stats(parts: Iterable[dict[str, Any]]) -> TableStats | None:
    merged: TableStats | None = None
    for part in parts:
        stats = TableStats.from_dict(part)
        merged = stats if merged is None else merged.merge(stats)
    return merged


class FitStatistics:
    """The statistics fit() learns from, gathered by the prepare pass as it writes the train rows (a
    `mlscale.data.sink.TrainSummary`), so fitting is not a pass over the data of its own. Keyed by the features
    config and code: statistics gathered for other features are not used."""

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config
        self.key = cache_key(config.model_dump(mode="json"), code_hash("features"))

    def of(self, rows: pa.Table) -> dict[str, Any] | None:
        if any(column not in rows.column_names for column in self.config.raw_columns):
            return None  # the features name a column the data lacks: fitting says so, with the column's name
        return batch_stats(rows, self.config).to_dict()

    def combine(self, parts: list[dict[str, Any]]) -> dict[str, Any] | None:
        merged = merge_stats(parts)
        return merged.to_dict() if merged is not None else None


def label_values(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """The label as the model learns it: 1/0 at or above the threshold (classification), else the raw value.
    Training data and evaluation both go through here, so they cannot disagree on what a positive is."""
    return (values >= threshold).astype(np.float64) if threshold is not None else values.astype(np.float64)


def transform_batch(batch: pa.Table, features: FittedFeatures, label: str | None,
                    threshold: float | None) -> dict[str, np.ndarray]:
    """map_batches body: features plus the label as tensors for training (binary with a threshold, else raw)."""
    columns = {name: batch.column(name) for name in features.input_columns}
    out = features.transform(columns)
    if label is not None:
        values = _floats(batch.column(label))
        out["label"] = label_values(values, threshold).astype(np.float32)
    return out
