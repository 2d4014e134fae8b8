"""BYOK "key_hsm" transfer blobs: material wrapped for an import-only KEK with RSA-AES key wrap.

Blob (base64url of JSON): {"schema_version", "header": {"kid": <KEK kid>, "alg": "dir", "enc": <scheme>},
"ciphertext": b64url(RSA-OAEP(ephemeral AES key) ‖ AES-KWP(ephemeral, target))}. The target is PKCS#8 DER for RSA
and EC keys, raw bytes for oct-HSM. Schemes: CKM_RSA_AES_KEY_WRAP (OAEP SHA-1), RSA_AES_KEY_WRAP_256 / _384.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from .errors import BadParameter
from .jwk import CURVE_NAMES, EC_TYPES, RSA_TYPES, b64d, private_jwk

_SCHEMES: dict[str, type[hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1, "RSA_AES_KEY_WRAP_256": hashes.SHA256, "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


def parse(blob_b64: Any) -> tuple[str, str, bytes]:
    """(KEK kid, scheme, ciphertext) from a key_hsm value."""
    try:
        doc = json.loads(b64d(blob_b64, "key_hsm"))
        header = doc["header"]
        kid, scheme, ciphertext = header["kid"], header.get("enc"), b64d(doc["ciphertext"], "ciphertext")
    except (ValueError, KeyError, TypeError):
        raise BadParameter("The key_hsm transfer blob is malformed.") from None
    if scheme not in _SCHEMES:
        raise BadParameter(f"Unsupported key_hsm wrapping scheme '{scheme}'.")
    return str(kid), scheme, ciphertext


def unwrap(kek: Any, scheme: str, ciphertext: bytes, kty: str) -> dict[str, str]:
    """Recover the target material as stored JWK fields, or BadParameter."""
    if not isinstance(kek, rsa.RSAPrivateKey):
        raise BadParameter("The key exchange key must be an RSA key.")
    n = kek.key_size // 8
    h: Callable[[], hashes.HashAlgorithm] = _SCHEMES[scheme]
    try:
        aes = kek.decrypt(ciphertext[:n], padding.OAEP(padding.MGF1(h()), h(), None))
        target = aes_key_unwrap_with_padding(aes, ciphertext[n:])
    except (ValueError, InvalidUnwrap):
        raise BadParameter("The key_hsm transfer blob could not be unwrapped with the key exchange key.") from None
    if kty in RSA_TYPES + EC_TYPES:
        try:
            key = serialization.load_der_private_key(target, password=None)
        except ValueError:
            raise BadParameter("The transferred key is not a PKCS#8 private key.") from None
        if kty in RSA_TYPES and not isinstance(key, rsa.RSAPrivateKey):
            raise BadParameter("The transferred key is not an RSA key.")
        if kty in EC_TYPES and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in CURVE_NAMES):
            raise BadParameter("The transferred key is not an EC key on a supported curve.")
        return private_jwk(key)
    if len(target) * 8 not in (128, 192, 256):
        raise BadParameter("A transferred oct-HSM key must be 128, 192 or 256 bits.")
    return private_jwk(target)
