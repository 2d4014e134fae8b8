"""Small helpers for the conformance suite: HTTP calls through the broker's native API, refusals, keys, gaps."""

from __future__ import annotations

import base64
from typing import Any

import requests

from broker.model import KeySpec

from .conftest import World


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def ok(r: requests.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, f"{r.request.method} {r.request.path_url}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def error(r: requests.Response, status: int, code: str, *words: str) -> str:
    """Assert a broker error in the shared model; `words` must appear in the message. Returns the message."""
    assert r.status_code == status, f"{r.request.method} {r.request.path_url}: expected {status} {code}, got " \
                                    f"{r.status_code} {r.text}"
    body = r.json()["error"]
    assert body["code"] == code, body
    assert body["request_id"], body
    for word in words:
        assert word in body["message"], body
    return body["message"]


def refused(r: requests.Response, *words: str) -> str:
    """A capability the provider does not declare: a clean 400 UnsupportedOperationException naming it."""
    return error(r, 400, "UnsupportedOperationException", *words)


def create(world: World, provider: str, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None,
           **extra: Any) -> requests.Response:
    body: dict[str, Any] = {"Provider": provider, "KeySpec": spec, "Description": f"conformance {provider}", **extra}
    if usage:
        body["KeyUsage"] = usage
    return world.api.post(world.url("/keys"), json=body)


def new_key(world: World, provider: str, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None) -> str:
    meta = ok(create(world, provider, spec, usage), 201)["KeyMetadata"]
    assert meta["Provider"] == provider and meta["KeySpec"] == spec, meta
    return meta["KeyId"]


def shared_key(world: World, provider: str, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None) -> str:
    """One key per (provider, spec, usage) for the whole session: RSA keys are made once per provider."""
    slot = (provider, spec, usage)
    if slot not in world.keys:
        world.keys[slot] = new_key(world, provider, spec, usage)
    return world.keys[slot]


def can_create(world: World, provider: str, spec: str) -> bool:
    return world.caps[provider].missing_for(KeySpec(spec)) is None


def encrypt(world: World, key_id: str, plaintext: bytes, context: dict | None = None,
            **extra: Any) -> requests.Response:
    return world.api.post(world.url(f"/keys/{key_id}/encrypt"),
                          json={"Plaintext": b64(plaintext), "EncryptionContext": context, **extra})


def decrypt(world: World, blob: str, context: dict | None = None, **extra: Any) -> requests.Response:
    return world.api.post(world.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": context, **extra})


def describe(world: World, key_id: str) -> dict[str, Any]:
    return ok(world.api.get(world.url(f"/keys/{key_id}")))["KeyMetadata"]


# Behaviours a provider declares but an emulator does not emulate: (provider, operation) -> (why, the broker's answer
# there as (HTTP status, error code)). Each is asserted explicitly where it applies — the emulator's documented wrong
# answer reaches the caller as that clean error in the broker's model — so the test fails the day the emulator
# catches up (or the broker's mapping changes). README.md lists them.
GAPS: dict[tuple[str, str], tuple[str, int, str]] = {
    ("aws-moto", "sign"): ("moto hashes a MessageType=DIGEST message again, so its signatures never verify "
                           "(the broker's own verification refuses them)", 400, "KMSInvalidSignatureException"),
    ("aws-moto", "rsa-decrypt"): ("moto cannot RSA-OAEP-decrypt ciphertext made with the real public key",
                                  400, "InvalidCiphertextException"),
    ("aws", "rsa-decrypt-RSAES_OAEP_SHA_1"): ("LocalStack decrypts RSAES_OAEP_SHA_1 with OAEP-SHA-256 and answers "
                                              "HTTP 500", 503, "DependencyTimeoutException"),
    ("aws", "rsa-tamper"): ("LocalStack answers HTTP 500 InternalError (not InvalidCiphertextException) for an RSA "
                            "ciphertext that does not decrypt", 503, "DependencyTimeoutException"),
    ("aws-moto", "import"): ("moto answers GetParametersForImport with HTTP 500", 503, "DependencyTimeoutException"),
    ("aws", "reimport"): ("LocalStack does not emulate re-import after DeleteImportedKeyMaterial: it keeps the new "
                          "material pending (its CurrentKeyMaterialId survives the delete) and Decrypt answers HTTP "
                          "500; nor does it refuse other material", 503, "DependencyTimeoutException"),
    ("aws-moto", "tamper"): ("moto answers AccessDeniedException (not IncorrectKeyException) when a blob's embedded "
                             "key id does not match the KeyId", 403, "AccessDeniedException"),
}


def gap(provider: str, operation: str) -> tuple[str, int, str] | None:
    return GAPS.get((provider, operation))


def gap_answer(r: requests.Response, provider: str, operation: str) -> None:
    """Assert the broker's documented answer for an emulator gap."""
    why, status, code = GAPS[(provider, operation)]
    assert r.status_code == status and r.json()["error"]["code"] == code, f"{provider} {operation} ({why}): {r.text}"
    assert r.json()["error"]["request_id"]
