"""Encrypt/Decrypt/ReEncrypt with EncryptionContext and the data-key operations."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .helpers import aliyun_error, b64, call, new_key

CONTEXT = {"app": "a b", "tenant": "t-1"}


@pytest.mark.parametrize("spec", ["Aliyun_AES_256", "Aliyun_SM4"])
def test_encrypt_decrypt_round_trip_with_context(kms, spec):
    key_id = new_key(kms, key_spec=spec)["KeyId"]
    plaintext = "hello wörld +/=~* & ?"
    enc = call(kms, "encrypt", key_id=key_id, plaintext=plaintext, encryption_context=CONTEXT)
    assert enc["KeyId"] == key_id and enc["KeyVersionId"]
    dec = call(kms, "decrypt", ciphertext_blob=enc["CiphertextBlob"], encryption_context=dict(reversed(CONTEXT.items())))
    assert (dec["Plaintext"], dec["KeyId"], dec["KeyVersionId"]) == (plaintext, key_id, enc["KeyVersionId"])


def test_ciphertexts_are_randomized(kms):
    key_id = new_key(kms)["KeyId"]
    a, b = (call(kms, "encrypt", key_id=key_id, plaintext="same")["CiphertextBlob"] for _ in range(2))
    assert a != b


@pytest.mark.parametrize("context", [None, {"app": "other"}, {"app": "a b"}])
def test_decrypt_needs_the_same_context(kms, context):
    key_id = new_key(kms)["KeyId"]
    blob = call(kms, "encrypt", key_id=key_id, plaintext="secret", encryption_context=CONTEXT)["CiphertextBlob"]
    with aliyun_error("InvalidCiphertext", 400):
        call(kms, "decrypt", ciphertext_blob=blob, encryption_context=context)


def test_tampered_ciphertext_is_rejected(kms):
    key_id = new_key(kms)["KeyId"]
    raw = bytearray(base64.b64decode(call(kms, "encrypt", key_id=key_id, plaintext="secret")["CiphertextBlob"]))
    raw[-1] ^= 1
    with aliyun_error("InvalidCiphertext", 400):
        call(kms, "decrypt", ciphertext_blob=b64(bytes(raw)))
    with aliyun_error("InvalidCiphertext", 400):
        call(kms, "decrypt", ciphertext_blob="not base64!")


def test_ciphertext_of_a_deleted_alias_key_still_names_its_key(kms):
    """The blob self-identifies key and version: Decrypt takes no KeyId."""
    k1, k2 = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    b1 = call(kms, "encrypt", key_id=k1, plaintext="one")["CiphertextBlob"]
    b2 = call(kms, "encrypt", key_id=k2, plaintext="two")["CiphertextBlob"]
    assert call(kms, "decrypt", ciphertext_blob=b1)["KeyId"] == k1
    assert call(kms, "decrypt", ciphertext_blob=b2)["Plaintext"] == "two"


def test_encrypt_rejects_plaintext_over_6kb(kms):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "encrypt", key_id=key_id, plaintext="x" * 6145)


def test_encrypt_with_a_signing_key_is_unsupported(kms):
    key_id = new_key(kms, key_spec="EC_P256", key_usage="SIGN/VERIFY")["KeyId"]
    with aliyun_error("UnsupportedOperation", 400):
        call(kms, "encrypt", key_id=key_id, plaintext="x")


def test_re_encrypt_moves_ciphertext_to_another_key_and_context(kms):
    src, dst = new_key(kms)["KeyId"], new_key(kms, key_spec="Aliyun_SM4")["KeyId"]
    blob = call(kms, "encrypt", key_id=src, plaintext="move me", encryption_context=CONTEXT)["CiphertextBlob"]
    out = call(kms, "re_encrypt", ciphertext_blob=blob, destination_key_id=dst,
               source_encryption_context=CONTEXT, destination_encryption_context={"new": "ctx"})
    assert out["KeyId"] == dst and out["KeyVersionId"]
    assert call(kms, "decrypt", ciphertext_blob=out["CiphertextBlob"], encryption_context={"new": "ctx"})["Plaintext"] == "move me"
    with aliyun_error("InvalidCiphertext", 400):
        call(kms, "re_encrypt", ciphertext_blob=blob, destination_key_id=dst)


def test_re_encrypt_from_an_asymmetric_source(kms):
    src = new_key(kms, key_spec="RSA_2048", key_usage="ENCRYPT/DECRYPT")
    dst = new_key(kms)["KeyId"]
    ct = call(kms, "asymmetric_encrypt", key_id=src["KeyId"], key_version_id=src["PrimaryKeyVersion"],
              algorithm="RSAES_OAEP_SHA_256", plaintext=b64(b"\x00\x01raw"))["CiphertextBlob"]
    out = call(kms, "re_encrypt", ciphertext_blob=ct, destination_key_id=dst, source_key_id=src["KeyId"],
               source_key_version_id=src["PrimaryKeyVersion"], source_encryption_algorithm="RSAES_OAEP_SHA_256")
    assert base64.b64decode(call(kms, "decrypt", ciphertext_blob=out["CiphertextBlob"])["Plaintext"]) == b"\x00\x01raw"


@pytest.mark.parametrize(("fields", "size"), [({}, 32), ({"key_spec": "AES_128"}, 16), ({"number_of_bytes": 7}, 7),
                                              ({"number_of_bytes": 1024}, 1024)])
def test_generate_data_key(kms, fields, size):
    key_id = new_key(kms)["KeyId"]
    out = call(kms, "generate_data_key", key_id=key_id, encryption_context=CONTEXT, **fields)
    assert len(base64.b64decode(out["Plaintext"])) == size
    dec = call(kms, "decrypt", ciphertext_blob=out["CiphertextBlob"], encryption_context=CONTEXT)
    assert dec["Plaintext"] == out["Plaintext"] and dec["KeyVersionId"] == out["KeyVersionId"]


@pytest.mark.parametrize("fields", [{"number_of_bytes": 0}, {"number_of_bytes": 1025}, {"key_spec": "AES_512"}])
def test_generate_data_key_rejects_bad_sizes(kms, fields):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "generate_data_key", key_id=key_id, **fields)


def test_generate_data_key_without_plaintext(kms):
    key_id = new_key(kms)["KeyId"]
    out = call(kms, "generate_data_key_without_plaintext", key_id=key_id, encryption_context=CONTEXT)
    assert "Plaintext" not in out
    plain = call(kms, "decrypt", ciphertext_blob=out["CiphertextBlob"], encryption_context=CONTEXT)["Plaintext"]
    assert len(base64.b64decode(plain)) == 32


@pytest.mark.parametrize(("algorithm", "digest"), [("RSAES_OAEP_SHA_256", hashes.SHA256()),
                                                   ("RSAES_OAEP_SHA_1", hashes.SHA1())])
def test_generate_and_export_data_key(kms, algorithm, digest):
    key_id = new_key(kms)["KeyId"]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    out = call(kms, "generate_and_export_data_key", key_id=key_id, public_key_blob=b64(public_der),
               wrapping_key_spec="RSA_2048", wrapping_algorithm=algorithm, encryption_context=CONTEXT)
    exported = private.decrypt(base64.b64decode(out["ExportedDataKey"]),
                               padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None))
    kms_copy = call(kms, "decrypt", ciphertext_blob=out["CiphertextBlob"], encryption_context=CONTEXT)["Plaintext"]
    assert base64.b64decode(kms_copy) == exported and len(exported) == 32


def test_generate_and_export_rejects_a_mismatched_wrapping_key(kms):
    key_id = new_key(kms)["KeyId"]
    public_der = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with aliyun_error("InvalidParameter", 400):
        call(kms, "generate_and_export_data_key", key_id=key_id, public_key_blob=b64(public_der),
             wrapping_key_spec="RSA_2048", wrapping_algorithm="RSAES_OAEP_SHA_256")
