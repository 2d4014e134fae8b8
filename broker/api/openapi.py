"""The OpenAPI 3.1 document of the native API, built from the route registry and the pydantic models.

Everything a route reads is in it: path parameters, the declared query model (`op(..., query=...)`) as query
parameters, the body model and every model it nests (hoisted into `components/schemas`, so every `$ref`
resolves). tests/security/test_openapi.py validates the served document and runs schemathesis against it.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker.api.native import ROUTES, RouteDoc

_PATH_PARAM = re.compile(r"<(?:([a-z]+):)?([a-z_]+)>")
_REF = "#/components/schemas/{model}"
_ERROR_CODES = {
    "400": "invalid input (ValidationException and friends)",
    "401": "missing or bad token (UnrecognizedClientException)",
    "403": "not allowed by policy (AccessDeniedException)",
    "404": "no such resource (NotFoundException) or route (UnknownOperationException)",
    "409": "the resource's state forbids it (KMSInvalidStateException, DisabledException, AlreadyExistsException)",
    "413": "the request body is larger than the broker takes",
}
_REQUEST_ID = {"X-Request-Id": {"description": "this request's id (the client's when short and plain, else a "
                                               "fresh one); audit records carry the same",
                                "schema": {"type": "string"}}}


def openapi_path(rule: str) -> str:
    return "/v1" + _PATH_PARAM.sub(r"{\2}", rule)


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _success(route: RouteDoc) -> dict[str, Any]:
    if route.status == 204:
        return {"description": "done (no content)", "headers": _REQUEST_ID}
    schema = {"type": "object"} if route.media_type == "application/json" else {"type": "string"}
    return {"description": "success", "headers": _REQUEST_ID, "content": {route.media_type: {"schema": schema}}}


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    out = []
    for converter, name in _PATH_PARAM.findall(rule):
        # <path:…> takes slashes (alias/team/app); the default converter takes one segment
        schema = {"type": "string", "minLength": 1} if converter == "path" else {"type": "string",
                                                                                 "pattern": "^[^/]+$"}
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field of a query model is one query parameter; `null` has no spelling in a query string."""
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(dict(prop))
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    variants = prop.get("anyOf")
    if variants:
        kept = [v for v in variants if v.get("type") != "null"]
        del prop["anyOf"]
        if len(kept) == 1:
            prop.update(kept[0])
        else:
            prop["anyOf"] = kept
    if prop.get("default", 0) is None:
        del prop["default"]
    return prop


def _body_schemas() -> tuple[dict[type[BaseModel], str], dict[str, Any]]:
    """Every body model and everything it nests, named once (pydantic disambiguates equal class names)."""
    models = list(dict.fromkeys(r.body for r in ROUTES if r.body is not None))
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    names = {model: refs[(model, "validation")]["$ref"].rsplit("/", 1)[1] for model in models}
    return names, defs.get("$defs", {})


def _requires_body(schema: dict[str, Any]) -> bool:
    return bool(schema.get("required"))


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    names, schemas = _body_schemas()
    schemas = copy.deepcopy(schemas)
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message", "request_id"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}},
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {str(route.status): _success(route)}
        for code, text in _ERROR_CODES.items():
            if code in ("401", "403") and not route.authenticated:
                continue
            if code == "413" and route.body is None:
                continue
            responses.setdefault(code, _error_response(text))
        responses["default"] = _error_response("any other error, in the same shape")
        operation: dict[str, Any] = {"operationId": route.operation, "summary": route.summary,
                                     "responses": responses}
        if route.authenticated:
            operation["security"] = [{"token": []}, {"bearer": []}]
        params = _path_parameters(route.rule) + (_query_parameters(route.query) if route.query else [])
        if params:
            operation["parameters"] = params
        if route.body is not None:
            name = names[route.body]
            operation["requestBody"] = {"required": _requires_body(schemas[name]), "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "kms-broker", "version": "1", "description": "One KMS API over an HSM and four clouds."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-KMSB-Token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
