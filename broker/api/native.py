"""The native REST API under /v1: resource-style routes over KeyService. Thin: parse, call, serialise.

Routes are declared with `op(...)`, which registers the view and records what the OpenAPI document says about it
(path, query and body), so the document cannot drift from the routes. The view `op` wraps is also where the
boundary is checked: a body or query is read only through `parse`/`parse_query` (the limits of
`broker.api.limits`), and a route that returns without having passed an audited gate operation is an internal
error, not an answer.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

from broker import errors
from broker.api import schemas as s
from broker.api.limits import load_json, read_body
from broker.errors import ValidationError
from broker.service import KeyService, RequestContext

log = logging.getLogger("kms_broker.api")
bp = Blueprint("native", __name__, url_prefix="/v1")


@dataclass(frozen=True)
class RouteDoc:
    rule: str
    method: str
    operation: str
    summary: str
    body: type[BaseModel] | None
    status: int
    authenticated: bool = True
    query: type[BaseModel] | None = None
    audited: bool = True  # False only for the probes that touch no resource (health, readiness, this document)
    media_type: str = "application/json"  # of a success (errors are always the JSON error model)
    handler: Callable | None = field(default=None, compare=False, repr=False)  # fn(svc, ctx, [body], **path)


ROUTES: list[RouteDoc] = []


class Unaudited(errors.BrokerError):
    """A route answered without an audited gate operation: a bug in the broker, never sent as a success."""


def jsonable(value: Any) -> Any:
    """A route's result as JSON values: bytes as base64 text."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def _first_problem(exc: PydanticError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])[:200] or "body"
    return f"{where}: {first['msg']}"


def parse(model: type[BaseModel]) -> BaseModel:
    """Validate the JSON body against `model`; any problem is a ValidationException naming the field."""
    data = load_json(read_body(request), empty={})
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    try:
        return model.model_validate(data, strict=True)  # the JSON types the document shows, nothing coerced
    except PydanticError as exc:
        raise ValidationError(_first_problem(exc)) from None


def parse_query(model: type[BaseModel] | None = None) -> Any:
    """The query string, validated against `model` (default: the route's declared query); unknown names refused."""
    if model is None:
        return g.query
    try:
        return model.model_validate(request.args.to_dict())
    except PydanticError as exc:
        raise ValidationError(_first_problem(exc)) from None


def op(rule: str, method: str, operation: str, summary: str, body: type[BaseModel] | None = None,
       status: int = 200, authenticated: bool = True, query: type[BaseModel] | None = None,
       audited: bool = True, media_type: str = "application/json") -> Callable:
    """Register a native route: `body` and `query` are what it reads (and what the OpenAPI document shows);
    `audited=False` is for probes only (a route that reaches a service must end audited, or it is an error)."""
    doc = RouteDoc(rule, method, operation, summary, body, status, authenticated, query, audited, media_type)

    def register(fn: Callable) -> Callable:
        def view(**path: Any):
            g.operation = operation
            g.query = parse_query(query) if query is not None else None
            args = [parse(body)] if body is not None else []
            result = fn(current_app.extensions["kms_service"], g.ctx, *args, **path) if authenticated else fn(**path)
            if audited and not g.ctx.audited:
                log.error("route %s returned without an audited operation", operation)
                raise Unaudited(f"internal error: {operation} was not audited")
            code = status
            if isinstance(result, tuple):
                result, code = result
            return jsonable(result if result is not None else {}), code

        view.route_doc = doc  # type: ignore[attr-defined]
        # no automatic OPTIONS: it would answer (unaudited) for every route; OPTIONS is a 405 naming the methods
        bp.add_url_rule(rule, operation, view, methods=[method], provide_automatic_options=False)
        ROUTES.append(replace(doc, handler=fn))
        return fn
    return register


Svc = KeyService
Ctx = RequestContext

# ------------------------------------------------------------------------------------------------- keys


@op("/keys", "POST", "CreateKey", "Create a key on a provider (default: the pkcs11 root of trust)", s.CreateKey, 201)
def create_key(svc: Svc, ctx: Ctx, b: s.CreateKey):
    return {"KeyMetadata": svc.create_key(ctx, key_spec=b.KeySpec, key_usage=b.KeyUsage, description=b.Description,
                                          tags=b.Tags, origin=b.Origin, provider=b.Provider, policy=b.Policy,
                                          bypass_policy_lockout=b.BypassPolicyLockoutSafetyCheck)}


