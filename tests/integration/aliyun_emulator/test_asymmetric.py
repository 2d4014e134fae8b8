"""AsymmetricEncrypt/Decrypt/Sign/Verify and GetPublicKey, checked against `cryptography` on the client side."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from .helpers import aliyun_error, b64, call, new_key, sha256_b64

SIGNING = [("RSA_2048", "RSA_PSS_SHA_256"), ("RSA_2048", "RSA_PKCS1_SHA_256"), ("RSA_3072", "RSA_PSS_SHA_256"),
           ("EC_P256", "ECDSA_SHA_256")]


def _verify_locally(pem: str, algorithm: str, message: bytes, signature: bytes) -> None:
    public = serialization.load_pem_public_key(pem.encode())
    prehashed = utils.Prehashed(hashes.SHA256())
    digest = hashlib.sha256(message).digest()
    if algorithm == "ECDSA_SHA_256":
        public.verify(signature, digest, ec.ECDSA(prehashed))
    elif algorithm == "RSA_PSS_SHA_256":
        public.verify(signature, digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), prehashed)
    else:
        public.verify(signature, digest, padding.PKCS1v15(), prehashed)


@pytest.mark.parametrize(("spec", "algorithm"), SIGNING)
def test_sign_verify_and_public_key(kms, spec, algorithm):
    meta = new_key(kms, key_spec=spec, key_usage="SIGN/VERIFY")
    ref = {"key_id": meta["KeyId"], "key_version_id": meta["PrimaryKeyVersion"], "algorithm": algorithm}
    message = b"sign me"
    sig = call(kms, "asymmetric_sign", digest=sha256_b64(message), **ref)
    assert sig["KeyVersionId"] == meta["PrimaryKeyVersion"]
    assert call(kms, "asymmetric_verify", digest=sha256_b64(message), value=sig["Value"], **ref)["Value"] is True
    assert call(kms, "asymmetric_verify", digest=sha256_b64(b"other"), value=sig["Value"], **ref)["Value"] is False
    pem = call(kms, "get_public_key", key_id=meta["KeyId"], key_version_id=meta["PrimaryKeyVersion"])["PublicKey"]
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    _verify_locally(pem, algorithm, message, base64.b64decode(sig["Value"]))
    with pytest.raises(InvalidSignature):
        _verify_locally(pem, algorithm, b"tampered", base64.b64decode(sig["Value"]))


def test_sign_rejects_wrong_algorithm_and_digest_length(kms):
    meta = new_key(kms, key_spec="EC_P256", key_usage="SIGN/VERIFY")
    ref = {"key_id": meta["KeyId"], "key_version_id": meta["PrimaryKeyVersion"]}
    with aliyun_error("InvalidParameter", 400):
        call(kms, "asymmetric_sign", algorithm="RSA_PSS_SHA_256", digest=sha256_b64(b"m"), **ref)
    with aliyun_error("InvalidParameter", 400):
        call(kms, "asymmetric_sign", algorithm="ECDSA_SHA_256", digest=b64(b"short"), **ref)
    with aliyun_error("Forbidden.ResourceNotFound", 404):
        call(kms, "asymmetric_sign", key_id=meta["KeyId"], key_version_id="nope", algorithm="ECDSA_SHA_256",
             digest=sha256_b64(b"m"))


@pytest.mark.parametrize(("algorithm", "digest"), [("RSAES_OAEP_SHA_256", hashes.SHA256()),
                                                   ("RSAES_OAEP_SHA_1", hashes.SHA1())])
def test_asymmetric_encrypt_decrypt(kms, algorithm, digest):
    meta = new_key(kms, key_spec="RSA_3072", key_usage="ENCRYPT/DECRYPT")
    ref = {"key_id": meta["KeyId"], "key_version_id": meta["PrimaryKeyVersion"], "algorithm": algorithm}
    ct = call(kms, "asymmetric_encrypt", plaintext=b64(b"\x00binary\xff"), **ref)["CiphertextBlob"]
    assert base64.b64decode(call(kms, "asymmetric_decrypt", ciphertext_blob=ct, **ref)["Plaintext"]) == b"\x00binary\xff"
    # ciphertext made locally with the published public key decrypts in the service
    pem = call(kms, "get_public_key", key_id=meta["KeyId"], key_version_id=meta["PrimaryKeyVersion"])["PublicKey"]
    local = serialization.load_pem_public_key(pem.encode()).encrypt(
        b"from outside", padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None))
    assert base64.b64decode(call(kms, "asymmetric_decrypt", ciphertext_blob=b64(local), **ref)["Plaintext"]) == b"from outside"


def test_asymmetric_decrypt_with_the_wrong_algorithm_fails(kms):
    meta = new_key(kms, key_spec="RSA_2048", key_usage="ENCRYPT/DECRYPT")
    ref = {"key_id": meta["KeyId"], "key_version_id": meta["PrimaryKeyVersion"]}
    ct = call(kms, "asymmetric_encrypt", plaintext=b64(b"x"), algorithm="RSAES_OAEP_SHA_256", **ref)["CiphertextBlob"]
    with aliyun_error("InvalidCiphertext", 400):
        call(kms, "asymmetric_decrypt", ciphertext_blob=ct, algorithm="RSAES_OAEP_SHA_1", **ref)


def test_signing_key_cannot_encrypt_and_symmetric_key_has_no_public_key(kms):
    meta = new_key(kms, key_spec="RSA_2048", key_usage="SIGN/VERIFY")
    with aliyun_error("UnsupportedOperation", 400):
        call(kms, "asymmetric_encrypt", key_id=meta["KeyId"], key_version_id=meta["PrimaryKeyVersion"],
             algorithm="RSAES_OAEP_SHA_256", plaintext=b64(b"x"))
    sym = new_key(kms)
    with aliyun_error("UnsupportedOperation", 400):
        call(kms, "get_public_key", key_id=sym["KeyId"], key_version_id=sym["PrimaryKeyVersion"])


def test_disabled_asymmetric_key_cannot_sign(kms):
    meta = new_key(kms, key_spec="EC_P256", key_usage="SIGN/VERIFY")
    call(kms, "disable_key", key_id=meta["KeyId"])
    with aliyun_error("Rejected.Disabled", 400):
        call(kms, "asymmetric_sign", key_id=meta["KeyId"], key_version_id=meta["PrimaryKeyVersion"],
             algorithm="ECDSA_SHA_256", digest=sha256_b64(b"m"))
