"""The OpenAPI document with the serving version's real record schema (field names, types, required)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schema import FeatureSpec


def record_schema(features: list[FeatureSpec]) -> dict:
    """JSON Schema of one record as RecordValidator accepts it."""
    properties = {}
    for f in features:
        kind = {"type": {float: "number", bool: "boolean", str: "string"}[f.value_type]}
        properties[f.name] = kind if f.required else {"anyOf": [kind, {"type": "null"}]}
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in features if f.required],
        "additionalProperties": False,
    }


def document(app: FastAPI, features: list[FeatureSpec] | None, max_batch_size: int, version: str | None) -> dict:
    """The app's OpenAPI document; /predict's body describes the records the serving version accepts."""
    doc = get_openapi(title=app.title, version=version or "no model loaded", routes=app.routes)
    record = record_schema(features) if features else {"type": "object"}
    doc.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
    body = {
        "type": "object",
        "properties": {
            "records": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Record"},
                "minItems": 1,
                "maxItems": max_batch_size,
            }
        },
        "required": ["records"],
        "additionalProperties": False,
    }
    doc["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": body}},
    }
    return doc
