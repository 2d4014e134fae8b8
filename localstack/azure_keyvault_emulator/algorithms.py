"""The Key Vault cryptographic algorithms, each done with pyca/cryptography (no hand-rolled primitives).

Functions take the loaded key object and raise BadParameter for input the service would reject.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .errors import BadParameter

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
RSA_ENCRYPTION = ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5")
AES_GCM = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
AES_KW = {"A128KW": 16, "A192KW": 24, "A256KW": 32}
EC_SIGN_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}
SIGNATURES = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", *EC_SIGN_CURVES)
GCM_IV_BYTES = 12
GCM_TAG_BYTES = 16


def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return padding.PKCS1v15()


def _require_rsa(key: Any, alg: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadParameter(f"Algorithm '{alg}' is not supported by this key type.")
    return key


def _require_aes(key: Any, alg: str, size: int) -> bytes:
    if not isinstance(key, bytes):
        raise BadParameter(f"Algorithm '{alg}' is not supported by this key type.")
    if len(key) != size:
        raise BadParameter(f"Algorithm '{alg}' requires a {size * 8}-bit key; this key has {len(key) * 8} bits.")
    return key


def rsa_encrypt(key: Any, alg: str, plaintext: bytes) -> bytes:
    rkey = _require_rsa(key, alg)
    try:
        return rkey.public_key().encrypt(plaintext, _rsa_padding(alg))
    except ValueError:
        raise BadParameter("The plaintext is too long for this key and algorithm.") from None


def rsa_decrypt(key: Any, alg: str, ciphertext: bytes) -> bytes:
    rkey = _require_rsa(key, alg)
    try:
        return rkey.decrypt(ciphertext, _rsa_padding(alg))
    except ValueError:
        raise BadParameter("Error decrypting data: the ciphertext is invalid for this key.") from None


def gcm_encrypt(key: Any, alg: str, plaintext: bytes, aad: bytes | None) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, iv, tag); the service generates the IV, as Managed HSM does."""
    aes = AESGCM(_require_aes(key, alg, AES_GCM[alg]))
    iv = os.urandom(GCM_IV_BYTES)
    out = aes.encrypt(iv, plaintext, aad or None)
    return out[:-GCM_TAG_BYTES], iv, out[-GCM_TAG_BYTES:]


def gcm_decrypt(key: Any, alg: str, ciphertext: bytes, iv: bytes | None, tag: bytes | None, aad: bytes | None) -> bytes:
    aes = AESGCM(_require_aes(key, alg, AES_GCM[alg]))
    if not iv or not tag:
        raise BadParameter(f"Algorithm '{alg}' requires the 'iv' and 'tag' parameters.")
    if len(tag) != GCM_TAG_BYTES:
        raise BadParameter("The authentication tag must be 16 bytes.")
    try:
        return aes.decrypt(iv, ciphertext + tag, aad or None)
    except InvalidTag:
        raise BadParameter("Error decrypting data: authentication failed.") from None


def aes_wrap(key: Any, alg: str, plaintext_key: bytes) -> bytes:
    kek = _require_aes(key, alg, AES_KW[alg])
    if len(plaintext_key) < 16 or len(plaintext_key) % 8:
        raise BadParameter("The key to wrap must be at least 16 bytes and a multiple of 8 bytes.")
    return aes_key_wrap(kek, plaintext_key)


def aes_unwrap(key: Any, alg: str, wrapped: bytes) -> bytes:
    kek = _require_aes(key, alg, AES_KW[alg])
    try:
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError):
        raise BadParameter("Error unwrapping key: the wrapped key is invalid for this key.") from None


def _sig_hash(alg: str, digest: bytes) -> hashes.HashAlgorithm:
    h = _HASHES[alg[2:5]]()
    if len(digest) != h.digest_size:
        raise BadParameter(f"Invalid digest length for '{alg}': expected {h.digest_size} bytes, got {len(digest)}.")
    return h


def _ec_for(key: Any, alg: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadParameter(f"Algorithm '{alg}' is not supported by this key type.")
    if key.curve.name != EC_SIGN_CURVES[alg]:
        raise BadParameter(f"Algorithm '{alg}' does not match the key's curve.")
    return key


def sign(key: Any, alg: str, digest: bytes) -> bytes:
    """RS*/PS* signatures as bytes; ES* as the JWS raw r‖s form Key Vault returns."""
    if alg not in SIGNATURES:
        raise BadParameter(f"Unsupported signature algorithm '{alg}'.")
    if alg == "ES256K":
        h: hashes.HashAlgorithm = hashes.SHA256()
        if len(digest) != 32:
            raise BadParameter("Invalid digest length for 'ES256K'.")
    else:
        h = _sig_hash(alg, digest)
    if alg.startswith("ES"):
        ekey = _ec_for(key, alg)
        r, s = utils.decode_dss_signature(ekey.sign(digest, ec.ECDSA(utils.Prehashed(h))))
        size = (ekey.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    rkey = _require_rsa(key, alg)
    pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(h), h.digest_size)
    return rkey.sign(digest, pad, utils.Prehashed(h))


def verify(key: Any, alg: str, digest: bytes, signature: bytes) -> bool:
    if alg not in SIGNATURES:
        raise BadParameter(f"Unsupported signature algorithm '{alg}'.")
    h = hashes.SHA256() if alg == "ES256K" else _sig_hash(alg, digest)
    try:
        if alg.startswith("ES"):
            ekey = _ec_for(key, alg)
            size = (ekey.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            der = utils.encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                             int.from_bytes(signature[size:], "big"))
            ekey.public_key().verify(der, digest, ec.ECDSA(utils.Prehashed(h)))
        else:
            rkey = _require_rsa(key, alg)
            pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(h), padding.PSS.AUTO)
            rkey.public_key().verify(signature, digest, pad, utils.Prehashed(h))
    except InvalidSignature:
        return False
    return True
