"""JSON Web Key <-> `cryptography` key objects, and base64url without padding as Key Vault uses it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import BadParameter

CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "P-256K": ec.SECP256K1,
}
CURVE_NAMES = {cls.name: name for name, cls in CURVES.items()}
RSA_TYPES = ("RSA", "RSA-HSM")
EC_TYPES = ("EC", "EC-HSM")
OCT_TYPES = ("oct", "oct-HSM")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: Any, field: str = "value") -> bytes:
    """Decode base64url (padding optional); a malformed value is the caller's BadParameter."""
    if not isinstance(text, str):
        raise BadParameter(f"Property '{field}' must be a base64url string.")
    try:
        std = text.rstrip("=").replace("-", "+").replace("_", "/")
        return base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadParameter(f"Property '{field}' is not valid base64url.") from None


def _int(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64e(value.to_bytes(length, "big"))


def _to_int(jwk: dict, field: str) -> int:
    if field not in jwk:
        raise BadParameter(f"The JSON Web Key is missing the '{field}' parameter.")
    return int.from_bytes(b64d(jwk[field], field), "big")


def private_jwk(key: Any) -> dict[str, str]:
    """Full material of a key as JWK fields (used for storage only; never sent on the wire)."""
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        pub = n.public_numbers
        return {"n": _int(pub.n), "e": _int(pub.e), "d": _int(n.d), "p": _int(n.p), "q": _int(n.q),
                "dp": _int(n.dmp1), "dq": _int(n.dmq1), "qi": _int(n.iqmp)}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        pub = key.public_key().public_numbers()
        return {"crv": CURVE_NAMES[key.curve.name], "x": _int(pub.x, size), "y": _int(pub.y, size),
                "d": _int(key.private_numbers().private_value, size)}
    if isinstance(key, bytes):
        return {"k": b64e(key)}
    raise TypeError(f"unsupported key object {type(key).__name__}")


def public_fields(kty: str, material: dict[str, str]) -> dict[str, str]:
    """The public part of stored material, as the service returns it in a key bundle."""
    if kty in RSA_TYPES:
        return {"n": material["n"], "e": material["e"]}
    if kty in EC_TYPES:
        return {"crv": material["crv"], "x": material["x"], "y": material["y"]}
    return {}


def load_key(kty: str, material: dict[str, str]) -> Any:
    """A `cryptography` private key (RSA/EC) or raw bytes (oct) from stored or imported JWK material."""
    if kty in RSA_TYPES:
        for f in ("d", "p", "q"):
            if f not in material:
                raise BadParameter("The imported RSA key must include its private parameters (d, p, q).")
        p, q, d = _to_int(material, "p"), _to_int(material, "q"), _to_int(material, "d")
        pub = rsa.RSAPublicNumbers(_to_int(material, "e"), _to_int(material, "n"))
        dp = _to_int(material, "dp") if "dp" in material else rsa.rsa_crt_dmp1(d, p)
        dq = _to_int(material, "dq") if "dq" in material else rsa.rsa_crt_dmq1(d, q)
        qi = _to_int(material, "qi") if "qi" in material else rsa.rsa_crt_iqmp(p, q)
        try:
            return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, pub).private_key()
        except ValueError:
            raise BadParameter("The RSA key parameters are inconsistent.") from None
    if kty in EC_TYPES:
        crv = material.get("crv")
        if crv not in CURVES:
            raise BadParameter(f"Unsupported curve '{crv}'.")
        if "d" not in material:
            raise BadParameter("The imported EC key must include its private parameter (d).")
        try:
            key = ec.derive_private_key(_to_int(material, "d"), CURVES[crv]())
        except ValueError:
            raise BadParameter("The EC private key is invalid.") from None
        pub = key.public_key().public_numbers()
        if ("x" in material and _to_int(material, "x") != pub.x) or ("y" in material and _to_int(material, "y") != pub.y):
            raise BadParameter("The EC public point does not match the private key.")
        return key
    if kty in OCT_TYPES:
        if "k" not in material:
            raise BadParameter("The JSON Web Key is missing the 'k' parameter.")
        return b64d(material["k"], "k")
    raise BadParameter(f"Unsupported key type '{kty}'.")
