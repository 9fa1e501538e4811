"""A replica's prediction cache: the answer for a validated record, bounded by entries, bytes and age.

The key is the record after validation (types coerced, missing fields as null), written canonically, so
`{"a": 1, "b": null}`, `{"b": null, "a": 1.0}` and `{"a": 1}` share one entry when the schema makes them the same
record. One cache belongs to one served version: a replica builds a new one when its version changes, so an answer
never outlives the model that gave it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

ENTRY_OVERHEAD = 200  # bytes an entry costs beside its key: the dict slot, the (time, prediction) tuple, two floats


def entry_bytes(key: str) -> int:
    return sys.getsizeof(key) + ENTRY_OVERHEAD


def record_key(record: dict[str, Any]) -> str:
    """The canonical text of a validated record (keys sorted, no whitespace)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


class PredictionCache:
    """Least-recently-used answers, each valid for ttl_s; counts requests answered from it (hits) and not (misses).

    Bounded by entries and by bytes: a key is the record's text, so with long text fields a count alone could hold
    gigabytes. `nbytes` is what the entries take (each key's size as Python holds it, plus a fixed cost per entry).
    """

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = 64 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (stored at, prediction)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> float | None:
        found = self.entries.get(key)
        if found is None or self.clock() - found[0] > self.ttl_s:
            if found is not None:
                self._remove(key)
            return None
        self.entries.move_to_end(key)
        return found[1]

    def put(self, key: str, prediction: float) -> None:
        size = entry_bytes(key)
        if size > self.max_bytes:  # one record larger than the whole budget is never kept
            return
        if key not in self.entries:
            self.nbytes += size
        self.entries[key] = (self.clock(), prediction)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries or self.nbytes > self.max_bytes:
            oldest, _ = self.entries.popitem(last=False)
            self.nbytes -= entry_bytes(oldest)

    def _remove(self, key: str) -> None:
        del self.entries[key]
        self.nbytes -= entry_bytes(key)

    def lookup(self, records: list[dict[str, Any]]) -> tuple[list[str], list[float] | None]:
        """The records' keys, and their predictions when every one is cached (None: predict the request)."""
        keys = [record_key(record) for record in records]
        found: list[float] = []
        for key in keys:
            prediction = self.get(key)
            if prediction is None:
                self.misses += 1
                return keys, None
            found.append(prediction)
        self.hits += 1
        return keys, found

    def store(self, keys: list[str], predictions: list[float]) -> None:
        for key, prediction in zip(keys, predictions, strict=True):
            self.put(key, prediction)
