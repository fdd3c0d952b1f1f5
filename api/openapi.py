"""The OpenAPI document with the serving version's real record schema (field names, types, required)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.model.schema import FeatureSpec


def record_schema(features: list[FeatureSpec]) -> dict[str, Any]:
    """JSON Schema of one record as RecordValidator accepts it."""
    properties: dict[str, dict[str, Any]] = {}
    for f in features:
        kind = {"type": {float: "number", bool: "boolean", str: "string"}[f.value_type]}
        properties[f.name] = kind if f.required else {"anyOf": [kind, {"type": "null"}]}
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in features if f.required],
        "additionalProperties": False,
    }


def document(
    app: FastAPI, features: list[FeatureSpec] | None, max_batch_size: int, version: str | None
) -> dict[str, Any]:
    """The app's OpenAPI document, with /predict (served by api/predict_route.py) for the serving version."""
    doc = get_openapi(title=app.title, version=version or "no model loaded", routes=app.routes)
    record = record_schema(features) if features else {"type": "object"}
    doc.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
    doc["paths"] = {"/predict": {"post": _predict_operation(max_batch_size)}, **doc.get("paths", {})}
    return doc


def _predict_operation(max_batch_size: int) -> dict[str, Any]:
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
    answer = {
        "type": "object",
        "properties": {
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": {}},
            "probabilities": {"type": "array", "items": {"type": "number"}},
            "prediction_ids": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["model_version", "predictions", "probabilities", "prediction_ids"],
    }
    problem = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "summary": "Predict",
        "description": '{"records": [...]} -> predictions and positive-class probabilities.',
        "operationId": "predict",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "one prediction and probability per record, in order",
                "headers": {
                    "X-Model-Version": {"schema": {"type": "string"}},
                    "X-Prediction-Id": {"schema": {"type": "string"}, "description": "record i's id is <this>-<i>"},
                },
                "content": {"application/json": {"schema": answer}},
            },
            "400": {"description": "the body is not JSON, or nested too deep", **problem},
            "413": {"description": "the body is over MAX_BODY_BYTES", **problem},
            "422": {"description": "records the model cannot take, each named by record and field", **problem},
            "503": {"description": "no model loaded yet", **problem},
        },
    }
