"""The hash chain and the signed checkpoints: pure functions shared by the writer and the verifier.

Every record (event or checkpoint) carries `seq` (1, 2, …), `prev_hash` (the previous record's `hash`, GENESIS for
the first) and `hash` = SHA-256(prev_hash || canonical JSON of the record without `hash`). A checkpoint is a record
of its own in the chain: `{"type": "checkpoint", "count", "head_hash", "time", "every_records", "every_seconds",
"key_id", "signature"}`, where `count` and `head_hash` name the record before it and `signature` is an ECDSA P-256 /
SHA-256 signature (DER, base64) by the HSM's audit signing key over `checkpoint_message()`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.canonical_json import Encoder

GENESIS = "0" * 64
PUBLIC_KEY_NAME = "audit-signing.pub.pem"  # the signing key's public half, beside the audit file
SIGNED_FIELDS = ("type", "seq", "count", "head_hash", "time", "every_records", "every_seconds", "key_id")


# json.JSONEncoder(sort_keys=True, separators=(",", ":")) byte for byte, through orjson where that is provably the
# same bytes (broker/canonical_json.py): every record already written must hash the same. Built once, stateless.
_CANONICAL = Encoder(sort_keys=True)


def canonical(body: dict) -> bytes:
    """Sorted keys, no spaces, ASCII: what the chain hashes, and (with `hash`) the line the file holds."""
    return _CANONICAL.encode(body)


def record_hash(prev_hash: str, body: dict) -> str:
    """Hash of a record; `body` is the record without its `hash` field (it includes `prev_hash`)."""
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def seal_record(record: dict, prev_hash: str) -> dict:
    record["prev_hash"] = prev_hash
    record["hash"] = record_hash(prev_hash, record)
    return record


_PLACEHOLDER = "?" * 64  # as long as a hash, so the line is the template with the hash written over it
_SLOT = b'"hash":"' + _PLACEHOLDER.encode() + b'"'


def seal_line(record: dict, prev_hash: str) -> bytes:
    """`seal_record`, and return the record's line (`canonical(record) + b"\\n"`) from ONE encoding: the record
    with a placeholder hash. With sorted keys and no spaces, that text less its `"hash":"…"` member (and one comma)
    is the canonical text of the record without `hash`, which is hashed. The member is found by its bytes, which
    only counts when they occur exactly once (in a string a quote is escaped; a nested `hash` member holding the
    placeholder would make two); otherwise the record is encoded twice, as `seal_record` and `encode` do."""
    if "hash" in record:  # not sealed before: then the old hash is part of what is hashed
        return canonical(seal_record(record, prev_hash)) + b"\n"
    record["prev_hash"] = prev_hash
    record["hash"] = _PLACEHOLDER
    template = canonical(record)
    if template.count(_SLOT) != 1:
        del record["hash"]
        return canonical(seal_record(record, prev_hash)) + b"\n"
    start = template.index(_SLOT)
    body = template[:start] + template[start + len(_SLOT) + 1:]  # and its comma: `prev_hash` sorts after `hash`
    digest = hashlib.sha256(prev_hash.encode() + body).hexdigest()
    record["hash"] = digest
    value = start + len(b'"hash":"')
    return template[:value] + digest.encode() + template[value + 64:] + b"\n"


def checkpoint_message(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint signature covers."""
    return b"kms-broker audit checkpoint v1\n" + canonical({k: checkpoint.get(k) for k in SIGNED_FIELDS})


def key_fingerprint(spki_der: bytes) -> str:
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()[:32]


def public_key_pem(spki_der: bytes) -> bytes:
    return serialization.load_der_public_key(spki_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the audit signing public key is not an EC key")
    return key


def spki_of(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_valid(key: ec.EllipticCurvePublicKey, checkpoint: dict) -> bool:
    try:
        signature = base64.b64decode(checkpoint.get("signature") or "", validate=True)
        key.verify(signature, checkpoint_message(checkpoint), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
