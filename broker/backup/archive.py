"""The backup archive: a signed manifest and an encrypted payload, in one JSON file.

    {"format": "kms-broker-backup/1", "manifest": {...}, "signature": b64, "payload": b64}

The manifest names the backup, the custodian set (public key, the private key sealed under the custodians'
secret), the root-of-trust package (root KEK + audit keys wrapped for the backup key inside the HSM), the audit head
of the source node's chain, the SHA-256 of the payload and the payload's data key wrapped for the backup key. The
HSM's audit signing key signs the manifest. The payload is the store snapshot (gzip'd JSON) under AES-256-GCM.
Nothing in the file is key material in clear.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "kms-broker-backup/1"
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class ArchiveError(ValueError):
    """The file is not a backup, or it was altered."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def manifest_message(manifest: dict[str, Any]) -> bytes:
    return b"kms-broker backup manifest v1\n" + canonical(manifest)


@dataclass(frozen=True)
class Archive:
    manifest: dict[str, Any]
    signature: bytes
    payload: bytes

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "manifest": self.manifest,
                           "signature": base64.b64encode(self.signature).decode(),
                           "payload": base64.b64encode(self.payload).decode()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Archive:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("manifest"), dict):
                raise ArchiveError("not a kms-broker backup archive")
            return cls(doc["manifest"], base64.b64decode(doc["signature"], validate=True),
                       base64.b64decode(doc["payload"], validate=True))
        except ArchiveError:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ArchiveError("not a kms-broker backup archive (unreadable)") from None

    def check(self, pinned_spki: bytes | None = None) -> None:
        """The manifest's signature (by the embedded audit signing key, which `pinned_spki` must equal when given)
        and the payload's digest. Raises ArchiveError naming what failed."""
        try:
            spki = bytes.fromhex(self.manifest["signing_public_key"])
            key = serialization.load_der_public_key(spki)
        except (KeyError, ValueError, TypeError):
            raise ArchiveError("the archive's manifest is damaged (no signing key)") from None
        if pinned_spki is not None and spki != pinned_spki:
            raise ArchiveError("the archive was not signed by the expected audit signing key")
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ArchiveError("the archive's signing key is not an EC key")
        try:
            key.verify(self.signature, manifest_message(self.manifest), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ArchiveError("the manifest's signature does not verify (the archive was altered)") from None
        if hashlib.sha256(self.payload).hexdigest() != self.manifest.get("payload_sha256"):
            raise ArchiveError("the payload does not match the manifest (the archive was altered)")


def seal_payload(snapshot: dict[str, Any], backup_public_der: bytes, backup_id: str) -> tuple[bytes, bytes]:
    """(payload, data key wrapped for the backup key): the snapshot gzip'd, under a fresh AES-256-GCM key."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    body = gzip.compress(canonical(snapshot), mtime=0)
    payload = nonce + AESGCM(data_key).encrypt(nonce, body, backup_id.encode())
    public = serialization.load_der_public_key(backup_public_der)
    return payload, public.encrypt(data_key, _OAEP)  # type: ignore[union-attr]


def open_payload(archive: Archive, backup_private_pkcs8: bytes) -> dict[str, Any]:
    private = serialization.load_der_private_key(backup_private_pkcs8, password=None)
    try:
        data_key = private.decrypt(base64.b64decode(archive.manifest["payload_key"]), _OAEP)  # type: ignore[union-attr]
        body = AESGCM(data_key).decrypt(archive.payload[:12], archive.payload[12:],
                                        archive.manifest["backup_id"].encode())
        return json.loads(gzip.decompress(body))
    except (InvalidTag, ValueError, KeyError, OSError):
        raise ArchiveError("the payload does not open with this backup key (altered, or another set)") from None