@op("/keys", "GET", "ListKeys", "List keys (paginated with limit and marker)", query=s.ListQuery)
def list_keys(svc: Svc, ctx: Ctx):
    q = parse_query()
    return svc.list_keys(ctx, limit=q.limit, marker=q.marker)


@op("/keys/<path:key>", "GET", "DescribeKey", "Describe a key (id, ARN or alias/name)")
def describe_key(svc: Svc, ctx: Ctx, key: str):
    return {"KeyMetadata": svc.describe_key(ctx, key)}


@op("/keys/<path:key>", "PATCH", "UpdateKeyDescription", "Update a key's description", s.UpdateKey)
def update_key(svc: Svc, ctx: Ctx, b: s.UpdateKey, key: str):
    svc.update_key_description(ctx, key, b.Description)


@op("/keys/<path:key>/enable", "POST", "EnableKey", "Enable a key")
def enable_key(svc: Svc, ctx: Ctx, key: str):
    svc.enable_key(ctx, key)


@op("/keys/<path:key>/disable", "POST", "DisableKey", "Disable a key")
def disable_key(svc: Svc, ctx: Ctx, key: str):
    svc.disable_key(ctx, key)


@op("/keys/<path:key>/schedule-deletion", "POST", "ScheduleKeyDeletion", "Schedule deletion after 7-30 days",
    s.ScheduleDeletion)
def schedule_deletion(svc: Svc, ctx: Ctx, b: s.ScheduleDeletion, key: str):
    return svc.schedule_key_deletion(ctx, key, b.PendingWindowInDays)


@op("/keys/<path:key>/cancel-deletion", "POST", "CancelKeyDeletion", "Cancel a scheduled deletion")
def cancel_deletion(svc: Svc, ctx: Ctx, key: str):
    return svc.cancel_key_deletion(ctx, key)


# ------------------------------------------------------------------------------------------------- crypto


@op("/keys/<path:key>/encrypt", "POST", "Encrypt", "Encrypt up to 4096 bytes", s.Encrypt)
def encrypt(svc: Svc, ctx: Ctx, b: s.Encrypt, key: str):
    return svc.encrypt(ctx, key, b.Plaintext, context=b.EncryptionContext, algorithm=b.EncryptionAlgorithm)


@op("/decrypt", "POST", "Decrypt", "Decrypt a broker ciphertext (the key is named inside it)", s.Decrypt)
def decrypt(svc: Svc, ctx: Ctx, b: s.Decrypt):
    return svc.decrypt(ctx, b.CiphertextBlob, key_ref=b.KeyId, context=b.EncryptionContext,
                       algorithm=b.EncryptionAlgorithm)


@op("/re-encrypt", "POST", "ReEncrypt", "Decrypt and re-encrypt under another key inside the broker", s.ReEncrypt)
def re_encrypt(svc: Svc, ctx: Ctx, b: s.ReEncrypt):
    return svc.re_encrypt(ctx, b.CiphertextBlob, b.DestinationKeyId, source_context=b.SourceEncryptionContext,
                          destination_context=b.DestinationEncryptionContext, source_key_ref=b.SourceKeyId)


@op("/keys/<path:key>/generate-data-key", "POST", "GenerateDataKey", "A data key, in clear and encrypted",
    s.GenerateDataKey)
def generate_data_key(svc: Svc, ctx: Ctx, b: s.GenerateDataKey, key: str):
    return svc.generate_data_key(ctx, key, key_spec=b.KeySpec, number_of_bytes=b.NumberOfBytes,
                                 context=b.EncryptionContext)


@op("/keys/<path:key>/generate-data-key-without-plaintext", "POST", "GenerateDataKeyWithoutPlaintext",
    "A data key, encrypted only", s.GenerateDataKey)
