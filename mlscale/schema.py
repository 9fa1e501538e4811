"""Declared column schemas: the one description of valid data, used by batch validation and request validation.

The same ColumnSpec list decides whether a training row is quarantined (mlscale.data.validation) and whether an
HTTP request gets a 422 (request_model), so training data and live traffic are held to exactly the same rules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

DType = Literal["int", "float", "str"]
DEFAULT_MAX_TEXT_LENGTH = 1_000  # characters; a text column without its own max_length accepts no longer value

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
    max_length: int | None = Field(
        None, ge=1, description="str: the longest value accepted, in characters (None: DEFAULT_MAX_TEXT_LENGTH). "
                                "Longer is a 422 in serving and a quarantined row in prepare and score, so the work "
                                "one value costs (validation, hashing) is bounded.")
    description: str = ""

    @model_validator(mode="after")
    def _length_is_for_text(self) -> ColumnSpec:
        if self.max_length is not None and self.dtype != "str":
            raise ValueError(f"max_length applies to str columns; {self.name} is {self.dtype}")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.dtype]

    @property
    def text_limit(self) -> int | None:
        """The longest value a text column accepts (its max_length or the default); None for numbers."""
        return (self.max_length or DEFAULT_MAX_TEXT_LENGTH) if self.dtype == "str" else None


def arrow_schema(specs: list[ColumnSpec]) -> pa.Schema:
    return pa.schema([(spec.name, spec.arrow_type) for spec in specs])


_PY_TYPES: dict[str, type] = {"int": int, "float": float, "str": str}


def _not_a_boolean(value: Any) -> Any:
    """JSON's true/false where a number is declared: refused, not read as 1/0 (pydantic's lax mode would)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _valid_unicode(value: Any) -> Any:
    """A lone surrogate (`"\\ud800"` is valid JSON) is no text a UTF-8 column can hold: refused here, so neither the
    transform nor an error body meets it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid Unicode (a lone surrogate)") from None
    return value


def request_model(specs: list[ColumnSpec], name: str = "Record", extra: Literal["forbid", "ignore"] = "forbid",
                  passthrough: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model that accepts exactly what validation accepts, so a bad request names its field.

    `extra="forbid"` (the service's default, `serve.unknown_fields: reject`): a field the schema does not declare is
    an error naming it, so a misspelt optional field is not silently imputed as missing. `passthrough` names fields
    accepted whatever their value and left out of the record (the dataset's columns the model does not use).
    """
    fields: dict[str, Any] = {name: (Annotated[Any, SkipJsonSchema()], Field(None, exclude=True))
                              for name in passthrough if name not in {spec.name for spec in specs}}
    for spec in specs:
        annotation: Any = _PY_TYPES[spec.dtype]
        if spec.allowed is not None:
            annotation = Literal[tuple(spec.allowed)]
        if spec.dtype in ("int", "float"):
            annotation = Annotated[annotation, BeforeValidator(_not_a_boolean)]
        elif spec.allowed is None:  # text: bounded in length, valid Unicode
            annotation = Annotated[annotation, StringConstraints(max_length=spec.text_limit),
                                   AfterValidator(_valid_unicode)]
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
    return create_model(name, __config__=ConfigDict(extra=extra), **fields)
