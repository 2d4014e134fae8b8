"""Every cryptographic primitive the emulator uses, all from `cryptography` (nothing hand-rolled)."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SYMMETRIC_SPECS = {"Aliyun_AES_256": 32, "Aliyun_SM4": 16}
ASYMMETRIC_SPECS = {"RSA_2048", "RSA_3072", "EC_P256"}
RSA_ENCRYPTION_ALGORITHMS = {"RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"}
WRAPPING_ALGORITHMS = {"RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1", "RSAES_PKCS1_V1_5"}
SIGNING_ALGORITHMS = {
    "RSA_2048": {"RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"},
    "RSA_3072": {"RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"},
    "EC_P256": {"ECDSA_SHA_256"},
}
_IV_LEN = 12


class CryptoFailure(Exception):
    """Raised when decryption or unwrapping fails; callers map it to the service's error code."""


def new_symmetric_key(spec: str) -> bytes:
    return os.urandom(SYMMETRIC_SPECS[spec])


def _cipher_algorithm(spec: str, key: bytes) -> algorithms.AES | algorithms.SM4:
    return algorithms.SM4(key) if spec == "Aliyun_SM4" else algorithms.AES(key)


def aead_encrypt(spec: str, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM or SM4-GCM; returns iv || ciphertext || tag."""
    iv = os.urandom(_IV_LEN)
    enc = Cipher(_cipher_algorithm(spec, key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    body = enc.update(plaintext) + enc.finalize()
    return iv + body + enc.tag


def aead_decrypt(spec: str, key: bytes, data: bytes, aad: bytes) -> bytes:
    if len(data) < _IV_LEN + 16:
        raise CryptoFailure("ciphertext too short")
    iv, body, tag = data[:_IV_LEN], data[_IV_LEN:-16], data[-16:]
    try:
        dec = Cipher(_cipher_algorithm(spec, key), modes.GCM(iv, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(body) + dec.finalize()
    except (InvalidTag, ValueError) as exc:
        raise CryptoFailure("authentication failed") from exc


def new_private_key(spec: str) -> bytes:
    """A fresh private key as PKCS#8 DER (the form the state file keeps)."""
    if spec == "EC_P256":
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(spec.split("_")[1]))
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private(der: bytes):  # noqa: ANN201 - RSA or EC private key
    return serialization.load_der_private_key(der, password=None)


def public_pem(der: bytes) -> str:
    return load_private(der).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_der(der: bytes) -> bytes:
    return load_private(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(blob: bytes):  # noqa: ANN201 - RSA or EC public key
    """Accepts a DER or PEM SubjectPublicKeyInfo."""
    try:
        if blob.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(blob)
        return serialization.load_der_public_key(blob)
    except ValueError as exc:
        raise CryptoFailure("not a public key") from exc


def _rsa_padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm == "RSAES_PKCS1_V1_5":
        return padding.PKCS1v15()
    digest = hashes.SHA1() if algorithm == "RSAES_OAEP_SHA_1" else hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def rsa_encrypt(public_key, algorithm: str, data: bytes) -> bytes:  # noqa: ANN001
    try:
        return public_key.encrypt(data, _rsa_padding(algorithm))
    except ValueError as exc:
        raise CryptoFailure("plaintext too long for this key and algorithm") from exc


def rsa_decrypt(private_der: bytes, algorithm: str, data: bytes) -> bytes:
    try:
        return load_private(private_der).decrypt(data, _rsa_padding(algorithm))
    except ValueError as exc:
        raise CryptoFailure("decryption failed") from exc


def _sign_args(algorithm: str) -> tuple:
    prehashed = utils.Prehashed(hashes.SHA256())
    if algorithm == "RSA_PSS_SHA_256":
        return (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), prehashed)
    if algorithm == "RSA_PKCS1_SHA_256":
        return (padding.PKCS1v15(), prehashed)
    return (ec.ECDSA(prehashed),)


def sign_digest(private_der: bytes, algorithm: str, digest: bytes) -> bytes:
    return load_private(private_der).sign(digest, *_sign_args(algorithm))


def verify_digest(private_der: bytes, algorithm: str, digest: bytes, signature: bytes) -> bool:
    try:
        load_private(private_der).public_key().verify(signature, digest, *_sign_args(algorithm))
    except InvalidSignature:
        return False
    return True
