"""Turning an HTTP body into validated records, or into a small 4xx that names what is wrong — never a 5xx.

Pure (no Ray, no HTTP server), so every malformed body can be tried against it in a unit test: an ingress checks
the content type, reads the body with `read_body` (which stops at the size limit, Content-Length or not), calls
`RequestParser.parse`, and renders a `RequestRejected` with `rejection` — the one place error bodies are written,
as ASCII JSON, so a body renders whatever the caller sent (a lone surrogate included).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import Response

from mlscale.schema import ColumnSpec, request_model

MAX_ERRORS = 20  # validation errors listed in one response: a large invalid body gets a small answer
MAX_ECHO_CHARS = 80  # how much of an offending value a response repeats
UNKNOWN_FIELD = "not a field of the input schema (see /schema; serve.unknown_fields: ignore drops such fields)"


class RequestRejected(Exception):
    """A request the service will not predict for: the HTTP status (4xx) and a JSON-safe detail list."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else str(status))
        self.status = status
        self.detail = detail


UnknownFields = Literal["reject", "ignore"]


def record_name(dataset: str) -> str:
    """The request model's name for a dataset: `flights-small` -> `FlightsSmallRecord` (shown in /docs and errors)."""
    words = re.split(r"[^A-Za-z0-9]+", dataset)
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "Record"


def rejection(status: int, detail: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    """A 4xx/503 body `{"detail": [...]}` as ASCII JSON: renderable whatever text the detail repeats."""
    return Response(json.dumps({"detail": detail}, ensure_ascii=True, default=str).encode(), status_code=status,
                    headers=headers, media_type="application/json")


TRANSFORM_FAILED = "the records passed validation but the model could not turn them into features"


def untransformable() -> Response:
    """422: valid records the model could not turn into features (the caller's data, not the model's health)."""
    return rejection(422, [{"loc": ["body"], "msg": TRANSFORM_FAILED}])


def unauthorized() -> Response:
    return rejection(401, [{"loc": ["header", "authorization"], "msg": "a valid API key is required"}],
                     {"WWW-Authenticate": "Bearer"})


def is_json(content_type: str | None) -> bool:
    """application/json, or a structured `+json` type (application/problem+json), with any parameters."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_content_type(content_type: str | None) -> None:
    """415 for a body not declared JSON: a text/plain or form body is not parsed as JSON by guesswork."""
    if not is_json(content_type):
        raise RequestRejected(415, [{"loc": ["header", "content-type"],
                                     "msg": f"send Content-Type: application/json, got {echo(content_type or '')!r}"}])


async def read_body(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The body, read chunk by chunk and given up at max_bytes (413): a chunked upload without Content-Length is
    never buffered past the limit."""
    received: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise too_large(size, max_bytes, exact=False)
        received.append(chunk)
    return b"".join(received)


def too_large(size: int, limit: int, exact: bool = True) -> RequestRejected:
    amount = f"{size:,} bytes" if exact else f"more than {limit:,} bytes"
    return RequestRejected(413, [{"loc": ["body"], "msg": f"body of {amount} is above the limit of {limit:,} "
                                                          "(serve.max_body_bytes)"}])


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
    """The request rules of one served bundle: its input schema, the record limit and the body size limit.

    A field the schema does not declare is a 422 naming it (`unknown_fields="reject"`), except the dataset's
    other declared columns (`passthrough`: its label, columns this model does not use), which a caller sending
    whole rows may carry and which are ignored; `unknown_fields="ignore"` drops every unknown field.
    """

    input_schema: list[ColumnSpec]
    max_records: int
    max_body_bytes: int
    record_name: str = "Record"
    unknown_fields: UnknownFields = "reject"
    passthrough: tuple[str, ...] = ()
    record_type: type[BaseModel] = field(init=False)  # the pydantic model of one record (also what /docs shows)
    one: TypeAdapter[Any] = field(init=False)
    many: TypeAdapter[list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        extra: Literal["forbid", "ignore"] = "forbid" if self.unknown_fields == "reject" else "ignore"
        record_type: Any = request_model(self.input_schema, self.record_name, extra, self.passthrough)
        self.record_type = record_type
        self.one = TypeAdapter(record_type)
        self.many = TypeAdapter(list[record_type])

    def check_length(self, content_length: str | None) -> None:
        """413 from the Content-Length header alone, before the body is read."""
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_body_bytes:
            raise too_large(int(content_length), self.max_body_bytes)

    def parse(self, body: bytes) -> list[dict[str, Any]]:
        """The body's records, validated against the input schema (one record, a list, or {"records": [...]}).

        Raises:
            RequestRejected: 413 above max_body_bytes; 400 for a body that is not JSON; 422 for JSON that is not
                records, too many or too few records, or records that break the schema or carry a field it does
                not declare (the fields named).
        """
        return self.validate(self.decode(body))

    def decode(self, body: bytes) -> Any:
        """The body's JSON (413 above max_body_bytes, 400 when it is not JSON)."""
        if len(body) > self.max_body_bytes:
            raise too_large(len(body), self.max_body_bytes)
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, NaN, nesting too deep
            raise RequestRejected(400, [{"loc": ["body"], "msg": f"body is not valid JSON: {echo(str(error))}"}]
                                  ) from None

    def validate(self, data: Any) -> list[dict[str, Any]]:
        """Decoded JSON -> validated records (422 naming what is wrong)."""
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

    @staticmethod
    def _detail(error: ValidationError) -> list[dict[str, Any]]:
        items = error.errors(include_url=False)
        detail: list[dict[str, Any]] = [
            {"loc": ["body", *(echo(part) for part in item["loc"])],
             "field": echo(str(item["loc"][-1])) if item["loc"] else None,
             "msg": UNKNOWN_FIELD if item["type"] == "extra_forbidden" else item["msg"],
             "input": echo(item.get("input"))}
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
