"""Cryptographic operations through the official client, verified independently with pyca/cryptography."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1

from .helpers import PROJECT_LOCATION, crc, first_version, make_key, status


def test_encrypt_decrypt_with_aad(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    enc = client.encrypt(request={"name": key.name, "plaintext": b"secret", "additional_authenticated_data": b"ctx"})
    assert enc.name == first_version(key)
    assert enc.ciphertext_crc32c == crc(enc.ciphertext)
    assert b"secret" not in enc.ciphertext
    assert enc.protection_level == kms_v1.ProtectionLevel.SOFTWARE
    dec = client.decrypt(request={"name": key.name, "ciphertext": enc.ciphertext,
                                  "additional_authenticated_data": b"ctx"})
    assert dec.plaintext == b"secret" and dec.plaintext_crc32c == crc(b"secret") and dec.used_primary
    for aad in (b"", b"other"):
        with pytest.raises(GoogleAPICallError) as exc:
            client.decrypt(request={"name": key.name, "ciphertext": enc.ciphertext,
                                    "additional_authenticated_data": aad})
        assert status(exc.value) == "INVALID_ARGUMENT"


def test_decrypt_finds_the_version_from_the_ciphertext(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    old = client.encrypt(name=key.name, plaintext=b"v1").ciphertext
    client.create_crypto_key_version(parent=key.name, crypto_key_version={})
    client.update_crypto_key_primary_version(name=key.name, crypto_key_version_id="2")
    new = client.encrypt(name=key.name, plaintext=b"v2")
    assert new.name.endswith("/cryptoKeyVersions/2")
    first = client.decrypt(name=key.name, ciphertext=old)
    assert first.plaintext == b"v1" and not first.used_primary
    assert client.decrypt(name=key.name, ciphertext=new.ciphertext).used_primary
    # encrypt may name a specific version
    pinned = client.encrypt(name=first_version(key), plaintext=b"pinned")
    assert pinned.name == first_version(key)


def test_ciphertext_from_another_key_or_garbage_is_invalid(client: kms_v1.KeyManagementServiceClient,
                                                           ring: str) -> None:
    a = make_key(client, ring, "ENCRYPT_DECRYPT")
    b = make_key(client, ring, "ENCRYPT_DECRYPT")
    ct = client.encrypt(name=a.name, plaintext=b"for a").ciphertext
    for bad in (ct, b"garbage" * 8):
        with pytest.raises(GoogleAPICallError) as exc:
            client.decrypt(name=b.name, ciphertext=bad)
        assert status(exc.value) == "INVALID_ARGUMENT"


def test_encrypt_with_a_non_symmetric_key_fails(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "MAC", "HMAC_SHA256")
    with pytest.raises(GoogleAPICallError) as exc:
        client.encrypt(name=first_version(key), plaintext=b"x")
    assert status(exc.value) == "FAILED_PRECONDITION"


@pytest.mark.parametrize("algorithm", ["AES_128_GCM", "AES_256_GCM"])
def test_raw_encrypt_decrypt(client: kms_v1.KeyManagementServiceClient, ring: str, algorithm: str) -> None:
    key = make_key(client, ring, "RAW_ENCRYPT_DECRYPT", algorithm)
    name = first_version(key)
    enc = client.raw_encrypt(request={"name": name, "plaintext": b"raw data", "additional_authenticated_data": b"h"})
    assert len(enc.initialization_vector) == 12 and enc.tag_length == 16
    assert len(enc.ciphertext) == len(b"raw data") + 16
    assert enc.ciphertext_crc32c == crc(enc.ciphertext)
    assert enc.initialization_vector_crc32c == crc(enc.initialization_vector)
    dec = client.raw_decrypt(request={"name": name, "ciphertext": enc.ciphertext, "initialization_vector":
                                      enc.initialization_vector, "additional_authenticated_data": b"h",
                                      "tag_length": 16})
    assert dec.plaintext == b"raw data"
    iv = bytes(range(12))
    fixed = client.raw_encrypt(request={"name": name, "plaintext": b"p", "initialization_vector": iv})
    assert fixed.initialization_vector == iv
    with pytest.raises(GoogleAPICallError) as exc:
        client.raw_decrypt(request={"name": name, "ciphertext": enc.ciphertext,
                                    "initialization_vector": enc.initialization_vector,
                                    "additional_authenticated_data": b"wrong"})
    assert status(exc.value) == "INVALID_ARGUMENT"


SIGN_ALGS = {
    "RSA_SIGN_PSS_2048_SHA256": ("pss", hashes.SHA256()),
    "RSA_SIGN_PSS_3072_SHA256": ("pss", hashes.SHA256()),
    "RSA_SIGN_PKCS1_2048_SHA256": ("pkcs1", hashes.SHA256()),
    "RSA_SIGN_PKCS1_4096_SHA512": ("pkcs1", hashes.SHA512()),
    "EC_SIGN_P256_SHA256": ("ec", hashes.SHA256()),
    "EC_SIGN_P384_SHA384": ("ec", hashes.SHA384()),
}


def _verify(pub: object, kind: str, h: hashes.HashAlgorithm, sig: bytes, msg: bytes) -> None:
    if kind == "ec":
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, msg, ec.ECDSA(h))
    else:
        assert isinstance(pub, rsa.RSAPublicKey)
        pad = padding.PSS(padding.MGF1(h), h.digest_size) if kind == "pss" else padding.PKCS1v15()
        pub.verify(sig, msg, pad, h)


@pytest.mark.parametrize("algorithm", sorted(SIGN_ALGS))
def test_asymmetric_sign_and_public_key(client: kms_v1.KeyManagementServiceClient, ring: str, algorithm: str) -> None:
    kind, h = SIGN_ALGS[algorithm]
    key = make_key(client, ring, "ASYMMETRIC_SIGN", algorithm)
    name = first_version(key)
    public = client.get_public_key(name=name)
    assert public.pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert public.pem_crc32c == crc(public.pem.encode())
    assert public.name == name and public.algorithm.name == algorithm
    pub = serialization.load_pem_public_key(public.pem.encode())

    msg = b"message to sign"
    digest = hashlib.new(h.name, msg).digest()
    resp = client.asymmetric_sign(request={"name": name, "digest": {h.name: digest}, "digest_crc32c": crc(digest)})
    assert resp.verified_digest_crc32c and resp.name == name
    assert resp.signature_crc32c == crc(resp.signature)
    _verify(pub, kind, h, resp.signature, msg)
    with pytest.raises(InvalidSignature):
        _verify(pub, kind, h, resp.signature, b"another message")


def test_sign_rejects_wrong_digest_type_and_public_key_on_symmetric(client: kms_v1.KeyManagementServiceClient,
                                                                    ring: str) -> None:
    key = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256")
    with pytest.raises(GoogleAPICallError) as exc:
        client.asymmetric_sign(request={"name": first_version(key), "digest": {"sha512": b"\0" * 64}})
    assert status(exc.value) == "INVALID_ARGUMENT"
    sym = make_key(client, ring, "ENCRYPT_DECRYPT")
    with pytest.raises(GoogleAPICallError) as exc:
        client.get_public_key(name=first_version(sym))
    assert status(exc.value) == "FAILED_PRECONDITION"


@pytest.mark.parametrize("algorithm,h", [("RSA_DECRYPT_OAEP_2048_SHA256", hashes.SHA256()),
                                         ("RSA_DECRYPT_OAEP_3072_SHA256", hashes.SHA256())])
def test_asymmetric_decrypt(client: kms_v1.KeyManagementServiceClient, ring: str, algorithm: str,
                            h: hashes.HashAlgorithm) -> None:
    key = make_key(client, ring, "ASYMMETRIC_DECRYPT", algorithm)
    name = first_version(key)
    pub = serialization.load_pem_public_key(client.get_public_key(name=name).pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey)
    ct = pub.encrypt(b"wrapped secret", padding.OAEP(padding.MGF1(h), h, None))
    resp = client.asymmetric_decrypt(request={"name": name, "ciphertext": ct, "ciphertext_crc32c": crc(ct)})
    assert resp.plaintext == b"wrapped secret" and resp.verified_ciphertext_crc32c
    assert resp.plaintext_crc32c == crc(b"wrapped secret")
    with pytest.raises(GoogleAPICallError) as exc:
        client.asymmetric_decrypt(request={"name": name, "ciphertext": b"\1" * len(ct)})
    assert status(exc.value) == "INVALID_ARGUMENT"


@pytest.mark.parametrize("algorithm,digest", [("HMAC_SHA256", "sha256"), ("HMAC_SHA512", "sha512")])
def test_mac_sign_verify(client: kms_v1.KeyManagementServiceClient, ring: str, algorithm: str, digest: str) -> None:
    key = make_key(client, ring, "MAC", algorithm)
    name = first_version(key)
    signed = client.mac_sign(request={"name": name, "data": b"data", "data_crc32c": crc(b"data")})
    assert len(signed.mac) == hashlib.new(digest).digest_size
    assert signed.mac_crc32c == crc(signed.mac) and signed.verified_data_crc32c
    ok = client.mac_verify(request={"name": name, "data": b"data", "mac": signed.mac, "mac_crc32c": crc(signed.mac)})
    assert ok.success and ok.verified_success_integrity and ok.verified_mac_crc32c
    bad = client.mac_verify(request={"name": name, "data": b"datA", "mac": signed.mac})
    assert not bad.success and not bad.verified_success_integrity
    other = make_key(client, ring, "MAC", algorithm)
    assert not client.mac_verify(request={"name": first_version(other), "data": b"data", "mac": signed.mac}).success
    assert not hmac.compare_digest(signed.mac, client.mac_sign(name=first_version(other), data=b"data").mac)


def test_generate_random_bytes(client: kms_v1.KeyManagementServiceClient) -> None:
    a = client.generate_random_bytes(location=PROJECT_LOCATION, length_bytes=32,
                                     protection_level=kms_v1.ProtectionLevel.HSM)
    b = client.generate_random_bytes(location=PROJECT_LOCATION, length_bytes=32,
                                     protection_level=kms_v1.ProtectionLevel.HSM)
    assert len(a.data) == 32 and a.data != b.data and a.data_crc32c == crc(a.data)
    for length, level in ((4, kms_v1.ProtectionLevel.HSM), (2048, kms_v1.ProtectionLevel.HSM),
                          (32, kms_v1.ProtectionLevel.SOFTWARE)):
        with pytest.raises(GoogleAPICallError) as exc:
            client.generate_random_bytes(location=PROJECT_LOCATION, length_bytes=length, protection_level=level)
        assert status(exc.value) == "INVALID_ARGUMENT"


def test_hsm_protection_level_is_reported(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT", version_template={"protection_level": "HSM"})
    assert key.primary.protection_level == kms_v1.ProtectionLevel.HSM
    assert client.encrypt(name=key.name, plaintext=b"x").protection_level == kms_v1.ProtectionLevel.HSM
