"""The OpenAPI document of a served bundle: FastAPI's routes with /predict's body typed from the bundle's input
schema, so /docs shows the real fields (types, ranges, allowed values, which may be null) of the version served."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from mlscale.data.schema import ColumnSpec, request_model

REF = "#/components/schemas/{model}"


def openapi_document(app: FastAPI, input_schema: list[ColumnSpec], record: str, version: str) -> dict[str, Any]:
    """FastAPI's document for `app`, with /predict's request body: one record, a list of them, or {"records": [...]}."""
    document = get_openapi(title=app.title, version=version or "unversioned", routes=app.routes,
                           description="Predictions from a registered mlscale bundle.")
    record_schema = request_model(input_schema, record).model_json_schema(ref_template=REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(record_schema.pop("$defs", {}))
    schemas[record] = record_schema
    ref = {"$ref": REF.format(model=record)}
    body = {"oneOf": [ref, {"type": "array", "items": ref, "minItems": 1},
                      {"type": "object", "required": ["records"],
                       "properties": {"records": {"type": "array", "items": ref, "minItems": 1}}}]}
    predict = document["paths"]["/predict"]["post"]
    predict["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return document


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=openapi_url, title=title)
