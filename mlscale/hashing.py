"""Stable vectorized string hashing for high-cardinality ids and feature crosses.

Python's hash() is salted per process, so it cannot be used: a serving replica must put a value in the same bucket
as the training worker did. This is 64-bit FNV-1a over the UTF-8 bytes, computed column-wise on the Arrow buffers
(one numpy step per byte position, not per row), finished with splitmix64 so buckets are uniform.

Rows are visited longest first, so the step for byte position p touches only the rows longer than p: a batch costs
its total bytes, and one long value in it costs only its own length, never that length times the batch's rows.
Text fields are bounded (`ColumnSpec.max_length`) before they get here, which bounds the number of steps.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_SCHEME = "fnv1a64-splitmix64-v1"  # stored in every fitted feature state: part of the serving contract
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _finish(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def hash_strings(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per row, null mask): the same value always gets the same hash, in any process."""
    array = pc.cast(values, pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_string())
    n = len(array)
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    offsets_buffer, data_buffer = array.buffers()[1], array.buffers()[2]
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset: array.offset + n + 1] if n else \
        np.zeros(1, np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return _finish(h), nulls
    longest_first = np.argsort(-lengths, kind="stable")
    ordered_lengths = lengths[longest_first]
    # active[p]: how many rows are longer than p (a prefix of longest_first, shrinking as p grows)
    active = np.searchsorted(-ordered_lengths, -np.arange(int(ordered_lengths[0])), side="left")
    ordered_starts = starts[longest_first]
    ordered = h[longest_first]
    with np.errstate(over="ignore"):
        for position, count in enumerate(active.tolist()):
            byte = data[ordered_starts[:count] + position].astype(np.uint64)
            ordered[:count] = (ordered[:count] ^ byte) * _FNV_PRIME
    h[longest_first] = ordered
    return _finish(h), nulls


def combined_hash(columns: list[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One uint64 hash per row over several columns, order-sensitive (a cross of a and b is not b and a)."""
    combined: np.ndarray | None = None
    for column in columns:
        h, _ = hash_strings(column)
        with np.errstate(over="ignore"):
            combined = h if combined is None else _finish(combined * _FNV_PRIME ^ h)
    assert combined is not None, "combined_hash needs at least one column"
    return combined


def bucket_ids(columns: list[pa.Array | pa.ChunkedArray], buckets: int) -> np.ndarray:
    """1 + hash(values) mod buckets per row, combining several columns for a cross; 0 when any value is null."""
    any_null = np.zeros(len(columns[0]), dtype=bool)
    for column in columns:
        any_null |= np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    ids = (combined_hash(columns) % np.uint64(buckets)).astype(np.int64) + 1
    return np.where(any_null, 0, ids)
