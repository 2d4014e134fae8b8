"""CRC32C integrity as the API defines it: verified_* flags, response checksums, mismatches rejected."""

from __future__ import annotations

import hashlib

import pytest
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1

from .helpers import crc, first_version, make_key, status


def _rejected(call, field: str) -> None:  # noqa: ANN001 - a zero-argument client call
    with pytest.raises(GoogleAPICallError) as exc:
        call()
    assert status(exc.value) == "INVALID_ARGUMENT"
    assert f"{field}_crc32c" in exc.value.message


def test_encrypt_flags_only_when_checksums_sent(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    plain = client.encrypt(request={"name": key.name, "plaintext": b"p", "additional_authenticated_data": b"a"})
    assert not plain.verified_plaintext_crc32c and not plain.verified_additional_authenticated_data_crc32c
    checked = client.encrypt(request={"name": key.name, "plaintext": b"p", "plaintext_crc32c": crc(b"p"),
                                      "additional_authenticated_data": b"a",
                                      "additional_authenticated_data_crc32c": crc(b"a")})
    assert checked.verified_plaintext_crc32c and checked.verified_additional_authenticated_data_crc32c
    assert checked.ciphertext_crc32c == crc(checked.ciphertext)
    # a checksum of zero is still a checksum the server must verify (crc32c(b"") == 0)
    empty = client.encrypt(request={"name": key.name, "plaintext": b"", "plaintext_crc32c": 0})
    assert empty.verified_plaintext_crc32c


def test_mismatched_request_checksums_are_invalid_argument(client: kms_v1.KeyManagementServiceClient,
                                                           ring: str) -> None:
    sym = make_key(client, ring, "ENCRYPT_DECRYPT")
    ct = client.encrypt(name=sym.name, plaintext=b"p").ciphertext
    _rejected(lambda: client.encrypt(request={"name": sym.name, "plaintext": b"p",
                                              "plaintext_crc32c": crc(b"p") ^ 1}), "plaintext")
    _rejected(lambda: client.encrypt(request={"name": sym.name, "plaintext": b"p",
                                              "additional_authenticated_data": b"a",
                                              "additional_authenticated_data_crc32c": crc(b"b")}),
              "additional_authenticated_data")
    _rejected(lambda: client.decrypt(request={"name": sym.name, "ciphertext": ct,
                                              "ciphertext_crc32c": crc(ct) + 1}), "ciphertext")

    mac = make_key(client, ring, "MAC", "HMAC_SHA256")
    _rejected(lambda: client.mac_sign(request={"name": first_version(mac), "data": b"d",
                                               "data_crc32c": crc(b"e")}), "data")
    tag = client.mac_sign(name=first_version(mac), data=b"d").mac
    _rejected(lambda: client.mac_verify(request={"name": first_version(mac), "data": b"d", "mac": tag,
                                                 "mac_crc32c": crc(tag) ^ 0xFF}), "mac")

    sign = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256")
    digest = hashlib.sha256(b"m").digest()
    _rejected(lambda: client.asymmetric_sign(request={"name": first_version(sign), "digest": {"sha256": digest},
                                                      "digest_crc32c": crc(digest) ^ 1}), "digest")

    raw = make_key(client, ring, "RAW_ENCRYPT_DECRYPT", "AES_256_GCM")
    _rejected(lambda: client.raw_encrypt(request={"name": first_version(raw), "plaintext": b"p",
                                                  "initialization_vector": b"\0" * 12,
                                                  "initialization_vector_crc32c": 7}), "initialization_vector")


def test_raw_and_asymmetric_flags(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    raw = make_key(client, ring, "RAW_ENCRYPT_DECRYPT", "AES_128_GCM")
    iv = b"\1" * 12
    enc = client.raw_encrypt(request={"name": first_version(raw), "plaintext": b"p", "plaintext_crc32c": crc(b"p"),
                                      "initialization_vector": iv, "initialization_vector_crc32c": crc(iv)})
    assert enc.verified_plaintext_crc32c and enc.verified_initialization_vector_crc32c
    assert not enc.verified_additional_authenticated_data_crc32c
    dec = client.raw_decrypt(request={"name": first_version(raw), "ciphertext": enc.ciphertext,
                                      "ciphertext_crc32c": crc(enc.ciphertext), "initialization_vector": iv})
    assert dec.verified_ciphertext_crc32c and not dec.verified_initialization_vector_crc32c
    assert dec.plaintext_crc32c == crc(b"p")

    sign = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P384_SHA384")
    digest = hashlib.sha384(b"m").digest()
    unchecked = client.asymmetric_sign(request={"name": first_version(sign), "digest": {"sha384": digest}})
    assert not unchecked.verified_digest_crc32c and unchecked.signature_crc32c == crc(unchecked.signature)
