"""The AWS-KMS-compatible front door: the AWS KMS JSON 1.1 protocol over KeyService.

    POST /   X-Amz-Target: TrentService.<Operation>   Content-Type: application/x-amz-json-1.1   (SigV4-signed)

Thin, like the native API: authenticate (broker.auth.sigv4), parse AWS's request shape, call the one KeyService
path that authorizes and audits, answer in AWS's response shape (base64 blobs, ARNs, epoch-second dates, Marker/
Truncated pagination, errors as {"__type", "message"}). Nothing here talks to a provider or the store.

Broker providers appear as custom key stores: CustomKeyStoreId = provider instance name (docs/aws-compat.md).
Cross-cloud multi-keys are addressable as KeyId "multikey/<name or id>" (Encrypt, GenerateDataKey*, and Decrypt of
their scheme-3 ciphertexts), through the multi-key manager, which runs inside KeyService's choke point too.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from broker import ciphertext as ct
from broker import errors
from broker.api.answers import as_broker_error
from broker.api.aws_input import Serialization, check_members
from broker.api.aws_validation import check_constraints, invalid
from broker.api.limits import TOO_LARGE, BadJson, load_json, read_body
from broker.auth import Principal
from broker.auth.sigv4 import environ_headers
from broker.canonical_json import Encoder
from broker.identity import IdentityService
from broker.service import KeyService, RequestContext

log = logging.getLogger("kms_broker.aws")
bp = Blueprint("aws", __name__)

ACCOUNT = "111122223333"  # the broker's stable fake AWS account id (ARNs, KeyMetadata.AWSAccountId)
TARGET_PREFIX = "TrentService."
CONTENT_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0")
_JSON = "application/x-amz-json-1.1"

# AWS's HTTP status per error code (the KMS API reference: client errors 400, KMSInternalException and
# dependency/key-unavailable errors 500). Anything not listed keeps the broker's own status.
_AWS_STATUS = {
    "AccessDeniedException": 400, "NotFoundException": 400, "AlreadyExistsException": 400, "DisabledException": 400,
    "KMSInvalidStateException": 400, "InvalidCiphertextException": 400, "IncorrectKeyException": 400,
    "InvalidKeyUsageException": 400, "KMSInvalidSignatureException": 400, "KMSInvalidMacException": 400,
    "InvalidImportTokenException": 400, "ExpiredImportTokenException": 400, "IncorrectKeyMaterialException": 400,
    "UnsupportedOperationException": 400, "UnrecognizedClientException": 400, "LimitExceededException": 400,
    "ThrottlingException": 400, "ValidationException": 400, "NotAuthorizedException": 400,
    "MalformedPolicyDocumentException": 400, "DependencyTimeoutException": 500,
    "DependencyFailureException": 500, "KMSInternalException": 500, "ServiceUnavailableException": 503,
}


def _error(name: str, code: str, status: int = 400) -> type[errors.BrokerError]:
    return type(name, (errors.BrokerError,), {"code": code, "status": status, "__doc__": f"{code} ({status})"})


UnknownOperation = _error("UnknownOperation", "UnknownOperationException")
CustomKeyStoreNotFound = _error("CustomKeyStoreNotFound", "CustomKeyStoreNotFoundException")
InvalidMarker = _error("InvalidMarker", "InvalidMarkerException")
InvalidArn = _error("InvalidArn", "InvalidArnException")
DryRunOperation = _error("DryRunOperation", "DryRunOperationException", 412)
NotAuthorized = _error("NotAuthorized", "NotAuthorizedException")

# AWS KMS operations the broker does not serve, with the reason (docs/aws-compat.md says the same).
NOT_SUPPORTED = {
    "CreateCustomKeyStore": "custom key stores are the broker's configured providers (settings, not API)",
    "UpdateCustomKeyStore": "custom key stores are the broker's configured providers (settings, not API)",
    "DeleteCustomKeyStore": "custom key stores are the broker's configured providers (settings, not API)",
    "ConnectCustomKeyStore": "providers are connected while the broker runs; see DescribeCustomKeyStores",
    "DisconnectCustomKeyStore": "providers are connected while the broker runs; see DescribeCustomKeyStores",
    "ReplicateKey": "multi-Region keys do not exist in the broker (one store serves every region)",
    "UpdatePrimaryRegion": "multi-Region keys do not exist in the broker (one store serves every region)",
    "DeriveSharedSecret": "KEY_AGREEMENT keys (ECDH) are not a broker key usage",
    "GetKeyLastUsage": "the audit log records every use; query it with the broker's audit tools",
}

Handler = Callable[[KeyService, RequestContext, "Body"], dict[str, Any]]
OPERATIONS: dict[str, Handler] = {}


def operation(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPERATIONS[name] = fn
        return fn
    return register


# ============================================================================================== wiring


def init_app(app: Flask, service: KeyService, settings: Any) -> None:
    """Register the blueprint and its SigV4 authenticator (called from create_app, after `Services` exists: the
    credentials and their verification belong to the identity service)."""
    identity: IdentityService = app.extensions["kms"].identity
    app.extensions["kms_authenticators"]["aws"] = lambda req: _authenticate(identity, req)
    app.register_blueprint(bp)


def _authenticate(identity: IdentityService, req: Request) -> Principal:
    return authenticate(identity, req.method, req.path, req.query_string.decode("latin-1"), req.environ,
                        read_body(req))


def authenticate(identity: IdentityService, method: str, path: str, query: str, environ: dict[str, Any],
                 body: bytes) -> Principal:
    """The SigV4 principal of a request (in an app context whose `g.ctx` is the request's context); names the
    operation for the audit of a refusal first. The headers are read from the WSGI environ (`environ_headers`: what
    `request.headers` holds, without building it)."""
    g.ctx.front_door = "aws"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    name = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
    # only an operation this door serves names the audit record and the metrics' label: a made-up target would
    # otherwise read like a real action to an auditor and grow a metric series per name an attacker sends
    g.operation = name if name in OPERATIONS else "UnknownOperation"
    verified = identity.verify_sigv4(method, path, query, environ_headers(environ), body)
    g.aws_region = verified.region
    return verified.principal


@bp.after_request
def _request_id(response: Response) -> Response:
    response.headers["x-amzn-RequestId"] = getattr(g, "request_id", "")
    return response


def _answer(data: dict[str, Any], status: int = 200) -> Response:
    return Response(encode(data), status=status, content_type=_JSON)


# json.JSONEncoder(separators=(",", ":")) byte for byte, through orjson where provably the same (canonical_json.py)
_ENCODER = Encoder(sort_keys=False)


def encode(data: dict[str, Any]) -> bytes:
    """An AWS JSON 1.1 answer's body (what `json.dumps(data, separators=(",", ":"))` writes)."""
    return _ENCODER.encode(data)


def refusal(exc: errors.BrokerError) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """A refused request's (status, body, extra headers) in AWS's shape, audited if no operation recorded it."""
    from broker.app import audit_refusal

    exc = audit_refusal(exc)
    return _AWS_STATUS.get(exc.code, exc.status), {"__type": exc.code, "message": exc.message}, \
        [("x-amzn-ErrorType", exc.code)]


def _refuse(exc: errors.BrokerError) -> Response:
    status, body, headers = refusal(exc)
    response = _answer(body, status)
    for name, value in headers:
        response.headers[name] = value
    return response


@bp.errorhandler(errors.BrokerError)
def _broker_error(exc: errors.BrokerError) -> Response:
    return _refuse(exc)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = "UnknownOperationException" if exc.code in (404, 405) else "ValidationException"
    return _refuse(_error("HttpError", code, 400)(TOO_LARGE if exc.code == 413 else exc.description or ""))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    return _refuse(as_broker_error(exc, getattr(g, "request_id", "?")))


@bp.post("/", provide_automatic_options=False)
def dispatch() -> Response:
    return _answer(run(request.headers.get("X-Amz-Target", ""), request.headers.get("Content-Type"),
                       read_body(request), g.ctx))


def run(target: str, content_type: str | None, raw: bytes, ctx: RequestContext) -> dict[str, Any]:
    """One AWS operation of an authenticated request (in an app context whose `g` holds the request's context):
    its answer, or the error to refuse it with."""
    name = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else None
    handler = OPERATIONS.get(name or "")
    if handler is None and name in NOT_SUPPORTED:
        raise errors.Unsupported(f"{name} is not supported by the broker: {NOT_SUPPORTED[name]}")
    if handler is None:
        raise UnknownOperation(f"unknown operation {target!r}" if target else "missing X-Amz-Target")
    if (content_type or "").split(";")[0].strip().lower() not in CONTENT_TYPES:
        raise Serialization(f"Content-Type must be {_JSON}")
    try:
        data = load_json(raw, empty={})
    except BadJson as exc:
        raise Serialization(exc.message) from None
    if not isinstance(data, dict):
        raise Serialization("the request body must be a JSON object")
    check_members(name, data)
    check_constraints(name, data)
    body = Body(data, name)
    if body.bool("DryRun"):
        raise errors.Unsupported("DryRun is not supported by the broker")
    answer = handler(current_app.extensions["kms_service"], ctx, body)
    if not ctx.audited:  # every operation passes an audited gate operation; answering without one is a bug
        log.error("AWS operation %s returned without an audited operation", name)
        raise _error("Unaudited", "KMSInternalException", 500)(f"internal error: {name} was not audited")
    return answer


# ============================================================================================== request shape


# Members that take an alias (name or ARN) as well as a key id or key ARN, as the AWS KMS API reference says for
# each operation; everywhere else an alias is NotFoundException ("Invalid keyId"), as in AWS.
ALIAS_MEMBERS = frozenset({(op, "KeyId") for op in (
    "Decrypt", "DescribeKey", "Encrypt", "GenerateDataKey", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext", "GenerateMac", "GetPublicKey", "Sign", "Verify", "VerifyMac")}
    | {("ReEncrypt", "SourceKeyId"), ("ReEncrypt", "DestinationKeyId")})


class Body:
    """Typed access to an AWS JSON request; type errors are SerializationException, missing members validation."""

    def __init__(self, data: dict[str, Any], operation: str = "") -> None:
        self.data = data
        self.operation = operation

    def _get(self, name: str, kind: type | tuple[type, ...], required: bool) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                raise invalid(None, name, "not be null")
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Serialization(f"{name}: unexpected JSON type {type(value).__name__}")
        return value

    def str(self, name: str, required: bool = False) -> str | None:
        return self._get(name, str, required)

    def int(self, name: str, required: bool = False) -> int | None:
        return self._get(name, int, required)

    def bool(self, name: str) -> bool:
        return bool(self._get(name, bool, False))

    def blob(self, name: str, required: bool = False) -> bytes | None:
        value = self.str(name, required)
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Serialization(f"{name}: not valid base64") from None

    def map(self, name: str) -> dict[str, str] | None:
        value = self._get(name, dict, False)
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise Serialization(f"{name}: values must be strings")
        return value

    def list(self, name: str, required: bool = False) -> list | None:
        return self._get(name, list, required)

    def policy(self, required: bool = False) -> str | None:
        """The Policy member: a key policy's JSON text, handed on unparsed (it is stored as written)."""
        text = self.str("Policy", required)
        if text is not None and len(text) > 32_768:
            raise errors.ValidationError("Policy is at most 32768 characters")
        return text

    def key(self, name: str = "KeyId", required: bool = True) -> str | None:
        value = self.str(name, required)
        if value is None:
            return None
        ref = key_ref(value)
        if ref.startswith("alias/") and (self.operation, name) not in ALIAS_MEMBERS:
            if name == "TargetKeyId":
                raise errors.ValidationError("Aliases must refer to keys. Not aliases")
            raise errors.NotFound(f"Invalid keyId {value[:256]}")
        return ref


def key_ref(value: str) -> str:
    """KeyId as AWS accepts it (key id, key ARN, alias name, alias ARN) → what KeyService resolves."""
    if not value.startswith("arn:"):
        return value
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[2] != "kms" or not parts[5]:
        raise errors.NotFound(f"Invalid arn {value}")
    resource = parts[5]
    if resource.startswith("key/"):
        return resource[len("key/"):]
    if resource.startswith("alias/"):
        return resource
    raise errors.NotFound(f"Invalid arn {value}")


def _region() -> str:
    return getattr(g, "aws_region", "us-east-1")


def key_arn(key_id: str) -> str:
    return f"arn:aws:kms:{_region()}:{ACCOUNT}:key/{key_id}"


def alias_arn(name: str) -> str:
    return f"arn:aws:kms:{_region()}:{ACCOUNT}:{name}"


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value).timestamp()


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _page(items: list[Any], body: Body, marker_of: Callable[[Any], str], field: str, *, high: int = 1000,
          default: int = 100) -> dict[str, Any]:
    """Limit/Marker/Truncated over a complete list (the marker is the last item's id); AWS's bounds per operation."""
    limit = body.int("Limit")
    if limit is not None and not 1 <= limit <= high:
        raise errors.ValidationError(f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy "
                                     f"constraint: Member must be between 1 and {high}, inclusive")
    limit = limit or default
    marker = body.str("Marker")
    start = 0
    if marker:
        ids = [marker_of(i) for i in items]
        if marker not in ids:
            raise InvalidMarker("the Marker is not valid")
        start = ids.index(marker) + 1
    page = items[start:start + limit]
    out: dict[str, Any] = {field: page, "Truncated": start + limit < len(items)}
    if out["Truncated"]:
        out["NextMarker"] = marker_of(page[-1])
    return out


MULTIKEY = "multikey/"  # KeyId "multikey/<name or id>" (or key ARN ".../key/multikey/<…>"): a cross-cloud multi-key


def _multikeys() -> Any:
    """The multi-key service (broker.replication.keyrings.MultiKeys) of this broker's services."""
    return current_app.extensions["kms"].multikeys


def _multi_ref(ref: str | None) -> str | None:
    return ref[len(MULTIKEY):] if ref and ref.startswith(MULTIKEY) else None


def _is_multi_blob(blob: bytes | None) -> bool:
    try:
        return blob is not None and ct.unpack(blob).header.scheme is ct.Scheme.MULTI_WRAP
    except ct.MalformedCiphertext:
        return False  # KeyService answers for malformed ciphertexts


def _provider_for(service: KeyService, custom_key_store_id: str | None) -> str | None:
    if custom_key_store_id is None:
        return None
    if not service.has_key_store(custom_key_store_id):
        raise CustomKeyStoreNotFound(f"custom key store {custom_key_store_id!r} does not exist")
    return custom_key_store_id


def key_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """KeyService's describe() → AWS's KeyMetadata."""
    out: dict[str, Any] = {
        "AWSAccountId": ACCOUNT,
        "KeyId": meta["KeyId"],
        "Arn": key_arn(meta["KeyId"]),
        "CreationDate": _epoch(meta["CreationDate"]),
        "Enabled": meta["Enabled"],
        "Description": meta.get("Description", ""),
        "KeyUsage": meta["KeyUsage"],
        "KeyState": meta["KeyState"],
        "Origin": meta["Origin"],
        "CustomKeyStoreId": meta["Provider"],
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": meta["KeySpec"],
        "KeySpec": meta["KeySpec"],
        "MultiRegion": False,
    }
    if meta.get("DeletionDate"):
        out["DeletionDate"] = _epoch(meta["DeletionDate"])
    if meta["Origin"] == "EXTERNAL":
        out["ExpirationModel"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"
    for name in ("EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms"):
        if name in meta:
            out[name] = meta[name]
    return out


def _symmetric_only(body: Body, *names: str) -> None:
    for name in names:
        value = body.str(name)
        if value not in (None, "SYMMETRIC_DEFAULT"):
            raise errors.Unsupported(f"{name} {value} is not supported here: ReEncrypt is symmetric only")


# ============================================================================================== keys


@operation("CreateKey")
def create_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    if b.bool("MultiRegion"):
        raise errors.Unsupported("multi-Region keys are not supported by the broker")
    if b.str("XksKeyId") is not None:
        raise errors.Unsupported("XksKeyId (adopting an existing external key) is not supported")
    provider = _provider_for(svc, b.str("CustomKeyStoreId"))
    origin = b.str("Origin") or "AWS_KMS"
    if origin in ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"):
        if provider is None:
            raise errors.ValidationError(f"Origin {origin} needs a CustomKeyStoreId")
        origin = "AWS_KMS"  # material born in that provider
    spec = b.str("KeySpec") or b.str("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    tags = b.list("Tags")
    meta = svc.create_key(ctx, key_spec=spec, key_usage=b.str("KeyUsage"), description=b.str("Description") or "",
                          tags=tags, origin=origin, provider=provider, policy=b.policy(),
                          bypass_policy_lockout=b.bool("BypassPolicyLockoutSafetyCheck"))
    return {"KeyMetadata": key_metadata(meta)}


@operation("DescribeKey")
def describe_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return {"KeyMetadata": key_metadata(svc.describe_key(ctx, b.key()))}


@operation("ListKeys")
def list_keys(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    limit = b.int("Limit")
    out = svc.list_keys(ctx, limit=100 if limit is None else limit, marker=b.str("Marker"))
    page: dict[str, Any] = {"Keys": [{"KeyId": k["KeyId"], "KeyArn": key_arn(k["KeyId"])} for k in out["Keys"]],
                            "Truncated": out["Truncated"]}
    if out.get("NextMarker"):
        page["NextMarker"] = out["NextMarker"]
    return page


@operation("UpdateKeyDescription")
def update_key_description(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.update_key_description(ctx, b.key(), b.str("Description", required=True))
    return {}


@operation("EnableKey")
def enable_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.enable_key(ctx, b.key())
    return {}


@operation("DisableKey")
def disable_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.disable_key(ctx, b.key())
    return {}


@operation("ScheduleKeyDeletion")
def schedule_key_deletion(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    days = b.int("PendingWindowInDays")
    out = svc.schedule_key_deletion(ctx, b.key(), 30 if days is None else days)
    return {"KeyId": key_arn(out["KeyId"]), "DeletionDate": _epoch(out["DeletionDate"]), "KeyState": out["KeyState"],
            "PendingWindowInDays": out["PendingWindowInDays"]}


@operation("CancelKeyDeletion")
def cancel_key_deletion(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return {"KeyId": key_arn(svc.cancel_key_deletion(ctx, b.key())["KeyId"])}


# ============================================================================================== crypto


@operation("Encrypt")
def encrypt(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    multi = _multi_ref(b.key())
    if multi is not None:
        if (b.str("EncryptionAlgorithm") or "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
            raise errors.ValidationError("a multi-key encrypts with SYMMETRIC_DEFAULT only")
        out = _multikeys().encrypt(ctx, multi, b.blob("Plaintext", required=True),
                                   context=b.map("EncryptionContext"))
        return {"CiphertextBlob": _b64(out["CiphertextBlob"]), "KeyId": key_arn(MULTIKEY + out["MultiKeyId"]),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    out = svc.encrypt(ctx, b.key(), b.blob("Plaintext", required=True), context=b.map("EncryptionContext"),
                      algorithm=b.str("EncryptionAlgorithm") or "SYMMETRIC_DEFAULT")
    return {"CiphertextBlob": _b64(out["CiphertextBlob"]), "KeyId": key_arn(out["KeyId"]),
            "EncryptionAlgorithm": out["EncryptionAlgorithm"]}


@operation("Decrypt")
def decrypt(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    if b.data.get("Recipient") is not None:
        raise errors.Unsupported("Recipient (Nitro Enclaves attestation) is not supported by the broker")
    blob, named = b.blob("CiphertextBlob", required=True), b.key(required=False)
    if _is_multi_blob(blob):
        if named is not None and _multi_ref(named) is None:
            raise errors.IncorrectKey("the ciphertext was encrypted under a multi-key, not the key you named")
        out = _multikeys().decrypt(ctx, blob, context=b.map("EncryptionContext"))
        return {"KeyId": key_arn(MULTIKEY + out["MultiKeyId"]), "Plaintext": _b64(out["Plaintext"]),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    if _multi_ref(named) is not None:
        raise errors.IncorrectKey("the ciphertext was not encrypted under the multi-key you named")
    out = svc.decrypt(ctx, blob, key_ref=named,
                      context=b.map("EncryptionContext"), algorithm=b.str("EncryptionAlgorithm") or "SYMMETRIC_DEFAULT")
    return {"KeyId": key_arn(out["KeyId"]), "Plaintext": _b64(out["Plaintext"]),
            "EncryptionAlgorithm": out["EncryptionAlgorithm"]}


@operation("ReEncrypt")
def re_encrypt(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    _symmetric_only(b, "SourceEncryptionAlgorithm", "DestinationEncryptionAlgorithm")
    out = svc.re_encrypt(ctx, b.blob("CiphertextBlob", required=True), b.key("DestinationKeyId"),
                         source_context=b.map("SourceEncryptionContext"),
                         destination_context=b.map("DestinationEncryptionContext"),
                         source_key_ref=b.key("SourceKeyId", required=False))
    return {"CiphertextBlob": _b64(out["CiphertextBlob"]), "SourceKeyId": key_arn(out["SourceKeyId"]),
            "KeyId": key_arn(out["KeyId"]), "SourceEncryptionAlgorithm": out["SourceEncryptionAlgorithm"],
            "DestinationEncryptionAlgorithm": out["DestinationEncryptionAlgorithm"]}


def _data_key(svc: KeyService, ctx: RequestContext, b: Body, include_plaintext: bool) -> dict:
    multi = _multi_ref(b.key())
    if multi is not None:
        multikeys = _multikeys()
        generate_multi = multikeys.generate_data_key if include_plaintext \
            else multikeys.generate_data_key_without_plaintext
        out = generate_multi(ctx, multi, key_spec=b.str("KeySpec"), number_of_bytes=b.int("NumberOfBytes"),
                             context=b.map("EncryptionContext"))
        answer = {"CiphertextBlob": _b64(out["CiphertextBlob"]), "KeyId": key_arn(MULTIKEY + out["MultiKeyId"])}
        if include_plaintext:
            answer["Plaintext"] = _b64(out["Plaintext"])
        return answer
    generate = svc.generate_data_key if include_plaintext else svc.generate_data_key_without_plaintext
    out = generate(ctx, b.key(), key_spec=b.str("KeySpec"), number_of_bytes=b.int("NumberOfBytes"),
                   context=b.map("EncryptionContext"))
    answer = {"CiphertextBlob": _b64(out["CiphertextBlob"]), "KeyId": key_arn(out["KeyId"])}
    if include_plaintext:
        answer["Plaintext"] = _b64(out["Plaintext"])
    return answer


@operation("GenerateDataKey")
def generate_data_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    if b.data.get("Recipient") is not None:
        raise errors.Unsupported("Recipient (Nitro Enclaves attestation) is not supported by the broker")
    return _data_key(svc, ctx, b, True)


@operation("GenerateDataKeyWithoutPlaintext")
def generate_data_key_without_plaintext(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return _data_key(svc, ctx, b, False)


def _data_key_pair(svc: KeyService, ctx: RequestContext, b: Body, include_plaintext: bool) -> dict:
    if b.data.get("Recipient") is not None:
        raise errors.Unsupported("Recipient (Nitro Enclaves attestation) is not supported by the broker")
    generate = svc.generate_data_key_pair if include_plaintext else svc.generate_data_key_pair_without_plaintext
    out = generate(ctx, b.key(), b.str("KeyPairSpec", required=True), context=b.map("EncryptionContext"))
    answer = {"PrivateKeyCiphertextBlob": _b64(out["PrivateKeyCiphertextBlob"]), "PublicKey": _b64(out["PublicKey"]),
              "KeyId": key_arn(out["KeyId"]), "KeyPairSpec": out["KeyPairSpec"]}
    if include_plaintext:
        answer["PrivateKeyPlaintext"] = _b64(out["PrivateKeyPlaintext"])
    return answer


@operation("GenerateDataKeyPair")
def generate_data_key_pair(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return _data_key_pair(svc, ctx, b, True)


@operation("GenerateDataKeyPairWithoutPlaintext")
def generate_data_key_pair_without_plaintext(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return _data_key_pair(svc, ctx, b, False)


@operation("GenerateRandom")
def generate_random(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    if b.data.get("Recipient") is not None:
        raise errors.Unsupported("Recipient (Nitro Enclaves attestation) is not supported by the broker")
    n = b.int("NumberOfBytes")
    if n is None:
        raise errors.ValidationError("NumberOfBytes is required")
    out = svc.generate_random(ctx, n, provider=_provider_for(svc, b.str("CustomKeyStoreId")))
    return {"Plaintext": _b64(out["Plaintext"])}


@operation("Sign")
def sign(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.sign(ctx, b.key(), b.blob("Message", required=True), b.str("SigningAlgorithm", required=True),
                   b.str("MessageType") or "RAW")
    return {"KeyId": key_arn(out["KeyId"]), "Signature": _b64(out["Signature"]),
            "SigningAlgorithm": out["SigningAlgorithm"]}


@operation("Verify")
def verify(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.verify(ctx, b.key(), b.blob("Message", required=True), b.blob("Signature", required=True),
                     b.str("SigningAlgorithm", required=True), b.str("MessageType") or "RAW")
    return {"KeyId": key_arn(out["KeyId"]), "SignatureValid": out["SignatureValid"],
            "SigningAlgorithm": out["SigningAlgorithm"]}


@operation("GetPublicKey")
def get_public_key(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.get_public_key(ctx, b.key())
    answer = {"KeyId": key_arn(out["KeyId"]), "PublicKey": _b64(out["PublicKey"]),
              "CustomerMasterKeySpec": out["KeySpec"], "KeySpec": out["KeySpec"], "KeyUsage": out["KeyUsage"]}
    for name in ("EncryptionAlgorithms", "SigningAlgorithms"):
        if name in out:
            answer[name] = out[name]
    return answer


@operation("GenerateMac")
def generate_mac(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.generate_mac(ctx, b.key(), b.blob("Message", required=True), b.str("MacAlgorithm", required=True))
    return {"Mac": _b64(out["Mac"]), "MacAlgorithm": out["MacAlgorithm"], "KeyId": key_arn(out["KeyId"])}


@operation("VerifyMac")
def verify_mac(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.verify_mac(ctx, b.key(), b.blob("Message", required=True), b.blob("Mac", required=True),
                         b.str("MacAlgorithm", required=True))
    return {"KeyId": key_arn(out["KeyId"]), "MacValid": out["MacValid"], "MacAlgorithm": out["MacAlgorithm"]}


# ============================================================================================== aliases, tags


def _alias_name(b: Body) -> str:
    name = b.str("AliasName", required=True)
    name = key_ref(name) if name.startswith("arn:") else name
    if name.startswith("alias/aws/"):
        raise NotAuthorized("alias/aws/ is reserved for AWS managed keys")
    return name


@operation("CreateAlias")
def create_alias(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.create_alias(ctx, _alias_name(b), b.key("TargetKeyId"))
    return {}


@operation("UpdateAlias")
def update_alias(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.update_alias(ctx, _alias_name(b), b.key("TargetKeyId"))
    return {}


@operation("DeleteAlias")
def delete_alias(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.delete_alias(ctx, _alias_name(b))
    return {}


@operation("ListAliases")
def list_aliases(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.list_aliases(ctx, b.key(required=False))
    aliases = [{"AliasName": a["AliasName"], "AliasArn": alias_arn(a["AliasName"]), "TargetKeyId": a["TargetKeyId"],
                "CreationDate": _epoch(a["CreationDate"])} for a in out["Aliases"]]
    return _page(aliases, b, lambda a: a["AliasName"], "Aliases", high=100, default=50)


@operation("TagResource")
def tag_resource(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.tag_resource(ctx, b.key(), b.list("Tags", required=True))
    return {}


@operation("UntagResource")
def untag_resource(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.untag_resource(ctx, b.key(), b.list("TagKeys", required=True))
    return {}


@operation("ListResourceTags")
def list_resource_tags(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    tags = svc.list_resource_tags(ctx, b.key())["Tags"]
    return _page(tags, b, lambda t: t["TagKey"], "Tags", high=50, default=50)


# ============================================================================================== rotation


@operation("EnableKeyRotation")
def enable_key_rotation(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    days = b.int("RotationPeriodInDays")
    svc.enable_key_rotation(ctx, b.key(), 365 if days is None else days)
    return {}


@operation("DisableKeyRotation")
def disable_key_rotation(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.disable_key_rotation(ctx, b.key())
    return {}


@operation("GetKeyRotationStatus")
def get_key_rotation_status(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.get_key_rotation_status(ctx, b.key())
    answer: dict[str, Any] = {"KeyRotationEnabled": out["KeyRotationEnabled"], "KeyId": out["KeyId"]}
    if out.get("RotationPeriodInDays"):
        answer["RotationPeriodInDays"] = out["RotationPeriodInDays"]
        answer["NextRotationDate"] = _epoch(out["NextRotationDate"])
    return answer


@operation("RotateKeyOnDemand")
def rotate_key_on_demand(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    return {"KeyId": svc.rotate_key_on_demand(ctx, b.key())["KeyId"]}


@operation("ListKeyRotations")
def list_key_rotations(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    if b.str("IncludeKeyMaterial") not in (None, "ROTATIONS_ONLY"):
        raise errors.Unsupported("IncludeKeyMaterial ALL_KEY_MATERIAL is not supported")
    rotations = [{"KeyId": r["KeyId"], "RotationDate": _epoch(r["RotationDate"]),
                  **({"RotationType": r["RotationType"]} if r.get("RotationType") else {})}
                 for r in svc.list_key_rotations(ctx, b.key())["Rotations"]]
    for r, version in zip(rotations, range(2, len(rotations) + 2), strict=True):
        r["_marker"] = str(version)
    page = _page(rotations, b, lambda r: r["_marker"], "Rotations")
    for r in page["Rotations"]:
        r.pop("_marker", None)
    return page


# ============================================================================================== import


@operation("GetParametersForImport")
def get_parameters_for_import(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = svc.get_parameters_for_import(ctx, b.key(), b.str("WrappingAlgorithm", required=True),
                                        b.str("WrappingKeySpec", required=True))
    return {"KeyId": key_arn(out["KeyId"]), "ImportToken": _b64(out["ImportToken"]),
            "PublicKey": _b64(out["PublicKey"]), "ParametersValidTo": _epoch(out["ParametersValidTo"])}


@operation("ImportKeyMaterial")
def import_key_material(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    model = b.str("ExpirationModel")
    if model == "KEY_MATERIAL_EXPIRES" or b.data.get("ValidTo") is not None:
        raise errors.Unsupported("expiring key material is not supported; use "
                                 "ExpirationModel=KEY_MATERIAL_DOES_NOT_EXPIRE")
    if model is None:
        raise errors.ValidationError("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES (the "
                                     "default); the broker supports ExpirationModel=KEY_MATERIAL_DOES_NOT_EXPIRE")
    if model != "KEY_MATERIAL_DOES_NOT_EXPIRE":
        raise errors.ValidationError(f"ExpirationModel {model!r} is not valid")
    if b.str("ImportType") not in (None, "EXISTING_KEY_MATERIAL"):
        raise errors.Unsupported("ImportType NEW_KEY_MATERIAL (multiple imported materials) is not supported")
    out = svc.import_key_material(ctx, b.key(), b.blob("ImportToken", required=True),
                                  b.blob("EncryptedKeyMaterial", required=True))
    return {"KeyId": key_arn(out["KeyId"])}


@operation("DeleteImportedKeyMaterial")
def delete_imported_key_material(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    svc.delete_imported_key_material(ctx, b.key())
    return {}


# ============================================================================================== custom key stores


@operation("DescribeCustomKeyStores")
def describe_custom_key_stores(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    """The broker's provider instances, as custom key stores (id = name = provider instance name)."""
    wanted_id, wanted_name = b.str("CustomKeyStoreId"), b.str("CustomKeyStoreName")
    if wanted_id is not None and wanted_name is not None and wanted_id != wanted_name:
        raise CustomKeyStoreNotFound("no custom key store has that id and that name")
    try:
        found = svc.describe_custom_key_stores(ctx, wanted_id if wanted_id is not None else wanted_name)
    except errors.NotFound as exc:
        raise CustomKeyStoreNotFound(exc.message) from None
    stores = []
    for name, healthy in found:
        entry_out = {"CustomKeyStoreId": name, "CustomKeyStoreName": name, "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
                     "ConnectionState": "CONNECTED" if healthy else "FAILED"}
        if not healthy:
            entry_out["ConnectionErrorCode"] = "NETWORK_ERRORS"
        stores.append(entry_out)
    return _page(stores, b, lambda s: s["CustomKeyStoreId"], "CustomKeyStores")


# ============================================================================================== key policies, grants


def _admin() -> Any:
    """The PolicyAdmin service of this process (broker.services.Services.policies)."""
    return current_app.extensions["kms"].policies


@operation("PutKeyPolicy")
def put_key_policy(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    """The policy text goes to the service as written: it is stored byte for byte, and GetKeyPolicy returns it."""
    _admin().put_key_policy(ctx, b.key(), b.policy(required=True), b.str("PolicyName") or "default",
                            bypass_lockout=b.bool("BypassPolicyLockoutSafetyCheck"))
    return {}


@operation("GetKeyPolicy")
def get_key_policy(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    out = _admin().get_key_policy(ctx, b.key(), b.str("PolicyName") or "default")
    return {"Policy": out["PolicyText"], "PolicyName": out["PolicyName"]}


@operation("ListKeyPolicies")
def list_key_policies(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    names = _admin().list_key_policies(ctx, b.key())["PolicyNames"]
    page = _page(names, b, str, "PolicyNames")
    return page


@operation("CreateGrant")
def create_grant(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    constraints = b.data.get("Constraints")
    if constraints is not None and not isinstance(constraints, dict):
        raise Serialization("Constraints must be an object")
    b.list("GrantTokens")
    out = _admin().create_grant(ctx, b.key(), grant_principal(b.str("GranteePrincipal", required=True),
                                                              "GranteePrincipal"),
                                b.list("Operations", required=True),
                                retiring=grant_principal(b.str("RetiringPrincipal") or "", "RetiringPrincipal"),
                                constraints=constraints, name=b.str("Name") or "")
    return {"GrantToken": out["GrantToken"], "GrantId": out["GrantId"]}


_USER_ARN = re.compile(rf"arn:aws[a-z-]*:iam::{ACCOUNT}:user/(.+)")


def grant_principal(value: Any, member: str) -> Any:
    """A grant's principal as the broker names it: a principal name as is, or the IAM user ARN AWS clients send
    (`arn:aws:iam::111122223333:user/<name>`, the same mapping as key policies). Any other ARN — a role (many
    principals), another account, a service or a session — cannot be one grantee here: refused, never stored as
    a name that matches nobody."""
    if not isinstance(value, str) or not value.startswith("arn:"):
        return value
    user = _USER_ARN.fullmatch(value)
    if user is None:
        raise errors.ValidationError(
            f"{member}: a grant names one broker principal, by name or as arn:aws:iam::{ACCOUNT}:user/<name>; "
            "role, other-account, service and session ARNs are not grantees here")
    return user.group(1)


def _grant_entry(grant: dict[str, Any]) -> dict[str, Any]:
    out = {k: grant[k] for k in ("KeyId", "GrantId", "Name", "GranteePrincipal", "RetiringPrincipal", "Operations",
                                 "Constraints") if grant.get(k)}
    if "KeyId" in out:
        out["KeyId"] = key_arn(out["KeyId"])
    if grant.get("CreationDate"):
        out["CreationDate"] = _epoch(grant["CreationDate"])
    out["IssuingAccount"] = f"arn:aws:iam::{ACCOUNT}:root"
    return out


@operation("ListGrants")
def list_grants(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    grants = [_grant_entry(g_) for g_ in _admin().list_grants(ctx, b.key())["Grants"]]
    grantee = b.str("GranteePrincipal")
    for field_, wanted in (("GrantId", b.str("GrantId")),
                           ("GranteePrincipal", None if grantee is None else grant_principal(grantee,
                                                                                             "GranteePrincipal"))):
        if wanted is not None:
            grants = [x for x in grants if x.get(field_) == wanted]
    return _page(grants, b, lambda x: x["GrantId"], "Grants", high=100, default=50)


@operation("ListRetirableGrants")
def list_retirable_grants(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    grants = [_grant_entry(g_) for g_ in
              _admin().list_retirable_grants(ctx, grant_principal(b.str("RetiringPrincipal", required=True),
                                                                  "RetiringPrincipal"))["Grants"]]
    return _page(grants, b, lambda x: x["GrantId"], "Grants", high=100, default=50)


@operation("RetireGrant")
def retire_grant(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    _admin().retire_grant(ctx, grant_token=b.str("GrantToken"), key_ref=b.key(required=False),
                          grant_id=b.str("GrantId"))
    return {}


@operation("RevokeGrant")
def revoke_grant(svc: KeyService, ctx: RequestContext, b: Body) -> dict:
    _admin().revoke_grant(ctx, b.key(), b.str("GrantId", required=True))
    return {}
