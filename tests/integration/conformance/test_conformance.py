"""The provider conformance suite: ONE set of tests, parametrised by provider instance, through the broker's native
REST API (a real gunicorn broker over the real local stack). Later providers join by adding an instance to
conftest.INSTANCES.

What an instance supports is read from its declared `Capabilities` (conftest.declared_capabilities); whatever it
does not declare must be a clean 4xx refusal naming the missing capability. What it declares but its emulator
does not emulate is a documented gap (helpers.GAPS), asserted explicitly. Nothing is skipped.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from broker import ciphertext as ct
from broker.model import EncryptionAlgorithm, KeySpec, SigningAlgorithm

from .conftest import INSTANCES, World
from .helpers import (
    b64,
    can_create,
    create,
    decrypt,
    describe,
    encrypt,
    error,
    gap,
    gap_answer,
    new_key,
    ok,
    refused,
    shared_key,
    unb64,
)

pytestmark = pytest.mark.integration

CONTEXT = {"tenant": "acme", "purpose": "conformance"}
# Known AES-256 material for the import test (test vector only).
KNOWN_MATERIAL = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")

each = pytest.mark.parametrize("name", INSTANCES)


# ------------------------------------------------------------------------------------------------ describe


@each
def test_describe_shows_the_provider_and_it_is_ready(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    meta = describe(world, key_id)
    assert (meta["Provider"], meta["KeySpec"], meta["KeyUsage"]) == (name, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert (meta["KeyState"], meta["Enabled"], meta["Origin"], meta["PrimaryVersion"]) == ("Enabled", True,
                                                                                         "AWS_KMS", 1)
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    listed = {k["KeyId"]: k["Provider"] for k in ok(world.api.get(world.url("/keys"), params={"limit": 1000}))["Keys"]}
    assert listed[key_id] == name
    ready = requests.get(world.url("/ready"), timeout=30).json()
    assert ready["providers"][name] == "ok", ready


@each
def test_key_specs_it_does_not_declare_are_refused(world: World, name: str) -> None:
    missing = [s for s in KeySpec if not can_create(world, name, s.value)]
    for spec in missing:
        refused(create(world, name, spec.value), f"key spec {spec.value}", name)
    # Symmetric keys are the floor every provider offers (natively or composed from data-key wrapping).
    assert can_create(world, name, "SYMMETRIC_DEFAULT")


# ------------------------------------------------------------------------------------------------ symmetric


@each
def test_encrypt_decrypt_with_encryption_context(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    enc = ok(encrypt(world, key_id, b"conformance plaintext", CONTEXT))
    assert (enc["KeyId"], enc["KeyVersion"], enc["EncryptionAlgorithm"]) == (key_id, 1, "SYMMETRIC_DEFAULT")
    raw = unb64(enc["CiphertextBlob"])
    assert b"conformance plaintext" not in raw
    # self-describing: the header names key and version, and the scheme says native or composed (rule 3)
    header = ct.unpack(raw).header
    assert (header.key_id, header.key_version) == (key_id, 1)
    native = world.caps[name].native_symmetric
    assert header.scheme is (ct.Scheme.PROVIDER_AEAD if native else ct.Scheme.ENVELOPE), (name, header.scheme)
    # the context may come back in any key order: the broker canonicalises it
    dec = ok(decrypt(world, enc["CiphertextBlob"], dict(reversed(list(CONTEXT.items())))))
    assert unb64(dec["Plaintext"]) == b"conformance plaintext"
    assert (dec["KeyId"], dec["KeyVersion"]) == (key_id, 1)
    # naming the key is allowed, and must be the right one
    assert ok(decrypt(world, enc["CiphertextBlob"], CONTEXT, KeyId=key_id))["KeyId"] == key_id
    other = shared_key(world, "hsm") if name != "hsm" else shared_key(world, "aws")
    error(decrypt(world, enc["CiphertextBlob"], CONTEXT, KeyId=other), 400, "IncorrectKeyException")


@each
def test_largest_plaintext_with_a_large_context(world: World, name: str) -> None:
    """4096 bytes (the API's limit) under ~6 KiB of encryption context (the aad travels hashed where a cloud
    limits its context size)."""
    key_id = shared_key(world, name)
    plaintext = os.urandom(4096)
    context = {f"k{i:02d}": "v" * 200 for i in range(30)}
    blob = ok(encrypt(world, key_id, plaintext, context))["CiphertextBlob"]
    assert unb64(ok(decrypt(world, blob, context))["Plaintext"]) == plaintext
    error(decrypt(world, blob, {**context, "k29": "v" * 199 + "w"}), 400, "InvalidCiphertextException")
    small = ok(encrypt(world, key_id, b"\x00", {"": ""}))["CiphertextBlob"]
    assert unb64(ok(decrypt(world, small, {"": ""}))["Plaintext"]) == b"\x00"
    error(encrypt(world, key_id, os.urandom(4097), None), 400, "ValidationException")


@each
def test_wrong_or_missing_context_is_an_invalid_ciphertext(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    blob = ok(encrypt(world, key_id, b"bound to its context", CONTEXT))["CiphertextBlob"]
    error(decrypt(world, blob, {**CONTEXT, "tenant": "other"}), 400, "InvalidCiphertextException")
    error(decrypt(world, blob, {**CONTEXT, "extra": "x"}), 400, "InvalidCiphertextException")
    error(decrypt(world, blob, None), 400, "InvalidCiphertextException")


@each
def test_tampered_ciphertext_is_an_invalid_ciphertext(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    raw = unb64(ok(encrypt(world, key_id, b"do not touch", CONTEXT))["CiphertextBlob"])
    for position in (len(raw) - 1, len(raw) - 20, len(raw) // 2):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        out = decrypt(world, b64(bytes(tampered)), CONTEXT)
        if gap(name, "tamper") and out.status_code != 400:
            gap_answer(out, name, "tamper")  # only where the flipped bit lands in the emulator's key id
            continue
        error(out, 400, "InvalidCiphertextException")
    error(decrypt(world, b64(raw[:-8]), CONTEXT), 400, "InvalidCiphertextException")
    # the header is authenticated too: naming another (existing) version of the key does not decrypt
    header = ct.unpack(raw).header
    rotated = new_key(world, name)
    ok(world.api.post(world.url(f"/keys/{rotated}/rotate")))
    blob = unb64(ok(encrypt(world, rotated, b"version one", CONTEXT))["CiphertextBlob"])
    parsed = ct.unpack(blob)
    assert parsed.header.key_version == 2
    relabelled = ct.Header(parsed.header.scheme, rotated, 1).pack() + parsed.body
    error(decrypt(world, b64(relabelled), CONTEXT), 400, "InvalidCiphertextException")
    assert header.key_id == key_id
    # and the untouched blob still decrypts (nothing was poisoned by the failures)
    assert unb64(ok(decrypt(world, b64(raw), CONTEXT))["Plaintext"]) == b"do not touch"


@each
def test_generate_data_key_round_trip(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    out = ok(world.api.post(world.url(f"/keys/{key_id}/generate-data-key"),
                            json={"KeySpec": "AES_256", "EncryptionContext": CONTEXT}))
    plaintext = unb64(out["Plaintext"])
    assert len(plaintext) == 32 and out["KeyId"] == key_id
    assert unb64(ok(decrypt(world, out["CiphertextBlob"], CONTEXT))["Plaintext"]) == plaintext
    error(decrypt(world, out["CiphertextBlob"], None), 400, "InvalidCiphertextException")
    bare = ok(world.api.post(world.url(f"/keys/{key_id}/generate-data-key-without-plaintext"),
                             json={"NumberOfBytes": 24, "EncryptionContext": CONTEXT}))
    assert "Plaintext" not in bare
    assert len(unb64(ok(decrypt(world, bare["CiphertextBlob"], CONTEXT))["Plaintext"])) == 24


@each
def test_re_encrypt_to_and_from_the_root_of_trust(world: World, name: str) -> None:
    key_id, hsm_key = shared_key(world, name), shared_key(world, "hsm")
    blob = ok(encrypt(world, key_id, b"moves between providers", CONTEXT))["CiphertextBlob"]
    there = ok(world.api.post(world.url("/re-encrypt"), json={
        "CiphertextBlob": blob, "SourceEncryptionContext": CONTEXT, "DestinationKeyId": hsm_key,
        "DestinationEncryptionContext": {"moved": "yes"}}))
    assert (there["SourceKeyId"], there["KeyId"]) == (key_id, hsm_key)
    back = ok(world.api.post(world.url("/re-encrypt"), json={
        "CiphertextBlob": there["CiphertextBlob"], "SourceEncryptionContext": {"moved": "yes"},
        "DestinationKeyId": key_id, "DestinationEncryptionContext": CONTEXT}))
    assert back["KeyId"] == key_id
    assert unb64(ok(decrypt(world, back["CiphertextBlob"], CONTEXT))["Plaintext"]) == b"moves between providers"
    error(world.api.post(world.url("/re-encrypt"), json={
        "CiphertextBlob": blob, "SourceEncryptionContext": {"tenant": "other"}, "DestinationKeyId": hsm_key}),
        400, "InvalidCiphertextException")


# ------------------------------------------------------------------------------------------------ lifecycle


@each
def test_rotation_makes_a_new_version_and_old_ciphertexts_still_decrypt(world: World, name: str) -> None:
    key_id = new_key(world, name)
    old = ok(encrypt(world, key_id, b"before rotation", CONTEXT))
    assert old["KeyVersion"] == 1
    assert ok(world.api.post(world.url(f"/keys/{key_id}/rotate")))["KeyVersion"] == 2
    assert describe(world, key_id)["PrimaryVersion"] == 2
    versions = ok(world.api.get(world.url(f"/keys/{key_id}/versions")))
    assert [v["KeyVersion"] for v in versions["Versions"]] == [1, 2] and versions["PrimaryVersion"] == 2
    new = ok(encrypt(world, key_id, b"after rotation", CONTEXT))
    assert new["KeyVersion"] == 2
    for blob, plaintext, version in ((old, b"before rotation", 1), (new, b"after rotation", 2)):
        dec = ok(decrypt(world, blob["CiphertextBlob"], CONTEXT))
        assert (unb64(dec["Plaintext"]), dec["KeyVersion"]) == (plaintext, version)
    error(decrypt(world, old["CiphertextBlob"], {"tenant": "other"}), 400, "InvalidCiphertextException")


def _two_version_key(world: World, name: str) -> tuple[str, dict[str, bytes]]:
    """A key rotated once, with a ciphertext under each version (blob -> plaintext)."""
    key_id = new_key(world, name)
    blobs = {ok(encrypt(world, key_id, b"under version 1", CONTEXT))["CiphertextBlob"]: b"under version 1"}
    assert ok(world.api.post(world.url(f"/keys/{key_id}/rotate")))["KeyVersion"] == 2
    blobs[ok(encrypt(world, key_id, b"under version 2", CONTEXT))["CiphertextBlob"]] = b"under version 2"
    return key_id, blobs


def _all_decrypt(world: World, blobs: dict[str, bytes]) -> None:
    for blob, plaintext in blobs.items():
        assert unb64(ok(decrypt(world, blob, CONTEXT))["Plaintext"]) == plaintext


@each
def test_disable_refuses_use_and_enable_restores_it(world: World, name: str) -> None:
    key_id, blobs = _two_version_key(world, name)
    ok(world.api.post(world.url(f"/keys/{key_id}/disable")))
    assert describe(world, key_id)["KeyState"] == "Disabled"
    error(encrypt(world, key_id, b"x", CONTEXT), 409, "DisabledException")
    for blob in blobs:
        error(decrypt(world, blob, CONTEXT), 409, "DisabledException")
    error(world.api.post(world.url(f"/keys/{key_id}/rotate")), 409, "DisabledException")
    ok(world.api.post(world.url(f"/keys/{key_id}/enable")))
    assert describe(world, key_id)["KeyState"] == "Enabled"
    _all_decrypt(world, blobs)  # every version is back on the backend, not only the primary
    assert ok(encrypt(world, key_id, b"x", CONTEXT))["KeyVersion"] == 2


@each
def test_scheduled_deletion_refuses_use_and_cancel_leaves_it_disabled(world: World, name: str) -> None:
    key_id, blobs = _two_version_key(world, name)
    out = ok(world.api.post(world.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7}))
    assert (out["KeyState"], out["PendingWindowInDays"]) == ("PendingDeletion", 7)
    meta = describe(world, key_id)
    assert meta["KeyState"] == "PendingDeletion" and meta["DeletionDate"]
    error(encrypt(world, key_id, b"x", CONTEXT), 409, "KMSInvalidStateException")
    for blob in blobs:
        error(decrypt(world, blob, CONTEXT), 409, "KMSInvalidStateException")
    error(world.api.post(world.url(f"/keys/{key_id}/enable")), 409, "KMSInvalidStateException")
    ok(world.api.post(world.url(f"/keys/{key_id}/cancel-deletion")))
    meta = describe(world, key_id)
    assert meta["KeyState"] == "Disabled" and "DeletionDate" not in meta  # AWS semantics
    error(decrypt(world, next(iter(blobs)), CONTEXT), 409, "DisabledException")
    ok(world.api.post(world.url(f"/keys/{key_id}/enable")))
    _all_decrypt(world, blobs)
    assert ok(encrypt(world, key_id, b"x", CONTEXT))["KeyVersion"] == 2


# ------------------------------------------------------------------------------------------------ asymmetric

SIGN_CASES = [("RSA_2048", "RSASSA_PSS_SHA_256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256"),
              ("ECC_NIST_P256", "ECDSA_SHA_256"), ("ECC_NIST_P384", "ECDSA_SHA_384")]


def _signing_declared(world: World, name: str, spec: str, algorithm: str) -> bool:
    caps = world.caps[name]
    offered = getattr(caps, "signing_algorithms", None)  # None: every algorithm the spec allows
    return caps.sign and can_create(world, name, spec) and (offered is None or SigningAlgorithm(algorithm) in offered)


def _local_verify(public_der: bytes, signature: bytes, message: bytes, algorithm: str) -> None:
    public = serialization.load_der_public_key(public_der)
    alg = SigningAlgorithm(algorithm)
    h = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[alg.hash_name]
    digest = hashlib.new(alg.hash_name, message).digest()
    if alg.is_ecdsa:
        public.verify(signature, digest, ec.ECDSA(utils.Prehashed(h)))
    elif alg.is_pss:
        public.verify(signature, digest, padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH), utils.Prehashed(h))
    else:
        public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(h))


@each
@pytest.mark.parametrize(("spec", "algorithm"), SIGN_CASES)
def test_sign_verify(world: World, name: str, spec: str, algorithm: str) -> None:
    if not can_create(world, name, spec):
        refused(create(world, name, spec, "SIGN_VERIFY"), f"key spec {spec}")
        return
    key_id = shared_key(world, name, spec, "SIGN_VERIFY")
    declared = _signing_declared(world, name, spec, algorithm)
    assert (algorithm in describe(world, key_id)["SigningAlgorithms"]) == declared
    body = {"Message": b64(b"a document to sign"), "SigningAlgorithm": algorithm}
    sig = world.api.post(world.url(f"/keys/{key_id}/sign"), json=body)
    if not declared:
        refused(sig, algorithm)
        return
    signature = ok(sig)["Signature"]
    assert ok(sig)["SigningAlgorithm"] == algorithm
    verify = world.api.post(world.url(f"/keys/{key_id}/verify"), json={**body, "Signature": signature})
    if gap(name, "sign"):
        gap_answer(verify, name, "sign")  # the broker's own local verification catches the bad signature
        return
    assert ok(verify)["SignatureValid"] is True
    public = ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))
    _local_verify(unb64(public["PublicKey"]), unb64(signature), b"a document to sign", algorithm)
    error(world.api.post(world.url(f"/keys/{key_id}/verify"),
                         json={**body, "Message": b64(b"another document"), "Signature": signature}),
          400, "KMSInvalidSignatureException")
    # a digest signed as such gives a signature over the same message
    digest = hashlib.new(SigningAlgorithm(algorithm).hash_name, b"a document to sign").digest()
    by_digest = ok(world.api.post(world.url(f"/keys/{key_id}/sign"),
                                  json={**body, "Message": b64(digest), "MessageType": "DIGEST"}))["Signature"]
    _local_verify(unb64(public["PublicKey"]), unb64(by_digest), b"a document to sign", algorithm)


@each
@pytest.mark.parametrize(("spec", "usage"), [("RSA_2048", "SIGN_VERIFY"), ("ECC_NIST_P256", "SIGN_VERIFY")])
def test_get_public_key(world: World, name: str, spec: str, usage: str) -> None:
    if not can_create(world, name, spec):
        refused(create(world, name, spec, usage), f"key spec {spec}")
        return
    key_id = shared_key(world, name, spec, usage)
    out = ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))
    assert (out["KeyId"], out["KeySpec"], out["KeyUsage"]) == (key_id, spec, usage)
    public = serialization.load_der_public_key(unb64(out["PublicKey"]))
    if spec.startswith("RSA"):
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    # the same public key every time (the broker reads it from the provider's primary version)
    assert ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))["PublicKey"] == out["PublicKey"]
    refused(world.api.get(world.url(f"/keys/{shared_key(world, name)}/public-key")), "asymmetric")


@each
def test_signing_key_lifecycle(world: World, name: str) -> None:
    """Disable/enable and deletion/cancel of an asymmetric key: the backend's key must come back usable."""
    key_id = new_key(world, name, "ECC_NIST_P256", "SIGN_VERIFY")
    body = {"Message": b64(b"lifecycle"), "SigningAlgorithm": "ECDSA_SHA_256"}
    sign = lambda: world.api.post(world.url(f"/keys/{key_id}/sign"), json=body)  # noqa: E731
    public = ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))["PublicKey"]
    ok(world.api.post(world.url(f"/keys/{key_id}/disable")))
    error(sign(), 409, "DisabledException")
    error(world.api.get(world.url(f"/keys/{key_id}/public-key")), 409, "DisabledException")
    ok(world.api.post(world.url(f"/keys/{key_id}/enable")))
    ok(sign())
    ok(world.api.post(world.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7}))
    error(sign(), 409, "KMSInvalidStateException")
    ok(world.api.post(world.url(f"/keys/{key_id}/cancel-deletion")))
    error(sign(), 409, "DisabledException")
    ok(world.api.post(world.url(f"/keys/{key_id}/enable")))
    signature = ok(sign())["Signature"]
    assert ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))["PublicKey"] == public
    if not gap(name, "sign"):
        _local_verify(unb64(public), unb64(signature), b"lifecycle", "ECDSA_SHA_256")
    refused(world.api.post(world.url(f"/keys/{key_id}/rotate")), "symmetric")