def generate_data_key_wp(svc: Svc, ctx: Ctx, b: s.GenerateDataKey, key: str):
    return svc.generate_data_key_without_plaintext(ctx, key, key_spec=b.KeySpec, number_of_bytes=b.NumberOfBytes,
                                                   context=b.EncryptionContext)


@op("/keys/<path:key>/generate-data-key-pair", "POST", "GenerateDataKeyPair",
    "An asymmetric data key pair; the private key also encrypted", s.GenerateDataKeyPair)
def generate_data_key_pair(svc: Svc, ctx: Ctx, b: s.GenerateDataKeyPair, key: str):
    return svc.generate_data_key_pair(ctx, key, b.KeyPairSpec, context=b.EncryptionContext)


@op("/keys/<path:key>/generate-data-key-pair-without-plaintext", "POST", "GenerateDataKeyPairWithoutPlaintext",
    "An asymmetric data key pair; the private key only encrypted", s.GenerateDataKeyPair)
def generate_data_key_pair_wp(svc: Svc, ctx: Ctx, b: s.GenerateDataKeyPair, key: str):
    return svc.generate_data_key_pair_without_plaintext(ctx, key, b.KeyPairSpec, context=b.EncryptionContext)


@op("/random", "POST", "GenerateRandom", "Random bytes from a provider's generator", s.GenerateRandom)
def generate_random(svc: Svc, ctx: Ctx, b: s.GenerateRandom):
    return svc.generate_random(ctx, b.NumberOfBytes, provider=b.Provider)


@op("/keys/<path:key>/sign", "POST", "Sign", "Sign a message or digest", s.Sign)
def sign(svc: Svc, ctx: Ctx, b: s.Sign, key: str):
    return svc.sign(ctx, key, b.Message, b.SigningAlgorithm, b.MessageType)


@op("/keys/<path:key>/verify", "POST", "Verify", "Verify a signature", s.Verify)
def verify(svc: Svc, ctx: Ctx, b: s.Verify, key: str):
    return svc.verify(ctx, key, b.Message, b.Signature, b.SigningAlgorithm, b.MessageType)


@op("/keys/<path:key>/public-key", "GET", "GetPublicKey", "The public key of an asymmetric key (DER, base64)")
def get_public_key(svc: Svc, ctx: Ctx, key: str):
    return svc.get_public_key(ctx, key)


@op("/keys/<path:key>/generate-mac", "POST", "GenerateMac", "HMAC of a message", s.GenerateMac)
def generate_mac(svc: Svc, ctx: Ctx, b: s.GenerateMac, key: str):
    return svc.generate_mac(ctx, key, b.Message, b.MacAlgorithm)


@op("/keys/<path:key>/verify-mac", "POST", "VerifyMac", "Verify an HMAC", s.VerifyMac)
def verify_mac(svc: Svc, ctx: Ctx, b: s.VerifyMac, key: str):
    return svc.verify_mac(ctx, key, b.Message, b.Mac, b.MacAlgorithm)


# ------------------------------------------------------------------------------------------------- aliases, tags


@op("/aliases", "GET", "ListAliases", "List aliases (optionally of one key)", query=s.AliasQuery)
def list_aliases(svc: Svc, ctx: Ctx):
    return svc.list_aliases(ctx, parse_query().key)


@op("/aliases", "POST", "CreateAlias", "Create an alias", s.CreateAlias, 201)
def create_alias(svc: Svc, ctx: Ctx, b: s.CreateAlias):
    svc.create_alias(ctx, b.AliasName, b.TargetKeyId)


@op("/aliases/<path:name>", "PUT", "UpdateAlias", "Point an alias at another key", s.UpdateAlias)
def update_alias(svc: Svc, ctx: Ctx, b: s.UpdateAlias, name: str):
    svc.update_alias(ctx, name, b.TargetKeyId)


@op("/aliases/<path:name>", "DELETE", "DeleteAlias", "Delete an alias")
def delete_alias(svc: Svc, ctx: Ctx, name: str):
    svc.delete_alias(ctx, name)


@op("/keys/<path:key>/tags", "GET", "ListResourceTags", "A key's tags")
def list_tags(svc: Svc, ctx: Ctx, key: str):
    return svc.list_resource_tags(ctx, key)


