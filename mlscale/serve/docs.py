"""The OpenAPI document of a served bundle: FastAPI's routes with /predict's body typed from the bundle's input
schema, so /docs shows the real fields (types, ranges, allowed values, which may be null) of the version served."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def openapi_document(app: FastAPI, record_type: type[BaseModel], version: str) -> dict[str, Any]:
    """FastAPI's document for `app`, with /predict's request body: one record of `record_type` (the request parser's
    own model of the bundle's input schema), a list of them, or {"records": [...]}."""
    document = get_openapi(title=app.title, version=version or "unversioned", routes=app.routes,
                           description="Predictions from a registered mlscale bundle.")
    record = record_type.__name__
    record_schema = record_type.model_json_schema(ref_template=REF)
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

