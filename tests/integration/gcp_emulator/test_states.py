"""FAILED_PRECONDITION and INVALID_ARGUMENT across operations, and the less common algorithms."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1
from google.protobuf import field_mask_pb2

from .helpers import crc, first_version, make_key, status

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
MASK = field_mask_pb2.FieldMask(paths=["state"])


def _disable(client: kms_v1.KeyManagementServiceClient, name: str) -> None:
    client.update_crypto_key_version(crypto_key_version={"name": name, "state": State.DISABLED}, update_mask=MASK)


def test_disabled_versions_refuse_every_operation(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    sign = first_version(make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"))
    dec = first_version(make_key(client, ring, "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA256"))
    mac = first_version(make_key(client, ring, "MAC", "HMAC_SHA256"))
    raw = first_version(make_key(client, ring, "RAW_ENCRYPT_DECRYPT", "AES_128_GCM"))
    for name in (sign, dec, mac, raw):
        _disable(client, name)
    calls = [
        lambda: client.asymmetric_sign(request={"name": sign, "digest": {"sha256": hashlib.sha256(b"").digest()}}),
        lambda: client.get_public_key(name=sign),
        lambda: client.asymmetric_decrypt(request={"name": dec, "ciphertext": b"\0" * 256}),
        lambda: client.mac_sign(name=mac, data=b"d"),
        lambda: client.mac_verify(name=mac, data=b"d", mac=b"\0" * 32),
        lambda: client.raw_encrypt(request={"name": raw, "plaintext": b"p"}),
    ]
    for call in calls:
        with pytest.raises(GoogleAPICallError) as exc:
            call()
        assert status(exc.value) == "FAILED_PRECONDITION"
        assert "DISABLED" in exc.value.message


def test_scheduled_for_destruction_cannot_be_enabled(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "MAC", "HMAC_SHA384")
    client.destroy_crypto_key_version(name=first_version(key))
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.ENABLED},
                                         update_mask=MASK)
    assert status(exc.value) == "FAILED_PRECONDITION"
    with pytest.raises(GoogleAPICallError) as exc:
        client.mac_sign(name=first_version(key), data=b"d")
    assert status(exc.value) == "FAILED_PRECONDITION"


def test_update_requires_a_mask(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key(crypto_key={"name": key.name, "labels": {"a": "b"}},
                                 update_mask=field_mask_pb2.FieldMask(paths=[]))
    assert status(exc.value) == "INVALID_ARGUMENT"
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.DISABLED},
                                         update_mask=field_mask_pb2.FieldMask(paths=["algorithm"]))
    assert status(exc.value) == "INVALID_ARGUMENT"
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key(crypto_key={"name": f"{key.name}-missing", "labels": {}},
                                 update_mask=field_mask_pb2.FieldMask(paths=["labels"]))
    assert status(exc.value) == "NOT_FOUND"


def test_operation_on_the_wrong_purpose(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    sym = make_key(client, ring, "ENCRYPT_DECRYPT")
    with pytest.raises(GoogleAPICallError) as exc:
        client.mac_sign(name=first_version(sym), data=b"d")
    assert status(exc.value) == "FAILED_PRECONDITION"
    sign = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256")
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_primary_version(name=sign.name, crypto_key_version_id="1")
    assert status(exc.value) == "FAILED_PRECONDITION"  # only ENCRYPT_DECRYPT keys have a primary


def test_ed25519_signs_data(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    name = first_version(make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_ED25519"))
    pub = serialization.load_pem_public_key(client.get_public_key(name=name).pem.encode())
    assert isinstance(pub, ed25519.Ed25519PublicKey)

    resp = client.asymmetric_sign(request={"name": name, "data": b"raw data", "data_crc32c": crc(b"raw data")})
    assert resp.verified_data_crc32c
    pub.verify(resp.signature, b"raw data")


def test_oaep_sha512_on_4096(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    name = first_version(make_key(client, ring, "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_4096_SHA512"))
    pub = serialization.load_pem_public_key(client.get_public_key(name=name).pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 4096
    ct = pub.encrypt(b"m", padding.OAEP(padding.MGF1(hashes.SHA512()), hashes.SHA512(), None))
    assert client.asymmetric_decrypt(name=name, ciphertext=ct).plaintext == b"m"
    wrong_hash = pub.encrypt(b"m", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    with pytest.raises(GoogleAPICallError) as exc:
        client.asymmetric_decrypt(name=name, ciphertext=wrong_hash)
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_import_job_list_pages(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    names = [client.create_import_job(request={"parent": ring, "import_job_id": f"job-{i}", "import_job": {
        "import_method": "RSA_OAEP_3072_SHA256", "protection_level": "HSM"}}).name for i in range(3)]
    pages = list(client.list_import_jobs(request={"parent": ring, "page_size": 2}).pages)
    assert [len(p.import_jobs) for p in pages] == [2, 1]
    assert [j.name for p in pages for j in p.import_jobs] == names
