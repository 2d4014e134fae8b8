"""The backup key and its custodians: SLIP-39 shares of a 256-bit secret that seals the backup private key.

Why SLIP-39 (`shamir-mnemonic`, the reference implementation by its authors) and not a Shamir of our own: it is a
maintained, specified scheme whose shares are words with an RS1024 checksum (a mistyped share is caught alone), an
identifier (shares of another set are refused) and a digest of the secret (a combination that yields a different
secret is refused) — so "fewer than M", "a wrong share" and "shares of another set" are each a clear error.

The backup key pair is RSA-3072: nodes hold only its public half (trusted by their HSM's security officer), so a
backup can be made without any custodian; the private half exists only sealed under the custodians' secret
(AES-256-GCM, key from HKDF-SHA-256), and in memory while M custodians restore.
"""

from __future__ import annotations

import os

import shamir_mnemonic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_BYTES = 32
MAX_SHARES = 16
_INFO = b"kms-broker backup private key v1"


class CustodianError(ValueError):
    """Shares that cannot open the backup key (too few, mistyped, of another set, of another secret)."""


def check_counts(shares: int, threshold: int) -> None:
    if not isinstance(shares, int) or not isinstance(threshold, int) or not 1 <= threshold <= shares <= MAX_SHARES:
        raise CustodianError(f"need 1 <= threshold <= shares <= {MAX_SHARES}")
    if threshold == 1 and shares != 1:
        raise CustodianError("a threshold of 1 means one custodian (use --shares 1), else any one share is the key")


def split(secret: bytes, threshold: int, shares: int) -> list[str]:
    check_counts(shares, threshold)
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], secret)
    return list(groups[0])


def combine(mnemonics: list[str]) -> bytes:
    cleaned = [" ".join(m.split()).lower() for m in mnemonics if m and m.strip()]
    if not cleaned:
        raise CustodianError("no custodian shares given")
    try:
        return shamir_mnemonic.combine_mnemonics(cleaned)
    except shamir_mnemonic.MnemonicError as exc:
        message = str(exc)
        if "Wrong number of mnemonics" in message or "Insufficient number" in message:
            raise CustodianError("fewer shares than the threshold were given") from None
        if "checksum" in message:
            raise CustodianError("a share is mistyped or not a share (its checksum fails)") from None
        if "identifier" in message or "don't match" in message:
            raise CustodianError("the shares are not all of the same custodian set") from None
        raise CustodianError("the shares do not combine (a wrong share?)") from None


def _key(secret: bytes, set_id: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=set_id.encode(), info=_INFO).derive(secret)


def new_backup_key() -> tuple[bytes, bytes]:
    """(SPKI DER, PKCS#8 DER) of a fresh RSA-3072 backup key pair."""
    private = rsa.generate_private_key(65537, 3072)
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    return public, pkcs8


def seal_private(secret: bytes, set_id: str, pkcs8: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_key(secret, set_id)).encrypt(nonce, pkcs8, set_id.encode())


def open_private(secret: bytes, set_id: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(_key(secret, set_id)).decrypt(sealed[:12], sealed[12:], set_id.encode())
    except (InvalidTag, ValueError):
        raise CustodianError("these shares are not the custodians of this backup (its key does not open)") from None


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)
