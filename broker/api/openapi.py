"""The OpenAPI 3.1 document, built from the route registry and the pydantic request models."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from broker.api.native import ROUTES

_PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def openapi_path(rule: str) -> str:
    return "/v1" + _PATH_PARAM.sub(r"{\1}", rule)


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message", "request_id"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}},
        },
    }
    for route in ROUTES:
        path = openapi_path(route.rule)
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "responses": {
                str(route.status): {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": _error_response("invalid input (ValidationException and friends)"),
                "default": _error_response("error"),
            },
        }
        if route.authenticated:
            operation["security"] = [{"token": []}]
            operation["responses"]["401"] = _error_response("missing or bad token")
            operation["responses"]["403"] = _error_response("not allowed by policy")
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PATH_PARAM.findall(route.rule)]
        if params:
            operation["parameters"] = params
        if route.body is not None:
            name = route.body.__name__
            schemas[name] = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{name}"}}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "kms-broker", "version": "1", "description": "One KMS API over an HSM and four clouds."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-KMSB-Token"}},
        },
    }
