"""Key material and the cryptographic operations behind each Cloud KMS algorithm (pyca/cryptography only)."""

from __future__ import annotations

import hmac as _hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from .errors import invalid

_HASHES = {"SHA1": hashes.SHA1, "SHA224": hashes.SHA224, "SHA256": hashes.SHA256,
           "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}


@dataclass(frozen=True)
class Algorithm:
    """What a CryptoKeyVersionAlgorithm means: its purpose, key kind and parameters."""

    name: str
    purpose: str  # CryptoKey.CryptoKeyPurpose name
    kind: str  # "aes" | "hmac" | "rsa_sign_pss" | "rsa_sign_pkcs1" | "rsa_decrypt" | "ec" | "ed25519"
    size: int = 0  # key bytes (aes/hmac) or modulus bits (rsa)
    hash: str = ""
    curve: str = ""

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return _HASHES[self.hash]()


def _table() -> dict[str, Algorithm]:
    algs = [
        Algorithm("GOOGLE_SYMMETRIC_ENCRYPTION", "ENCRYPT_DECRYPT", "aes", 32),
        Algorithm("AES_128_GCM", "RAW_ENCRYPT_DECRYPT", "aes", 16),
        Algorithm("AES_256_GCM", "RAW_ENCRYPT_DECRYPT", "aes", 32),
        Algorithm("EC_SIGN_P256_SHA256", "ASYMMETRIC_SIGN", "ec", hash="SHA256", curve="P256"),
        Algorithm("EC_SIGN_P384_SHA384", "ASYMMETRIC_SIGN", "ec", hash="SHA384", curve="P384"),
        Algorithm("EC_SIGN_SECP256K1_SHA256", "ASYMMETRIC_SIGN", "ec", hash="SHA256", curve="SECP256K1"),
        Algorithm("EC_SIGN_ED25519", "ASYMMETRIC_SIGN", "ed25519"),
    ]
    for bits, h in [(2048, "SHA256"), (3072, "SHA256"), (4096, "SHA256"), (4096, "SHA512")]:
        algs.append(Algorithm(f"RSA_SIGN_PSS_{bits}_{h}", "ASYMMETRIC_SIGN", "rsa_sign_pss", bits, h))
        algs.append(Algorithm(f"RSA_SIGN_PKCS1_{bits}_{h}", "ASYMMETRIC_SIGN", "rsa_sign_pkcs1", bits, h))
    for bits, h in [(2048, "SHA256"), (3072, "SHA256"), (4096, "SHA256"), (4096, "SHA512"),
                    (2048, "SHA1"), (3072, "SHA1"), (4096, "SHA1")]:
        algs.append(Algorithm(f"RSA_DECRYPT_OAEP_{bits}_{h}", "ASYMMETRIC_DECRYPT", "rsa_decrypt", bits, h))
    for h, n in [("SHA1", 20), ("SHA224", 28), ("SHA256", 32), ("SHA384", 48), ("SHA512", 64)]:
        algs.append(Algorithm(f"HMAC_{h}", "MAC", "hmac", n, h))
    return {a.name: a for a in algs}


ALGORITHMS = _table()
_CURVES = {"P256": ec.SECP256R1, "P384": ec.SECP384R1, "SECP256K1": ec.SECP256K1}


def algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise invalid(f"Algorithm {name} is not supported.") from None


# ---- material -------------------------------------------------------------------------------------

def generate(alg: Algorithm) -> bytes:
    """Fresh key material: raw bytes for symmetric keys, PKCS#8 DER for asymmetric ones."""
    if alg.kind in ("aes", "hmac"):
        return os.urandom(alg.size)
    if alg.kind.startswith("rsa"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=alg.size)
    elif alg.kind == "ec":
        key = ec.generate_private_key(_CURVES[alg.curve]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def check_imported(alg: Algorithm, material: bytes) -> None:
    """Imported material must be in the format Cloud KMS documents for the algorithm."""
    if alg.kind in ("aes", "hmac"):
        if len(material) != alg.size:
            raise invalid(f"Imported key material for {alg.name} must be {alg.size} bytes.")
        return
    try:
        key = serialization.load_der_private_key(material, password=None)
    except ValueError:
        raise invalid("Imported asymmetric key material must be a PKCS#8 DER private key.") from None
    ok = (
        (alg.kind.startswith("rsa") and isinstance(key, rsa.RSAPrivateKey) and key.key_size == alg.size)
        or (alg.kind == "ec" and isinstance(key, ec.EllipticCurvePrivateKey)
            and isinstance(key.curve, _CURVES[alg.curve]))
        or (alg.kind == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey))
    )
    if not ok:
        raise invalid(f"Imported key material does not match algorithm {alg.name}.")


def _private(material: bytes):  # noqa: ANN202 - a union of pyca key types
    return serialization.load_der_private_key(material, password=None)


def public_pem(material: bytes) -> str:
    return _private(material).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ---- symmetric ------------------------------------------------------------------------------------

_MAGIC = b"GKE1"
_HEADER = struct.Struct(">4sI")  # magic, version number


def symmetric_encrypt(material: bytes, version: int, plaintext: bytes, aad: bytes) -> bytes:
    """Opaque ciphertext naming its version, so Decrypt on the CryptoKey can find it (header is authenticated)."""
    header = _HEADER.pack(_MAGIC, version)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(material).encrypt(nonce, plaintext, header + aad)


def ciphertext_version(ciphertext: bytes) -> int | None:
    if len(ciphertext) < _HEADER.size + 12 + 16:
        return None
    magic, version = _HEADER.unpack_from(ciphertext)
    return version if magic == _MAGIC else None


def symmetric_decrypt(material: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    header, nonce, body = ciphertext[:_HEADER.size], ciphertext[_HEADER.size:_HEADER.size + 12], \
        ciphertext[_HEADER.size + 12:]
    try:
        return AESGCM(material).decrypt(nonce, body, header + aad)
    except InvalidTag:
        return None


def raw_encrypt(material: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(material).encrypt(iv, plaintext, aad)


def raw_decrypt(material: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    try:
        return AESGCM(material).decrypt(iv, ciphertext, aad)
    except InvalidTag:
        return None


# ---- asymmetric & MAC -----------------------------------------------------------------------------

def sign(alg: Algorithm, material: bytes, digest: bytes | None, data: bytes | None) -> bytes:
    key = _private(material)
    if alg.kind == "ed25519":
        if data is None:
            raise invalid("EC_SIGN_ED25519 requires the data field, not a digest.")
        return key.sign(data)
    h = alg.hash_algorithm()
    if digest is None:
        digest_obj = hashes.Hash(h)
        digest_obj.update(data or b"")
        digest = digest_obj.finalize()
    if len(digest) != h.digest_size:
        raise invalid(f"The digest must be {h.digest_size} bytes for {alg.name}.")
    pre = Prehashed(h)
    if alg.kind == "ec":
        return key.sign(digest, ec.ECDSA(pre))
    if alg.kind == "rsa_sign_pss":
        return key.sign(digest, padding.PSS(padding.MGF1(h), h.digest_size), pre)
    return key.sign(digest, padding.PKCS1v15(), pre)


def verify_signature(alg: Algorithm, public_key_pem: str, signature: bytes, data: bytes) -> bool:
    """Client-side check used by tests and the provider; kept here so both use one definition."""
    key = serialization.load_pem_public_key(public_key_pem.encode())
    try:
        if alg.kind == "ed25519":
            key.verify(signature, data)
        elif alg.kind == "ec":
            key.verify(signature, data, ec.ECDSA(alg.hash_algorithm()))
        elif alg.kind == "rsa_sign_pss":
            h = alg.hash_algorithm()
            key.verify(signature, data, padding.PSS(padding.MGF1(h), h.digest_size), h)
        else:
            key.verify(signature, data, padding.PKCS1v15(), alg.hash_algorithm())
    except InvalidSignature:
        return False
    return True


def oaep(hash_name: str) -> padding.OAEP:
    h = _HASHES[hash_name]()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def asymmetric_decrypt(alg: Algorithm, material: bytes, ciphertext: bytes) -> bytes | None:
    try:
        return _private(material).decrypt(ciphertext, oaep(alg.hash))
    except ValueError:
        return None


def mac(alg: Algorithm, material: bytes, data: bytes) -> bytes:
    return _hmac.new(material, data, alg.hash.lower()).digest()


def mac_equal(a: bytes, b: bytes) -> bool:
    return _hmac.compare_digest(a, b)


# ---- import jobs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportMethod:
    name: str
    bits: int
    hash: str
    with_aes: bool


IMPORT_METHODS = {m.name: m for m in [
    ImportMethod("RSA_OAEP_3072_SHA1_AES_256", 3072, "SHA1", True),
    ImportMethod("RSA_OAEP_4096_SHA1_AES_256", 4096, "SHA1", True),
    ImportMethod("RSA_OAEP_3072_SHA256_AES_256", 3072, "SHA256", True),
    ImportMethod("RSA_OAEP_4096_SHA256_AES_256", 4096, "SHA256", True),
    ImportMethod("RSA_OAEP_3072_SHA256", 3072, "SHA256", False),
    ImportMethod("RSA_OAEP_4096_SHA256", 4096, "SHA256", False),
]}


def generate_wrapping_key(method: ImportMethod) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=method.bits)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def unwrap_import(method: ImportMethod, wrapping_key: bytes, wrapped: bytes) -> bytes | None:
    """CKM_RSA_AES_KEY_WRAP: OAEP(ephemeral AES-256) ‖ RFC 5649 wrap(target); or plain OAEP(target)."""
    key = _private(wrapping_key)
    k = method.bits // 8
    try:
        if not method.with_aes:
            return key.decrypt(wrapped, oaep(method.hash))
        if len(wrapped) <= k:
            return None
        ephemeral = key.decrypt(wrapped[:k], oaep(method.hash))
        if len(ephemeral) != 32:
            return None
        return aes_key_unwrap_with_padding(ephemeral, wrapped[k:])
    except (ValueError, InvalidUnwrap):
        return None
