"""Mergeable column statistics: computed per batch in parallel, merged on the driver in one pass.

Moments use Chan's parallel update so that merging many partial results is numerically stable.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import kll_doubles_sketch

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
class Distribution:
    """A column's raw values as a mergeable KLL quantile sketch (Apache DataSketches; rank error ~1.3% at k=200):
    what monitoring compares live traffic against, fitted in the same streaming pass as the other statistics."""

    sketch: kll_doubles_sketch = field(default_factory=lambda: kll_doubles_sketch(200))

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        present = values[~np.isnan(values)]
        distribution = cls()
        if present.size:
            distribution.sketch.update(np.ascontiguousarray(present, dtype=np.float64))
        return distribution

    def merge(self, other: Distribution) -> Distribution:
        merged = kll_doubles_sketch.deserialize(self.sketch.serialize())
        merged.merge(other.sketch)
        return Distribution(merged)

    def quantiles(self, points: int = 101) -> list[float] | None:
        """Values at evenly spaced ranks from the minimum to the maximum (None when the column was all missing)."""
        if self.sketch.is_empty():
            return None
        inner = self.sketch.get_quantiles(np.linspace(0.0, 1.0, points)[1:-1].tolist())
        return [float(self.sketch.get_min_value()), *(float(value) for value in inner),
                float(self.sketch.get_max_value())]

    def bins(self, count: int = 10) -> dict[str, list[float]] | None:
        """Equal-mass bins for drift: the distinct edges at the training `count`-iles and the training mass in
        (previous edge, edge] read from the sketch's CDF, so a value held by many rows (a column that is mostly 0)
        carries all of its mass in its own bin instead of the 1/count the ranks alone would give it."""
        if self.sketch.is_empty():
            return None
        levels = np.linspace(0.0, 1.0, count + 1)[1:-1].tolist()
        edges = sorted({*(float(v) for v in self.sketch.get_quantiles(levels)), float(self.sketch.get_max_value())})
        below = self.sketch.get_cdf(edges, True)[:-1]  # inclusive: the mass at or below each edge
        mass = np.diff(np.concatenate([[0.0], below]))
        mass[-1] += 1.0 - float(np.sum(mass))  # the last edge is the maximum: whatever rounding left belongs there
        return {"edges": edges, "mass": [float(m) for m in mass]}

    def to_dict(self) -> dict[str, str]:
        return {"kll": base64.b64encode(self.sketch.serialize()).decode()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Distribution:
        return cls(kll_doubles_sketch.deserialize(base64.b64decode(data["kll"])))


@dataclass
class TableStats:
    """Mergeable statistics of one dataset: the feature values (after clip/log), the raw columns (the profile
    monitoring compares against), category counts and quantile sketches."""

    numeric: dict[str, NumericStats]
    categorical: dict[str, CategoryStats]
    profile: dict[str, NumericStats] = field(default_factory=dict)
    sketches: dict[str, QuantileSketch] = field(default_factory=dict)
    rows: int = 0
    distributions: dict[str, Distribution] = field(default_factory=dict)

    def merge(self, other: TableStats) -> TableStats:
        return TableStats(
            numeric={k: v.merge(other.numeric[k]) for k, v in self.numeric.items()},
            categorical={k: v.merge(other.categorical[k]) for k, v in self.categorical.items()},
            profile={k: v.merge(other.profile[k]) for k, v in self.profile.items()},
            sketches={k: v.merge(other.sketches[k]) for k, v in self.sketches.items()},
            rows=self.rows + other.rows,
            distributions={k: v.merge(other.distributions[k]) for k, v in self.distributions.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "numeric": {k: vars(v) for k, v in self.numeric.items()},
            "profile": {k: vars(v) for k, v in self.profile.items()},
            "categorical": {k: {"counts": dict(v.counts), "nulls": v.nulls} for k, v in self.categorical.items()},
            "sketches": {k: v.to_dict() for k, v in self.sketches.items()},
            "distributions": {k: v.to_dict() for k, v in self.distributions.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableStats:
        return cls(
            numeric={k: NumericStats(**v) for k, v in data["numeric"].items()},
            categorical={k: CategoryStats(Counter(v["counts"]), v["nulls"]) for k, v in data["categorical"].items()},
            profile={k: NumericStats(**v) for k, v in data["profile"].items()},
            sketches={k: QuantileSketch.from_dict(v) for k, v in data["sketches"].items()},
            rows=data["rows"],
            distributions={k: Distribution.from_dict(v) for k, v in data.get("distributions", {}).items()},
        )
