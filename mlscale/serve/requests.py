"""Turning an HTTP body into validated records, or into a small 4xx that names what is wrong — never a 5xx.

Pure (no Ray, no HTTP server), so every malformed body can be tried against it in a unit test: the ingress only
calls `RequestParser.parse` and renders a `RequestRejected` as its status and detail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from mlscale.data.schema import ColumnSpec, request_model

MAX_ERRORS = 20  # validation errors listed in one response: a large invalid body gets a small answer
MAX_ECHO_CHARS = 80  # how much of an offending value a response repeats


class RequestRejected(Exception):
    """A request the service will not predict for: the HTTP status (4xx) and a JSON-safe detail list."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else str(status))
        self.status = status
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def echo(value: Any) -> Any:
    """A value as an error message may repeat it: JSON-safe (no NaN or infinity) and short."""
    if isinstance(value, bool | int | str) or value is None:
        return value if not isinstance(value, str) or len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


@dataclass
class RequestParser:
    """The request rules of one served bundle: its input schema, the record limit and the body size limit."""

    input_schema: list[ColumnSpec]
    max_records: int
    max_body_bytes: int
    record_name: str = "Record"
    record_type: type[BaseModel] = field(init=False)  # the pydantic model of one record (also what /docs shows)
    one: TypeAdapter[Any] = field(init=False)
    many: TypeAdapter[list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        record_type: Any = request_model(self.input_schema, self.record_name)
        self.record_type = record_type
        self.one = TypeAdapter(record_type)
        self.many = TypeAdapter(list[record_type])

    def check_length(self, content_length: str | None) -> None:
        """413 from the Content-Length header alone, before the body is read."""
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_body_bytes:
            raise self._too_large(int(content_length))

    def parse(self, body: bytes) -> list[dict[str, Any]]:
        """The body's records, validated against the input schema (one record, a list, or {"records": [...]}).

        Raises:
            RequestRejected: 413 above max_body_bytes; 400 for a body that is not JSON; 422 for JSON that is not
                records, too many or too few records, or records that break the schema (the fields named).
        """
        if len(body) > self.max_body_bytes:
            raise self._too_large(len(body))
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, NaN, nesting too deep
            raise RequestRejected(400, [{"loc": ["body"], "msg": f"body is not valid JSON: {echo(str(error))}"}]
                                  ) from None
        if isinstance(data, dict) and "records" in data:
            data = data["records"]
        single = isinstance(data, dict)
        if not single and not isinstance(data, list):
            raise RequestRejected(422, [{"loc": ["body"], "msg": "expected a record (object) or a list of records, "
                                                                 f"got {type(data).__name__}"}])
        if not single and not 1 <= len(data) <= self.max_records:
            raise RequestRejected(422, [{"loc": ["body"],
                                         "msg": f"expected 1 to {self.max_records} records, got {len(data)}"}])
        try:
            records = [self.one.validate_python(data)] if single else self.many.validate_python(data)
        except ValidationError as error:
            raise RequestRejected(422, self._detail(error)) from None
        except RecursionError:  # a record nested beyond what validation walks
            raise RequestRejected(422, [{"loc": ["body"], "msg": "records are nested too deeply"}]) from None
        return [record.model_dump() for record in records]

    def _too_large(self, size: int) -> RequestRejected:
        return RequestRejected(413, [{"loc": ["body"], "msg": f"body of {size:,} bytes is above the limit of "
                                                              f"{self.max_body_bytes:,} (serve.max_body_bytes)"}])

    @staticmethod
    def _detail(error: ValidationError) -> list[dict[str, Any]]:
        items = error.errors(include_url=False)
        detail: list[dict[str, Any]] = [
            {"loc": ["body", *item["loc"]], "field": str(item["loc"][-1]) if item["loc"] else None,
             "msg": item["msg"], "input": echo(item.get("input"))}
            for item in items[:MAX_ERRORS]
        ]
        if len(items) > MAX_ERRORS:
            detail.append({"loc": ["body"], "msg": f"... and {len(items) - MAX_ERRORS} more errors"})
        return detail


def key_digest(key: str) -> str:
    """What the service keeps of an API key: its SHA-256, so the keys never sit in the Serve config."""
    return hashlib.sha256(key.encode()).hexdigest()


def authorized(header: str | None, digests: tuple[str, ...]) -> bool:
    """No keys configured: open. Otherwise `Authorization: Bearer <key>` (or a bare key) matching one of them,
    compared in constant time."""
    if not digests:
        return True
    if not header:
        return False
    offered = key_digest(header.removeprefix("Bearer ").strip())
    return any(hmac.compare_digest(offered, digest) for digest in digests)