@op("/keys/<path:key>/tags", "POST", "TagResource", "Add or replace tags", s.TagKey)
def tag_key(svc: Svc, ctx: Ctx, b: s.TagKey, key: str):
    svc.tag_resource(ctx, key, b.Tags)


@op("/keys/<path:key>/untag", "POST", "UntagResource", "Remove tags", s.UntagKey)
def untag_key(svc: Svc, ctx: Ctx, b: s.UntagKey, key: str):
    svc.untag_resource(ctx, key, b.TagKeys)


# ------------------------------------------------------------------------------------------------- rotation


@op("/keys/<path:key>/rotation", "GET", "GetKeyRotationStatus", "Automatic rotation status")
def rotation_status(svc: Svc, ctx: Ctx, key: str):
    return svc.get_key_rotation_status(ctx, key)


@op("/keys/<path:key>/rotation", "PUT", "EnableKeyRotation", "Enable automatic rotation", s.EnableRotation)
def enable_rotation(svc: Svc, ctx: Ctx, b: s.EnableRotation, key: str):
    svc.enable_key_rotation(ctx, key, b.RotationPeriodInDays)


@op("/keys/<path:key>/rotation", "DELETE", "DisableKeyRotation", "Disable automatic rotation")
def disable_rotation(svc: Svc, ctx: Ctx, key: str):
    svc.disable_key_rotation(ctx, key)


@op("/keys/<path:key>/rotate", "POST", "RotateKeyOnDemand", "Create a new key version now")
def rotate(svc: Svc, ctx: Ctx, key: str):
    return svc.rotate_key_on_demand(ctx, key)


@op("/keys/<path:key>/rotations", "GET", "ListKeyRotations", "Past rotations")
def list_rotations(svc: Svc, ctx: Ctx, key: str):
    return svc.list_key_rotations(ctx, key)


@op("/keys/<path:key>/versions", "GET", "ListKeyVersions", "A key's versions")
def list_versions(svc: Svc, ctx: Ctx, key: str):
    return svc.list_key_versions(ctx, key)


# ------------------------------------------------------------------------------------------------- import


@op("/keys/<path:key>/import-parameters", "POST", "GetParametersForImport",
    "A wrapping public key (made in the HSM) and an import token", s.ImportParameters)
def import_parameters(svc: Svc, ctx: Ctx, b: s.ImportParameters, key: str):
    return svc.get_parameters_for_import(ctx, key, b.WrappingAlgorithm, b.WrappingKeySpec)


@op("/keys/<path:key>/import", "POST", "ImportKeyMaterial", "Import wrapped key material", s.ImportMaterial)
def import_material(svc: Svc, ctx: Ctx, b: s.ImportMaterial, key: str):
    return svc.import_key_material(ctx, key, b.ImportToken, b.EncryptedKeyMaterial)


@op("/keys/<path:key>/material", "DELETE", "DeleteImportedKeyMaterial", "Delete imported material (PendingImport)")
def delete_material(svc: Svc, ctx: Ctx, key: str):
    svc.delete_imported_key_material(ctx, key)


# ------------------------------------------------------------------------------------------------- service


@op("/health", "GET", "Health", "Liveness: the process answers", authenticated=False, audited=False)
def health():
    return {"status": "ok"}


@op("/ready", "GET", "Ready", "Readiness: every provider (the HSM included), the audit log and the store can serve",
    authenticated=False, audited=False)
def ready():
    service = current_app.extensions["kms_service"]
    status, dependencies = service.readiness(), service.dependencies()
    ok = all(v == "ok" for v in (*status.values(), *dependencies.values()))
    return ({"status": "ready" if ok else "not ready", "providers": status, **dependencies}, 200 if ok else 503)


@op("/metrics", "GET", "ReadMetrics", "Prometheus metrics of this node (broker:ReadMetrics; each scrape audited)",
    media_type="text/plain")
def read_metrics(svc: Svc, ctx: Ctx):
    body, content_type = svc.metrics(ctx)
    return Response(body, mimetype=None, content_type=content_type)


@op("/openapi.json", "GET", "OpenAPI", "This API's OpenAPI 3.1 document", authenticated=False, audited=False)
def openapi():
    from broker.api.openapi import document
    return document()