RSA_ENCRYPTION = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]


@each
@pytest.mark.parametrize("algorithm", RSA_ENCRYPTION)
def test_asymmetric_rsa_encrypt_decrypt(world: World, name: str, algorithm: str) -> None:
    caps = world.caps[name]
    if not can_create(world, name, "RSA_2048"):
        refused(create(world, name, "RSA_2048", "ENCRYPT_DECRYPT"), "key spec RSA_2048")
        return
    assert caps.asymmetric_decrypt, f"{name} creates RSA encryption keys without declaring asymmetric_decrypt"
    key_id = shared_key(world, name, "RSA_2048", "ENCRYPT_DECRYPT")
    offered = getattr(caps, "encryption_algorithms", None)
    declared = offered is None or EncryptionAlgorithm(algorithm) in offered
    assert (algorithm in describe(world, key_id)["EncryptionAlgorithms"]) == declared
    enc = encrypt(world, key_id, b"rsa plaintext", None, EncryptionAlgorithm=algorithm)
    if not declared:
        refused(enc, algorithm)
        return
    blob = ok(enc)["CiphertextBlob"]
    assert ok(enc)["EncryptionAlgorithm"] == algorithm
    out = decrypt(world, blob, None, KeyId=key_id, EncryptionAlgorithm=algorithm)
    for operation in ("rsa-decrypt", f"rsa-decrypt-{algorithm}"):
        if gap(name, operation):
            gap_answer(out, name, operation)  # a clean error, never a wrong plaintext
            return
    assert unb64(ok(out)["Plaintext"]) == b"rsa plaintext"
    # ciphertext made outside the broker with the public key decrypts too
    public = serialization.load_der_public_key(unb64(ok(world.api.get(world.url(f"/keys/{key_id}/public-key")))
                                                     ["PublicKey"]))
    h = hashes.SHA1() if algorithm == "RSAES_OAEP_SHA_1" else hashes.SHA256()
    outside = public.encrypt(b"made outside", padding.OAEP(padding.MGF1(h), h, None))
    assert unb64(ok(decrypt(world, b64(outside), None, KeyId=key_id, EncryptionAlgorithm=algorithm))
                 ["Plaintext"]) == b"made outside"
    bad = decrypt(world, b64(outside[:-1] + bytes([outside[-1] ^ 1])), None, KeyId=key_id,
                  EncryptionAlgorithm=algorithm)
    if gap(name, "rsa-tamper"):
        gap_answer(bad, name, "rsa-tamper")
        return
    error(bad, 400, "InvalidCiphertextException")


