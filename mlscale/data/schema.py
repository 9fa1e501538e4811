"""Declared column schemas: the one description of valid data, used by batch validation and request validation.

The same ColumnSpec list decides whether a training row is quarantined and whether an HTTP request gets a 422,
so training data and live traffic are held to exactly the same rules.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, create_model

DType = Literal["int", "float", "str"]

ARROW_TYPES: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
REASON_COLUMN = "quarantine_reason"


class ColumnSpec(BaseModel):
    """One column: its type and the values it may hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: DType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    pattern: str | None = None
    description: str = ""

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.dtype]


class SchemaError(ValueError):
    """The data does not have the declared columns: a schema break, not a bad row."""


def arrow_schema(specs: list[ColumnSpec]) -> pa.Schema:
    return pa.schema([(spec.name, spec.arrow_type) for spec in specs])


def conform(table: pa.Table, specs: list[ColumnSpec], origin: str = "batch") -> pa.Table:
    """Select and cast the declared columns; a missing or uncastable column is a schema break."""
    missing = [spec.name for spec in specs if spec.name not in table.column_names]
    if missing:
        raise SchemaError(f"{origin}: missing declared column(s) {missing}; found {table.column_names}")
    columns = []
    for spec in specs:
        column = table.column(spec.name)
        if column.type != spec.arrow_type:
            try:
                column = column.cast(spec.arrow_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise SchemaError(
                    f"{origin}: column {spec.name!r} has type {column.type}, cannot cast to {spec.dtype}: {error}"
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=arrow_schema(specs))


def _failures(spec: ColumnSpec, column: pa.ChunkedArray) -> list[tuple[np.ndarray, str]]:
    """Masks of rows that break each rule of one column, with the rule's text."""
    found: list[tuple[np.ndarray, str]] = []
    is_null = column.is_null().to_numpy(zero_copy_only=False)
    if not spec.nullable and is_null.any():
        found.append((is_null, f"{spec.name}: null"))
    if spec.min is not None:
        below = pc.fill_null(pc.less(column, spec.min), False).to_numpy(zero_copy_only=False)
        if below.any():
            found.append((below, f"{spec.name}: below minimum {spec.min:g}"))
    if spec.max is not None:
        above = pc.fill_null(pc.greater(column, spec.max), False).to_numpy(zero_copy_only=False)
        if above.any():
            found.append((above, f"{spec.name}: above maximum {spec.max:g}"))
    if spec.allowed is not None:
        allowed = pa.array(spec.allowed, type=column.type)
        outside = pc.fill_null(pc.invert(pc.is_in(column, value_set=allowed)), False).to_numpy(zero_copy_only=False)
        if outside.any():
            found.append((outside, f"{spec.name}: not in allowed set"))
    if spec.pattern is not None:
        mismatch = pc.fill_null(pc.invert(pc.match_substring_regex(column, f"^(?:{spec.pattern})$")), False)
        mismatch = mismatch.to_numpy(zero_copy_only=False)
        if mismatch.any():
            found.append((mismatch, f"{spec.name}: does not match /{spec.pattern}/"))
    return found


def quarantine_reasons(table: pa.Table, specs: list[ColumnSpec]) -> pa.Array:
    """Per row, every rule it breaks joined by '; ' (with the offending value), or null when the row is valid."""
    reasons: list[list[str]] = [[] for _ in range(table.num_rows)]
    for spec in specs:
        column = table.column(spec.name)
        for mask, rule in _failures(spec, column):
            rows = np.flatnonzero(mask)
            values = column.take(pa.array(rows)).to_pylist()
            for row, value in zip(rows, values, strict=True):
                reasons[row].append(f"{rule} (value {value!r})")
    return pa.array([("; ".join(r) if r else None) for r in reasons], type=pa.string())


_PY_TYPES: dict[str, type] = {"int": int, "float": float, "str": str}


def request_model(specs: list[ColumnSpec], name: str = "Record") -> type[BaseModel]:
    """A pydantic model that accepts exactly what validation accepts, so a bad request names its field."""
    fields: dict[str, Any] = {}
    for spec in specs:
        annotation: Any = _PY_TYPES[spec.dtype]
        if spec.allowed is not None:
            annotation = Literal[tuple(spec.allowed)]  # type: ignore[valid-type]
        constraints: dict[str, Any] = {"description": spec.description or None}
        if spec.dtype == "float":
            constraints["allow_inf_nan"] = False
        if spec.min is not None:
            constraints["ge"] = spec.min
        if spec.max is not None:
            constraints["le"] = spec.max
        if spec.pattern is not None:
            constraints["pattern"] = f"^(?:{spec.pattern})$"
        if spec.nullable:
            fields[spec.name] = (annotation | None, Field(None, **constraints))
        else:
            fields[spec.name] = (annotation, Field(..., **constraints))
    return create_model(name, __config__=ConfigDict(extra="ignore"), **fields)
