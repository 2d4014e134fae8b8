"""The built-in kinds of quorum-approved operation that act on keys and identity (node join lives in nodes.py).

Params are canonicalised when requested (an alias becomes the key id it names then, a public key its DER), so an
approval covers exactly what will be executed: re-pointing an alias or swapping the recipient afterwards changes
nothing, or invalidates the approvals (the request's HSM MAC).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from broker import errors
from broker.approvals import Kind
from broker.auth import TokenAuth
from broker.gate import Call, Target
from broker.service import KeyService

ROOT_TOKEN_TTL = (60, 86400, 3600)  # min, max, default seconds


def _key_id(keys: KeyService, params: Mapping[str, Any]) -> str:
    return keys.resolve_key(params.get("KeyId", params.get("key_id"))).key_id


def recipient_der(value: Any) -> bytes:
    """An RSA public key (>= 2048 bits) as PEM or base64 DER → DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(value, str) or not value or len(value) > 8192:
        raise errors.ValidationError("RecipientPublicKey must be an RSA public key (PEM or base64 DER)")
    try:
        if "BEGIN" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise errors.ValidationError("RecipientPublicKey is not a valid public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise errors.ValidationError("RecipientPublicKey must be an RSA key of at least 2048 bits")
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _escrow_check(keys: KeyService, params: Mapping[str, Any]) -> dict[str, Any]:
    der = recipient_der(params.get("RecipientPublicKey", params.get("recipient_public_key")))
    return {"key_id": _key_id(keys, params), "recipient_public_key": base64.b64encode(der).decode()}


def _escrow(keys: KeyService, call: Call, params: dict[str, Any], target: Target) -> dict[str, Any]:
    assert target.key is not None
    wrapped = keys.escrow_wrap(call, target.key, base64.b64decode(params["recipient_public_key"]))
    return {"KeyId": target.key.key_id, "Versions": [
        {**v, "WrappedKeyMaterial": base64.b64encode(v["WrappedKeyMaterial"]).decode()} for v in wrapped]}


def _destroy_check(keys: KeyService, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"key_id": _key_id(keys, params)}


def _destroy(keys: KeyService, call: Call, params: dict[str, Any], target: Target) -> dict[str, Any]:
    assert target.key is not None
    keys.destroy_now(call, target.key)
    return {"KeyId": target.key.key_id, "KeyState": "Destroyed"}


def _root_token_check(keys: KeyService, params: Mapping[str, Any]) -> dict[str, Any]:
    low, high, default = ROOT_TOKEN_TTL
    ttl = params.get("TtlSeconds", params.get("ttl_seconds", default))
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not low <= ttl <= high:
        raise errors.ValidationError(f"TtlSeconds must be {low} to {high}")
    return {"ttl_seconds": ttl}


def _root_token(keys: KeyService, call: Call, params: dict[str, Any], target: Target) -> dict[str, Any]:
    token, accessor = TokenAuth(keys.store).create("root", ["root"], ttl_seconds=params["ttl_seconds"])
    call.entry.extra["accessor"] = accessor
    return {"Token": token, "Accessor": accessor, "TtlSeconds": params["ttl_seconds"]}


def _key_target(keys: KeyService, params: dict[str, Any]) -> Target:
    return Target(key=keys.resolve_key(params["key_id"]))


def builtin_kinds() -> list[Kind]:
    return [
        Kind("escrow-release", "broker:EscrowRelease", _escrow_check, _key_target, _escrow),
        Kind("key-destroy", "broker:DestroyKeyNow", _destroy_check, _key_target, _destroy),
        Kind("root-token", "broker:GenerateRootToken", _root_token_check,
             lambda keys, params: Target(resource="auth/root-token"), _root_token),
    ]