# ------------------------------------------------------------------------------------------------ MAC, random


@each
def test_hmac_generate_verify(world: World, name: str) -> None:
    caps = world.caps[name]
    if not (caps.mac and can_create(world, name, "HMAC_256")):
        refused(create(world, name, "HMAC_256", "GENERATE_VERIFY_MAC"), "key spec HMAC_256")
        return
    key_id = shared_key(world, name, "HMAC_256", "GENERATE_VERIFY_MAC")
    body = {"Message": b64(b"authenticate me"), "MacAlgorithm": "HMAC_SHA_256"}
    mac = ok(world.api.post(world.url(f"/keys/{key_id}/generate-mac"), json=body))["Mac"]
    assert len(unb64(mac)) == 32
    assert ok(world.api.post(world.url(f"/keys/{key_id}/generate-mac"), json=body))["Mac"] == mac  # deterministic
    assert ok(world.api.post(world.url(f"/keys/{key_id}/verify-mac"), json={**body, "Mac": mac}))["MacValid"] is True
    error(world.api.post(world.url(f"/keys/{key_id}/verify-mac"),
                         json={**body, "Message": b64(b"tampered"), "Mac": mac}), 400, "KMSInvalidMacException")


@each
def test_generate_random(world: World, name: str) -> None:
    r = world.api.post(world.url("/random"), json={"NumberOfBytes": 48, "Provider": name})
    if not world.caps[name].random:
        refused(r, "random", name)
        return
    a = unb64(ok(r)["Plaintext"])
    b = unb64(ok(world.api.post(world.url("/random"), json={"NumberOfBytes": 48, "Provider": name}))["Plaintext"])
    assert len(a) == len(b) == 48 and a != b


