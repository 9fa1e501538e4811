"""A mergeable quantile sketch (KLL-style compactors) for quantile bucketing with bounded memory.

Level h holds items that each stand for 2**h values. When a level holds more than k items, it is sorted and every
other item is promoted to the next level, so memory stays O(k log(n / k)) for n values and the rank error is
O(n log(n / k) / k). Sketches built on separate batches merge level by level, so fitting streams in parallel.
Compaction offsets alternate deterministically, so the same batches in the same order give the same sketch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QuantileSketch:
    k: int = 512
    levels: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    _flips: int = 0

    def update(self, values: np.ndarray) -> QuantileSketch:
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            self._add(0, values)
            self.count += int(values.size)
            self._compact()
        return self

    def _add(self, level: int, values: np.ndarray) -> None:
        while len(self.levels) <= level:
            self.levels.append(np.zeros(0, dtype=np.float64))
        self.levels[level] = np.concatenate([self.levels[level], values])

    def _compact(self) -> None:
        level = 0
        while level < len(self.levels):
            items = self.levels[level]
            if items.size > self.k:
                items = np.sort(items)
                keep_odd = items.size % 2  # an odd item out stays at this level
                rest, pairs = items[:keep_odd], items[keep_odd:]
                self._flips += 1
                promoted = pairs[self._flips % 2 :: 2]
                self.levels[level] = rest
                self._add(level + 1, promoted)
            level += 1

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        merged = QuantileSketch(k=self.k, levels=[level.copy() for level in self.levels], count=self.count,
                                _flips=self._flips + other._flips)
        for level, items in enumerate(other.levels):
            merged._add(level, items)
        merged.count += other.count
        merged._compact()
        return merged

    def quantiles(self, qs: np.ndarray | list[float]) -> np.ndarray:
        """Approximate values at the given quantiles in [0, 1] (NaN for an empty sketch)."""
        qs = np.asarray(qs, dtype=np.float64)
        if not any(level.size for level in self.levels):
            return np.full(qs.shape, np.nan)
        values = np.concatenate(self.levels)
        weights = np.concatenate([np.full(level.size, 2.0**h) for h, level in enumerate(self.levels)])
        order = np.argsort(values, kind="stable")
        values, cumulative = values[order], np.cumsum(weights[order])
        ranks = qs * cumulative[-1]
        return values[np.minimum(np.searchsorted(cumulative, ranks, side="left"), values.size - 1)]

    @property
    def size(self) -> int:
        return int(sum(level.size for level in self.levels))

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "count": self.count, "flips": self._flips,
                "levels": [level.tolist() for level in self.levels]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantileSketch:
        return cls(k=data["k"], levels=[np.asarray(level, dtype=np.float64) for level in data["levels"]],
                   count=data["count"], _flips=data["flips"])
