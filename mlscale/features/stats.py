"""Mergeable column statistics: computed per batch in parallel, merged on the driver in one pass.

Moments use Chan's parallel update so that merging many partial results is numerically stable.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.features.sketch import QuantileSketch


@dataclass
class NumericStats:
    count: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array | np.ndarray) -> NumericStats:
        values = column if isinstance(column, np.ndarray) else \
            pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        present = values[~np.isnan(values)]
        if present.size == 0:
            return cls(nulls=int(values.size))
        mean = float(present.mean())
        return cls(
            count=int(present.size),
            nulls=int(values.size - present.size),
            mean=mean,
            m2=float(((present - mean) ** 2).sum()),
            min=float(present.min()),
            max=float(present.max()),
        )

    def merge(self, other: NumericStats) -> NumericStats:
        total = self.count + other.count
        if total == 0:
            return NumericStats(nulls=self.nulls + other.nulls)
        delta = other.mean - self.mean
        return NumericStats(
            count=total,
            nulls=self.nulls + other.nulls,
            mean=self.mean + delta * other.count / total,
            m2=self.m2 + other.m2 + delta * delta * self.count * other.count / total,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    @property
    def null_fraction(self) -> float:
        rows = self.count + self.nulls
        return self.nulls / rows if rows else 0.0


@dataclass
class CategoryStats:
    counts: Counter[str] = field(default_factory=Counter)
    nulls: int = 0

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array) -> CategoryStats:
        column = pc.cast(column, pa.string())
        nulls = column.null_count
        counted = pc.value_counts(pc.drop_null(column))
        counts = Counter(
            dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))
        )
        return cls(counts=counts, nulls=nulls)

    def merge(self, other: CategoryStats) -> CategoryStats:
        return CategoryStats(counts=self.counts + other.counts, nulls=self.nulls + other.nulls)


@dataclass
class TableStats:
    """Mergeable statistics of one dataset: the feature values (after clip/log), the raw columns (the profile
    monitoring compares against), category counts and quantile sketches."""

    numeric: dict[str, NumericStats]
    categorical: dict[str, CategoryStats]
    profile: dict[str, NumericStats] = field(default_factory=dict)
    sketches: dict[str, QuantileSketch] = field(default_factory=dict)
    rows: int = 0

    def merge(self, other: TableStats) -> TableStats:
        return TableStats(
            numeric={k: v.merge(other.numeric[k]) for k, v in self.numeric.items()},
            categorical={k: v.merge(other.categorical[k]) for k, v in self.categorical.items()},
            profile={k: v.merge(other.profile[k]) for k, v in self.profile.items()},
            sketches={k: v.merge(other.sketches[k]) for k, v in self.sketches.items()},
            rows=self.rows + other.rows,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "numeric": {k: vars(v) for k, v in self.numeric.items()},
            "profile": {k: vars(v) for k, v in self.profile.items()},
            "categorical": {k: {"counts": dict(v.counts), "nulls": v.nulls} for k, v in self.categorical.items()},
            "sketches": {k: v.to_dict() for k, v in self.sketches.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableStats:
        return cls(
            numeric={k: NumericStats(**v) for k, v in data["numeric"].items()},
            categorical={k: CategoryStats(Counter(v["counts"]), v["nulls"]) for k, v in data["categorical"].items()},
            profile={k: NumericStats(**v) for k, v in data["profile"].items()},
            sketches={k: QuantileSketch.from_dict(v) for k, v in data["sketches"].items()},
            rows=data["rows"],
        )