# ------------------------------------------------------------------------------------------------ import


def _wrap(public_der: bytes, algorithm: str, material: bytes) -> bytes:
    public = serialization.load_der_public_key(public_der)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    if algorithm == "RSAES_OAEP_SHA_1":
        return public.encrypt(material, oaep)
    assert algorithm == "RSA_AES_KEY_WRAP_SHA_1", algorithm
    ephemeral = os.urandom(32)
    return public.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)


def _import(world: World, key_id: str, material: bytes, *, check_token: bool = False,
            answer: bool = False) -> str | requests.Response:
    """GetParametersForImport + ImportKeyMaterial through the broker; returns the wrapping algorithm used.

    OAEP-SHA-1 of the material itself first; a provider whose import protocol wraps an ephemeral AES key instead
    (RSA_AES_KEY_WRAP_SHA_1) refuses it cleanly, naming what it takes."""
    provider = describe(world, key_id)["Provider"]
    learnt = world.keys.get(("import-wrapping", provider))  # the refusal is checked once per provider
    algorithm = learnt or "RSAES_OAEP_SHA_1"
    params = world.api.post(world.url(f"/keys/{key_id}/import-parameters"), json={"WrappingAlgorithm": algorithm})
    if params.status_code == 400 and not learnt:
        msg = error(params, 400, "ValidationException", "RSA_AES_KEY_WRAP_SHA_1")
        assert "RSAES_OAEP_SHA_1" not in msg.split("one of", 1)[-1], msg
        algorithm = "RSA_AES_KEY_WRAP_SHA_1"
        params = world.api.post(world.url(f"/keys/{key_id}/import-parameters"), json={"WrappingAlgorithm": algorithm})
    p = ok(params)
    world.keys[("import-wrapping", provider)] = algorithm
    assert p["KeyId"] == key_id and p["ImportToken"] and p["ParametersValidTo"]
    wrapped = _wrap(unb64(p["PublicKey"]), algorithm, material)
    if check_token:  # a wrong token is refused before anything reaches the provider
        error(world.api.post(world.url(f"/keys/{key_id}/import"),
                             json={"ImportToken": b64(b"not-a-token"), "EncryptedKeyMaterial": b64(wrapped)}),
              400, "InvalidImportTokenException")
    r = world.api.post(world.url(f"/keys/{key_id}/import"),
                       json={"ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(wrapped)})
    if answer:  # the caller checks the import's answer itself
        return r
    ok(r)
    return algorithm


@each
def test_import_known_material(world: World, name: str) -> None:
    r = create(world, name, Origin="EXTERNAL")
    if not world.caps[name].import_material:
        refused(r, "import", name)
        return
    meta = ok(r, 201)["KeyMetadata"]
    key_id = meta["KeyId"]
    assert (meta["KeyState"], meta["Origin"], meta["Provider"]) == ("PendingImport", "EXTERNAL", name)
    if gap(name, "import"):
        # Documented emulator gap (moto: GetParametersForImport answers HTTP 500), asserted explicitly: the
        # backend's 5xx is the broker's 503 DependencyTimeoutException in its own error model (no crash, no hang),
        # the broker stays up, and the key stays PendingImport.
        gap_answer(world.api.post(world.url(f"/keys/{key_id}/import-parameters"), json={}), name, "import")
        assert describe(world, key_id)["KeyState"] == "PendingImport"
        assert requests.get(world.url("/health"), timeout=10).status_code == 200
        return
    _import(world, key_id, KNOWN_MATERIAL, check_token=True)
    meta = describe(world, key_id)
    assert (meta["KeyState"], meta["Origin"], meta["Provider"]) == ("Enabled", "EXTERNAL", name)
    enc = ok(encrypt(world, key_id, b"under imported material", CONTEXT))
    assert unb64(ok(decrypt(world, enc["CiphertextBlob"], CONTEXT))["Plaintext"]) == b"under imported material"
    error(decrypt(world, enc["CiphertextBlob"], {"tenant": "other"}), 400, "InvalidCiphertextException")
    refused(world.api.post(world.url(f"/keys/{key_id}/rotate")), "imported")


@each
def test_reimport_of_the_same_material_keeps_old_ciphertexts(world: World, name: str,
                                                              request: pytest.FixtureRequest) -> None:
    """AWS semantics: DeleteImportedKeyMaterial, then importing the SAME material again, brings the key back with
    every ciphertext it ever made still decrypting."""
    if not world.caps[name].import_material:
        refused(create(world, name, Origin="EXTERNAL"), "import", name)
        return
    if gap(name, "import"):
        key_id = ok(create(world, name, Origin="EXTERNAL"), 201)["KeyMetadata"]["KeyId"]
        gap_answer(world.api.post(world.url(f"/keys/{key_id}/import-parameters"), json={}), name, "import")
        return
    key_id = ok(create(world, name, Origin="EXTERNAL"), 201)["KeyMetadata"]["KeyId"]
    _import(world, key_id, KNOWN_MATERIAL)
    blob = ok(encrypt(world, key_id, b"survives re-import", CONTEXT))["CiphertextBlob"]
    ok(world.api.delete(world.url(f"/keys/{key_id}/material")))
    assert describe(world, key_id)["KeyState"] == "PendingImport"
    error(decrypt(world, blob, CONTEXT), 409, "KMSInvalidStateException")
    if name.startswith("gcp"):
        # Cloud KMS re-imports into a version only once it is destroyed (the key's destroy_scheduled_duration
        # after the delete): until then nothing can prove new material is the same, so it is refused.
        error(_import(world, key_id, KNOWN_MATERIAL, answer=True), 409, "KMSInvalidStateException",
              "scheduled for destruction")
        assert describe(world, key_id)["KeyState"] == "PendingImport"
        return
    if gap(name, "reimport"):
        # LocalStack neither refuses other material nor restores the key: after the same material is imported
        # again, its Decrypt answers HTTP 500 (see helpers.GAPS).
        ok(_import(world, key_id, KNOWN_MATERIAL, answer=True))
        gap_answer(decrypt(world, blob, CONTEXT), name, "reimport")
        return
    other = bytes(b ^ 0x5A for b in KNOWN_MATERIAL)
    error(_import(world, key_id, other, answer=True), 400, "IncorrectKeyMaterialException")
    assert describe(world, key_id)["KeyState"] == "PendingImport"
    _import(world, key_id, KNOWN_MATERIAL)
    assert describe(world, key_id)["KeyState"] == "Enabled"
    assert unb64(ok(decrypt(world, blob, CONTEXT))["Plaintext"]) == b"survives re-import"
    # a key that holds its material takes only that material again, too
    error(_import(world, key_id, other, answer=True), 400, "IncorrectKeyMaterialException")
    assert unb64(ok(decrypt(world, blob, CONTEXT))["Plaintext"]) == b"survives re-import"
