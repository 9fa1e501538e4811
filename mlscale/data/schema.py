"""Declared column schemas: the one description of valid data, used by batch validation and request validation.

The same ColumnSpec list decides whether a training row is quarantined (mlscale.data.validation) and whether an
HTTP request gets a 422 (request_model), so training data and live traffic are held to exactly the same rules.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model

DType = Literal["int", "float", "str"]

ARROW_TYPES: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}


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


def arrow_schema(specs: list[ColumnSpec]) -> pa.Schema:
    return pa.schema([(spec.name, spec.arrow_type) for spec in specs])


_PY_TYPES: dict[str, type] = {"int": int, "float": float, "str": str}


def record_name(dataset: str) -> str:
    """The request model's name for a dataset: `flights-small` -> `FlightsSmallRecord` (shown in /docs and errors)."""
    words = re.split(r"[^A-Za-z0-9]+", dataset)
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "Record"


def request_model(specs: list[ColumnSpec], name: str = "Record") -> type[BaseModel]:
    """A pydantic model that accepts exactly what validation accepts, so a bad request names its field."""
    fields: dict[str, Any] = {}
    for spec in specs:
        annotation: Any = _PY_TYPES[spec.dtype]
        if spec.allowed is not None:
            annotation = Literal[tuple(spec.allowed)]
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
