"""Deterministic split assignment per row: by time, by a hash of key columns, or a seeded draw from the row itself.

Every method is a pure function of the row's values and the config, so a rerun (or another Ray block layout) puts
each row in the same split; nothing depends on row order or on which worker saw the row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.config import SPLIT_NAMES, SplitConfig, TimeRange
from mlscale.errors import ConfigError
from mlscale.hashing import combined_hash

UNUSED = "unused"
_UNIFORM_BITS = 53  # a float64 holds 53 bits exactly: hash -> [0, 1) without rounding up to 1


def split_column(split: SplitConfig, time_column: str) -> str | None:
    """The time column a time split reads (None for hash and random splits)."""
    return (split.column or time_column) if split.method == "time" else None


def assign_splits(table: pa.Table, split: SplitConfig, time_column: str, row_columns: list[str]) -> np.ndarray:
    """The split name of each row (train / val / test / unused), as an object array.

    row_columns: the columns a `random` split draws from (the row's declared columns).
    """
    assigned = np.full(table.num_rows, UNUSED, dtype=object)
    if split.method == "time":
        column = table.column(split_column(split, time_column))
        for name in SPLIT_NAMES:
            assigned[_time_mask(column, getattr(split, name), name)] = name
        return assigned
    keys = split.keys if split.method == "hash" else row_columns
    assert keys is not None and split.fractions is not None
    draw = uniform(table, keys, split.seed)
    upper = 0.0
    for name in SPLIT_NAMES:
        lower, upper = upper, upper + split.fractions[name]
        assigned[(draw >= lower) & (draw < upper)] = name
    return assigned


def uniform(table: pa.Table, columns: list[str], seed: int) -> np.ndarray:
    """A float in [0, 1) per row from a stable hash of the columns' values and the seed (null is a value too)."""
    values = [pc.fill_null(pc.cast(table.column(name), pa.string()), "\x00null") for name in columns]
    values.append(pa.array([str(seed)] * table.num_rows, pa.string()))
    hashed = combined_hash(values)
    return (hashed >> np.uint64(64 - _UNIFORM_BITS)).astype(np.float64) / float(2**_UNIFORM_BITS)


def _time_mask(column: pa.ChunkedArray, values: list[Any] | TimeRange | None, name: str) -> np.ndarray:
    """Rows whose time value is one of the listed values, or inside the range [start, end)."""
    if values is None:
        return np.zeros(len(column), dtype=bool)
    if isinstance(values, TimeRange):
        mask = pa.array(np.ones(len(column), dtype=bool))
        if values.start is not None:
            mask = pc.and_(mask, pc.greater_equal(column, _bound(values.start, column.type, name)))
        if values.end is not None:
            mask = pc.and_(mask, pc.less(column, _bound(values.end, column.type, name)))
    else:
        mask = pc.is_in(column, value_set=_value_set(values, column.type, name))
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _bound(value: int | float | str, column_type: pa.DataType, name: str) -> pa.Scalar:
    """A range bound in the column's own type: ISO text for temporal columns, numbers for numeric ones."""
    try:
        if pa.types.is_temporal(column_type):
            return pa.scalar(datetime.fromisoformat(str(value))).cast(column_type)
        if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
            return pa.scalar(str(value), column_type)
        if isinstance(value, str):
            raise ValueError("a date bound on a numeric column")
        return pa.scalar(value).cast(column_type)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ConfigError(f"split.{name}: bound {value!r} does not fit the time column's type {column_type}: "
                          f"{error}") from None


def _value_set(values: list[Any], column_type: pa.DataType, name: str) -> pa.Array:
    try:
        return pa.array(values).cast(column_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise ConfigError(f"split.{name}: values {values!r} do not fit the time column's type {column_type}: "
                          f"{error}") from None
